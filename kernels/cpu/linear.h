#ifndef TESSERA_KERNELS_CPU_LINEAR_H_
#define TESSERA_KERNELS_CPU_LINEAR_H_

// The matrix multiply of every projection, in Hugging Face's Linear layout:
//   out (M, N) = x (M, K) . w^T + bias,   w (N, K) row-major, bias (N) or none.
// x and out are f32. f32 weights go to the BLAS (OpenBLAS sgemm). bf16 weights, which the
// BLAS cannot take, are widened by Tessera's own kernel: for a few rows of x (decode) each
// weight row is widened once and dotted with every x row, reading the weights once (the
// memory-bound case); for more rows, blocks of weight rows are widened into f32 and handed
// to sgemm.

#include "absl/status/status.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// bias: f32 or bf16 (N), or a default-constructed (undefined) Tensor for none.
absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_LINEAR_H_
