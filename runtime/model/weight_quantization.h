#ifndef TESSERA_RUNTIME_MODEL_WEIGHT_QUANTIZATION_H_
#define TESSERA_RUNTIME_MODEL_WEIGHT_QUANTIZATION_H_

// Weight-only quantization of a model's projections at load (`--quantize int8|int4|stored`), each
// rank quantizing only its own slice (kernels/cpu/quantized_linear.h has the formats):
//   int8  symmetric, one scale per output row (default) or per group of 32 or 128 inputs;
//   int4  scale and offset per group of 32 (default) or 128 inputs.
//   stored  a checkpoint that is already quantized runs on its own codes, scales and offsets
//           where the kernels take them as stored (TensorSource::ReadStoredGroups: GGUF's
//           Q8_0, Q4_0, Q4_1 and Q4_K, GPTQ's 4-bit groups); its other projections are
//           quantized to int8 in groups of 32.
// The projections of every layer are quantized (q, k, v, o, gate/up, down); the embedding and
// the LM head keep the model's dtype, as vLLM and TensorRT-LLM do by default.
//
// Groups run along the input dimension, which the row-parallel projections (o_proj,
// down_proj) split over the tensor-parallel ranks: a group must not straddle that split, so
// each rank's inputs must be a whole number of groups.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_plan.h"

namespace tessera::model {

struct WeightQuantization {
  kernels::WeightQuant quant = kernels::WeightQuant::kInt8;
  int64_t group_size = 0;  // 0: one group a row (int8 only)
  // How the products take their activations: f32 (exact: the forward equals the one on the
  // dequantized weights to f32 rounding) or rounded to int8 per block of 32 inputs as llama.cpp
  // does (faster; see kernels/cpu/quantized_linear.h), which each rank's inputs must hold whole
  // (CheckQuantizationFits).
  kernels::ActivationQuant activations = kernels::ActivationQuant::kF32;
  // `--quantize stored`: projections the checkpoint stores in groups keep them; `quant` and
  // `group_size` (int8, 32) are for the others.
  bool stored = false;

  // "int8 (a scale per row)", "int4 (groups of 32)".
  std::string ToString() const;
  // The group size for a projection with `inputs` inputs on this rank.
  int64_t GroupFor(int64_t inputs) const { return group_size == 0 ? inputs : group_size; }
};

// --quantize, --quantize-group and --quantize-activations: `quantize` is "none" (or empty:
// nullopt), "int8", "int4" or "stored"; `group` is "" (the kind's default: a row for int8, 32
// for int4), "row" (int8 only), "32" or "128" (not for stored); `activations` "f32", "int8"
// (with a quantize other than none) or "auto": int8 for int4, f32 otherwise. Measured on the
// CPU, int4 with f32 activations is held by widening its codes (decode at about 0.7 of the
// memory bandwidth, prefill about 0.8x bf16's), with int8 ones it is not (prefill about 1.5x
// bf16's), and its perplexity stays well inside int4's own error; int8 keeps f32, whose
// products are exact, since int8 activations would add as much again to its small error.
// INVALID_ARGUMENT naming the flag and the values accepted otherwise.
absl::StatusOr<std::optional<WeightQuantization>> ParseWeightQuantization(
    absl::string_view quantize, absl::string_view group, absl::string_view activations = "f32");

// INVALID_ARGUMENT when a projection of `plan` does not hold whole groups on this rank (with
// int8 activations, whole blocks of 32 inputs):
// the message names the tensor, its inputs on each rank, the group size and the TP degree.
absl::Status CheckQuantizationFits(const ModelConfig& config, const WeightPlan& plan,
                                   const WeightQuantization& quantization);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_WEIGHT_QUANTIZATION_H_
