#ifndef TESSERA_RUNTIME_TRAIN_LORA_H_
#define TESSERA_RUNTIME_TRAIN_LORA_H_

// LoRA fine-tuning options. The adapters are those of the `peft` package: for a target Linear
// y = x W^T of W (N, K), y += (alpha / r) * (x A^T) B^T with A (r, K) and B (N, r); their
// names and tensor-parallel split are runtime/model/lora_adapter.h's, shared with serving.
// The whole factor beside a split layer gets its gradient out of each rank's backward as a
// partial sum, which the trainer sums over the group.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/lora_adapter.h"
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

// PEFT's naming and the tensor-parallel plan of the factors: one definition, shared with the
// serving model (runtime/model/lora_adapter.h).
using model::LoraAName;
using model::LoraBName;
using model::PlanLoraA;
using model::PlanLoraB;

// Whether `weight_name` is a Linear weight that `options` targets.
bool IsLoraTarget(const LoraOptions& options, absl::string_view weight_name);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_LORA_H_
