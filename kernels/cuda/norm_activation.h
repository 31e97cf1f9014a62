#ifndef TESSERA_KERNELS_CUDA_NORM_ACTIVATION_H_
#define TESSERA_KERNELS_CUDA_NORM_ACTIVATION_H_

// The row-wise kernels of kernels/cpu/norm_activation.h on a GPU: embedding lookup on a
// vocab shard, RMSNorm (with the residual add fused in), SiLU-gated MLP activation, softmax
// and the residual add. Same arguments and results as the CPU kernels, with every tensor on
// the device of `stream` (a CUDA stream); work is queued on the stream and the call returns
// without waiting for it. Activations are f32; weights may be f32, bf16 or f16 (the CPU
// kernels take f32 or bf16), widened to f32 on the fly.

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// ids (T) i32, table (V_shard, H) f32|bf16|f16 holding vocabulary rows [vocab_begin,
// vocab_begin + V_shard) -> out (T, H) f32; rows whose id lies in another rank's shard are
// zero. The ids are on the device, so an id outside [0, vocab_size) cannot be reported as the
// CPU kernel reports it: its row is filled with NaN instead, which poisons everything computed
// from it (validate token ids where they are still on the host).
absl::Status EmbeddingLookup(const Tensor& ids, const Tensor& table, int64_t vocab_begin,
                             int64_t vocab_size, Tensor& out, Stream& stream);

// x (T, H) f32, weight (H) f32|bf16|f16 -> out (T, H) f32, as Hugging Face's RMSNorm in f32:
//   out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight.
// out may be x.
absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Stream& stream);

// residual (T, H) += x (T, H); out = RmsNorm(residual, weight, eps). out may be x.
absl::Status AddRmsNorm(Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                        Tensor& out, Stream& stream);

// gate_up (T, 2I) f32 holding [gate | up] -> out (T, I) f32: out = silu(gate) * up.
absl::Status SiluMul(const Tensor& gate_up, Tensor& out, Stream& stream);

// x (R, C) f32, in place: each row becomes softmax(row), with the row maximum subtracted.
absl::Status SoftmaxRows(Tensor& x, Stream& stream);

// a (N) += b (N), f32 (any shapes of N elements each).
absl::Status AddInPlace(Tensor& a, const Tensor& b, Stream& stream);

// ---- Backward (training) ------------------------------------------------------------------
// The backward kernels of kernels/cpu/norm_activation.h, with the CPU's arguments and results.
// Deterministic as the CPU's are: every output element is computed by one thread in an order
// fixed by the shapes, never with atomics, so a rerun gives the same bits. Sums run in f32 in
// another order than the CPU's, so results agree with the CPU to rounding, not bit for bit.

// The backward of out = RmsNorm(x, weight, eps): x (T, H) f32, weight (H) f32|bf16|f16, dy
// (T, H) f32 -> dx (T, H) f32, overwritten; dweight (H) f32 += sum over t of dy[t] * x[t] *
// rstd[t] (accumulates), rstd[t] = 1 / sqrt(mean(x[t]^2) + eps) as the forward computes it.
// dx may be dy. Per-row rstd and coefficients, and dweight's partial sums over chunks of rows,
// live in stream-ordered scratch (cudaMallocAsync), released in stream order.
absl::Status RmsNormBackward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                             Tensor& dx, Tensor& dweight, Stream& stream);

// The backward of out = silu(gate) * up: gate_up (T, 2I) f32 = [gate | up], dout (T, I) f32 ->
// dgate_up (T, 2I) f32 = [dout * up * silu'(gate) | dout * silu(gate)], overwritten, with the
// CPU's sigmoid formula (CUDA's expf for its exponent). dgate_up may be gate_up.
absl::Status SiluMulBackward(const Tensor& gate_up, const Tensor& dout, Tensor& dgate_up,
                             Stream& stream);

// The backward of EmbeddingLookup: dtable (V_shard, H) f32, holding vocabulary rows
// [vocab_begin, vocab_begin + V_shard), += row t of dout (T, H) f32 at row ids[t] -
// vocab_begin for every t whose id ids (T) i32 lies in the shard; rows that share an id are
// added in token order (each element of dtable has one thread, which walks the tokens in
// order). The ids are on the device, so an id outside [0, vocab_size) cannot be reported as
// the CPU kernel reports it: it is skipped, as ids of other shards are (EmbeddingLookup has
// already made its row NaN in the forward; validate token ids while on the host).
absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                               int64_t vocab_size, Tensor& dtable, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_NORM_ACTIVATION_H_
