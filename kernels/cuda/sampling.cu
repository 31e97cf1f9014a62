#include <cuda_runtime.h>

#include <limits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/sampling.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::kWarpSize;
using internal::LaunchStream;

constexpr int kArgmaxThreads = 512;

// A row's best element so far; column -1 while there is none.
struct Candidate {
  float value;
  int column;
};

// kernels::CombineArgmax on columns of one row.
__device__ __forceinline__ Candidate Better(Candidate a, Candidate b) {
  if (a.column < 0) return b;
  if (b.column < 0) return a;
  if (a.value > b.value) return a;
  if (b.value > a.value) return b;
  return a.column <= b.column ? a : b;
}

__device__ __forceinline__ Candidate WarpBest(Candidate c) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    Candidate other{__shfl_xor_sync(0xffffffffu, c.value, offset),
                    __shfl_xor_sync(0xffffffffu, c.column, offset)};
    c = Better(c, other);
  }
  return c;
}

// Grid (T), block kArgmaxThreads: block t finds the maximum of row t of logits (T, V) and
// writes it to values[t] f32 and its vocabulary index vocab_begin + column to indices[t] i64.
// Thread i scans columns i, i + blockDim.x, ... in increasing order (so the first of equal
// values wins within a thread, and NaN is skipped); warp shuffles and then one warp over the
// per-warp winners merge the threads' candidates, lowest column on ties.
__global__ void ArgmaxKernel(const float* logits, int64_t width, int64_t vocab_begin, float* values,
                             int64_t* indices) {
  __shared__ Candidate per_warp[kArgmaxThreads / kWarpSize];
  int64_t t = blockIdx.x;
  const float* row = logits + t * width;
  Candidate best{0.0f, -1};
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    float v = row[c];
    if (isnan(v)) continue;
    if (best.column < 0 || v > best.value) best = Candidate{v, static_cast<int>(c)};
  }
  best = WarpBest(best);
  int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (lane == 0) per_warp[warp] = best;
  __syncthreads();
  if (warp != 0) return;
  int warps = blockDim.x / kWarpSize;
  best = lane < warps ? per_warp[lane] : Candidate{0.0f, -1};
  best = WarpBest(best);
  if (lane == 0) {
    values[t] = best.column < 0 ? 0.0f : best.value;
    indices[t] = best.column < 0 ? -1 : vocab_begin + best.column;
  }
}

}  // namespace

absl::Status ShardArgmax(const Tensor& logits, int64_t vocab_begin, Tensor& values, Tensor& indices,
                         Stream& stream) {
  constexpr char kKernel[] = "ShardArgmax";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "logits", logits, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "logits", logits, 2));
  int64_t rows = logits.dim(0), width = logits.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "values", values, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "values", values, {rows}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "indices", indices, {DType::kI64}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "indices", indices, {rows}));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "rows", rows));
  TESSERA_RETURN_IF_ERROR(
      ExpectAtMost(kKernel, "vocabulary columns", width, std::numeric_limits<int>::max()));
  if (rows == 0) return absl::OkStatus();
  ArgmaxKernel<<<static_cast<unsigned int>(rows), kArgmaxThreads, 0, cuda_stream>>>(
      logits.data<float>(), width, vocab_begin, values.data<float>(), indices.data<int64_t>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status ShardArgmax(const Tensor& logits, int64_t vocab_begin, std::vector<ArgmaxResult>* rows,
                         Stream& stream) {
  constexpr char kKernel[] = "ShardArgmax";
  TESSERA_RETURN_IF_ERROR(LaunchStream(kKernel, stream).status());
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "logits", logits, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "logits", logits, 2));
  int64_t count = logits.dim(0);
  TESSERA_ASSIGN_OR_RETURN(Tensor values, Tensor::Empty(DType::kF32, {count}, stream.device()));
  TESSERA_ASSIGN_OR_RETURN(Tensor indices, Tensor::Empty(DType::kI64, {count}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ShardArgmax(logits, vocab_begin, values, indices, stream));
  TESSERA_ASSIGN_OR_RETURN(Tensor host_values, values.To(Device::Cpu(), stream));
  TESSERA_ASSIGN_OR_RETURN(Tensor host_indices, indices.To(Device::Cpu(), stream));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  rows->assign(count, ArgmaxResult{});
  for (int64_t t = 0; t < count; ++t) {
    (*rows)[t] = ArgmaxResult{host_values.data<float>()[t], host_indices.data<int64_t>()[t]};
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
