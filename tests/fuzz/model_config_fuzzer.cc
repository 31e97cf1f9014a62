// Fuzzes config.json parsing (ParseModelConfig). Beyond not crashing, a config the parser
// accepts must hold the invariants model_config.h promises, since the weight plan, the KV
// cache and the kernels size their buffers from them without checking again.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "nlohmann/json.hpp"
#include "runtime/model/model_config.h"

namespace {

void Require(bool condition, const char* what, const tessera::model::ModelConfig& config) {
  if (condition) return;
  std::fprintf(stderr, "accepted config breaks '%s': %s\n", what, config.Summary().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tessera::model::ModelConfig;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<ModelConfig> parsed = tessera::model::ParseModelConfig(text, "config.json");
  if (!parsed.ok()) return 0;
  const ModelConfig& config = *parsed;

  Require(config.vocab_size > 0 && config.hidden_size > 0 && config.intermediate_size > 0,
          "sizes are positive", config);
  Require(config.num_hidden_layers > 0 && config.num_attention_heads > 0, "counts are positive",
          config);
  Require(config.num_key_value_heads > 0 &&
              config.num_attention_heads % config.num_key_value_heads == 0,
          "num_key_value_heads divides num_attention_heads", config);
  Require(config.head_dim > 0, "head_dim is positive", config);
  // Without an explicit head_dim, the heads split the hidden size exactly.
  const nlohmann::json root = nlohmann::json::parse(text);  // parsed once already: valid
  if (!root.contains("head_dim") || root["head_dim"].is_null()) {
    Require(config.q_size() == config.hidden_size, "head_dim = hidden_size / heads", config);
  }
  Require(
      config.rotary_dim >= 2 && config.rotary_dim % 2 == 0 && config.rotary_dim <= config.head_dim,
      "rotary_dim is even, in [2, head_dim]", config);
  Require(static_cast<int64_t>(config.layer_sliding_window.size()) == config.num_hidden_layers,
          "one sliding window per layer", config);
  Require(config.max_position_embeddings > 0, "max_position_embeddings is positive", config);
  Require(config.q_size() > 0 && config.kv_size() > 0, "q_size and kv_size are positive", config);
  for (int tp : {1, 2, 3, 4, 8}) (void)config.CheckTensorParallel(tp);
  return 0;
}
