#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/row_ops.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::DispatchFloat;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::GridStrideBlocks;
using internal::LaunchStream;
using internal::ToFloat;

// Threads per block of the element-wise grid-stride kernels.
constexpr int kElementThreads = 256;

// ---------------------------------------------------------------------------------------
// Kernels: grid-stride loops over the elements of the output.

// x (rows, cols) f32 += bias (cols) of type B.
template <typename B>
__global__ void AddBiasKernel(float* x, const B* bias, int64_t rows, int64_t cols) {
  const int64_t count = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += ToFloat(bias[i % cols]);
  }
}

// x (rows, cols) f32: columns [begin, begin + width) of every row = value.
__global__ void FillColumnsKernel(float* x, int64_t rows, int64_t cols, int64_t begin,
                                  int64_t width, float value) {
  const int64_t count = rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[(i / width) * cols + begin + i % width] = value;
  }
}

// out (count, width) f32 = x[rows[s]] of x (x_rows, width); NaN rows for numbers outside x.
__global__ void GatherRowsKernel(const float* x, int64_t x_rows, const int32_t* rows, int64_t count,
                                 int64_t width, float* out) {
  const int64_t total = count * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t s = i / width;
    const int64_t row = rows[s];
    out[i] = row >= 0 && row < x_rows ? x[row * width + i % width] : NAN;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Launchers.

absl::Status AddBias(Tensor& x, const Tensor& bias, Stream& stream) {
  constexpr char kKernel[] = "AddBias";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "bias", bias,
                                      {DType::kF32, DType::kBF16, DType::kF16}, stream.device()));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "bias", bias, {cols}));
  if (rows * cols == 0) return absl::OkStatus();
  const unsigned int blocks = GridStrideBlocks(rows * cols, kElementThreads);
  DispatchFloat(bias.dtype(), [&](auto tag) {
    using B = typename decltype(tag)::type;
    AddBiasKernel<B><<<blocks, kElementThreads, 0, cuda_stream>>>(
        x.data<float>(), static_cast<const B*>(bias.data()), rows, cols);
  });
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status FillColumns(Tensor& x, int64_t begin, int64_t end, float value, Stream& stream) {
  constexpr char kKernel[] = "FillColumns";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (begin < 0 || end < begin || end > cols) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": columns [", begin, ", ", end,
                                                   ") are not within the ", cols, " of ",
                                                   x.DebugString()));
  }
  const int64_t width = end - begin;
  if (rows * width == 0) return absl::OkStatus();
  FillColumnsKernel<<<GridStrideBlocks(rows * width, kElementThreads), kElementThreads, 0,
                      cuda_stream>>>(x.data<float>(), rows, cols, begin, width, value);
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor& out, Stream& stream) {
  constexpr char kKernel[] = "GatherRows";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "rows", rows, {DType::kI32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "rows", rows, 1));
  const int64_t count = rows.dim(0), width = x.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {count, width}));
  if (count * width == 0) return absl::OkStatus();
  GatherRowsKernel<<<GridStrideBlocks(count * width, kElementThreads), kElementThreads, 0,
                     cuda_stream>>>(x.data<float>(), x.dim(0), rows.data<int32_t>(), count, width,
                                    out.data<float>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
