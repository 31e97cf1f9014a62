// Tests of runtime/model/model_config.h on config.json texts modelled on published Hugging
// Face checkpoints (Llama-3-8B, Llama-3.1-8B, Mistral-7B-v0.1, Qwen2-7B, GLM-4-9B-chat-hf,
// GLM-4-9B-0414) and on every error the parser reports.

#include "runtime/model/model_config.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "tests/model/model_test_util.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::IsError;

constexpr absl::string_view kLlama3_8B = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

constexpr absl::string_view kLlama31_8B = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

constexpr absl::string_view kMistral7B = R"({
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

constexpr absl::string_view kQwen2_7B = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 131072,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.37.2",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
})";

constexpr absl::string_view kGlm4_9B_Hf = R"({
  "architectures": ["GlmForCausalLM"],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": [151329, 151336, 151338],
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 13696,
  "max_position_embeddings": 131072,
  "model_type": "glm",
  "num_attention_heads": 32,
  "num_hidden_layers": 40,
  "num_key_value_heads": 2,
  "pad_token_id": 151329,
  "partial_rotary_factor": 0.5,
  "rms_norm_eps": 1.5625e-07,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.46.0.dev0",
  "use_cache": true,
  "vocab_size": 151552
})";

constexpr absl::string_view kGlm4_9B_0414 = R"({
  "architectures": ["Glm4ForCausalLM"],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": [151329, 151336, 151338],
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 13696,
  "max_position_embeddings": 32768,
  "model_type": "glm4",
  "num_attention_heads": 32,
  "num_hidden_layers": 40,
  "num_key_value_heads": 2,
  "pad_token_id": 151329,
  "partial_rotary_factor": 0.5,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.52.0.dev0",
  "use_cache": true,
  "vocab_size": 151552
})";

// `text` with the first occurrence of `from` replaced by `to`; fails the test if absent.
std::string Edit(absl::string_view text, absl::string_view from, absl::string_view to) {
  std::string result(text);
  size_t at = result.find(std::string(from));
  EXPECT_NE(at, std::string::npos) << "'" << from << "' is not in the config";
  if (at != std::string::npos) result.replace(at, from.size(), std::string(to));
  return result;
}

// `text` without the line that sets `key` (every test config has one key per line).
std::string Remove(absl::string_view text, absl::string_view key) {
  std::string result(text);
  size_t at = result.find(absl::StrCat("\"", key, "\":"));
  EXPECT_NE(at, std::string::npos) << key << " is not in the config";
  if (at == std::string::npos) return result;
  size_t line_start = result.rfind('\n', at) + 1;
  size_t line_end = result.find('\n', at);
  result.erase(line_start, line_end - line_start + 1);
  // The last field has no comma; the previous line's comma would then dangle.
  size_t close = result.find_last_not_of(" \n}");
  if (result[close] == ',') result.erase(close, 1);
  return result;
}

TEST(ModelConfigTest, Llama3_8B) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kLlama3_8B));
  EXPECT_EQ(config.architecture, Architecture::kLlama);
  EXPECT_EQ(config.model_type, "llama");
  EXPECT_EQ(config.vocab_size, 128256);
  EXPECT_EQ(config.hidden_size, 4096);
  EXPECT_EQ(config.intermediate_size, 14336);
  EXPECT_EQ(config.num_hidden_layers, 32);
  EXPECT_EQ(config.num_attention_heads, 32);
  EXPECT_EQ(config.num_key_value_heads, 8);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.kv_group_size(), 4);
  EXPECT_EQ(config.q_size(), 4096);
  EXPECT_EQ(config.kv_size(), 1024);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(config.rope_theta, 500000.0);
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_DOUBLE_EQ(config.partial_rotary_factor, 1.0);
  EXPECT_EQ(config.rotary_dim, 128);
  EXPECT_EQ(config.rotary_layout, RotaryLayout::kHalfSplit);
  EXPECT_EQ(config.max_position_embeddings, 8192);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_EQ(config.torch_dtype, DType::kBF16);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_FALSE(config.o_proj_bias);
  EXPECT_FALSE(config.fused_gate_up);
  EXPECT_FALSE(config.post_sublayer_norms);
  EXPECT_EQ(config.layer_sliding_window, std::vector<int64_t>(32, 0));
  EXPECT_EQ(config.bos_token_id, 128000);
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>{128001});
  EXPECT_FALSE(config.pad_token_id.has_value());
  EXPECT_EQ(config.generation.eos_token_ids, std::vector<int64_t>{128001});
  EXPECT_FALSE(config.generation.do_sample);
  EXPECT_TRUE(::tessera::testing::Contains(config.Summary(), "LlamaForCausalLM: 32 layers"));
}

