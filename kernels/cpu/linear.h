#ifndef TESSERA_KERNELS_CPU_LINEAR_H_
#define TESSERA_KERNELS_CPU_LINEAR_H_

// The matrix multiply of every projection, in Hugging Face's Linear layout:
//   out (M, N) = x (M, K) . w^T + bias,   w (N, K) row-major, bias (N) or none.
// x and out are f32; w is f32 or bf16 (widened in registers). Tessera's own kernel, not a
// BLAS, so that it can promise row invariance: row i of out depends only on row i of x,
// bitwise, never on how many other rows are in the batch, and a request's tokens are the
// same alone or batched with others. (OpenBLAS's sgemm changes kernels, and summation
// order, with the number of rows.) Weights are read once per 64 rows of x, so decode runs
// at the speed of that read.

#include "absl/status/status.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// bias: f32 or bf16 (N), or a default-constructed (undefined) Tensor for none.
absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_LINEAR_H_
