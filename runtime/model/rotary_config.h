#ifndef TESSERA_RUNTIME_MODEL_ROTARY_CONFIG_H_
#define TESSERA_RUNTIME_MODEL_ROTARY_CONFIG_H_

#include "kernels/cpu/rotary.h"
#include "runtime/model/model_config.h"

namespace tessera::model {

// The rotary embedding a model's config describes (dimensions, theta, layout, scaling), in
// the kernels' terms: one definition for the serving forward and the trainer.
kernels::RotaryConfig RotaryConfigOf(const ModelConfig& config);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_ROTARY_CONFIG_H_
