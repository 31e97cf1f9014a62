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
  TESSERA_RETURN_IF_ERROR(internal::ExpectBias(kKernel, bias, n, device));
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

// ---- Backward ---------------------------------------------------------------------------

namespace {

// Grid-stride over w (count) of T (bf16 or f16) -> widened (count) f32.
template <typename T>
__global__ void WidenKernel(const T* w, int64_t count, float* widened) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    widened[i] = ToFloat(w[i]);
  }
}

// Grid-stride over the N columns of dy (M, N) f32: dbias (N) f32 [j] += the sum of column j,
// rows in order. One thread a column keeps the sum deterministic, and the threads of a warp
// read adjacent columns of each row.
__global__ void ColumnSumKernel(const float* dy, int64_t m, int64_t n, float* dbias) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t i = 0; i < m; ++i) sum += dy[i * n + j];
    dbias[j] += sum;
  }
}

// dx (M, K) = dy (M, N) . w (N, K) for row-major f32 operands, in cuBLAS's column-major terms:
// dx^T (K x M, ld K) = (w viewed as K x N, ld K) . (dy viewed as N x M, ld N).
absl::Status GemmBackwardInput(cublasHandle_t handle, const float* dy, const float* w, int m, int n,
                               int k, float* dx) {
  const float alpha = 1.0f, beta = 0.0f;
  TESSERA_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, k, m, n, &alpha, w,
                                    CUDA_R_32F, k, dy, CUDA_R_32F, n, &beta, dx, CUDA_R_32F, k,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

// dw (N, K) += dy (M, N)^T . x (M, K) for row-major f32 operands, in cuBLAS's column-major
// terms: dw^T (K x N, ld K) += (x viewed as K x M, ld K) . (dy viewed as N x M, ld N)^T.
absl::Status GemmBackwardWeight(cublasHandle_t handle, const float* dy, const float* x, int m,
                                int n, int k, float* dw) {
  const float alpha = 1.0f, beta = 1.0f;
  TESSERA_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, k, n, m, &alpha, x,
                                    CUDA_R_32F, k, dy, CUDA_R_32F, n, &beta, dw, CUDA_R_32F, k,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

// The 16-bit path of LinearBackwardInput: w widened into stream-ordered scratch, then the f32
// GEMM; the scratch is released in stream order whether or not the GEMM could be issued.
absl::Status GemmBackwardInputWidened(cublasHandle_t handle, const float* dy, const void* w,
                                      DType dtype, int m, int n, int k, float* dx,
                                      cudaStream_t stream) {
  int64_t count = int64_t{n} * k;
  void* scratch = nullptr;
  TESSERA_CUDA_CHECK(cudaMallocAsync(&scratch, static_cast<size_t>(count) * sizeof(float), stream));
  DispatchFloat(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      WidenKernel<T><<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(w), count, static_cast<float*>(scratch));
    }
  });
  absl::Status widened = TESSERA_CALL_STATUS(CudaCall, cudaGetLastError());
  absl::Status multiplied =
      widened.ok() ? GemmBackwardInput(handle, dy, static_cast<const float*>(scratch), m, n, k, dx)
                   : widened;
  absl::Status freed = TESSERA_CALL_STATUS(CudaCall, cudaFreeAsync(scratch, stream));
  return multiplied.ok() ? freed : multiplied;
}

}  // namespace

absl::Status LinearBackwardInput(const Tensor& dy, const Tensor& w, Tensor& dx, Stream& stream) {
  constexpr char kKernel[] = "LinearBackwardInput";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dy", dy, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "dy", dy, 2));
  int64_t m = dy.dim(0), n = dy.dim(1);
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "w", w, {DType::kF32, DType::kBF16, DType::kF16}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "w", w, 2));
  if (w.dim(0) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKernel, ": w is ", w.DebugString(), ", expected ", n, " rows for dy ", dy.DebugString()));
  }
  int64_t k = w.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dx", dx, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dx", dx, {m, k}));
  // cuBLAS takes int dimensions.
  constexpr int64_t kMaxDim = std::numeric_limits<int>::max();
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "rows of dy", m, kMaxDim));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "columns of dy", n, kMaxDim));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "columns of w", k, kMaxDim));
  if (m == 0 || k == 0) return absl::OkStatus();

  float* out = dx.data<float>();
  if (n == 0) {
    TESSERA_CUDA_CHECK(
        cudaMemsetAsync(out, 0, static_cast<size_t>(m * k) * sizeof(float), cuda_stream));
    return absl::OkStatus();
  }
  TESSERA_ASSIGN_OR_RETURN(cublasHandle_t handle, internal::CublasHandleFor(stream));
  int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (w.dtype() == DType::kF32) {
    return GemmBackwardInput(handle, dy.data<float>(), w.data<float>(), mi, ni, ki, out);
  }
  return GemmBackwardInputWidened(handle, dy.data<float>(), w.data(), w.dtype(), mi, ni, ki, out,
                                  cuda_stream);
}

absl::Status LinearBackwardWeight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor* dbias,
                                  Stream& stream) {
  constexpr char kKernel[] = "LinearBackwardWeight";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dy", dy, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "dy", dy, 2));
  int64_t m = dy.dim(0), n = dy.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  if (x.dim(0) != m) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKernel, ": x is ", x.DebugString(), ", expected ", m, " rows for dy ", dy.DebugString()));
  }
  int64_t k = x.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dw", dw, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dw", dw, {n, k}));
  bool with_bias = dbias != nullptr && dbias->defined();
  if (with_bias) {
    TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dbias", *dbias, {DType::kF32}, device));
    TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dbias", *dbias, {n}));
  }
  constexpr int64_t kMaxDim = std::numeric_limits<int>::max();
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "rows of dy", m, kMaxDim));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "columns of dy", n, kMaxDim));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "columns of x", k, kMaxDim));
  if (m == 0 || n == 0) return absl::OkStatus();

  if (k > 0) {
    TESSERA_ASSIGN_OR_RETURN(cublasHandle_t handle, internal::CublasHandleFor(stream));
    TESSERA_RETURN_IF_ERROR(GemmBackwardWeight(handle, dy.data<float>(), x.data<float>(),
                                               static_cast<int>(m), static_cast<int>(n),
                                               static_cast<int>(k), dw.data<float>()));
  }
  if (with_bias) {
    ColumnSumKernel<<<GridStrideBlocks(n, kThreads), kThreads, 0, cuda_stream>>>(
        dy.data<float>(), m, n, dbias->data<float>());
    TESSERA_RETURN_IF_LAUNCH_FAILED("LinearBackwardWeight bias");
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
