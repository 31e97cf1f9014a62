#ifndef TESSERA_KERNELS_OPS_NORM_ACTIVATION_H_
#define TESSERA_KERNELS_OPS_NORM_ACTIVATION_H_

// The row-wise ops of a layer on the device of the tensor they write (see dispatch.h):
// kernels/cpu/norm_activation.h on the CPU, kernels/cuda/norm_activation.h on a GPU.
// Activations are f32; weights f32 or bf16 (and f16 on a GPU).

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

// ids (T) i32, table (V_shard, H) holding vocabulary rows [vocab_begin, vocab_begin +
// V_shard) -> out (T, H) f32, zero for ids of other shards. An id outside [0, vocab_size) is
// INVALID_ARGUMENT on the CPU and a row of NaN on a GPU (check ids while on the host).
absl::Status EmbeddingLookup(const Tensor& ids, const Tensor& table, int64_t vocab_begin,
                             int64_t vocab_size, Tensor& out, Stream& stream);

// x (T, H) f32, weight (H) -> out (T, H) f32 = x / sqrt(mean(x^2) + eps) * weight. out may
// be x.
absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out, Stream& stream);

// residual (T, H) += x (T, H); out (T, H) = RmsNorm(residual, weight, eps). out may be x.
absl::Status AddRmsNorm(Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                        Tensor& out, Stream& stream);

// gate_up (T, 2I) f32 holding [gate | up] -> out (T, I) f32 = silu(gate) * up.
absl::Status SiluMul(const Tensor& gate_up, Tensor& out, Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_NORM_ACTIVATION_H_
