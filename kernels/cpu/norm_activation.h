#ifndef TESSERA_KERNELS_CPU_NORM_ACTIVATION_H_
#define TESSERA_KERNELS_CPU_NORM_ACTIVATION_H_

// Row-wise kernels of a transformer layer on the CPU: embedding lookup on a vocab shard,
// RMSNorm (with the residual add fused in), SiLU-gated MLP activation and softmax.
// Activations are f32; weights may be f32 or bf16 (widened on the fly). These are the
// reference implementations the CUDA kernels are tested against.

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// ids (T) i32, table (V_shard, H) f32|bf16 holding vocabulary rows [vocab_begin,
// vocab_begin + V_shard) -> out (T, H) f32. Rows whose id lies in another rank's shard are
// zero, so that an all-reduce over the tensor-parallel group completes the lookup. An id
// outside [0, vocab_size) is INVALID_ARGUMENT naming its position.
absl::Status EmbeddingLookup(const Tensor& ids, const Tensor& table, int64_t vocab_begin,
                             int64_t vocab_size, Tensor& out);

// x (T, H) f32, weight (H) f32|bf16 -> out (T, H) f32:
//   out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight     (as Hugging Face's RMSNorm, in f32)
// out may be x.
absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out);

// residual (T, H) += x (T, H); out = RmsNorm(residual, weight, eps). The pre-norm step that
// starts every attention and MLP block after the first. out may be x.
absl::Status AddRmsNorm(Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                        Tensor& out);

// gate_up (T, 2I) f32 holding [gate | up] -> out (T, I) f32: out = silu(gate) * up, where
// silu(g) = g / (1 + exp(-g)), the exponent within 2.5e-7 of std::exp (exp_approx.h).
absl::Status SiluMul(const Tensor& gate_up, Tensor& out);

// x (R, C) f32, in place: each row becomes softmax(row), computed with the row maximum
// subtracted. Rows of -inf stay well defined only if at least one element is finite.
absl::Status SoftmaxRows(Tensor& x);

// a (N) += b (N), f32: the residual add on its own.
absl::Status AddInPlace(Tensor& a, const Tensor& b);

// ---- Backward (training) ------------------------------------------------------------------
// Deterministic: each output is computed by one thread in a fixed order, however many
// threads there are.

// The backward of out = RmsNorm(x, weight, eps): x (T, H) f32 is the norm's input, weight
// (H) f32|bf16, dy (T, H) f32 the gradient of out. dx (T, H) f32 is overwritten with the
// gradient of x; dweight (H) f32 += sum over t of dy[t] * x[t] * rstd[t] (accumulates),
// rstd[t] = 1 / sqrt(mean(x[t]^2) + eps) computed as the forward computes it. dx may be dy.
absl::Status RmsNormBackward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                             Tensor& dx, Tensor& dweight);

// The backward of out = silu(gate) * up: gate_up (T, 2I) f32 = [gate | up] as in the forward,
// dout (T, I) f32 -> dgate_up (T, 2I) f32 = [dout * up * silu'(gate) | dout * silu(gate)],
// overwritten, with SiluMul's sigmoid. dgate_up may be gate_up.
absl::Status SiluMulBackward(const Tensor& gate_up, const Tensor& dout, Tensor& dgate_up);

// The backward of EmbeddingLookup: dtable (V_shard, H) f32, holding vocabulary rows
// [vocab_begin, vocab_begin + V_shard), += row t of dout (T, H) f32 at row ids[t] -
// vocab_begin for every t whose id ids (T) i32 lies in the shard (ids of other ranks' shards
// are skipped). An id outside [0, vocab_size) is INVALID_ARGUMENT naming its position, and
// dtable is left unchanged. Rows that share an id are added in token order.
absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                               int64_t vocab_size, Tensor& dtable);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_NORM_ACTIVATION_H_
