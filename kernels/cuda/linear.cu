#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <limits>
#include <type_traits>

#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/linear.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::DispatchFloat;
using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::FromFloat;
using internal::GridStrideBlocks;
using internal::LaunchStream;
using internal::ToFloat;

constexpr int kThreads = 256;

// Grid-stride over x (count) f32 -> rounded (count) T (bf16 or f16), nearest-even.
template <typename T>
__global__ void RoundKernel(const float* x, int64_t count, T* rounded) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    rounded[i] = FromFloat<T>(x[i]);
  }
}

// Grid-stride over out (M, N) f32: out[i, j] += bias[j], bias (N) of B.
template <typename B>
__global__ void AddBiasKernel(float* out, const B* bias, int64_t count, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[e] += ToFloat(bias[e % n]);
  }
}

cudaDataType_t CudaTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    default:
      return CUDA_R_32F;
  }
}

// out (M, N) = x (M, K) . w^T for row-major operands, in cuBLAS's column-major terms:
// out^T (N x M, ld N) = (w viewed as K x N, ld K)^T . (x viewed as K x M, ld K).
absl::Status Gemm(cublasHandle_t handle, const void* x, const void* w, cudaDataType_t type, int m,
                  int n, int k, float* out) {
  const float alpha = 1.0f, beta = 0.0f;
  TESSERA_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, type, k,
                                    x, type, k, &beta, out, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

// The 16-bit path: x rounded into stream-ordered scratch, then the GEMM; the scratch is
// released in stream order whether or not the GEMM could be issued.
absl::Status Gemm16(cublasHandle_t handle, const float* x, const void* w, DType dtype, int m, int n,
                    int k, float* out, cudaStream_t stream) {
  int64_t count = int64_t{m} * k;
  void* scratch = nullptr;
  TESSERA_CUDA_CHECK(cudaMallocAsync(&scratch, static_cast<size_t>(count) * 2, stream));
  DispatchFloat(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      RoundKernel<T><<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(
          x, count, static_cast<T*>(scratch));
    }
  });
  absl::Status rounded = TESSERA_CALL_STATUS(CudaCall, cudaGetLastError());
  absl::Status multiplied =
      rounded.ok() ? Gemm(handle, scratch, w, CudaTypeOf(dtype), m, n, k, out) : rounded;
  absl::Status freed = TESSERA_CALL_STATUS(CudaCall, cudaFreeAsync(scratch, stream));
  return multiplied.ok() ? freed : multiplied;
}

}  // namespace

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out,
                    Stream& stream) {
  constexpr char kKernel[] = "Linear";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "w", w, {DType::kF32, DType::kBF16, DType::kF16}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "w", w, 2));
  int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
  if (w.dim(1) != k) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": x ", x.DebugString(), " and w ",
                                                   w.DebugString(),
                                                   " disagree on the inner dimension"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {m, n}));
  if (bias.defined()) {
    TESSERA_RETURN_IF_ERROR(
        ExpectDType(kKernel, "bias", bias, {DType::kF32, DType::kBF16, DType::kF16}, device));
    TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "bias", bias, {n}));
  }
  // cuBLAS takes int dimensions.
  constexpr int64_t kMaxDim = std::numeric_limits<int>::max();
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "rows of x", m, kMaxDim));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "columns of x", k, kMaxDim));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "rows of w", n, kMaxDim));
  if (m == 0 || n == 0) return absl::OkStatus();

  float* o = out.data<float>();
  if (k == 0) {
    TESSERA_CUDA_CHECK(
        cudaMemsetAsync(o, 0, static_cast<size_t>(m * n) * sizeof(float), cuda_stream));
  } else {
    TESSERA_ASSIGN_OR_RETURN(cublasHandle_t handle, internal::CublasHandleFor(stream));
    int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
    if (w.dtype() == DType::kF32) {
      TESSERA_RETURN_IF_ERROR(Gemm(handle, x.data<float>(), w.data(), CUDA_R_32F, mi, ni, ki, o));
    } else {
      TESSERA_RETURN_IF_ERROR(
          Gemm16(handle, x.data<float>(), w.data(), w.dtype(), mi, ni, ki, o, cuda_stream));
    }
  }
  if (bias.defined()) {
    int64_t count = m * n;
    DispatchFloat(bias.dtype(), [&](auto tag) {
      using B = typename decltype(tag)::type;
      AddBiasKernel<B><<<GridStrideBlocks(count, kThreads), kThreads, 0, cuda_stream>>>(
          o, static_cast<const B*>(bias.data()), count, n);
    });
    TESSERA_RETURN_IF_LAUNCH_FAILED("Linear bias");
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
