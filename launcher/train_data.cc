#include "launcher/train_data.h"

#include <cstdio>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/chat/chat_format.h"
#include "runtime/core/status_macros.h"
#include "runtime/train/sharded_data.h"

namespace tessera::launcher {
namespace {

// The id the tokenizer puts in front of a text when asked for special tokens, if any: that is
// how the model was trained to see a document start (Llama's <s>; none for Qwen2).
std::optional<int32_t> LeadingSpecialToken(const tokenizer::Tokenizer& tok) {
  absl::StatusOr<std::vector<int32_t>> with = tok.Encode("a", true);
  absl::StatusOr<std::vector<int32_t>> without = tok.Encode("a", false);
  if (!with.ok() || !without.ok() || with->size() != without->size() + 1) return std::nullopt;
  return with->front();
}

}  // namespace

absl::StatusOr<train::ExampleOptions> ExampleOptionsFor(
    const std::string& on_bad_line, const model::ModelConfig& model_config,
    const tokenizer::Tokenizer& tok, const tokenizer::TokenizerConfig& tokenizer_config) {
  train::ExampleOptions options;
  options.vocab_size = static_cast<int32_t>(model_config.vocab_size);
  options.bos_token_id = LeadingSpecialToken(tok);
  if (!model_config.eos_token_ids.empty()) {
    options.eos_token_id = static_cast<int32_t>(model_config.eos_token_ids.front());
  }
  if (on_bad_line == "skip") {
    options.on_bad_line = train::BadLinePolicy::kSkip;
  } else if (on_bad_line != "stop") {
    return absl::InvalidArgumentError(
        absl::StrCat("--on-bad-line: '", on_bad_line, "' is not stop or skip"));
  }
  options.chat_format =
      std::make_shared<const chat::LoadedChatFormat>(chat::LoadChatFormat(tokenizer_config));
  return options;
}

absl::StatusOr<train::RowStream> ReadTrainRows(const std::string& path,
                                               train::BatchOptions batching,
                                               const train::ExampleOptions& options,
                                               const tokenizer::Tokenizer& tok,
                                               comm::Communicator& world, const std::string& who) {
  batching.pad_token_id = options.eos_token_id.value_or(0);
  train::ReadReport read;
  absl::StatusOr<train::RowStream> stream =
      train::ReadRowStream(path, tok, options, batching, world, &read);
  if (!who.empty()) {
    for (const std::string& warning : read.warnings) {
      std::fprintf(stderr, "%s: %s\n", who.c_str(), warning.c_str());
    }
  }
  TESSERA_RETURN_IF_ERROR(stream.status());
  if (!who.empty()) {
    std::fprintf(stderr,
                 "%s: %s: %lld examples (%lld lines, %lld skipped, %lld truncated to "
                 "--seq-len %d) in %lld rows, %lld target tokens an epoch\n",
                 who.c_str(), path.c_str(), static_cast<long long>(stream->example_count()),
                 static_cast<long long>(read.lines), static_cast<long long>(read.skipped),
                 static_cast<long long>(stream->truncated_examples()), batching.seq_len,
                 static_cast<long long>(stream->rows_per_epoch()),
                 static_cast<long long>(stream->targets_per_epoch()));
  }
  return stream;
}

}  // namespace tessera::launcher