TEST(ModelConfigTest, Llama31RopeScaling) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kLlama31_8B));
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(config.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(config.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(config.max_position_embeddings, 131072);
  EXPECT_EQ(config.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
}

TEST(ModelConfigTest, LinearRopeScalingUnderEitherKey) {
  for (absl::string_view key : {"type", "rope_type"}) {
    std::string text =
        Edit(kLlama3_8B, R"("rope_scaling": null)",
             absl::StrCat(R"("rope_scaling": {")", key, R"(": "linear", "factor": 2.5})"));
    ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
    EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kLinear) << key;
    EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 2.5);
  }
  std::string text =
      Edit(kLlama3_8B, R"("rope_scaling": null)", R"("rope_scaling": {"rope_type": "default"})");
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kNone);
}

TEST(ModelConfigTest, RopeParametersOfNewerTransformers) {
  std::string text = Edit(Remove(kLlama3_8B, "rope_theta"), R"("rope_scaling": null)",
                          R"("rope_parameters": {"rope_type": "linear", "factor": 4.0,
                              "rope_theta": 250000.0})");
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
  EXPECT_DOUBLE_EQ(config.rope_theta, 250000.0);
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 4.0);
}

TEST(ModelConfigTest, Mistral7BSlidesEveryLayer) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kMistral7B));
  EXPECT_EQ(config.architecture, Architecture::kMistral);
  EXPECT_EQ(config.layer_sliding_window, std::vector<int64_t>(32, 4096));
  EXPECT_EQ(config.SlidingWindowFor(31), 4096);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>{2});

  ASSERT_OK_AND_ASSIGN(
      ModelConfig full,
      ParseModelConfig(Edit(kMistral7B, R"("sliding_window": 4096)", R"("sliding_window": null)")));
  EXPECT_EQ(full.layer_sliding_window, std::vector<int64_t>(32, 0));
}

TEST(ModelConfigTest, AbsentSlidingWindowTakesTheTransformersDefault) {
  ASSERT_OK_AND_ASSIGN(ModelConfig mistral, ParseModelConfig(Remove(kMistral7B, "sliding_window")));
  EXPECT_EQ(mistral.layer_sliding_window, std::vector<int64_t>(32, 4096));
  ASSERT_OK_AND_ASSIGN(ModelConfig qwen, ParseModelConfig(Edit(Remove(kQwen2_7B, "sliding_window"),
                                                               R"("use_sliding_window": false)",
                                                               R"("use_sliding_window": true)")));
  EXPECT_EQ(qwen.SlidingWindowFor(27), 0);  // max_window_layers 28: no layer at or past it
  ASSERT_OK_AND_ASSIGN(
      ModelConfig qwen_some,
      ParseModelConfig(Edit(Edit(Remove(kQwen2_7B, "sliding_window"),
                                 R"("use_sliding_window": false)", R"("use_sliding_window": true)"),
                            R"("max_window_layers": 28)", R"("max_window_layers": 27)")));
  EXPECT_EQ(qwen_some.SlidingWindowFor(27), 4096);
  EXPECT_EQ(qwen_some.SlidingWindowFor(26), 0);
}

TEST(ModelConfigTest, MistralExplicitHeadDim) {
  // Mistral-Nemo: head_dim 128 although hidden_size / heads = 160.
  std::string text = Edit(kMistral7B, R"("hidden_size": 4096)", R"("hidden_size": 5120,
  "head_dim": 128)");
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.q_size(), 4096);
}

TEST(ModelConfigTest, Qwen2_7B) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kQwen2_7B));
  EXPECT_EQ(config.architecture, Architecture::kQwen2);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.num_key_value_heads, 4);
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_FALSE(config.o_proj_bias);
  EXPECT_DOUBLE_EQ(config.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-6);
  // use_sliding_window is false: no layer slides although sliding_window is set.
  EXPECT_EQ(config.layer_sliding_window, std::vector<int64_t>(28, 0));
  EXPECT_EQ(config.vocab_size, 152064);
}

