#include "runtime/tokenizer/digits.h"

#include <memory>

#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/regex.h"

namespace tessera::tokenizer {

absl::StatusOr<SplitStep> DigitsSplit(bool individual_digits) {
  // Hugging Face matches one numeric character at a time and isolates each (individual
  // digits) or joins neighbouring ones (Contiguous). Between two matches the rest of the text
  // is a single span either way, so an Isolated split on \p{N} or \p{N}+ gives the same
  // pieces, and takes the split's fast path.
  SplitStep step;
  TESSERA_ASSIGN_OR_RETURN(step.pattern,
                           Regex::Compile(individual_digits ? R"(\p{N})" : R"(\p{N}+)"));
  step.behavior = SplitBehavior::kIsolated;
  step.invert = false;
  return step;
}

}  // namespace tessera::tokenizer
