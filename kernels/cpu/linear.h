#ifndef TESSERA_KERNELS_CPU_LINEAR_H_
#define TESSERA_KERNELS_CPU_LINEAR_H_

// The matrix multiply of every projection, in Hugging Face's Linear layout:
//   out (M, N) = x (M, K) . w^T + bias,   w (N, K) row-major, bias (N) or none.
// x and out are f32; w is f32 or bf16 (widened in registers). Tessera's own kernel, not a
// BLAS, so that it can promise row invariance: row i of out depends only on row i of x,
// bitwise, never on how many other rows are in the batch, and a request's tokens are the
// same alone or batched with others. (OpenBLAS's sgemm changes kernels, and summation
// order, with the number of rows.)
//
// Every output is one chain of fused multiply-adds over k in index order, starting from 0:
//   out[i][j] = fma(x[i][K-1], w[j][K-1], ... fma(x[i][0], w[j][0], 0))
// on the AVX-512, AVX2 and portable paths alike, so all three give the same bits.
//
// The kernel reads weights packed in panels of kLinearPanel output features,
//   packed (ceil(N / 16), K, 16): packed[p][c][l] = w[16 p + l][c], zero past row N,
// so that a vector load takes one input's weights for sixteen outputs and no lanes are ever
// summed across. A model packs its weights once, at load (PackLinearWeight); Linear also
// takes an unpacked w and packs it per call, which suits tests and one-off products.

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

inline constexpr int64_t kLinearPanel = 16;

// w (N, K) f32 or bf16 -> packed (ceil(N / 16), K, 16) of the same dtype.
absl::StatusOr<Tensor> PackLinearWeight(const Tensor& w);

// PackLinearWeight undone: packed (ceil(N / 16), K, 16) -> (rows, K) of the same dtype, rows
// <= 16 * ceil(N / 16) (the padding rows dropped). For callers that hold only the packed form
// and need w as stored.
absl::StatusOr<Tensor> UnpackLinearWeight(const Tensor& packed, int64_t rows);

// w: (N, K) as stored, or packed (ceil(N / 16), K, 16) by PackLinearWeight, where N is
// out's width. bias: f32 or bf16 (N), or a default-constructed (undefined) Tensor for none.
absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out);

// out (m, n) = x (m, k) . w^T on the calling thread alone, with w packed by PackLinearWeight
// (f32 or bf16, k > 0): Linear's kernel and bits, for callers that split many small products
// over the threads themselves. Unchecked: the caller owns the shapes.
void LinearPackedOnThisThread(const float* x, const Tensor& packed, float* out, int64_t m,
                              int64_t n, int64_t k);

// The backward of out = x . w^T (+ bias), for training. Both reuse Linear's kernel (and its
// chains of fused multiply-adds) on operands packed from w, x and dy, so they are
// deterministic whatever the number of threads (and dx's rows, as Linear's, do not depend on
// the other rows of dy). The packed copies live in scratch kept per calling thread between
// calls (training repeats its shapes), which grows to the largest call's need.

// dy (M, N) f32, w (N, K) f32 or bf16 as stored, or packed (ceil(N / 16), K, 16) by
// PackLinearWeight (the same bits) -> dx (M, K) f32 = dy . w, overwritten. The gradient of the
// product with respect to x.
absl::Status LinearBackwardInput(const Tensor& dy, const Tensor& w, Tensor& dx);

// dy (M, N) f32, x (M, K) f32: dw (N, K) f32 += dy^T . x, and when dbias is non-null and
// defined, dbias (N) f32 += the sum of dy's rows. Both accumulate (gradient accumulation over
// micro-batches relies on it); zero them first for the gradient alone.
absl::Status LinearBackwardWeight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor* dbias);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_LINEAR_H_
