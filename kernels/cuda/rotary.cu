#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/rotary.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::LaunchStream;

constexpr int kThreads = 128;

// The frequencies, passed by value in the kernel's parameter block.
struct Frequencies {
  float value[kMaxRotaryFrequencies];
};

// Grid (T), block kThreads: block t rotates the heads of token t of x (T, heads, head_dim) at
// angle positions[t] * inv_freq[j]. The block first puts the cosine and sine of its `half`
// angles in shared memory; then each thread takes pairs (h, j) of heads*half, rotating
// dimensions (j, j + half) with kHalfSplit or (2j, 2j + 1) with kInterleaved of head h.
// Dimensions from rotary_dim to head_dim are left alone. With kBackward x holds a gradient
// and is rotated by the transpose, the negative angle (the same cosine, the sine negated).
template <bool kBackward>
__global__ void RotaryKernel(float* x, const int32_t* positions, Frequencies inv_freq, int half,
                             int64_t heads, int64_t head_dim, bool interleaved) {
  __shared__ float cos_of[kMaxRotaryFrequencies];
  __shared__ float sin_of[kMaxRotaryFrequencies];
  int64_t t = blockIdx.x;
  float position = static_cast<float>(positions[t]);
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    sincosf(position * inv_freq.value[j], &sin_of[j], &cos_of[j]);
    if constexpr (kBackward) sin_of[j] = -sin_of[j];
  }
  __syncthreads();
  float* token = x + t * heads * head_dim;
  int64_t pairs = heads * half;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    int64_t h = p / half;
    int j = static_cast<int>(p % half);
    float* v = token + h * head_dim;
    int a = interleaved ? 2 * j : j;
    int b = interleaved ? 2 * j + 1 : j + half;
    float x0 = v[a], x1 = v[b];
    v[a] = x0 * cos_of[j] - x1 * sin_of[j];
    v[b] = x1 * cos_of[j] + x0 * sin_of[j];
  }
}

// ApplyRotary (kBackward false) or ApplyRotaryBackward on x (T, heads, head_dim) f32.
template <bool kBackward>
absl::Status LaunchRotary(const char* kernel, Tensor& x, const Tensor& positions,
                          absl::Span<const float> inv_freq, const RotaryConfig& config,
                          Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kernel, stream));
  Device device = stream.device();
  const char* name = kBackward ? "dx" : "x";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, name, x, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, name, x, 3));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "positions", positions, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "positions", positions, {x.dim(0)}));
  int64_t tokens = x.dim(0), heads = x.dim(1), head_dim = x.dim(2);
  int half = config.rotary_dim / 2;
  if (config.rotary_dim < 0 || config.rotary_dim % 2 != 0 || config.rotary_dim > head_dim ||
      static_cast<int>(inv_freq.size()) != half) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": rotary_dim ", config.rotary_dim, " with ", inv_freq.size(),
                     " frequencies does not fit heads of ", head_dim, " dimensions"));
  }
  if (half > kMaxRotaryFrequencies) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": rotary_dim ", config.rotary_dim,
                                                   " is beyond the ", 2 * kMaxRotaryFrequencies,
                                                   " this kernel supports"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kernel, "tokens", tokens));
  if (tokens == 0 || heads == 0 || half == 0) return absl::OkStatus();
  Frequencies frequencies{};
  std::copy(inv_freq.begin(), inv_freq.end(), frequencies.value);
  RotaryKernel<kBackward><<<static_cast<unsigned int>(tokens), kThreads, 0, cuda_stream>>>(
      x.data<float>(), positions.data<int32_t>(), frequencies, half, heads, head_dim,
      config.layout == RotaryLayout::kInterleaved);
  TESSERA_RETURN_IF_LAUNCH_FAILED(kernel);
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyRotary(Tensor& x, const Tensor& positions, absl::Span<const float> inv_freq,
                         const RotaryConfig& config, Stream& stream) {
  return LaunchRotary<false>("ApplyRotary", x, positions, inv_freq, config, stream);
}

absl::Status ApplyRotaryBackward(Tensor& dx, const Tensor& positions,
                                 absl::Span<const float> inv_freq, const RotaryConfig& config,
                                 Stream& stream) {
  return LaunchRotary<true>("ApplyRotaryBackward", dx, positions, inv_freq, config, stream);
}

}  // namespace tessera::kernels::cuda