TEST(ModelConfigTest, Qwen2SlidingWindowFromMaxWindowLayers) {
  std::string text =
      Edit(Edit(Edit(kQwen2_7B, R"("use_sliding_window": false)", R"("use_sliding_window": true)"),
                R"("max_window_layers": 28)", R"("max_window_layers": 20)"),
           R"("sliding_window": 131072)", R"("sliding_window": 4096)");
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
  for (int layer = 0; layer < 28; ++layer) {
    EXPECT_EQ(config.SlidingWindowFor(layer), layer >= 20 ? 4096 : 0) << "layer " << layer;
  }
}

TEST(ModelConfigTest, Qwen2SlidingWindowFromLayerTypes) {
  std::string types = "[";
  for (int i = 0; i < 28; ++i) {
    absl::StrAppend(&types, i > 0 ? ", " : "",
                    i % 2 == 1 ? "\"sliding_attention\"" : "\"full_attention\"");
  }
  types += "]";
  std::string text =
      Edit(Edit(kQwen2_7B, R"("use_sliding_window": false)", R"("use_sliding_window": true)"),
           R"("max_window_layers": 28)", absl::StrCat(R"("layer_types": )", types));
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
  for (int layer = 0; layer < 28; ++layer) {
    EXPECT_EQ(config.SlidingWindowFor(layer), layer % 2 == 1 ? 131072 : 0) << "layer " << layer;
  }
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(text, "\"sliding_attention\"", "\"chunked\"")),
                      absl::StatusCode::kInvalidArgument, {"layer_types", "chunked"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(text, "\"full_attention\", ", "")),
                      absl::StatusCode::kInvalidArgument, {"layer_types", "28"}));
}

TEST(ModelConfigTest, Glm4_9B) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kGlm4_9B_Hf));
  EXPECT_EQ(config.architecture, Architecture::kGlm);
  EXPECT_EQ(config.num_key_value_heads, 2);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_DOUBLE_EQ(config.partial_rotary_factor, 0.5);
  EXPECT_EQ(config.rotary_dim, 64);
  EXPECT_EQ(config.rotary_layout, RotaryLayout::kInterleaved);
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_FALSE(config.o_proj_bias);
  EXPECT_TRUE(config.fused_gate_up);
  EXPECT_FALSE(config.post_sublayer_norms);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1.5625e-7);
  EXPECT_EQ(config.eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));
  EXPECT_EQ(config.pad_token_id, 151329);
  EXPECT_FALSE(config.bos_token_id.has_value());
  EXPECT_EQ(config.layer_sliding_window, std::vector<int64_t>(40, 0));
}

TEST(ModelConfigTest, GlmDefaultsFromTransformers) {
  // GlmConfig's defaults: partial_rotary_factor 0.5, attention_bias true, three eos tokens.
  std::string text = Remove(Remove(Remove(kGlm4_9B_Hf, "partial_rotary_factor"), "attention_bias"),
                            "eos_token_id");
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(text));
  EXPECT_EQ(config.rotary_dim, 64);
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_EQ(config.eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));

  ASSERT_OK_AND_ASSIGN(ModelConfig no_bias,
                       ParseModelConfig(Edit(kGlm4_9B_Hf, R"("attention_bias": true)",
                                             R"("attention_bias": false)")));
  EXPECT_FALSE(no_bias.qkv_bias);
}

TEST(ModelConfigTest, Glm4AddsPostSublayerNorms) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kGlm4_9B_0414));
  EXPECT_EQ(config.architecture, Architecture::kGlm4);
  EXPECT_TRUE(config.post_sublayer_norms);
  EXPECT_TRUE(config.fused_gate_up);
  EXPECT_EQ(config.rotary_layout, RotaryLayout::kInterleaved);
  EXPECT_EQ(config.rotary_dim, 64);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-5);
}

TEST(ModelConfigTest, LlamaAttentionBiasCoversOutputProjection) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config,
                       ParseModelConfig(Edit(kLlama3_8B, R"("attention_bias": false)",
                                             R"("attention_bias": true)")));
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_TRUE(config.o_proj_bias);
}

