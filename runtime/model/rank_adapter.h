#ifndef TESSERA_RUNTIME_MODEL_RANK_ADAPTER_H_
#define TESSERA_RUNTIME_MODEL_RANK_ADAPTER_H_

// One tensor-parallel rank's part of a PEFT LoRA adapter (lora_adapter.h), as the serving
// forward adds it beside the base projections (adapter_forward.h). Each rank reads only its
// slices of the factors: B's rows of a column-parallel projection, A's columns of a
// row-parallel one.

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/tensor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_plan.h"

namespace tessera::model {

// The projections of a layer that an adapter can target, by checkpoint module.
enum class LoraModule { kQ, kK, kV, kO, kGate, kUp, kGateUp, kDown };
inline constexpr int kLoraModuleCount = 8;

// One Linear's adapter on this rank: out[:, column + j] += scale * ((x A^T) B^T)[:, j] for
// j < outputs, where out is the serving forward's output of that projection (gate and up
// share the stacked [gate; up] output: up's column is this rank's intermediate size).
struct RankLoraFactors {
  // f32, or bf16 beside a bf16 base (as the base's weights, the factors' reads dominate a
  // step with many adapters); the products accumulate in f32 either way.
  Tensor a;  // A (r, K of this rank), packed for kernels::Linear: (ceil(r/16), K, 16)
  Tensor b;  // B (outputs, r), packed: (ceil(outputs/16), r, 16)
  int64_t r = 0;
  int64_t outputs = 0;  // N of this rank
  int64_t column = 0;
  float scale = 0;
  bool defined() const { return a.defined(); }
};

// An adapter as one rank holds it: for every layer, the factors of each module it targets
// (undefined for the others).
struct RankAdapter {
  std::string dir;
  std::vector<std::array<RankLoraFactors, kLoraModuleCount>> layers;
  uint64_t bytes = 0;  // of the factors this rank holds
};

// Reads this rank's part of the PEFT adapter directory `dir` (adapter_config.json and
// adapter_model.safetensors) for the model `config` planned as `plan`, its factors held as
// `factor_dtype` (f32 or bf16). INVALID_ARGUMENT naming
// the file and the field or tensor for: what ReadLoraAdapterConfig refuses; a target module
// this checkpoint does not have (lm_head, embed_tokens, a gate_proj of a checkpoint that fuses
// gate_up_proj); a tensor that is not a LoRA factor of one of its layer projections (DoRA's
// magnitudes, embedding adapters, modules_to_save copies); a factor without its partner; a
// factor whose shape disagrees with the model or with the r adapter_config.json gives its
// module; adapters on a fused qkv_proj (not supported yet); and a file with no factors at all.
// NOT_FOUND when a file is absent.
absl::StatusOr<RankAdapter> LoadRankAdapter(const std::string& dir, const ModelConfig& config,
                                            const WeightPlan& plan,
                                            DType factor_dtype = DType::kF32);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_RANK_ADAPTER_H_
