#ifndef TESSERA_KERNELS_OPS_LINEAR_H_
#define TESSERA_KERNELS_OPS_LINEAR_H_

// The projections of a layer on the device of `out` (see dispatch.h), in Hugging Face's
// Linear layout:
//   out (M, N) f32 = x (M, K) f32 . w^T + bias,   w (N, K), bias (N) or undefined.
// CPU: kernels/cpu/linear.h (w f32 or bf16, as stored or packed by PackLinearWeight, as a
// model's are). GPU: kernels/cuda/linear.h (w f32, bf16 or f16 as stored; x is rounded to a
// 16-bit w's type before the tensor-core GEMM).
//
// A model's projection weight is a ProjectionWeight: dense as above, or weight-only quantized
// (kernels/cpu/quantized_linear.h, CPU only so far).

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out,
                    Stream& stream);

// One projection's weight as a model holds it: `dense` (Linear's w), or `quantized`.
struct ProjectionWeight {
  Tensor dense;
  kernels::QuantizedWeight quantized;

  bool defined() const { return dense.defined() || quantized.defined(); }
  // What a product reads.
  uint64_t nbytes() const { return quantized.defined() ? quantized.nbytes() : dense.nbytes(); }
};

// Linear with either form of weight (a quantized one: kernels/cpu/quantized_linear.h, or
// kernels/cuda/quantized_linear.h with its tensors on the GPU).
absl::Status Linear(const Tensor& x, const ProjectionWeight& w, const Tensor& bias, Tensor& out,
                    Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_LINEAR_H_
