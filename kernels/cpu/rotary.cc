#include "kernels/cpu/rotary.h"

#include <cmath>
#include <numbers>

#include "kernels/cpu/check_shapes.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {

std::vector<float> RotaryInverseFrequencies(const RotaryConfig& config) {
  int half = config.rotary_dim / 2;
  std::vector<float> inv_freq(half);
  for (int j = 0; j < half; ++j) {
    float exponent = static_cast<float>(2 * j) / static_cast<float>(config.rotary_dim);
    inv_freq[j] = 1.0f / std::pow(config.theta, exponent);
  }
  const RotaryScaling& s = config.scaling;
  switch (s.type) {
    case RotaryScaling::Type::kNone:
      break;
    case RotaryScaling::Type::kLinear:
      for (float& f : inv_freq) f /= s.factor;
      break;
    case RotaryScaling::Type::kLlama3: {
      // Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
      float old_context = static_cast<float>(s.original_max_position);
      float low_freq_wavelen = old_context / s.low_freq_factor;
      float high_freq_wavelen = old_context / s.high_freq_factor;
      for (float& f : inv_freq) {
        float wavelen = 2.0f * std::numbers::pi_v<float> / f;
        if (wavelen > low_freq_wavelen) {
          f = f / s.factor;
        } else if (wavelen >= high_freq_wavelen) {
          float smooth = (old_context / wavelen - s.low_freq_factor) /
                         (s.high_freq_factor - s.low_freq_factor);
          f = (1.0f - smooth) * f / s.factor + smooth * f;
        }
      }
      break;
    }
  }
  return inv_freq;
}

namespace {

// Rotates x (T, heads, head_dim) in place by the angles position * inv_freq, or by their
// negatives (the transpose, for the backward) when `transpose`. The two paths differ only in
// the sign of the sine, so the backward uses the forward's cos and sin bit for bit.
absl::Status Rotate(const char* kernel, const char* name, Tensor& x, const Tensor& positions,
                    absl::Span<const float> inv_freq, const RotaryConfig& config, bool transpose) {
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kernel, name, x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kernel, name, x, 3));
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kernel, "positions", positions, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kernel, "positions", positions, {x.dim(0)}));
  int64_t tokens = x.dim(0), heads = x.dim(1), head_dim = x.dim(2);
  int half = config.rotary_dim / 2;
  if (config.rotary_dim % 2 != 0 || config.rotary_dim > head_dim ||
      static_cast<int>(inv_freq.size()) != half) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": rotary_dim ", config.rotary_dim, " with ", inv_freq.size(),
                     " frequencies does not fit heads of ", head_dim, " dimensions"));
  }
  std::vector<float> cos(half), sin(half);
  const int32_t* pos = positions.data<int32_t>();
  float* data = x.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < half; ++j) {
      float angle = static_cast<float>(pos[t]) * inv_freq[j];
      cos[j] = std::cos(angle);
      sin[j] = transpose ? -std::sin(angle) : std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = data + (t * heads + h) * head_dim;
      for (int j = 0; j < half; ++j) {
        // The two dimensions rotated together.
        int a = config.layout == RotaryLayout::kHalfSplit ? j : 2 * j;
        int b = config.layout == RotaryLayout::kHalfSplit ? j + half : 2 * j + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * cos[j] - x1 * sin[j];
        v[b] = x1 * cos[j] + x0 * sin[j];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyRotary(Tensor& x, const Tensor& positions, absl::Span<const float> inv_freq,
                         const RotaryConfig& config) {
  return Rotate("ApplyRotary", "x", x, positions, inv_freq, config, /*transpose=*/false);
}

absl::Status ApplyRotaryBackward(Tensor& dx, const Tensor& positions,
                                 absl::Span<const float> inv_freq, const RotaryConfig& config) {
  return Rotate("ApplyRotaryBackward", "dx", dx, positions, inv_freq, config,
                /*transpose=*/true);
}

}  // namespace tessera::kernels
