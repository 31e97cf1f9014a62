// Fuzzes generation_config.json parsing (ParseGenerationConfig) over a real config.json's
// defaults. Accepted values must lie in the ranges model_config.h documents: the sampler
// takes them as they are.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/model/model_config.h"

namespace {

// A small Llama config.json: what the generation config's defaults start from.
constexpr char kConfig[] = R"({
  "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
  "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2
})";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tessera::model::ModelConfig;
  static const ModelConfig* const base = [] {
    absl::StatusOr<ModelConfig> config = tessera::model::ParseModelConfig(kConfig);
    if (!config.ok()) {
      std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
      std::abort();
    }
    return new ModelConfig(*std::move(config));
  }();

  ModelConfig config = *base;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::Status status =
      tessera::model::ParseGenerationConfig(text, "generation_config.json", &config);
  if (!status.ok()) {
    // A refused file changes nothing.
    if (config.generation.eos_token_ids != base->generation.eos_token_ids) std::abort();
    return 0;
  }
  const tessera::model::GenerationDefaults& generation = config.generation;
  if (!(generation.temperature >= 0) || !std::isfinite(generation.temperature)) std::abort();
  if (generation.top_k < 0) std::abort();
  if (!(generation.top_p > 0 && generation.top_p <= 1)) std::abort();
  return 0;
}
