#ifndef TESSERA_RUNTIME_TRAIN_LORA_LAYER_H_
#define TESSERA_RUNTIME_TRAIN_LORA_LAYER_H_

// The forward and backward of a LoRA adapter beside its Linear (lora.h has the naming and
// tensor-parallel plan): y[:, window] += scale * (x A^T) B^T.

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/core/tensor.h"

namespace tessera::train {

// A parameter's value and gradient, as views of the parameter set's tensors; undefined for
// a tensor the model does not have (and g undefined for a frozen one). A frozen projection
// of a LoRA fine-tune with `--quantize` is held as `q` instead of `w`.
struct WeightAndGrad {
  Tensor w, g;
  kernels::QuantizedWeight q;
  // A frozen weight shared with a serving model, packed as its forward reads it
  // (kernels::PackLinearWeight), f32 or bf16; `packed_rows` is N.
  Tensor packed;
  int64_t packed_rows = 0;
  bool defined() const { return w.defined() || q.defined() || packed.defined(); }
  // Outputs (rows) of a projection.
  int64_t rows() const { return q.defined() ? q.rows : packed.defined() ? packed_rows : w.dim(0); }
};

// A LoRA adapter's factors: A (r, K), B (N, r) as this rank holds them; undefined when the
// Linear has none.
struct LoraWeights {
  WeightAndGrad a, b;
  bool defined() const { return a.defined(); }
};

// x (T, K) f32; out (T, width) f32 gets scale * (x A^T) B^T added to its columns
// [column, column + N). Returns u = x A^T (T, r), which the backward reads.
absl::StatusOr<Tensor> ApplyLora(const Tensor& x, const LoraWeights& lora, float scale, Tensor& out,
                                 int64_t column);

// The backward of ApplyLora: dy (T, width) is the gradient of the whole output, of which the
// adapter wrote columns [column, column + N); x and u as in the forward. Adds into A's and
// B's gradients and into dx (T, K).
absl::Status LoraBackward(const Tensor& dy, int64_t column, const Tensor& x, const Tensor& u,
                          const LoraWeights& lora, float scale, Tensor& dx);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_LORA_LAYER_H_
