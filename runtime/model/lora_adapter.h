#ifndef TESSERA_RUNTIME_MODEL_LORA_ADAPTER_H_
#define TESSERA_RUNTIME_MODEL_LORA_ADAPTER_H_

// LoRA adapters (Hu et al.) in the format of the `peft` package, as the serving model and the
// trainer both read them: one definition of their tensor names, of how each tensor-parallel
// rank slices a factor, and of what adapter_config.json may ask for.
//
// For a Linear y = x W^T of W (N, K), an adapter adds scale * (x A^T) B^T with A (r, K) and
// B (N, r), stored in adapter_model.safetensors as
//   base_model.model.<module>.lora_A.weight   (r, K)
//   base_model.model.<module>.lora_B.weight   (N, r)
// where <module> is the Linear's checkpoint name without ".weight"
// ("model.layers.0.self_attn.q_proj"). scale = lora_alpha / r, or lora_alpha / sqrt(r) with
// use_rslora; rank_pattern and alpha_pattern give some modules their own r and alpha.
//
// Tensor-parallel like their layer: on a column-parallel Linear (q, k, v, gate, up; output
// rows split) B is split as W's rows and A is whole on every rank; on a row-parallel one
// (o_proj, down_proj; input columns split) A is split as W's columns and B is whole, so that
// each rank's (x_k A_k^T) B^T is a partial sum that joins the layer's own all-reduce.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/core/tensor.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_plan.h"

namespace tessera::model {

// The last part of the name of every Linear an adapter may target: q_proj k_proj v_proj
// o_proj gate_proj up_proj down_proj, and the fused qkv_proj and gate_up_proj of checkpoints
// that store them so.
absl::Span<const absl::string_view> LoraModuleNames();

// PEFT's names of the two factors of the Linear whose weight is `weight_name`
// ("model.layers.0.self_attn.q_proj.weight").
std::string LoraAName(absl::string_view weight_name);
std::string LoraBName(absl::string_view weight_name);

// The plans of A and B, of rank `r`, for a Linear planned as `weight`: their checkpoint
// shapes and this rank's slices (split as above).
PlannedTensor PlanLoraA(const PlannedTensor& weight, int r);
PlannedTensor PlanLoraB(const PlannedTensor& weight, int r);

// This rank's slice of the factor `planned` (PlanLoraA / PlanLoraB) from `file`, as `dtype`
// (f32 or bf16). INVALID_ARGUMENT naming the file and the tensor when the file lacks it or
// holds it in another shape.
absl::StatusOr<Tensor> ReadLoraFactor(const SafetensorsFile& file, const PlannedTensor& planned,
                                      DType dtype = DType::kF32);

// What adapter_config.json says about the arithmetic of a LoRA adapter.
struct LoraAdapterConfig {
  int r = 8;
  double alpha = 8;
  bool use_rslora = false;
  // PEFT's per-module overrides: a module whose name ("model.layers.0.mlp.down_proj") matches
  // the regular expression (.*\.)?(KEY) takes the first matching KEY's value.
  std::vector<std::pair<std::string, int>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // The module names of target_modules when it is a list (empty when it is a regular
  // expression or absent: then the tensors of the file say which modules have adapters).
  std::vector<std::string> target_modules;

  // r and alpha of `module` (its checkpoint name without ".weight"), as peft resolves them.
  int RankOf(absl::string_view module) const;
  double AlphaOf(absl::string_view module) const;
  // scale = alpha / r, or alpha / sqrt(r) with use_rslora, for `module` holding factors of
  // rank `r`.
  float ScaleOf(absl::string_view module, int r) const;
};

// Reads and checks `dir`/adapter_config.json. INVALID_ARGUMENT naming the file and the field
// for what this forward does not compute the way peft would: another peft_type than LORA,
// use_dora (DoRA), bias other than "none", lora_bias, fan_in_fan_out, modules_to_save,
// trainable_token_indices, layer_replication, target_parameters, and the LoRA variants
// (aLoRA, QALoRA, VeLoRA, MonteCLoRA, Arrow, KaSA, BD-LoRA); for a pattern that is not a
// regular expression; and for an r or lora_alpha that is not a positive number. NOT_FOUND
// when the file is absent.
absl::StatusOr<LoraAdapterConfig> ReadLoraAdapterConfig(const std::string& dir);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_LORA_ADAPTER_H_
