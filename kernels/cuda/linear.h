#ifndef TESSERA_KERNELS_CUDA_LINEAR_H_
#define TESSERA_KERNELS_CUDA_LINEAR_H_

// kernels/cpu/linear.h on a GPU, through cuBLAS (cublasGemmEx on the stream's own handle,
// see cublas_handle.h), in Hugging Face's Linear layout:
//   out (M, N) = x (M, K) . w^T + bias,   w (N, K) row-major, bias (N) or none.
// x and out are f32.
//  - f32 weights: an f32 GEMM with f32 compute (CUBLAS_COMPUTE_32F, never TF32): the CPU's
//    sgemm up to the order of summation.
//  - bf16 or f16 weights (the CPU takes bf16 only): x is first rounded to the weights' type
//    (nearest-even) in scratch memory, then multiplied on the tensor cores with f32
//    accumulation and f32 output. The products are exact and summed in f32, so the only
//    error beyond the f32 GEMM's is the rounding of x:
//      |out - out_cpu| <= u * sum_k |x_k * w_k|,   u = 2^-8 (bf16), 2^-11 (f16).
//    With f16 weights, activations beyond f16's range (65504) become infinite.
// The scratch is stream-ordered memory (cudaMallocAsync / cudaFreeAsync on `stream`, from
// the device's default pool), so the call never waits for the device.
// bias (N) f32, bf16 or f16, or a default-constructed Tensor for none, is added by a second
// kernel after the GEMM.

#include "absl/status/status.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out,
                    Stream& stream);

// ---- Backward (training) ------------------------------------------------------------------
// The backward of out = x . w^T (+ bias), as kernels/cpu/linear.h defines it, on f32 GEMMs with
// f32 compute (CUBLAS_COMPUTE_32F, never TF32): the CPU's results up to the order of
// summation, which cuBLAS fixes for a given GPU and library version (so a rerun gives the same
// bits), but which differs from the CPU's chains of fused multiply-adds.

// dy (M, N) f32, w (N, K) f32|bf16|f16 as stored (not packed) -> dx (M, K) f32 = dy . w,
// overwritten. A 16-bit w is first widened to f32 in stream-ordered scratch (N K floats,
// released in stream order), so that the product is an f32 product as on the CPU; unlike
// Linear's forward, dy is never rounded to w's type.
absl::Status LinearBackwardInput(const Tensor& dy, const Tensor& w, Tensor& dx, Stream& stream);

// dy (M, N) f32, x (M, K) f32: dw (N, K) f32 += dy^T . x (the GEMM with beta = 1), and when
// dbias is non-null and defined, dbias (N) f32 += the sum of dy's rows (one thread a column,
// rows in order). Both accumulate, as on the CPU; zero them first for the gradient alone.
absl::Status LinearBackwardWeight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor* dbias,
                                  Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_LINEAR_H_
