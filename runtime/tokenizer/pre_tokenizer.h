#ifndef TESSERA_RUNTIME_TOKENIZER_PRE_TOKENIZER_H_
#define TESSERA_RUNTIME_TOKENIZER_PRE_TOKENIZER_H_

// tokenizer.json's "pre_tokenizer": zero or more Split (and Digits) and Metaspace steps, then,
// in a byte-level BPE tokenizer, ByteLevel. It cuts text into the pieces ("words") that BPE
// merges within, never across. Pieces stay raw bytes: the byte-level alphabet is applied by the
// BPE model's tables instead. Without steps the whole text is one piece (Llama-2's older
// tokenizer.json, whose normalizer does Metaspace's job).
//
// Thread safety: immutable after construction; Split may run on many threads at once.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/tokenizer/metaspace.h"
#include "runtime/tokenizer/regex.h"

namespace tessera::tokenizer {

// What a Split step does with the text its pattern matches (Hugging Face's
// SplitDelimiterBehavior).
enum class SplitBehavior {
  kRemoved,             // drop the matches
  kIsolated,            // each match is a piece of its own
  kMergedWithPrevious,  // a match joins the piece before it
  kMergedWithNext,      // a match joins the piece after it
  kContiguous,          // runs of matches, and runs of the rest, are pieces
};

struct SplitStep {
  std::unique_ptr<Regex> pattern;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;  // swap the roles of the matches and the text between them
};

struct ByteLevelStep {
  bool add_prefix_space = false;  // prepend " " to each piece that does not start with one
  bool use_regex = true;          // split each piece with the GPT-2 pattern first
};

using PreTokenizerStep = std::variant<SplitStep, Metaspace>;

class PreTokenizer {
 public:
  // With `byte_level` and its use_regex, also compiles the GPT-2 pattern.
  static absl::StatusOr<PreTokenizer> Create(std::vector<PreTokenizerStep> steps,
                                             std::optional<ByteLevelStep> byte_level);

  // Calls `on_piece` with each piece of `text` (valid UTF-8), in order; pieces are never
  // empty. `at_start` says whether `text` begins the input (no added token before it), for
  // Metaspace's "first" prepend scheme. A piece points into `text`, or into a buffer that is
  // only valid during the call when a step made new text (a prefix space, a "▁").
  absl::Status Split(absl::string_view text, bool at_start,
                     absl::FunctionRef<void(absl::string_view)> on_piece) const;

  // Whether the last step is ByteLevel, and so the model's alphabet is bytes.
  bool byte_level() const { return byte_level_.has_value(); }

 private:
  PreTokenizer(std::vector<PreTokenizerStep> steps, std::optional<ByteLevelStep> byte_level,
               std::unique_ptr<Regex> gpt2_pattern)
      : steps_(std::move(steps)), byte_level_(byte_level), gpt2_pattern_(std::move(gpt2_pattern)) {}

  // Runs the steps from `step` on, then ByteLevel, on `piece` (which begins the input when
  // `at_start`).
  absl::Status SplitFrom(size_t step, absl::string_view piece, bool at_start,
                         absl::FunctionRef<void(absl::string_view)> on_piece) const;
  absl::Status ByteLevel(absl::string_view piece,
                         absl::FunctionRef<void(absl::string_view)> on_piece) const;

  std::vector<PreTokenizerStep> steps_;
  std::optional<ByteLevelStep> byte_level_;
  std::unique_ptr<Regex> gpt2_pattern_;  // null unless byte_level_->use_regex
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_PRE_TOKENIZER_H_
