#ifndef TESSERA_KERNELS_OPS_ROTARY_H_
#define TESSERA_KERNELS_OPS_ROTARY_H_

// Rotary position embeddings on the device of x (see dispatch.h): kernels/cpu/rotary.h on
// the CPU, kernels/cuda/rotary.h on a GPU. The frequencies stay in host memory either way
// (kernels::RotaryInverseFrequencies).

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cpu/rotary.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

// x (T, heads, head_dim) f32, rotated in place at positions (T) i32 (on x's device).
absl::Status ApplyRotary(Tensor& x, const Tensor& positions, absl::Span<const float> inv_freq,
                         const RotaryConfig& config, Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_ROTARY_H_