TEST(ModelConfigTest, ArchitectureFromModelTypeAlone) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(Remove(kQwen2_7B, "architectures")));
  EXPECT_EQ(config.architecture, Architecture::kQwen2);
}

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  constexpr absl::string_view kMinimal = R"({"architectures": ["LlamaForCausalLM"],
    "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4})";
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kMinimal));
  EXPECT_EQ(config.num_key_value_heads, 4);
  EXPECT_EQ(config.head_dim, 16);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(config.rope_theta, 10000.0);
  EXPECT_EQ(config.max_position_embeddings, 2048);
  EXPECT_EQ(config.torch_dtype, DType::kF32);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_TRUE(config.eos_token_ids.empty());
  EXPECT_EQ(config.layer_sliding_window.size(), 2u);
}

TEST(ModelConfigTest, TorchDTypeNames) {
  const std::pair<absl::string_view, DType> cases[] = {
      {"float32", DType::kF32}, {"bfloat16", DType::kBF16}, {"float16", DType::kF16}};
  for (const auto& [name, dtype] : cases) {
    ASSERT_OK_AND_ASSIGN(
        ModelConfig config,
        ParseModelConfig(Edit(kLlama3_8B, "\"bfloat16\"", absl::StrCat("\"", name, "\""))));
    EXPECT_EQ(config.torch_dtype, dtype) << name;
  }
  // transformers >= 4.56 writes "dtype".
  ASSERT_OK_AND_ASSIGN(ModelConfig config,
                       ParseModelConfig(Edit(kLlama3_8B, "\"torch_dtype\": \"bfloat16\"",
                                             "\"dtype\": \"float16\"")));
  EXPECT_EQ(config.torch_dtype, DType::kF16);
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "\"bfloat16\"", "\"int8\"")),
                      absl::StatusCode::kUnimplemented, {"torch_dtype", "int8"}));
}

TEST(ModelConfigErrorTest, UnsupportedArchitectureIsNamed) {
  EXPECT_TRUE(
      IsError(ParseModelConfig(Edit(kLlama3_8B, "LlamaForCausalLM", "GPT2LMHeadModel"),
                               "/models/x/config.json"),
              absl::StatusCode::kUnimplemented,
              {"/models/x/config.json", "GPT2LMHeadModel", "LlamaForCausalLM", "GlmForCausalLM"}));
  EXPECT_TRUE(
      IsError(ParseModelConfig(Edit(Remove(kLlama3_8B, "architectures"), "\"llama\"", "\"bert\"")),
              absl::StatusCode::kUnimplemented, {"bert"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Remove(Remove(kLlama3_8B, "architectures"), "model_type")),
                      absl::StatusCode::kInvalidArgument, {"architectures", "model_type"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"(["LlamaForCausalLM"])", "42")),
                      absl::StatusCode::kInvalidArgument, {"architectures"}));
}

TEST(ModelConfigErrorTest, BadJsonNamesTheFile) {
  EXPECT_TRUE(IsError(ParseModelConfig("{\"vocab_size\": 12,", "/ckpt/config.json"),
                      absl::StatusCode::kInvalidArgument, {"/ckpt/config.json", "JSON"}));
  EXPECT_TRUE(IsError(ParseModelConfig("", "/ckpt/config.json"), absl::StatusCode::kInvalidArgument,
                      {"/ckpt/config.json"}));
  EXPECT_TRUE(IsError(ParseModelConfig("[1, 2]", "/ckpt/config.json"),
                      absl::StatusCode::kInvalidArgument, {"/ckpt/config.json", "object"}));
}

TEST(ModelConfigErrorTest, MissingRequiredFieldIsNamed) {
  for (absl::string_view field : {"vocab_size", "hidden_size", "intermediate_size",
                                  "num_hidden_layers", "num_attention_heads"}) {
    EXPECT_TRUE(IsError(ParseModelConfig(Remove(kLlama3_8B, field), "c.json"),
                        absl::StatusCode::kInvalidArgument,
                        {"c.json", std::string(field), "missing"}))
        << field;
  }
}

TEST(ModelConfigErrorTest, WrongTypesAreNamed) {
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "4096,", "\"4096\",")),
                      absl::StatusCode::kInvalidArgument, {"hidden_size", "integer"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "4096,", "4096.5,")),
                      absl::StatusCode::kInvalidArgument, {"hidden_size"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "1e-05", "\"tiny\"")),
                      absl::StatusCode::kInvalidArgument, {"rms_norm_eps", "number"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("tie_word_embeddings": false)",
                                            R"("tie_word_embeddings": 0)")),
                      absl::StatusCode::kInvalidArgument, {"tie_word_embeddings"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "128001", "\"</s>\"")),
                      absl::StatusCode::kInvalidArgument, {"eos_token_id"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "128001", "-1")),
                      absl::StatusCode::kInvalidArgument, {"eos_token_id"}));
}

