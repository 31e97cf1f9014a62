#include "runtime/model/rotary_config.h"

namespace tessera::model {

kernels::RotaryConfig RotaryConfigOf(const ModelConfig& config) {
  kernels::RotaryConfig rotary;
  rotary.rotary_dim = config.rotary_dim;
  rotary.theta = static_cast<float>(config.rope_theta);
  rotary.layout = config.rotary_layout == RotaryLayout::kInterleaved
                      ? kernels::RotaryLayout::kInterleaved
                      : kernels::RotaryLayout::kHalfSplit;
  const RopeScaling& s = config.rope_scaling;
  switch (s.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      rotary.scaling.type = kernels::RotaryScaling::Type::kLinear;
      break;
    case RopeScalingType::kLlama3:
      rotary.scaling.type = kernels::RotaryScaling::Type::kLlama3;
      break;
  }
  rotary.scaling.factor = static_cast<float>(s.factor);
  rotary.scaling.low_freq_factor = static_cast<float>(s.low_freq_factor);
  rotary.scaling.high_freq_factor = static_cast<float>(s.high_freq_factor);
  rotary.scaling.original_max_position = static_cast<int>(s.original_max_position_embeddings);
  return rotary;
}

}  // namespace tessera::model
