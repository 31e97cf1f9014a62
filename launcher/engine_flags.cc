#include "launcher/engine_flags.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "runtime/model/resident_memory.h"

namespace tessera::launcher {

void AddEngineFlags(FlagSet& flags, engine::EngineOptions* options) {
  flags.Int("block-size", &options->block_size, "tokens per KV-cache block");
  flags.Bytes("kv-cache-memory", &options->kv_cache_bytes,
              "KV-cache memory per rank (K, M, G suffixes); sets the number of blocks");
  flags.Int("max-running", &options->max_running, "sequences batched in one step at most");
  flags.Int("max-step-tokens", &options->max_step_tokens,
            "tokens through the model per step at most (long prompts go in chunks)");
  flags.Bool("prefix-cache", &options->prefix_caching,
             "reuse the KV blocks of shared prompt prefixes (--no-prefix-cache to turn off)");
  flags.Int("max-queued", &options->max_queued, "waiting requests before new ones are refused");
}

void AddAdapterFlags(FlagSet& flags, std::string* list, engine::EngineOptions* options) {
  flags.String("adapters", list,
               "LoRA adapters (PEFT directories) served beside the model, name=DIR[,name=DIR...]; "
               "a request names one in its \"adapter\" field (more can be loaded while serving)");
  flags.Int("max-adapters", &options->max_adapters,
            "adapters held in memory at once (0: no limit); past it the least recently used "
            "one is unloaded, and read again when a request names it");
}

void AddTrainScheduleFlags(FlagSet& flags, engine::EngineOptions* options) {
  flags.Double("train-share", &options->interleaved_share,
               "with a fine-tune inside the group: the share of the group's busy time it takes "
               "while requests are served, spread over every serving step (all of the time "
               "while none are)");
  flags.Duration("train-target-itl", &options->interleaved_target_step,
                 "with a fine-tune inside the group: instead of --train-share, the inter-token "
                 "latency to keep: after each serving step the fine-tune takes what the step "
                 "left of it (none when the step took it all); unset: --train-share");
}

absl::Status CheckTrainScheduleFlags(const engine::EngineOptions& options) {
  if (!(options.interleaved_share > 0 && options.interleaved_share <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--train-share: must be in (0, 1], not ", options.interleaved_share));
  }
  if (options.interleaved_target_step < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--train-target-itl: must not be negative, not ",
                     absl::FormatDuration(options.interleaved_target_step)));
  }
  return absl::OkStatus();
}

std::vector<std::string> TrainScheduleArguments(const engine::EngineOptions& options) {
  std::vector<std::string> arguments = {"--train-share", absl::StrCat(options.interleaved_share)};
  if (options.interleaved_target_step > absl::ZeroDuration()) {
    arguments.insert(arguments.end(),
                     {"--train-target-itl", absl::FormatDuration(options.interleaved_target_step)});
  }
  return arguments;
}

absl::StatusOr<std::vector<engine::AdapterSpec>> ParseAdapterList(absl::string_view text) {
  std::vector<engine::AdapterSpec> adapters;
  if (text.empty()) return adapters;
  for (absl::string_view entry : absl::StrSplit(text, ',')) {
    std::pair<absl::string_view, absl::string_view> parts =
        absl::StrSplit(entry, absl::MaxSplits('=', 1));
    if (parts.first.empty() || parts.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--adapters: \"", entry, "\" is not name=DIR (a PEFT adapter directory)"));
    }
    adapters.push_back({std::string(parts.first), std::string(parts.second)});
  }
  return adapters;
}

engine::EngineOptions EngineOptionsFor(const ModelJob& job, engine::EngineOptions options) {
  if (job.device_tp != nullptr && options.num_blocks == 0) {
    options.kv_cache_bytes = job.device_kv_cache_bytes;
  }
  return options;
}

std::string DescribeKvCache(const engine::Engine& engine, const model::Transformer& model) {
  const model::ModelConfig& config = model.config();
  const int64_t per_token = engine.kv_bytes_per_token();
  const bool int8 = model.kv_cache_dtype() == DType::kI8;
  return absl::StrFormat(
      "KV cache: %d blocks of %d tokens = %d tokens fit; %s per rank on %s, %d bytes per token "
      "on this rank (2 x %d layers x %d KV heads x (%d head dim x %d bytes of %s%s))",
      engine.num_blocks(), engine.block_size(), engine.capacity_tokens(),
      model::FormatBytes(static_cast<uint64_t>(per_token * engine.capacity_tokens())),
      model.device().ToString(), per_token, config.num_hidden_layers,
      model.plan().attention.num_kv_heads, config.head_dim,
      static_cast<int>(StorageBytes(model.kv_cache_dtype(), 1)), NameOf(model.kv_cache_dtype()),
      int8 ? " + a 4-byte f32 scale" : "");
}

}  // namespace tessera::launcher