TEST(ModelConfigErrorTest, InconsistentValuesAreNamed) {
  // 32 heads do not divide hidden 4100 (and there is no head_dim).
  EXPECT_TRUE(IsError(
      ParseModelConfig(Edit(kLlama3_8B, R"("hidden_size": 4096)", R"("hidden_size": 4100)")),
      absl::StatusCode::kInvalidArgument, {"num_attention_heads", "32", "hidden_size", "4100"}));
  // 12 KV heads do not divide 32 query heads.
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("num_key_value_heads": 8)",
                                            R"("num_key_value_heads": 12)")),
                      absl::StatusCode::kInvalidArgument, {"num_key_value_heads", "12", "32"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("num_key_value_heads": 8)",
                                            R"("num_key_value_heads": 0)")),
                      absl::StatusCode::kInvalidArgument, {"num_key_value_heads"}));
  EXPECT_TRUE(
      IsError(ParseModelConfig(Edit(kLlama3_8B, R"("vocab_size": 128256)", R"("vocab_size": 0)")),
              absl::StatusCode::kInvalidArgument, {"vocab_size"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("num_hidden_layers": 32)",
                                            R"("num_hidden_layers": -2)")),
                      absl::StatusCode::kInvalidArgument, {"num_hidden_layers"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("num_hidden_layers": 32)",
                                            R"("num_hidden_layers": 2000000000)")),
                      absl::StatusCode::kInvalidArgument, {"num_hidden_layers", "65536"}));
  // Without head_dim, hidden_size / heads is the head size; 2^32 + 128 of it once became 128.
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("hidden_size": 4096)",
                                            R"("hidden_size": 137438957568)")),
                      absl::StatusCode::kInvalidArgument,
                      {"hidden_size", "137438957568", "head_dim 4294967424", "65536"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "1e-05", "0")),
                      absl::StatusCode::kInvalidArgument, {"rms_norm_eps"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "500000.0", "-1")),
                      absl::StatusCode::kInvalidArgument, {"rope_theta"}));
  EXPECT_TRUE(IsError(
      ParseModelConfig(Edit(kMistral7B, R"("sliding_window": 4096)", R"("sliding_window": 0)")),
      absl::StatusCode::kInvalidArgument, {"sliding_window"}));
  // GLM: 0.01 of 128 dimensions rounds down to 1 rotary dimension, which cannot be paired.
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kGlm4_9B_Hf, R"("partial_rotary_factor": 0.5)",
                                            R"("partial_rotary_factor": 0.01)")),
                      absl::StatusCode::kInvalidArgument, {"partial_rotary_factor"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kGlm4_9B_Hf, R"("partial_rotary_factor": 0.5)",
                                            R"("partial_rotary_factor": 1.5)")),
                      absl::StatusCode::kInvalidArgument, {"partial_rotary_factor"}));
}

TEST(ModelConfigErrorTest, UnsupportedOptionsAreNamed) {
  for (absl::string_view type : {"yarn", "dynamic", "longrope"}) {
    std::string text =
        Edit(kLlama3_8B, R"("rope_scaling": null)",
             absl::StrCat(R"("rope_scaling": {"rope_type": ")", type, R"(", "factor": 4.0})"));
    EXPECT_TRUE(IsError(ParseModelConfig(text), absl::StatusCode::kUnimplemented,
                        {"rope_scaling", std::string(type), "linear", "llama3"}))
        << type;
  }
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, "\"silu\"", "\"gelu\"")),
                      absl::StatusCode::kUnimplemented, {"hidden_act", "gelu"}));
  EXPECT_TRUE(
      IsError(ParseModelConfig(Edit(kLlama31_8B, R"("mlp_bias": false)", R"("mlp_bias": true)")),
              absl::StatusCode::kUnimplemented, {"mlp_bias"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("rope_scaling": null)",
                                            R"("partial_rotary_factor": 0.5)")),
                      absl::StatusCode::kUnimplemented,
                      {"partial_rotary_factor", "LlamaForCausalLM"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"(["LlamaForCausalLM"])",
                                            R"(["LlamaForCausalLM", "MistralForCausalLM"])")),
                      absl::StatusCode::kUnimplemented, {"architectures"}));
}

