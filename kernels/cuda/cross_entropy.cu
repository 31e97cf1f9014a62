#include <cuda_runtime.h>

#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::BlockMax;
using internal::BlockSum;
using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::LaunchStream;

// Threads of the one-block-per-row kernels.
constexpr int kRowThreads = 256;

// Below this exponent a term counts as 0, as on the CPU.
constexpr float kExpFloor = -87.0f;

__device__ __forceinline__ float ExpOrZero(float x) { return x < kExpFloor ? 0.0f : expf(x); }

__device__ __forceinline__ float NaN() { return __int_as_float(0x7fc00000); }

// Grid (T), block kRowThreads: block t reduces row t of logits (T, cols) f32 over its first
// valid_cols columns to stats[t] (T, 3) f32 = (maximum, sum of exp(logit - maximum), the
// target's logit or 0), targets (T) i32 holding ids of [0, vocab_size) or kIgnoreTarget; NaN
// in all three for any other target.
__global__ void ShardStatsKernel(const float* logits, const int32_t* targets, int64_t cols,
                                 int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                 float* stats) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const float* row = logits + t * cols;
  float max = -INFINITY;
  for (int64_t c = threadIdx.x; c < valid_cols; c += blockDim.x) max = fmaxf(max, row[c]);
  max = BlockMax(max, scratch);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < valid_cols; c += blockDim.x) sum += ExpOrZero(row[c] - max);
  sum = BlockSum(sum, scratch);
  if (threadIdx.x != 0) return;
  const int64_t target = targets[t];
  float* out = stats + t * 3;
  if (target != kIgnoreTarget && (target < 0 || target >= vocab_size)) {
    out[0] = out[1] = out[2] = NaN();
    return;
  }
  const int64_t local = target - vocab_begin;
  out[0] = max;
  out[1] = sum;
  out[2] = target != kIgnoreTarget && local >= 0 && local < valid_cols ? row[local] : 0.0f;
}

// Grid (T), block kRowThreads: block t writes row t of dlogits (T, cols) f32 from the same row
// of logits (T, cols) f32, lse (T), row_scale (T) f32 and targets (T) i32:
// row_scale[t] * exp(logit - lse[t]) (minus row_scale[t] at the target's column) over the
// first valid_cols columns, 0 after them; all 0 when row_scale[t] is 0; all NaN for a target
// below 0 other than kIgnoreTarget. Each thread reads and writes only its own columns, so
// dlogits may be logits.
__global__ void CrossEntropyBackwardKernel(const float* logits, const int32_t* targets,
                                           const float* lse, const float* row_scale, int64_t cols,
                                           int64_t vocab_begin, int64_t valid_cols,
                                           float* dlogits) {
  const int64_t t = blockIdx.x;
  const float* in = logits + t * cols;
  float* out = dlogits + t * cols;
  const int64_t target = targets[t];
  const float scale = row_scale[t];
  if (target < 0 && target != kIgnoreTarget) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = NaN();
    return;
  }
  if (scale == 0.0f) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = 0.0f;
    return;
  }
  const float row_lse = lse[t];
  const int64_t local = target == kIgnoreTarget ? -1 : target - vocab_begin;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float value = 0.0f;
    if (c < valid_cols) {
      value = scale * ExpOrZero(in[c] - row_lse);
      if (c == local) value -= scale;
    }
    out[c] = value;
  }
}

// The checks both kernels share (as the CPU's CheckShard).
absl::Status CheckShard(const char* kernel, const Tensor& logits, const Tensor& targets,
                        int64_t vocab_begin, int64_t valid_cols, Device device) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "logits", logits, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "logits", logits, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "targets", targets, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "targets", targets, {logits.dim(0)}));
  if (vocab_begin < 0 || valid_cols < 0 || valid_cols > logits.dim(1)) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": a shard of ", valid_cols,
                                                   " columns from vocabulary id ", vocab_begin,
                                                   " does not fit logits ", logits.DebugString()));
  }
  return ExpectAtMost(kernel, "rows", logits.dim(0));
}

}  // namespace

absl::Status CrossEntropyShardStats(const Tensor& logits, const Tensor& targets,
                                    int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                    Tensor& stats, Stream& stream) {
  constexpr char kKernel[] = "CrossEntropyShardStats";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckShard(kKernel, logits, targets, vocab_begin, valid_cols, device));
  if (vocab_begin + valid_cols > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": the shard [", vocab_begin, ", ", vocab_begin + valid_cols,
                     ") lies outside the vocabulary [0, ", vocab_size, ")"));
  }
  int64_t rows = logits.dim(0), cols = logits.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "stats", stats, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "stats", stats, {rows, 3}));
  if (rows == 0) return absl::OkStatus();
  ShardStatsKernel<<<static_cast<unsigned int>(rows), kRowThreads, 0, cuda_stream>>>(
      logits.data<float>(), targets.data<int32_t>(), cols, vocab_begin, valid_cols, vocab_size,
      stats.data<float>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                  int64_t valid_cols, const Tensor& lse, const Tensor& row_scale,
                                  Tensor& dlogits, Stream& stream) {
  constexpr char kKernel[] = "CrossEntropyBackward";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckShard(kKernel, logits, targets, vocab_begin, valid_cols, device));
  int64_t rows = logits.dim(0), cols = logits.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {rows}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "row_scale", row_scale, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "row_scale", row_scale, {rows}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dlogits", dlogits, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dlogits", dlogits, logits.shape()));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  CrossEntropyBackwardKernel<<<static_cast<unsigned int>(rows), kRowThreads, 0, cuda_stream>>>(
      logits.data<float>(), targets.data<int32_t>(), lse.data<float>(), row_scale.data<float>(),
      cols, vocab_begin, valid_cols, dlogits.data<float>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
