// Fuzzes tokenizer.json loading (Tokenizer::FromJson) and, with whatever loads, Encode and
// Decode. Input: the tokenizer.json text, then a NUL byte, then text to encode (a fixed
// sentence when there is no NUL). The ids are decoded back, and decoded again one at a time
// through StreamingDecoder, whose output must equal Decode's (tokenizer.h); ids taken from the
// input's bytes, in range or not, are decoded too.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/utf8.h"

namespace {

using tessera::tokenizer::StreamingDecoder;
using tessera::tokenizer::Tokenizer;

// Decode(ids) and the streamed decode of the same ids must agree, also on failure.
void CheckDecoders(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip) {
  absl::StatusOr<std::string> whole = tokenizer.Decode(ids, skip);
  StreamingDecoder stream(tokenizer, skip);
  std::string streamed;
  bool refused = false;
  for (int32_t id : ids) {
    absl::StatusOr<std::string> piece = stream.Add(id);
    if (!piece.ok()) {
      refused = true;
      continue;
    }
    streamed += *piece;
  }
  streamed += stream.Flush();
  if (whole.ok() == refused || (whole.ok() && *whole != streamed)) {
    std::fprintf(stderr, "Decode and StreamingDecoder disagree over %zu ids\n", ids.size());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const absl::string_view json = input.substr(0, split);
  const absl::string_view text = split == absl::string_view::npos
                                     ? absl::string_view("Hello, world! 12345 \xe4\xb8\xad")
                                     : input.substr(split + 1);

  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::FromJson(json);
  if (!loaded.ok()) return 0;
  const Tokenizer& tokenizer = **loaded;

  for (bool special : {false, true}) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, special);
    if (!ids.ok()) continue;
    for (int32_t id : *ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) {
        std::fprintf(stderr, "Encode gave id %d outside [0, %d)\n", id, tokenizer.vocab_size());
        std::abort();
      }
    }
    CheckDecoders(tokenizer, *ids, /*skip=*/false);
    CheckDecoders(tokenizer, *ids, /*skip=*/true);
  }
  // Text that may not be valid UTF-8 is what a client's bytes look like after the
  // replacement the serving API applies.
  (void)tokenizer.Encode(tessera::tokenizer::ReplaceInvalidUtf8(text), true);

  // The text's bytes as ids, two at a time, reaching just past the vocabulary.
  std::vector<int32_t> ids;
  const int64_t span = int64_t{tokenizer.vocab_size()} + 2;
  for (size_t i = 0; i + 1 < text.size() && ids.size() < 256; i += 2) {
    uint16_t raw;
    std::memcpy(&raw, text.data() + i, sizeof(raw));
    ids.push_back(static_cast<int32_t>(raw % span - 1));
  }
  CheckDecoders(tokenizer, ids, /*skip=*/false);
  CheckDecoders(tokenizer, ids, /*skip=*/true);
  for (int32_t id : ids) {
    if (std::optional<std::string> token = tokenizer.IdToToken(id)) {
      if (tokenizer.TokenToId(*token) == std::nullopt) std::abort();
    }
  }
  return 0;
}
