#ifndef TESSERA_RUNTIME_MODEL_MEMORY_PLAN_H_
#define TESSERA_RUNTIME_MODEL_MEMORY_PLAN_H_

// What a model takes in memory on each tensor-parallel rank, before loading it: the weights
// (in the dtype or quantized format asked for, packed as the CPU kernels pack them), the KV
// cache per token, the activations of one step at the engine's token budget, what is left
// for the KV cache, and how many sequences of a given length fit (`tessera plan`).
//
// The runtime sizes its KV cache with the functions below (KvBytesPerToken, KvCacheBlocks,
// KvCacheBudget), so the plan and what a worker reports at start agree; the tests check the
// weight bytes and the cache's blocks against a loaded model and engine.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/dtype.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_plan.h"
#include "runtime/model/weight_quantization.h"

namespace tessera::model {

// Bytes of KV cache one token takes on a rank holding `kv_heads` heads of every layer:
// 2 x layers x kv_heads x head_dim x the dtype's bytes, and for i8 a 4-byte scale per head.
int64_t KvBytesPerToken(const ModelConfig& config, int kv_heads, DType kv_dtype);

// The blocks of `block_size` tokens that `budget_bytes` hold at `bytes_per_token`.
int64_t KvCacheBlocks(int64_t budget_bytes, int64_t bytes_per_token, int block_size);

// The KV cache's budget on a device: `fraction` (--kv-cache-memory-fraction) of the memory
// still free once the weights are loaded; the rest is left to the activations of the steps
// (a plan says when they need more). Negative when nothing is free.
int64_t KvCacheBudget(int64_t free_after_weights, double fraction);

// The memory a CUDA context and cuBLAS's workspace take on a device before any tensor, which
// a plan for a GPU sets aside (a worker measures the free memory instead).
inline constexpr int64_t kGpuRuntimeReserveBytes = int64_t{768} << 20;

struct MemoryPlanOptions {
  int tp = 1;
  bool gpu = false;            // the CUDA layout: weights as stored, no packed copy of a tied head
  std::optional<DType> dtype;  // --dtype; nullopt: as stored (f16 widened to f32 on the CPU)
  std::optional<WeightQuantization> quantize;
  std::optional<DType> kv_cache_dtype;  // nullopt: the weights' bf16, else f32
  int64_t max_context = 0;              // 0: the model's max_position_embeddings
  int block_size = 16;
  int max_step_tokens = 512;  // the engine's token budget of a step
  int max_running = 64;       // sequences a step may hold (rows of logits)
  // The memory of one device (GPU, or the CPU's share of host memory); 0 with gpu = false:
  // the KV cache gets `kv_cache_bytes` (as --kv-cache-memory gives a CPU worker).
  int64_t device_memory = 0;
  double kv_cache_memory_fraction = 0.9;
  int64_t kv_cache_bytes = int64_t{1} << 30;
};

struct RankMemory {
  int tp_rank = 0;
  int64_t weight_bytes = 0;
  int64_t kv_bytes_per_token = 0;
  int64_t activation_bytes = 0;  // one step at max_step_tokens, and its logits
  int64_t kv_cache_bytes = 0;    // the KV cache's budget; negative: the weights do not fit
  int64_t kv_tokens = 0;         // whole blocks of it
  int64_t sequences = 0;         // of max_context tokens at once
  // With a device memory: the activations fit in what the KV cache's fraction leaves.
  bool activations_fit = true;
};

struct MemoryPlan {
  DType weight_dtype = DType::kF32;  // of the weights that are not quantized
  DType kv_cache_dtype = DType::kF32;
  int64_t max_context = 0;
  std::vector<RankMemory> ranks;
  // Every rank holds at least one sequence of max_context tokens, and its activations.
  bool fits() const;
};

// The plan of `checkpoint`'s model (config, and the dtypes stored) under `options`.
// INVALID_ARGUMENT when the model cannot run so (a TP degree that does not divide it, a
// quantization group the split would cut).
absl::StatusOr<MemoryPlan> PlanMemory(const ModelConfig& config, const Checkpoint& checkpoint,
                                      const MemoryPlanOptions& options);

// The plan as `tessera plan` prints it: a line per rank, then whether it fits and, when it
// does not, what would (more TP, int8, int4, an int8 KV cache), each checked by planning it.
std::string DescribeMemoryPlan(const ModelConfig& config, const Checkpoint& checkpoint,
                               const MemoryPlanOptions& options, const MemoryPlan& plan);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_MEMORY_PLAN_H_
