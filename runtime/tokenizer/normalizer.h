#ifndef TESSERA_RUNTIME_TOKENIZER_NORMALIZER_H_
#define TESSERA_RUNTIME_TOKENIZER_NORMALIZER_H_

// tokenizer.json's "normalizer": steps that rewrite the text between added tokens (and the text
// of added tokens matched after normalization) before pre-tokenization, as Hugging Face
// tokenizers' normalizers do. Qwen2 uses NFC; Llama-2's older tokenizer.json spells spaces as
// "▁" with Prepend and Replace.
//
// The Unicode forms and Lowercase take their data from ICU; a build without ICU refuses them
// (UnicodeFormsAvailable).
//
// Thread safety: a Normalizer is immutable after construction; Normalize may run on many
// threads at once.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "runtime/tokenizer/regex.h"

namespace tessera::tokenizer {

struct NormalizerStep {
  enum class Kind {
    kNfc,
    kNfd,
    kNfkc,
    kNfkd,
    kLowercase,  // each character's full lowercase mapping, without context (Rust's
                 // char::to_lowercase: "İ" becomes "i̇", "Σ" always "σ")
    kPrepend,    // `text` before text that is not empty
    kReplace,    // every match of `pattern` (compiled from a literal, or a regex that cannot
                 // match empty text) becomes `text`
  };
  Kind kind = Kind::kNfc;
  std::string text;
  std::unique_ptr<Regex> pattern;
};

class Normalizer {
 public:
  explicit Normalizer(std::vector<NormalizerStep> steps) : steps_(std::move(steps)) {}

  // Whether there is nothing to do.
  bool empty() const { return steps_.empty(); }

  // `text` (valid UTF-8) after every step, in `out` (valid UTF-8). FAILED_PRECONDITION for a
  // Unicode step in a build without ICU.
  absl::Status Normalize(absl::string_view text, std::string* out) const;

 private:
  std::vector<NormalizerStep> steps_;
};

// Whether this build has the NFC, NFD, NFKC, NFKD and Lowercase steps (it was built with ICU).
bool UnicodeFormsAvailable();

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_NORMALIZER_H_
