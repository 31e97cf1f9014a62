#include "runtime/tokenizer/decoder.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

constexpr char kReplacementCharacter[] = "\xef\xbf\xbd";  // U+FFFD

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Whether `token` is a byte token as Hugging Face's ByteFallback reads them: six bytes,
// "<0x", two characters that Rust's u8::from_str_radix(.., 16) takes (which allows "+F"), ">".
bool IsByteToken(absl::string_view token, uint8_t& byte) {
  if (token.size() != 6 || !absl::StartsWith(token, "<0x") || token.back() != '>') return false;
  const int high = token[3] == '+' ? 0 : HexDigit(token[3]);
  const int low = HexDigit(token[4]);
  if (high < 0 || low < 0) return false;
  byte = static_cast<uint8_t>(high * 16 + low);
  return true;
}

// `token` without up to `count` leading copies of the character `content`.
absl::string_view StripStart(absl::string_view token, absl::string_view content, size_t count) {
  for (size_t i = 0; i < count && absl::StartsWith(token, content); ++i) {
    token.remove_prefix(content.size());
  }
  return token;
}

// Whether bytes may still follow `run` to make it valid UTF-8: it is, except perhaps for an
// unfinished character at its end.
bool CanBecomeValid(const std::string& run) {
  std::string ignored;
  const size_t consumed = AppendUtf8Lossy(run, /*final=*/false, &ignored);
  return !FindInvalidUtf8(absl::string_view(run).substr(0, consumed)).has_value();
}

// The length of the longest end of `text` that is the start of `pattern`, shorter than it.
size_t PartialMatchAtEnd(absl::string_view text, absl::string_view pattern) {
  for (size_t length = std::min(text.size(), pattern.size() - 1); length > 0; --length) {
    if (absl::EndsWith(text, pattern.substr(0, length))) return length;
  }
  return 0;
}

}  // namespace

Decoder::Decoder(std::vector<DecoderStep> steps, absl::Span<const std::string> id_tokens) {
  bool joined = false;
  for (DecoderStep& step : steps) {
    const bool join =
        step.kind == DecoderStep::Kind::kFuse || step.kind == DecoderStep::Kind::kByteLevel;
    if (joined) {
      text_steps_.push_back(std::move(step));
    } else if (join) {
      joined = true;
      byte_level_join_ = step.kind == DecoderStep::Kind::kByteLevel;
    } else {
      token_steps_.push_back(std::move(step));
    }
  }
  while (first_dynamic_ < token_steps_.size() &&
         (token_steps_[first_dynamic_].kind == DecoderStep::Kind::kReplace ||
          token_steps_[first_dynamic_].kind == DecoderStep::Kind::kStrip)) {
    ++first_dynamic_;
  }
  prepared_as_bytes_ = byte_level_join_ && first_dynamic_ == token_steps_.size();
  prepared_.reserve(id_tokens.size());
  for (const std::string& token : id_tokens) {
    std::string prepared = token;
    for (size_t i = 0; i < first_dynamic_; ++i) {
      const DecoderStep& step = token_steps_[i];
      if (step.kind == DecoderStep::Kind::kReplace) {
        prepared = absl::StrReplaceAll(prepared, {{step.pattern, step.content}});
      } else {
        prepared = std::string(StripStart(prepared, step.content, step.start));
      }
    }
    if (prepared_as_bytes_) {
      // A token with a character outside the alphabet is taken as it is.
      std::optional<std::string> bytes = ByteLevelToBytes(prepared);
      if (bytes.has_value()) prepared = std::move(*bytes);
    }
    prepared_.push_back(std::move(prepared));
  }
}

Decoder::Stream::Stream(const Decoder& decoder)
    : decoder_(&decoder),
      token_states_(decoder.token_steps_.size()),
      text_states_(decoder.text_steps_.size()) {}

void Decoder::Stream::Add(int32_t id, std::string* out) {
  const std::string& token = decoder_->prepared_[static_cast<size_t>(id)];
  if (decoder_->prepared_as_bytes_) {
    Join(token, out);
  } else {
    Token(decoder_->first_dynamic_, token, out);
  }
}

