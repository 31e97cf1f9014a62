#ifndef TESSERA_RUNTIME_TOKENIZER_ADDED_VOCABULARY_H_
#define TESSERA_RUNTIME_TOKENIZER_ADDED_VOCABULARY_H_

// Added tokens (tokenizer.json's "added_tokens": special tokens such as <|begin_of_text|> and
// plain ones such as <think>). They are found in the text before pre-tokenization and become
// their ids directly. Matching follows Hugging Face tokenizers: leftmost match first, the
// longest at that position; single_word rejects a match inside a word; lstrip and rstrip
// swallow the whitespace beside a match; tokens with `normalized` are matched in the
// normalized text, the others in the raw text.
//
// Thread safety: immutable after construction.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/tokenizer/regex.h"

namespace tessera::tokenizer {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// A part of the text: an added token (`id` >= 0) or text between them (`id` == -1).
struct TextSegment {
  size_t begin;
  size_t end;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  // Matches `tokens` by their `patterns` (the content, or its normalized form); both lists have
  // the same order. Empty patterns are ignored.
  static absl::StatusOr<AddedTokenMatcher> Create(std::vector<AddedToken> tokens,
                                                  const std::vector<std::string>& patterns);

  bool empty() const { return tokens_.empty(); }

  // Cuts `text` (valid UTF-8) into segments that cover it, appended to `out`. Text segments
  // may be empty.
  absl::Status Split(absl::string_view text, std::vector<TextSegment>* out) const;

 private:
  struct Node {
    int32_t token = -1;  // index into tokens_ of the pattern that ends here, or -1
  };

  AddedTokenMatcher() = default;
  // The index of the longest pattern that starts at `pos`, and its end; -1 if none.
  int32_t LongestAt(absl::string_view text, size_t pos, size_t& end) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;                          // node 0 is the root
  absl::flat_hash_map<uint64_t, int32_t> children_;  // (node << 8 | byte) -> node
  bool first_byte_[256] = {};
  std::shared_ptr<const Regex> word_char_;    // Unicode \w, as Rust's regex crate defines it
  std::shared_ptr<const Regex> white_space_;  // Unicode White_Space
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_ADDED_VOCABULARY_H_
