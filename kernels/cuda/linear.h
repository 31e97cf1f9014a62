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

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_LINEAR_H_