void Decoder::Stream::Token(size_t step, std::string token, std::string* out) {
  if (step == decoder_->token_steps_.size()) {
    if (decoder_->byte_level_join_) {
      // A token with a character outside the alphabet is taken as it is.
      std::optional<std::string> bytes = ByteLevelToBytes(token);
      if (bytes.has_value()) token = std::move(*bytes);
    }
    Join(std::move(token), out);
    return;
  }
  const DecoderStep& s = decoder_->token_steps_[step];
  StepState& state = token_states_[step];
  switch (s.kind) {
    case DecoderStep::Kind::kReplace:
      Token(step + 1, absl::StrReplaceAll(token, {{s.pattern, s.content}}), out);
      return;
    case DecoderStep::Kind::kStrip:
      Token(step + 1, std::string(StripStart(token, s.content, s.start)), out);
      return;
    case DecoderStep::Kind::kMetaspace: {
      std::string decoded;
      MetaspaceDecode(s.metaspace, token, state.seen++ == 0, &decoded);
      Token(step + 1, std::move(decoded), out);
      return;
    }
    case DecoderStep::Kind::kByteFallback: {
      uint8_t byte = 0;
      if (!IsByteToken(token, byte)) {
        EndByteRun(step, out);
        Token(step + 1, std::move(token), out);
        return;
      }
      if (state.done) {
        Token(step + 1, kReplacementCharacter, out);
        return;
      }
      state.held.push_back(static_cast<char>(byte));
      if (!CanBecomeValid(state.held)) {
        // The whole run will be one U+FFFD per byte: say so now.
        state.done = true;
        const size_t bytes = state.held.size();
        state.held.clear();
        for (size_t i = 0; i < bytes; ++i) Token(step + 1, kReplacementCharacter, out);
      }
      return;
    }
    case DecoderStep::Kind::kFuse:
    case DecoderStep::Kind::kByteLevel:
      return;  // the join, never among the token steps
  }
}

void Decoder::Stream::EndByteRun(size_t step, std::string* out) {
  StepState& state = token_states_[step];
  state.done = false;
  if (state.held.empty()) return;
  std::string run = std::move(state.held);
  state.held.clear();
  if (!FindInvalidUtf8(run).has_value()) {
    Token(step + 1, std::move(run), out);
    return;
  }
  for (size_t i = 0; i < run.size(); ++i) Token(step + 1, kReplacementCharacter, out);
}

void Decoder::Stream::Join(std::string token, std::string* out) {
  if (!decoder_->byte_level_join_) {
    Text(0, std::move(token), out);
    return;
  }
  pending_bytes_.append(token);
  std::string chunk;
  const size_t consumed = AppendUtf8Lossy(pending_bytes_, /*final=*/false, &chunk);
  pending_bytes_.erase(0, consumed);
  Text(0, std::move(chunk), out);
}

void Decoder::Stream::Text(size_t step, std::string chunk, std::string* out) {
  if (chunk.empty()) return;
  if (step == decoder_->text_steps_.size()) {
    out->append(chunk);
    return;
  }
  const DecoderStep& s = decoder_->text_steps_[step];
  StepState& state = text_states_[step];
  switch (s.kind) {
    case DecoderStep::Kind::kMetaspace: {
      std::string decoded;
      MetaspaceDecode(s.metaspace, chunk, /*first_token=*/true, &decoded);
      Text(step + 1, std::move(decoded), out);
      return;
    }
    case DecoderStep::Kind::kStrip: {
      absl::string_view rest = chunk;
      while (!state.done && state.seen < s.start && absl::StartsWith(rest, s.content)) {
        rest.remove_prefix(s.content.size());
        ++state.seen;
      }
      if (!rest.empty() || state.seen == s.start) state.done = true;
      Text(step + 1, std::string(rest), out);
      return;
    }
    case DecoderStep::Kind::kReplace: {
      // A match may begin in the text held back last time and end in this chunk.
      const std::string text = state.held + chunk;
      std::string replaced;
      size_t done = 0;
      for (size_t at = text.find(s.pattern); at != std::string::npos;
           at = text.find(s.pattern, done)) {
        replaced.append(text, done, at - done);
        replaced.append(s.content);
        done = at + s.pattern.size();
      }
      const absl::string_view rest = absl::string_view(text).substr(done);
      const size_t held = PartialMatchAtEnd(rest, s.pattern);
      replaced.append(rest.data(), rest.size() - held);
      state.held = std::string(rest.substr(rest.size() - held));
      Text(step + 1, std::move(replaced), out);
      return;
    }
    case DecoderStep::Kind::kFuse:
      Text(step + 1, std::move(chunk), out);
      return;
    case DecoderStep::Kind::kByteLevel:
    case DecoderStep::Kind::kByteFallback:
      return;  // never after a Fuse (the loader refuses them)
  }
}

void Decoder::Stream::Flush(std::string* out) {
  for (size_t step = decoder_->first_dynamic_; step < decoder_->token_steps_.size(); ++step) {
    if (decoder_->token_steps_[step].kind == DecoderStep::Kind::kByteFallback) {
      EndByteRun(step, out);
    }
  }
  if (!pending_bytes_.empty()) {
    std::string chunk;
    AppendUtf8Lossy(pending_bytes_, /*final=*/true, &chunk);
    pending_bytes_.clear();
    Text(0, std::move(chunk), out);
  }
  for (size_t step = 0; step < decoder_->text_steps_.size(); ++step) {
    std::string held = std::move(text_states_[step].held);
    text_states_[step].held.clear();
    Text(step + 1, std::move(held), out);
  }
  token_states_.assign(token_states_.size(), StepState());
  text_states_.assign(text_states_.size(), StepState());
}

size_t Decoder::Stream::pending_bytes() const {
  size_t bytes = pending_bytes_.size();
  for (const StepState& state : token_states_) bytes += state.held.size();
  for (const StepState& state : text_states_) bytes += state.held.size();
  return bytes;
}

}  // namespace tessera::tokenizer
