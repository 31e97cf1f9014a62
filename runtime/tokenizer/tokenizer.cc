#include "runtime/tokenizer/tokenizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/status_macros.h"
#include "runtime/tokenizer/utf8.h"

namespace tessera::tokenizer {

Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::EncodeNormalized(absl::string_view text, bool at_start,
                                         std::vector<int32_t>* ids) const {
  return pre_tokenizer_->Split(text, at_start,
                               [&](absl::string_view piece) { model_->Encode(piece, ids); });
}

absl::Status Tokenizer::EncodeText(absl::string_view text, std::vector<int32_t>* ids) const {
  std::vector<TextSegment> raw_segments;
  if (raw_matcher_.has_value()) {
    TESSERA_RETURN_IF_ERROR(raw_matcher_->Split(text, &raw_segments));
  } else {
    raw_segments.push_back({0, text.size(), -1});
  }
  std::string normalized;
  std::vector<TextSegment> segments;
  for (const TextSegment& raw : raw_segments) {
    if (raw.id >= 0) {
      ids->push_back(raw.id);
      continue;
    }
    if (raw.end == raw.begin) continue;
    // Hugging Face normalizes each piece between added tokens on its own (a Prepend prepends
    // to each).
    absl::string_view piece = text.substr(raw.begin, raw.end - raw.begin);
    if (normalizer_.has_value()) {
      TESSERA_RETURN_IF_ERROR(normalizer_->Normalize(piece, &normalized));
      piece = normalized;
    }
    const bool at_start = raw.begin == 0;
    if (!normalized_matcher_.has_value()) {
      TESSERA_RETURN_IF_ERROR(EncodeNormalized(piece, at_start, ids));
      continue;
    }
    segments.clear();
    TESSERA_RETURN_IF_ERROR(normalized_matcher_->Split(piece, &segments));
    for (const TextSegment& s : segments) {
      if (s.id >= 0) {
        ids->push_back(s.id);
      } else if (s.end > s.begin) {
        TESSERA_RETURN_IF_ERROR(EncodeNormalized(piece.substr(s.begin, s.end - s.begin),
                                                 at_start && s.begin == 0, ids));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       bool add_special_tokens) const {
  if (std::optional<size_t> bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text is not valid UTF-8: byte 0x%02x at offset %d does not start a well-formed "
        "character",
        static_cast<unsigned char>(text[*bad]), *bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  TESSERA_RETURN_IF_ERROR(EncodeText(text, &ids));
  if (!add_special_tokens || !has_template_) return ids;
  std::vector<int32_t> out;
  out.reserve(ids.size() + template_.size() * 2);
  for (const std::vector<int32_t>& piece : template_) {
    if (piece.empty()) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), piece.begin(), piece.end());
    }
  }
  return out;
}

absl::StatusOr<bool> Tokenizer::Decodes(int32_t id, bool skip_special_tokens) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("token id %d is outside the vocabulary [0, %d)", id, vocab_size()));
  }
  const uint8_t flags = id_flags_[id];
  return (flags & kAssigned) && !(skip_special_tokens && (flags & kSpecial));
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  Decoder::Stream stream(*decoder_);
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    absl::StatusOr<bool> decodes = Decodes(ids[i], skip_special_tokens);
    if (!decodes.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("ids[", i, "]: ", decodes.status().message()));
    }
    if (*decodes) stream.Add(ids[i], &text);
  }
  stream.Flush(&text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (auto it = model_ids_.find(token); it != model_ids_.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !(id_flags_[id] & kAssigned)) return std::nullopt;
  return id_tokens_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && (id_flags_[id] & kSpecial);
}

absl::StatusOr<std::string> StreamingDecoder::Add(int32_t id) {
  TESSERA_ASSIGN_OR_RETURN(const bool decodes, tokenizer_->Decodes(id, skip_special_tokens_));
  std::string text;
  if (decodes) stream_.Add(id, &text);
  return text;
}

std::string StreamingDecoder::Flush() {
  std::string text;
  stream_.Flush(&text);
  return text;
}

}  // namespace tessera::tokenizer
