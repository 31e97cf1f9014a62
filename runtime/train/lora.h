#ifndef TESSERA_RUNTIME_TRAIN_LORA_H_
#define TESSERA_RUNTIME_TRAIN_LORA_H_

// LoRA adapters (Hu et al.) in the form the `peft` package reads and writes: for a target
// Linear y = x W^T of W (N, K), y += (alpha / r) * (x A^T) B^T with A (r, K) and B (N, r),
// named "base_model.model.<module>.lora_A.weight" / ".lora_B.weight" where <module> is the
// Linear's name in the checkpoint ("model.layers.0.self_attn.q_proj").
//
// Tensor-parallel like their layer: on a column-parallel layer (output features split) B is
// split as W's rows and A is whole on every rank; on a row-parallel layer (input features
// split) A is split as W's columns and B is whole. The whole factor's gradient comes out of
// each rank's backward as a partial sum, which the trainer sums over the group.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/weight_plan.h"

namespace tessera::train {

struct LoraOptions {
  int r = 0;  // 0: no adapters (a full fine-tune)
  double alpha = 16;
  // Module names of the Linears that get adapters (the last part of their checkpoint name).
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj"};
  uint64_t seed = 1;  // A's initialization

  bool enabled() const { return r > 0; }
  float scale() const { return static_cast<float>(alpha / r); }
};

// "q_proj,v_proj" -> the list; INVALID_ARGUMENT naming an unknown module (the known ones:
// q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, and the fused qkv_proj and
// gate_up_proj of checkpoints that store them so).
absl::StatusOr<std::vector<std::string>> ParseLoraTargets(absl::string_view text);

// PEFT's names of the two factors of the Linear whose weight is `weight_name`
// ("model.layers.0.self_attn.q_proj.weight").
std::string LoraAName(absl::string_view weight_name);
std::string LoraBName(absl::string_view weight_name);

// The plans of A and B for a target Linear planned as `weight` with rank `r`.
model::PlannedTensor PlanLoraA(const model::PlannedTensor& weight, int r);
model::PlannedTensor PlanLoraB(const model::PlannedTensor& weight, int r);

// Whether `weight_name` is a Linear weight that `options` targets.
bool IsLoraTarget(const LoraOptions& options, absl::string_view weight_name);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_LORA_H_
