#ifndef TESSERA_KERNELS_CUDA_ROTARY_H_
#define TESSERA_KERNELS_CUDA_ROTARY_H_

// kernels/cpu/rotary.h on a GPU: rotary position embeddings, half-split and interleaved,
// full or partial. The frequencies come from kernels::RotaryInverseFrequencies as on the CPU.

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cpu/rotary.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// The most frequencies (rotary_dim / 2) ApplyRotary takes: enough for heads of 512 dimensions.
inline constexpr int kMaxRotaryFrequencies = 256;

// x (T, heads, head_dim) f32, rotated in place at positions (T) i32, both on the stream's
// device. inv_freq (rotary_dim / 2) stays in host memory, exactly as the CPU kernel takes it:
// it is copied by value into the kernel's parameters at launch (1 KiB at most), so it needs
// no device buffer and the caller may reuse it as soon as the call returns. Angles are
// position * inv_freq in f32; their sine and cosine are CUDA's sincosf (within 2 ulp).
absl::Status ApplyRotary(Tensor& x, const Tensor& positions, absl::Span<const float> inv_freq,
                         const RotaryConfig& config, Stream& stream);

// The backward of ApplyRotary, for training: dx (T, heads, head_dim) f32, the gradient of the
// rotated x, becomes in place the gradient of x before rotation: the rotation by the negative
// angle, with the same sincosf as the forward's; dimensions past rotary_dim pass through.
// Arguments as for ApplyRotary.
absl::Status ApplyRotaryBackward(Tensor& dx, const Tensor& positions,
                                 absl::Span<const float> inv_freq, const RotaryConfig& config,
                                 Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_ROTARY_H_
