#ifndef TESSERA_RUNTIME_TOKENIZER_DIGITS_H_
#define TESSERA_RUNTIME_TOKENIZER_DIGITS_H_

// Hugging Face's Digits pre-tokenizer (SmolLM, StarCoder) as a Split step: it cuts numeric
// characters away from the rest, each one on its own (`individual_digits`) or in runs.
//
// Numeric is Rust's char::is_numeric, the general categories Nd, Nl and No, which is PCRE2's
// \p{N}: "x²３ⅷ" has three numeric characters, not only ASCII digits.

#include "absl/status/statusor.h"
#include "runtime/tokenizer/pre_tokenizer.h"

namespace tessera::tokenizer {

// The Split step that Digits amounts to.
absl::StatusOr<SplitStep> DigitsSplit(bool individual_digits);

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_DIGITS_H_
