#include "runtime/tokenizer/added_vocabulary.h"

#include <utility>

#include "runtime/core/status_macros.h"

namespace tessera::tokenizer {
namespace {

// Rust's regex crate, which Hugging Face uses for these checks: \w is Alphabetic, marks,
// decimal digits, connector punctuation and the joiners; \s is White_Space.
constexpr absl::string_view kWordChar = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])";
constexpr absl::string_view kWhiteSpace = R"(\p{White_Space})";

size_t PreviousCharStart(absl::string_view text, size_t pos) {
  size_t start = pos - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xc0) == 0x80) --start;
  return start;
}

size_t NextCharStart(absl::string_view text, size_t pos) {
  size_t next = pos + 1;
  while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xc0) == 0x80) ++next;
  return next;
}

}  // namespace

absl::StatusOr<AddedTokenMatcher> AddedTokenMatcher::Create(
    std::vector<AddedToken> tokens, const std::vector<std::string>& patterns) {
  AddedTokenMatcher m;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Regex> word, Regex::Compile(kWordChar));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Regex> space, Regex::Compile(kWhiteSpace));
  m.word_char_ = std::move(word);
  m.white_space_ = std::move(space);
  m.nodes_.emplace_back();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& pattern = patterns[i];
    if (pattern.empty()) continue;
    const auto index = static_cast<int32_t>(m.tokens_.size());
    m.tokens_.push_back(std::move(tokens[i]));
    int32_t node = 0;
    for (const char c : pattern) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
      auto [it, inserted] = m.children_.try_emplace(key, static_cast<int32_t>(m.nodes_.size()));
      if (inserted) m.nodes_.emplace_back();
      node = it->second;
    }
    // A repeated pattern keeps its first token, as the first pattern wins in Hugging Face's
    // automaton.
    if (m.nodes_[node].token < 0) m.nodes_[node].token = index;
    m.first_byte_[static_cast<uint8_t>(pattern[0])] = true;
  }
  return m;
}

int32_t AddedTokenMatcher::LongestAt(absl::string_view text, size_t pos, size_t& end) const {
  int32_t found = -1;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[i]);
    auto it = children_.find(key);
    if (it == children_.end()) break;
    node = it->second;
    if (nodes_[node].token >= 0) {
      found = nodes_[node].token;
      end = i + 1;
    }
  }
  return found;
}

absl::Status AddedTokenMatcher::Split(absl::string_view text, std::vector<TextSegment>* out) const {
  size_t done = 0;  // end of the last match
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t stop = 0;
    const int32_t index = LongestAt(text, pos, stop);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    size_t start = pos;
    if (token.single_word) {
      bool word_before = false;
      bool word_after = false;
      if (start > 0) {
        TESSERA_ASSIGN_OR_RETURN(word_before,
                                 word_char_->MatchesAt(text, PreviousCharStart(text, start)));
      }
      if (stop < text.size()) {
        TESSERA_ASSIGN_OR_RETURN(word_after, word_char_->MatchesAt(text, stop));
      }
      if (word_before || word_after) {
        // The search goes on after the rejected match, as an automaton's iterator does.
        pos = stop;
        continue;
      }
    }
    if (token.lstrip) {
      while (start > done) {
        const size_t previous = PreviousCharStart(text, start);
        TESSERA_ASSIGN_OR_RETURN(const bool space, white_space_->MatchesAt(text, previous));
        if (!space) break;
        start = previous;
      }
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        TESSERA_ASSIGN_OR_RETURN(const bool space, white_space_->MatchesAt(text, stop));
        if (!space) break;
        stop = NextCharStart(text, stop);
      }
    }
    if (start > done) out->push_back({done, start, -1});
    out->push_back({start, stop, token.id});
    done = stop;
    pos = stop;
  }
  if (done < text.size() || out->empty()) out->push_back({done, text.size(), -1});
  return absl::OkStatus();
}

}  // namespace tessera::tokenizer