TEST(ModelConfigErrorTest, IncompleteRopeScaling) {
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama31_8B, R"("low_freq_factor": 1.0,)", "")),
                      absl::StatusCode::kInvalidArgument, {"rope_scaling.low_freq_factor"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama31_8B, R"("original_max_position_embeddings")",
                                            R"("original_max")")),
                      absl::StatusCode::kInvalidArgument,
                      {"rope_scaling.original_max_position_embeddings"}));
  EXPECT_TRUE(IsError(
      ParseModelConfig(Edit(kLlama31_8B, R"("low_freq_factor": 1.0)", R"("low_freq_factor": 4.0)")),
      absl::StatusCode::kInvalidArgument, {"low_freq_factor"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama31_8B, R"("factor": 8.0)", R"("factor": -8.0)")),
                      absl::StatusCode::kInvalidArgument, {"factor"}));
  EXPECT_TRUE(IsError(ParseModelConfig(Edit(kLlama3_8B, R"("rope_scaling": null)",
                                            R"("rope_scaling": {"factor": 2.0})")),
                      absl::StatusCode::kInvalidArgument, {"rope_scaling.rope_type"}));
  EXPECT_TRUE(IsError(
      ParseModelConfig(Edit(kLlama3_8B, R"("rope_scaling": null)", R"("rope_scaling": "linear")")),
      absl::StatusCode::kInvalidArgument, {"rope_scaling"}));
}

TEST(TensorParallelTest, AcceptsSplitsThatDivide) {
  ASSERT_OK_AND_ASSIGN(ModelConfig llama, ParseModelConfig(kLlama3_8B));
  for (int tp : {1, 2, 4, 8}) EXPECT_OK(llama.CheckTensorParallel(tp)) << tp;
  // 8 KV heads on 16 or 32 ranks: each KV head replicated.
  EXPECT_OK(llama.CheckTensorParallel(16));
  EXPECT_OK(llama.CheckTensorParallel(32));

  ASSERT_OK_AND_ASSIGN(ModelConfig glm, ParseModelConfig(kGlm4_9B_Hf));
  for (int tp : {1, 2, 4, 8}) EXPECT_OK(glm.CheckTensorParallel(tp)) << tp;
  // A vocabulary that tp does not divide is padded, not refused.
  ASSERT_OK_AND_ASSIGN(ModelConfig odd_vocab,
                       ParseModelConfig(Edit(kLlama3_8B, "128256", "128257")));
  EXPECT_OK(odd_vocab.CheckTensorParallel(8));
}

TEST(TensorParallelTest, RefusesSplitsThatDoNot) {
  ASSERT_OK_AND_ASSIGN(ModelConfig qwen, ParseModelConfig(kQwen2_7B));
  EXPECT_OK(qwen.CheckTensorParallel(4));
  EXPECT_TRUE(IsError(qwen.CheckTensorParallel(8), absl::StatusCode::kInvalidArgument,
                      {"num_attention_heads", "28", "8"}));
  ASSERT_OK_AND_ASSIGN(ModelConfig llama, ParseModelConfig(kLlama3_8B));
  EXPECT_TRUE(IsError(llama.CheckTensorParallel(3), absl::StatusCode::kInvalidArgument,
                      {"num_attention_heads", "32"}));
  EXPECT_TRUE(IsError(llama.CheckTensorParallel(0), absl::StatusCode::kInvalidArgument, {"tp"}));
  // 8 ranks for 48 query heads but 12 KV heads: neither divides the other.
  ASSERT_OK_AND_ASSIGN(
      ModelConfig odd_kv,
      ParseModelConfig(Edit(
          Edit(Edit(kLlama3_8B, R"("num_attention_heads": 32)", R"("num_attention_heads": 48)"),
               R"("num_key_value_heads": 8)", R"("num_key_value_heads": 12)"),
          R"("hidden_size": 4096)", R"("hidden_size": 6144)")));
  EXPECT_TRUE(IsError(odd_kv.CheckTensorParallel(8), absl::StatusCode::kInvalidArgument,
                      {"num_key_value_heads", "12"}));
  ASSERT_OK_AND_ASSIGN(ModelConfig odd_mlp, ParseModelConfig(Edit(kLlama3_8B, "14336", "14340")));
  EXPECT_TRUE(IsError(odd_mlp.CheckTensorParallel(8), absl::StatusCode::kInvalidArgument,
                      {"intermediate_size", "14340"}));
}

