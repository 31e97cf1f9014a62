#ifndef TESSERA_RUNTIME_TOKENIZER_UTF8_H_
#define TESSERA_RUNTIME_TOKENIZER_UTF8_H_

// UTF-8 helpers for the tokenizer: validation, and the lossy decoding that Hugging Face
// tokenizers applies when it turns token bytes back into text (Rust's String::from_utf8_lossy,
// which replaces each maximal invalid subpart with one U+FFFD, as Python's
// bytes.decode("utf-8", "replace") does).

#include <cstddef>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace tessera::tokenizer {

// The offset of the first byte that is not part of a well-formed UTF-8 character (overlong
// forms, surrogates and code points above U+10FFFF are ill-formed), or nullopt when `text` is
// valid UTF-8. A character cut short by the end of `text` is ill-formed at its first byte.
std::optional<size_t> FindInvalidUtf8(absl::string_view text);

// Appends `bytes` to `out` as UTF-8 with every maximal ill-formed subpart replaced by U+FFFD.
// When `final` is false, a truncated character at the end that more bytes could still complete
// is left unconsumed; returns the number of bytes consumed (all of them when `final`).
size_t AppendUtf8Lossy(absl::string_view bytes, bool final, std::string* out);

// `bytes` with every maximal ill-formed subpart replaced by U+FFFD.
std::string ReplaceInvalidUtf8(absl::string_view bytes);

// Appends the UTF-8 encoding of `code_point` (at most U+10FFFF, not a surrogate).
void AppendUtf8(char32_t code_point, std::string* out);

// Decodes the character that starts at `text[pos]` (valid UTF-8) and advances `pos` past it.
char32_t NextCodePoint(absl::string_view text, size_t& pos);

// The number of bytes of the character whose first byte is `lead`, in valid UTF-8.
inline size_t Utf8Length(char lead) {
  const auto b = static_cast<unsigned char>(lead);
  return b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
}

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_UTF8_H_
