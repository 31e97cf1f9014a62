#include "runtime/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "runtime/core/status_macros.h"

namespace tessera::tokenizer {
namespace {

// The pattern of Hugging Face's ByteLevel pre-tokenizer (GPT-2's).
constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Span {
  size_t begin;
  size_t end;
  bool is_match;
};

// `text` cut into alternating matched and unmatched spans that cover it.
absl::Status FindSpans(const Regex& pattern, absl::string_view text, bool invert,
                       std::vector<Span>* spans) {
  size_t previous = 0;
  TESSERA_RETURN_IF_ERROR(pattern.ForEachMatch(text, [&](size_t begin, size_t end) {
    if (begin > previous) spans->push_back({previous, begin, invert});
    spans->push_back({begin, end, !invert});
    previous = end;
  }));
  if (previous < text.size()) spans->push_back({previous, text.size(), invert});
  return absl::OkStatus();
}

// Applies `behavior` to `spans` as Hugging Face's NormalizedString::split does: the pieces it
// keeps, as (begin, end), possibly empty.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(SplitBehavior behavior,
                                                     const std::vector<Span>& spans) {
  std::vector<std::pair<size_t, size_t>> pieces;
  pieces.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) pieces.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) pieces.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) {
          pieces.back().first = it->begin;
        } else {
          pieces.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  return pieces;
}

// Calls `on_piece` with the matches of `pattern` in `text` and the text between them, in
// order: Isolated splitting without collecting the spans first.
absl::Status ForEachIsolated(const Regex& pattern, absl::string_view text,
                             absl::FunctionRef<absl::Status(absl::string_view)> on_piece) {
  absl::Status status;
  size_t previous = 0;
  TESSERA_RETURN_IF_ERROR(pattern.ForEachMatch(text, [&](size_t begin, size_t end) {
    if (!status.ok()) return;
    if (begin > previous) status = on_piece(text.substr(previous, begin - previous));
    if (status.ok()) status = on_piece(text.substr(begin, end - begin));
    previous = end;
  }));
  TESSERA_RETURN_IF_ERROR(status);
  if (previous < text.size()) return on_piece(text.substr(previous));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PreTokenizer> PreTokenizer::Create(std::vector<PreTokenizerStep> steps,
                                                  std::optional<ByteLevelStep> byte_level) {
  std::unique_ptr<Regex> gpt2;
  if (byte_level.has_value() && byte_level->use_regex) {
    TESSERA_ASSIGN_OR_RETURN(gpt2, Regex::Compile(kGpt2Pattern));
  }
  return PreTokenizer(std::move(steps), byte_level, std::move(gpt2));
}

absl::Status PreTokenizer::Split(absl::string_view text, bool at_start,
                                 absl::FunctionRef<void(absl::string_view)> on_piece) const {
  if (text.empty()) return absl::OkStatus();
  return SplitFrom(0, text, at_start, on_piece);
}

absl::Status PreTokenizer::SplitFrom(size_t step, absl::string_view piece, bool at_start,
                                     absl::FunctionRef<void(absl::string_view)> on_piece) const {
  if (step == steps_.size()) return ByteLevel(piece, on_piece);
  if (const auto* metaspace = std::get_if<Metaspace>(&steps_[step])) {
    return MetaspaceSplit(*metaspace, piece, at_start, [&](absl::string_view sub, bool start) {
      return SplitFrom(step + 1, sub, start, on_piece);
    });
  }
  const SplitStep& split = std::get<SplitStep>(steps_[step]);
  // A piece cut from the front of `piece` begins the input when `piece` does. (Hugging Face
  // asks whether it starts at offset 0 of the input, which a piece after text that a
  // normalizer inserted also does; no published tokenizer.json splits such text off before
  // Metaspace.)
  if (split.behavior == SplitBehavior::kIsolated) {
    // The common case (every model family's split), without the spans in between.
    return ForEachIsolated(*split.pattern, piece, [&](absl::string_view sub) {
      return SplitFrom(step + 1, sub, at_start && sub.data() == piece.data(), on_piece);
    });
  }
  std::vector<Span> spans;
  TESSERA_RETURN_IF_ERROR(FindSpans(*split.pattern, piece, split.invert, &spans));
  for (const auto& [begin, end] : ApplyBehavior(split.behavior, spans)) {
    if (end > begin) {
      TESSERA_RETURN_IF_ERROR(
          SplitFrom(step + 1, piece.substr(begin, end - begin), at_start && begin == 0, on_piece));
    }
  }
  return absl::OkStatus();
}

absl::Status PreTokenizer::ByteLevel(absl::string_view piece,
                                     absl::FunctionRef<void(absl::string_view)> on_piece) const {
  if (!byte_level_.has_value()) {
    on_piece(piece);
    return absl::OkStatus();
  }
  std::string prefixed;
  if (byte_level_->add_prefix_space && piece.front() != ' ') {
    prefixed.reserve(piece.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(piece.data(), piece.size());
    piece = prefixed;
  }
  if (gpt2_pattern_ == nullptr) {
    on_piece(piece);
    return absl::OkStatus();
  }
  return ForEachIsolated(*gpt2_pattern_, piece, [&](absl::string_view sub) {
    on_piece(sub);
    return absl::OkStatus();
  });
}

}  // namespace tessera::tokenizer
