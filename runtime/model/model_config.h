#ifndef TESSERA_RUNTIME_MODEL_MODEL_CONFIG_H_
#define TESSERA_RUNTIME_MODEL_MODEL_CONFIG_H_

// The shape of a decoder-only transformer, read from a Hugging Face model directory
// (config.json and, when present, generation_config.json).
//
// Supported architectures ("architectures"[0] in config.json, or "model_type" when that list
// is absent) and what distinguishes them here:
//   LlamaForCausalLM    half-split rotary; optional q/k/v/o biases ("attention_bias").
//   MistralForCausalLM  as Llama without biases; "sliding_window" on every layer.
//   Qwen2ForCausalLM    q/k/v biases always; sliding window on layers >= "max_window_layers"
//                       when "use_sliding_window" (or as "layer_types" lists).
//   GlmForCausalLM      GLM-4 as published for transformers (THUDM/glm-4-9b-*-hf): interleaved
//                       rotary on the first head_dim * partial_rotary_factor (default 0.5)
//                       dimensions of each head, q/k/v biases ("attention_bias", default
//                       true), one fused mlp.gate_up_proj ([2 * intermediate, hidden], gate
//                       rows first).
//   Glm4ForCausalLM     GLM plus two more RMSNorms per layer, applied to the attention and
//                       MLP outputs before each residual add (post_self_attn_layernorm,
//                       post_mlp_layernorm).
// Every architecture uses RMSNorm, SiLU-gated MLPs and rotary position embeddings.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/dtype.h"

namespace tessera::model {

enum class Architecture { kLlama, kMistral, kQwen2, kGlm, kGlm4 };

// "LlamaForCausalLM", ...
absl::string_view ArchitectureName(Architecture architecture);

// How rotary embeddings pair the `rotary_dim` rotated dimensions of a head (the remaining
// head_dim - rotary_dim dimensions pass through unchanged):
//   kHalfSplit    (x[i], x[i + rotary_dim/2]) for i < rotary_dim/2 — Llama, Mistral, Qwen2
//                 ("rotate_half", GPT-NeoX style).
//   kInterleaved  (x[2i], x[2i + 1]) for i < rotary_dim/2 — GLM (GPT-J style).
// In both, pair i turns by position * inv_freq[i], inv_freq[i] = rope_theta^(-2i/rotary_dim)
// before scaling.
enum class RotaryLayout { kHalfSplit, kInterleaved };

enum class RopeScalingType {
  kNone,    // no "rope_scaling", or rope_type "default"
  kLinear,  // every inv_freq divided by `factor`
  kLlama3,  // Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp
            // between (wavelengths measured against original_max_position_embeddings)
};

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                           // kLinear, kLlama3
  double low_freq_factor = 1.0;                  // kLlama3
  double high_freq_factor = 4.0;                 // kLlama3
  int64_t original_max_position_embeddings = 0;  // kLlama3
};

// Sampling defaults from generation_config.json, with transformers' defaults for whatever
// the file (or the file itself) leaves out.
struct GenerationDefaults {
  bool do_sample = false;
  double temperature = 1.0;  // >= 0
  int64_t top_k = 50;        // >= 0; 0 turns top-k off
  double top_p = 1.0;        // in (0, 1]
  // Tokens that end generation: generation_config.json's eos_token_id when present,
  // otherwise config.json's.
  std::vector<int64_t> eos_token_ids;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // config.json "model_type" ("llama", "glm", ...), may be empty

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // = num_attention_heads when config.json has none
  int head_dim = 0;             // explicit, or hidden_size / num_attention_heads

  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double partial_rotary_factor = 1.0;
  int rotary_dim = 0;  // int(head_dim * partial_rotary_factor), even, in [2, head_dim]
  RotaryLayout rotary_layout = RotaryLayout::kHalfSplit;
  int64_t max_position_embeddings = 0;

  bool tie_word_embeddings = false;  // lm_head reuses embed_tokens.weight
  DType torch_dtype = DType::kF32;   // the dtype the weights were published in

  // Which linear layers carry a bias. Row-parallel o_proj's bias (Llama with attention_bias)
  // is added once, after the all-reduce.
  bool qkv_bias = false;
  bool o_proj_bias = false;
  // GLM: mlp.gate_up_proj instead of mlp.gate_proj and mlp.up_proj.
  bool fused_gate_up = false;
  // Glm4: post_self_attn_layernorm and post_mlp_layernorm in every layer.
  bool post_sublayer_norms = false;

  // Sliding-window attention per layer: 0 for full causal attention, otherwise W, meaning a
  // query at position p sees keys at positions in (p - W, p]. num_hidden_layers entries.
  std::vector<int64_t> layer_sliding_window;

  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> pad_token_id;

  GenerationDefaults generation;

  // Query/key/value widths of a full (unsplit) layer.
  int64_t q_size() const { return int64_t{num_attention_heads} * head_dim; }
  int64_t kv_size() const { return int64_t{num_key_value_heads} * head_dim; }
  // Query heads that share one key/value head.
  int kv_group_size() const { return num_attention_heads / num_key_value_heads; }
  // 0 when layer `layer` uses full causal attention.
  int64_t SlidingWindowFor(int layer) const { return layer_sliding_window[layer]; }

  // Whether this model can be split over `tp` ranks: tp >= 1 must divide num_attention_heads
  // and intermediate_size, and either divide num_key_value_heads (each rank gets its own KV
  // heads) or be a multiple of it (each KV head is replicated on tp / num_key_value_heads
  // ranks). The vocabulary need not divide: vocab shards are padded (see weight_plan.h).
  // INVALID_ARGUMENT naming the field and both numbers otherwise.
  absl::Status CheckTensorParallel(int tp) const;

  // One line for logs: "GlmForCausalLM: 40 layers, hidden 4096, heads 32/2 x 128, ...".
  std::string Summary() const;
};

// Parses the text of a config.json. `source` names it in error messages (a path).
// Errors:
//   INVALID_ARGUMENT  bad JSON (with `source` and the parser's position); a missing required
//                     field (vocab_size, hidden_size, intermediate_size, num_hidden_layers,
//                     num_attention_heads) or one of the wrong type, named; inconsistent
//                     values, naming the field (num_attention_heads not dividing hidden_size
//                     without an explicit head_dim, num_key_value_heads not dividing
//                     num_attention_heads, a non-positive size, ...).
//   UNIMPLEMENTED     an architecture, rope_scaling type, hidden_act, torch_dtype or option
//                     (mlp_bias, partial rotary outside GLM) that Tessera does not support,
//                     named, with what is supported.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source = "config.json");

// Parses the text of a generation_config.json into `config->generation` (whose eos tokens
// start out as config.json's). Same error conventions as ParseModelConfig.
absl::Status ParseGenerationConfig(absl::string_view json_text, absl::string_view source,
                                   ModelConfig* config);

// Reads `dir`/config.json (NOT_FOUND naming the path when absent) and, when present,
// `dir`/generation_config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_MODEL_CONFIG_H_