TEST(GenerationConfigTest, Qwen2InstructDefaults) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kQwen2_7B));
  ASSERT_OK(ParseGenerationConfig(R"({
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": true,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0"
  })",
                                  "generation_config.json", &config));
  EXPECT_TRUE(config.generation.do_sample);
  EXPECT_DOUBLE_EQ(config.generation.temperature, 0.7);
  EXPECT_DOUBLE_EQ(config.generation.top_p, 0.8);
  EXPECT_EQ(config.generation.top_k, 20);
  EXPECT_EQ(config.generation.eos_token_ids, (std::vector<int64_t>{151645, 151643}));
  // config.json's own eos stays as it was.
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>{151643});
}

TEST(GenerationConfigTest, MissingFieldsTakeTransformersDefaults) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kLlama31_8B));
  ASSERT_OK(ParseGenerationConfig(R"({"bos_token_id": 128000})", "g.json", &config));
  EXPECT_FALSE(config.generation.do_sample);
  EXPECT_DOUBLE_EQ(config.generation.temperature, 1.0);
  EXPECT_EQ(config.generation.top_k, 50);
  EXPECT_DOUBLE_EQ(config.generation.top_p, 1.0);
  EXPECT_EQ(config.generation.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
}

TEST(GenerationConfigTest, BadValuesAreNamed) {
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(kLlama3_8B));
  EXPECT_TRUE(IsError(ParseGenerationConfig(R"({"top_p": 0})", "g.json", &config),
                      absl::StatusCode::kInvalidArgument, {"g.json", "top_p"}));
  EXPECT_TRUE(IsError(ParseGenerationConfig(R"({"temperature": -1})", "g.json", &config),
                      absl::StatusCode::kInvalidArgument, {"temperature"}));
  EXPECT_TRUE(IsError(ParseGenerationConfig(R"({"top_k": -5})", "g.json", &config),
                      absl::StatusCode::kInvalidArgument, {"top_k"}));
  EXPECT_TRUE(IsError(ParseGenerationConfig(R"({"do_sample": "yes"})", "g.json", &config),
                      absl::StatusCode::kInvalidArgument, {"do_sample"}));
  EXPECT_TRUE(IsError(ParseGenerationConfig("{", "g.json", &config),
                      absl::StatusCode::kInvalidArgument, {"g.json"}));
}

TEST(LoadModelConfigTest, ReadsConfigAndGenerationConfig) {
  ScratchDir dir;
  WriteBytes(dir.File("config.json"), kGlm4_9B_Hf);
  ASSERT_OK_AND_ASSIGN(ModelConfig without, LoadModelConfig(dir.path()));
  EXPECT_EQ(without.architecture, Architecture::kGlm);
  EXPECT_EQ(without.generation.top_k, 50);

  WriteBytes(dir.File("generation_config.json"),
             R"({"do_sample": true, "eos_token_id": [151329, 151336, 151338],
                 "temperature": 0.8, "top_p": 0.8, "top_k": 1})");
  ASSERT_OK_AND_ASSIGN(ModelConfig with, LoadModelConfig(dir.path()));
  EXPECT_TRUE(with.generation.do_sample);
  EXPECT_EQ(with.generation.top_k, 1);
}

TEST(LoadModelConfigTest, ErrorsNameThePath) {
  ScratchDir dir;
  EXPECT_TRUE(
      IsError(LoadModelConfig(dir.path()), absl::StatusCode::kNotFound, {dir.File("config.json")}));
  WriteBytes(dir.File("config.json"), "{\"architectures\": [");
  EXPECT_TRUE(IsError(LoadModelConfig(dir.path()), absl::StatusCode::kInvalidArgument,
                      {dir.File("config.json")}));
  WriteBytes(dir.File("config.json"), kLlama3_8B);
  WriteBytes(dir.File("generation_config.json"), "{\"top_p\": 2}");
  EXPECT_TRUE(IsError(LoadModelConfig(dir.path()), absl::StatusCode::kInvalidArgument,
                      {dir.File("generation_config.json"), "top_p"}));
}

}  // namespace
}  // namespace tessera::model
