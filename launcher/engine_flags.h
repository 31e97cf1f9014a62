#ifndef TESSERA_LAUNCHER_ENGINE_FLAGS_H_
#define TESSERA_LAUNCHER_ENGINE_FLAGS_H_

// The serving engine's flags, shared by every subcommand that runs an engine.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "runtime/engine/engine.h"

namespace tessera::launcher {

// Declares --block-size, --kv-cache-memory, --max-running, --max-step-tokens,
// --prefix-cache and --max-queued, writing into `options` (whose values are the defaults:
// set them first).
void AddEngineFlags(FlagSet& flags, engine::EngineOptions* options);

// Declares --adapters (into `*list`, for ParseAdapterList) and --max-adapters (into
// options->max_adapters).
void AddAdapterFlags(FlagSet& flags, std::string* list, engine::EngineOptions* options);

// Declares --train-share (into options->interleaved_share) and --train-target-itl (into
// options->interleaved_target_step): how a fine-tune inside a serving group shares the
// group's time with serving (engine/interleaved_budget.h).
void AddTrainScheduleFlags(FlagSet& flags, engine::EngineOptions* options);
// INVALID_ARGUMENT naming the flag: a share outside (0, 1], a negative target.
absl::Status CheckTrainScheduleFlags(const engine::EngineOptions& options);
// Those two flags with `options`' values, for a worker's command line.
std::vector<std::string> TrainScheduleArguments(const engine::EngineOptions& options);

// The value of --adapters, "name=DIR[,name=DIR...]", as the engine's adapters in that order;
// INVALID_ARGUMENT naming the entry that is not name=DIR (an empty name or directory).
// Names must be distinct, which Engine::Create checks.
absl::StatusOr<std::vector<engine::AdapterSpec>> ParseAdapterList(absl::string_view text);

// `options` with the KV cache sized for the job's device: on a GPU (--device cuda) it takes
// job.device_kv_cache_bytes (--kv-cache-memory-fraction of the memory the weights left free)
// instead of --kv-cache-memory. An explicit block count (num_blocks > 0) stays as it is.
engine::EngineOptions EngineOptionsFor(const ModelJob& job, engine::EngineOptions options);

// "KV cache: 4096 blocks of 16 tokens = 65536 tokens, 24.0 KiB per token on this rank
// (2 x 24 layers x 2 KV heads x 64 x 4 bytes)" for the start-up report, naming the device
// the cache is on.
std::string DescribeKvCache(const engine::Engine& engine, const model::Transformer& model);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_ENGINE_FLAGS_H_
