#ifndef TESSERA_RUNTIME_TRAIN_PARAMETERS_H_
#define TESSERA_RUNTIME_TRAIN_PARAMETERS_H_

// The trainable state of one tensor-parallel rank: every tensor of the weight plan as an f32
// master copy with a gradient of the same shape, named as in the Hugging Face checkpoint.
//
// Each parameter is this rank's part of a checkpoint tensor (model/weight_plan.h says which
// part), so that the optimizer, checkpoints and export work tensor by tensor without knowing
// the model. Where the forward wants two checkpoint tensors as one matrix (Llama's gate_proj
// and up_proj as [gate; up]), the two parameters are views of rows of one stacked tensor.
//
// Thread compatible.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/tensor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_loader.h"
#include "runtime/model/weight_plan.h"
#include "runtime/train/lora.h"

namespace tessera::train {

struct Parameter {
  std::string name;              // as in the checkpoint: "model.layers.0.self_attn.q_proj.weight"
  model::PlannedTensor planned;  // the checkpoint shape and this rank's slice of it
  // TP ranks (this one included) that hold the same values: 1 for a sharded part, tp for a
  // replicated tensor (norms, o_proj's bias), tp / kv_heads for a K or V projection whose KV
  // head is replicated. The gradient norm counts such a tensor once (on counted_here ranks).
  int tp_replicas = 1;
  bool counted_here = true;
  // Rows [begin, end) of a K/V projection (or of the K and V part of a fused QKV) whose KV
  // head other ranks hold too (tp > kv_heads): each rank's backward yields only its query
  // heads' share of their gradient, summed over the ranks that hold the head; the gradient
  // norm counts them on one of those ranks. Empty when nothing is replicated that way.
  int64_t kv_rows_begin = 0, kv_rows_end = 0;
  bool kv_rows_counted_here = true;
  bool weight_decay = true;  // false for norms and biases (as Hugging Face's Trainer)
  // False for the frozen base of a LoRA fine-tune: no gradient is kept (grad undefined).
  bool trainable = true;
  // Held whole on every TP rank but with a gradient that each rank's backward yields only in
  // part (a LoRA factor beside a split layer): summed over the group after the backward.
  bool tp_partial_grad = false;
  Tensor value;  // f32, planned.rank_shape
  Tensor grad;   // f32, same shape; undefined when not trainable
};

class ParameterSet {
 public:
  // Takes this rank's f32 tensors (LoadRankWeights with dtype f32) for `plan`, stacking
  // gate_proj and up_proj of each layer into one tensor when the checkpoint stores them
  // apart. Gradients start at zero. With `lora` enabled the base is frozen and every
  // targeted Linear gets its two LoRA factors (lora.h) after the base tensors: A drawn as
  // peft draws it (uniform in +-1/sqrt(in_features), the same on every rank for a given
  // seed, whatever the TP degree), B zero. INVALID_ARGUMENT when a target names a module the
  // checkpoint does not have.
  static absl::StatusOr<ParameterSet> Create(const model::ModelConfig& config,
                                             const model::WeightPlan& plan,
                                             model::RankWeights weights,
                                             const LoraOptions& lora = {});

  std::vector<Parameter>& all() { return params_; }
  const std::vector<Parameter>& all() const { return params_; }
  // nullptr when absent.
  Parameter* Find(absl::string_view name);
  const Parameter* Find(absl::string_view name) const;
  // The value (or gradient) of `name`; INTERNAL when absent (a model bug, not user input).
  absl::StatusOr<Tensor> Value(absl::string_view name) const;
  absl::StatusOr<Tensor> Grad(absl::string_view name) const;
  // The LoRA factors of the Linear whose weight is `weight_name`, or nullptr.
  const Parameter* LoraA(absl::string_view weight_name) const;
  const Parameter* LoraB(absl::string_view weight_name) const;
  bool has_lora() const { return has_lora_; }
  // Replaces the LoRA factors by those of a PEFT adapter directory's
  // adapter_model.safetensors (this rank's slices). INVALID_ARGUMENT naming the tensor when
  // the adapter lacks one of this model's factors or holds it in another shape.
  absl::Status LoadAdapter(const std::string& dir);
  // The stacked [gate; up] value and gradient of layer `layer` (2 I_shard, hidden); the
  // gradient is undefined when the base is frozen.
  const Tensor& GateUpValue(int layer) const { return gate_up_values_[layer]; }
  const Tensor& GateUpGrad(int layer) const { return gate_up_grads_[layer]; }

  // Drops the values of the frozen layer projections (a LoRA fine-tune's base, once the
  // model holds them quantized: TrainableModelOptions::quantize); Value() of one is then
  // undefined.
  void ReleaseFrozenProjections();

  void ZeroGrads();
  // Elements this rank holds, each once.
  int64_t NumElements() const;
  // Elements of the whole model that training changes (from the checkpoint shapes: each
  // tensor once however it is split or replicated).
  int64_t TrainableElements() const;

 private:
  absl::Status AddLora(const model::ModelConfig& config, const model::WeightPlan& plan,
                       const LoraOptions& lora);

  std::vector<Parameter> params_;
  bool has_lora_ = false;
  std::vector<Tensor> gate_up_values_, gate_up_grads_;
};

// `slice` of a host tensor shaped as the checkpoint tensor it was planned from, as a new
// tensor (the part a rank holds).
absl::StatusOr<Tensor> SliceOf(const Tensor& full, const model::TensorSlice& slice);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_PARAMETERS_H_
