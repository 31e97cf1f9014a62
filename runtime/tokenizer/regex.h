#ifndef TESSERA_RUNTIME_TOKENIZER_REGEX_H_
#define TESSERA_RUNTIME_TOKENIZER_REGEX_H_

// A compiled PCRE2 pattern with Unicode semantics (PCRE2_UTF | PCRE2_UCP: \p{L}, \w and
// (?i:...) follow Unicode), JIT-compiled where PCRE2 supports it. Pre-tokenizer patterns in
// tokenizer.json are written for Oniguruma; so that the model families' patterns mean the same
// here, \s and \S are taken as Oniguruma takes them, as the Unicode White_Space property.
//
// Thread safety: a Regex is immutable after Compile and safe to use from many threads.

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct pcre2_real_code_8;

namespace tessera::tokenizer {

class Regex {
 public:
  // INVALID_ARGUMENT with PCRE2's message and the offset in the pattern when it does not
  // compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern);
  // A pattern that matches `literal` exactly.
  static absl::StatusOr<std::unique_ptr<Regex>> CompileLiteral(absl::string_view literal);

  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();

  // Calls `on_match(begin, end)` with the byte offsets of each non-empty match in `text`,
  // left to right and non-overlapping, as a global search finds them. Empty matches are
  // skipped. `text` must be valid UTF-8 (it is not checked again).
  absl::Status ForEachMatch(absl::string_view text,
                            absl::FunctionRef<void(size_t, size_t)> on_match) const;

  // Whether a match starts exactly at `pos` (a character boundary of valid UTF-8 `text`).
  absl::StatusOr<bool> MatchesAt(absl::string_view text, size_t pos) const;

  // Whether a match may be empty (PCRE2's lower bound on a match's length is 0).
  bool MayMatchEmpty() const;

  const std::string& pattern() const { return pattern_; }
  bool jit_compiled() const { return jit_compiled_; }

 private:
  Regex(std::string pattern, pcre2_real_code_8* code, bool jit_compiled)
      : pattern_(std::move(pattern)), code_(code), jit_compiled_(jit_compiled) {}

  std::string pattern_;
  pcre2_real_code_8* code_;
  bool jit_compiled_;
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_REGEX_H_
