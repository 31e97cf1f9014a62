#ifndef TESSERA_KERNELS_OPS_LINEAR_H_
#define TESSERA_KERNELS_OPS_LINEAR_H_

// The projections of a layer on the device of `out` (see dispatch.h), in Hugging Face's
// Linear layout:
//   out (M, N) f32 = x (M, K) f32 . w^T + bias,   w (N, K), bias (N) or undefined.
// CPU: kernels/cpu/linear.h (w f32 or bf16, as stored or packed by PackLinearWeight, as a
// model's are). GPU: kernels/cuda/linear.h (w f32, bf16 or f16 as stored; x is rounded to a
// 16-bit w's type before the tensor-core GEMM).

#include "absl/status/status.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out,
                    Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_LINEAR_H_
