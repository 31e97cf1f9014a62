#ifndef TESSERA_RUNTIME_TOKENIZER_BYTE_LEVEL_H_
#define TESSERA_RUNTIME_TOKENIZER_BYTE_LEVEL_H_

// GPT-2's byte-level alphabet: every byte stands for one printable character in a byte-level
// BPE vocabulary (printable Latin-1 bytes for themselves, the others for U+0100 onwards), so
// "Ġhello" in tokenizer.json is the bytes " hello".

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace tessera::tokenizer {

// The character that stands for `byte`.
char32_t ByteLevelChar(uint8_t byte);

// The bytes that a byte-level token such as "Ġhello" stands for; nullopt when `token` (valid
// UTF-8) has a character outside the alphabet.
std::optional<std::string> ByteLevelToBytes(absl::string_view token);

// The byte-level spelling of `bytes`: one alphabet character per byte.
std::string BytesToByteLevel(absl::string_view bytes);

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_BYTE_LEVEL_H_
