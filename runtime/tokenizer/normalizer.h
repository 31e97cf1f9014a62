#ifndef TESSERA_RUNTIME_TOKENIZER_NORMALIZER_H_
#define TESSERA_RUNTIME_TOKENIZER_NORMALIZER_H_

// Unicode normalization for tokenizer.json's "normalizer" (Qwen2 uses NFC). ICU does the
// work; a build without ICU has no normalizer and refuses tokenizers that need one.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera::tokenizer {

// Whether this build can normalize (it was built with ICU).
bool NfcAvailable();

// `text` (valid UTF-8) in Normalization Form C. FAILED_PRECONDITION without ICU.
absl::Status ToNfc(absl::string_view text, std::string* out);

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_NORMALIZER_H_
