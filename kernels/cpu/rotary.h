#ifndef TESSERA_KERNELS_CPU_ROTARY_H_
#define TESSERA_KERNELS_CPU_ROTARY_H_

// Rotary position embeddings in both layouts the supported families use:
//  - half-split (Llama, Mistral, Qwen2): dimension i pairs with i + rotary_dim/2;
//  - interleaved (GLM): dimension 2j pairs with 2j + 1, over the first rotary_dim
//    dimensions only (partial rotary); the rest of the head passes through.
// Frequencies follow Hugging Face transformers: inv_freq[j] = 1 / theta^(2j / rotary_dim) in
// f32, with the "linear" and "llama3" scalings applied to them.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

enum class RotaryLayout { kHalfSplit, kInterleaved };

struct RotaryScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  float factor = 1.0f;               // linear and llama3
  float low_freq_factor = 1.0f;      // llama3
  float high_freq_factor = 4.0f;     // llama3
  int original_max_position = 8192;  // llama3: original_max_position_embeddings
};

struct RotaryConfig {
  int rotary_dim = 0;  // dimensions rotated at the start of each head (even, <= head_dim)
  float theta = 10000.0f;
  RotaryLayout layout = RotaryLayout::kHalfSplit;
  RotaryScaling scaling;
};

// inv_freq (rotary_dim / 2), scaled.
std::vector<float> RotaryInverseFrequencies(const RotaryConfig& config);

// x (T, heads, head_dim) f32, rotated in place at positions (T) i32 with inv_freq from
// RotaryInverseFrequencies(config). Angles are position * inv_freq in f32, as transformers
// computes them.
absl::Status ApplyRotary(Tensor& x, const Tensor& positions, absl::Span<const float> inv_freq,
                         const RotaryConfig& config);

// The backward of ApplyRotary, for training: dx (T, heads, head_dim) f32, the gradient of the
// rotated x, becomes in place the gradient of x before rotation. A rotation's transpose is the
// rotation by the negative angle, taken with the same f32 cos and sin as the forward's;
// dimensions past rotary_dim pass through. Arguments as for ApplyRotary.
absl::Status ApplyRotaryBackward(Tensor& dx, const Tensor& positions,
                                 absl::Span<const float> inv_freq, const RotaryConfig& config);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_ROTARY_H_
