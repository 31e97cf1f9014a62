// Tests of runtime/model/weight_plan.h and weight_loader.h: every architecture's tensors at
// tp 1, 2 and 4 (with KV heads split and replicated, fused gate_up and qkv, a padded vocab),
// checked by putting all ranks' slices back together and comparing with the full tensor;
// and the loader's errors, ignored tensors and progress.

#include "runtime/model/weight_plan.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/core/tensor_values.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"
#include "tests/model/model_test_util.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::model::testing::PatternTensor;
using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

using Named = std::vector<std::pair<std::string, Tensor>>;

// Small models of each architecture. Llama: 8 query heads on 4 KV heads (split at tp 4),
// o_proj bias, a vocab of 50 (padded at tp 4). The others: 4 query heads on 2 KV heads
// (replicated at tp 4), tied embeddings for Mistral and Qwen2.
constexpr absl::string_view kTinyLlama = R"({"architectures": ["LlamaForCausalLM"],
  "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
  "num_attention_heads": 8, "num_key_value_heads": 4, "attention_bias": true,
  "rms_norm_eps": 1e-5, "torch_dtype": "float32"})";
constexpr absl::string_view kTinyMistral = R"({"architectures": ["MistralForCausalLM"],
  "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 8,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16"})";
constexpr absl::string_view kTinyQwen2 = R"({"architectures": ["Qwen2ForCausalLM"],
  "vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16"})";
constexpr absl::string_view kTinyGlm = R"({"architectures": ["GlmForCausalLM"],
  "vocab_size": 36, "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
  "partial_rotary_factor": 0.5, "attention_bias": true, "torch_dtype": "bfloat16"})";
constexpr absl::string_view kTinyGlm4 = R"({"architectures": ["Glm4ForCausalLM"],
  "vocab_size": 36, "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
  "attention_bias": true, "torch_dtype": "float16"})";

ModelConfig MustParse(absl::string_view json) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(json);
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

// Every tensor of the full model (the tp = 1 plan), in `dtype`, each with its own pattern.
Named FullTensors(const ModelConfig& config, DType dtype, WeightPlanOptions options = {}) {
  absl::StatusOr<WeightPlan> plan = PlanWeights(config, 1, 0, options);
  EXPECT_TRUE(plan.ok()) << plan.status();
  Named tensors;
  int tag = 0;
  for (const PlannedTensor& tensor : plan->tensors) {
    EXPECT_EQ(tensor.rank_shape, tensor.shape) << tensor.name;
    tensors.emplace_back(tensor.name, PatternTensor(dtype, tensor.shape, tag++ % 16));
  }
  return tensors;
}

// config.json plus the tensors, in one file or split over `shards` files with an index.
void WriteCheckpoint(const ScratchDir& dir, absl::string_view config_json, const Named& tensors,
                     int shards = 1) {
  WriteBytes(dir.File("config.json"), config_json);
  if (shards == 1) {
    ASSERT_OK(WriteSafetensors(dir.File("model.safetensors"), tensors));
    return;
  }
  std::string weight_map;
  for (int s = 0; s < shards; ++s) {
    const std::string name = absl::StrCat("model-0000", s + 1, "-of-0000", shards, ".safetensors");
    Named part;
    for (size_t i = s; i < tensors.size(); i += shards) {
      part.push_back(tensors[i]);
      absl::StrAppend(&weight_map, weight_map.empty() ? "" : ",\n", "\"", tensors[i].first,
                      "\": \"", name, "\"");
    }
    ASSERT_OK(WriteSafetensors(dir.File(name), part));
  }
  WriteBytes(dir.File("model.safetensors.index.json"),
             absl::StrCat("{\"metadata\": {}, \"weight_map\": {\n", weight_map, "\n}}"));
}

// Whether two host tensors hold the same values (any dtypes) in the same shape.
::testing::AssertionResult SameValues(const Tensor& actual, const Tensor& expected) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure()
           << actual.DebugString() << " vs expected " << expected.DebugString();
  }
  for (int64_t i = 0; i < expected.numel(); ++i) {
    if (ElementAsDouble(actual, i) != ElementAsDouble(expected, i)) {
      return ::testing::AssertionFailure()
             << "element " << i << " is " << ElementAsDouble(actual, i) << ", expected "
             << ElementAsDouble(expected, i);
    }
  }
  return ::testing::AssertionSuccess();
}

Tensor Rows(const Tensor& tensor, int64_t begin, int64_t end) {
  absl::StatusOr<Tensor> rows = tensor.Slice(begin, end);
  EXPECT_TRUE(rows.ok()) << rows.status();
  return *rows;
}

// The tensors one after another along dimension 0 (or, with `columns`, dimension 1 of 2-D
// tensors), as f32.
Tensor Concat(const std::vector<Tensor>& parts, bool columns = false) {
  Shape shape = parts[0].shape();
  int dim = columns ? 1 : 0;
  shape[dim] = 0;
  for (const Tensor& part : parts) shape[dim] += part.dim(dim);
  absl::StatusOr<Tensor> out = Tensor::Empty(DType::kF32, shape);
  EXPECT_TRUE(out.ok());
  const int64_t width = shape.size() > 1 ? shape[1] : 1;
  int64_t offset = 0;
  for (const Tensor& part : parts) {
    const int64_t part_rows = part.dim(0);
    const int64_t part_width = part.rank() > 1 ? part.dim(1) : 1;
    for (int64_t r = 0; r < part_rows; ++r) {
      for (int64_t c = 0; c < part_width; ++c) {
        const int64_t at = columns ? r * width + offset + c : (offset + r) * width + c;
        SetElement(*out, at, ElementAsDouble(part, r * part_width + c));
      }
    }
    offset += columns ? part_width : part_rows;
  }
  return *out;
}

struct Case {
  absl::string_view name;
  absl::string_view config;
  DType stored;
  std::optional<DType> load_as;
  bool fused_qkv;
  int shards;
};

// Loads every rank at tp and checks that the ranks' parts make up each full tensor, deriving
// what each rank should hold from the config alone (not from the plan under test).
void CheckRanksRebuildEveryTensor(const Case& c, int tp) {
  SCOPED_TRACE(absl::StrCat(c.name, " at tp ", tp));
  const ModelConfig config = MustParse(c.config);
  ScratchDir dir;
  WeightPlanOptions options;
  options.fused_qkv = c.fused_qkv;
  WriteCheckpoint(dir, c.config, FullTensors(config, c.stored, options), c.shards);
  ASSERT_OK_AND_ASSIGN(ModelConfig loaded_config, LoadModelConfig(dir.path()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir.path()));

  std::vector<RankWeights> ranks;
  for (int rank = 0; rank < tp; ++rank) {
    LoadOptions load;
    load.dtype = c.load_as;
    ASSERT_OK_AND_ASSIGN(RankWeights weights,
                         LoadRankWeights(*checkpoint, loaded_config, tp, rank, load));
    ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(loaded_config, tp, rank,
                                                      DetectWeightPlanOptions(*checkpoint)));
    EXPECT_EQ(weights.tensors.size(), plan.tensors.size());
    for (const PlannedTensor& planned : plan.tensors) {
      EXPECT_EQ(weights.tensors.at(planned.name).shape(), planned.rank_shape) << planned.name;
      EXPECT_EQ(weights.tensors.at(planned.name).dtype(), c.load_as.value_or(c.stored));
    }
    EXPECT_EQ(weights.bytes, plan.RankBytes(c.load_as.value_or(c.stored)));
    ranks.push_back(std::move(weights));
  }

  const int64_t hd = config.head_dim;
  const int64_t inter = config.intermediate_size;
  const int q_heads = config.num_attention_heads / tp;
  const bool kv_split = config.num_key_value_heads % tp == 0;
  const int kv_heads = kv_split ? config.num_key_value_heads / tp : 1;
  int checked = 0;
  for (const std::string& name : checkpoint->TensorNames()) {
    SCOPED_TRACE(name);
    ASSERT_OK_AND_ASSIGN(Tensor full, checkpoint->Read(name, TensorSlice::Whole(), c.load_as));
    std::vector<Tensor> parts;
    for (const RankWeights& rank : ranks) parts.push_back(rank.tensors.at(name));
    ++checked;
    // Suffixes match from the most specific: "qkv_proj.bias" also ends in "v_proj.bias".
    auto is = [&](absl::string_view suffix) { return absl::EndsWith(name, suffix); };

    if (is("embed_tokens.weight") || is("lm_head.weight")) {
      const int64_t padded = (config.vocab_size + tp - 1) / tp;
      Tensor all = Concat(parts);
      ASSERT_EQ(all.dim(0), padded * tp);
      EXPECT_TRUE(SameValues(Rows(all, 0, config.vocab_size), full));
      for (int64_t i = config.vocab_size * all.dim(1); i < all.numel(); ++i) {
        ASSERT_EQ(ElementAsDouble(all, i), 0.0) << "padding element " << i;
      }
    } else if (is("q_proj.weight") || is("q_proj.bias") || is("gate_proj.weight") ||
               is("up_proj.weight")) {
      EXPECT_TRUE(SameValues(Concat(parts), full));
    } else if (is("qkv_proj.weight") || is("qkv_proj.bias")) {
      const int64_t q = q_heads * hd, kv = kv_heads * hd;
      std::vector<Tensor> qs, ks, vs;
      for (const Tensor& part : parts) {
        ASSERT_EQ(part.dim(0), q + 2 * kv);
        qs.push_back(Rows(part, 0, q));
        ks.push_back(Rows(part, q, q + kv));
        vs.push_back(Rows(part, q + kv, q + 2 * kv));
      }
      EXPECT_TRUE(SameValues(Concat(qs), Rows(full, 0, config.q_size())));
      if (kv_split) {
        EXPECT_TRUE(SameValues(Concat(ks),
                               Rows(full, config.q_size(), config.q_size() + config.kv_size())));
        EXPECT_TRUE(SameValues(Concat(vs), Rows(full, config.q_size() + config.kv_size(),
                                                config.q_size() + 2 * config.kv_size())));
      } else {
        for (int rank = 0; rank < tp; ++rank) {
          const int64_t kv_head = rank * q_heads / config.kv_group_size();
          const int64_t k0 = config.q_size() + kv_head * hd;
          const int64_t v0 = config.q_size() + config.kv_size() + kv_head * hd;
          EXPECT_TRUE(SameValues(ks[rank], Rows(full, k0, k0 + hd))) << "rank " << rank;
          EXPECT_TRUE(SameValues(vs[rank], Rows(full, v0, v0 + hd))) << "rank " << rank;
        }
      }
    } else if (is("k_proj.weight") || is("k_proj.bias") || is("v_proj.weight") ||
               is("v_proj.bias")) {
      if (kv_split) {
        EXPECT_TRUE(SameValues(Concat(parts), full));
      } else {
        // Each rank holds the one KV head that its query heads use.
        for (int rank = 0; rank < tp; ++rank) {
          const int kv_head = rank * q_heads / config.kv_group_size();
          EXPECT_TRUE(SameValues(parts[rank], Rows(full, kv_head * hd, (kv_head + 1) * hd)))
              << "rank " << rank;
        }
      }
    } else if (is("gate_up_proj.weight")) {
      std::vector<Tensor> gates, ups;
      for (const Tensor& part : parts) {
        ASSERT_EQ(part.dim(0), 2 * inter / tp);
        gates.push_back(Rows(part, 0, inter / tp));
        ups.push_back(Rows(part, inter / tp, 2 * inter / tp));
      }
      EXPECT_TRUE(SameValues(Concat(gates), Rows(full, 0, inter)));
      EXPECT_TRUE(SameValues(Concat(ups), Rows(full, inter, 2 * inter)));
    } else if (is("o_proj.weight") || is("down_proj.weight")) {
      EXPECT_TRUE(SameValues(Concat(parts, /*columns=*/true), full));
    } else if (is("norm.weight") || is("layernorm.weight") || is("o_proj.bias")) {
      for (const Tensor& part : parts) EXPECT_TRUE(SameValues(part, full));
    } else {
      ADD_FAILURE() << "no expectation for " << name;
    }
  }
  EXPECT_GT(checked, 10);
}

const Case kCases[] = {
    {"llama f32", kTinyLlama, DType::kF32, std::nullopt, false, 1},
    {"llama bf16 as f32, sharded", kTinyLlama, DType::kBF16, DType::kF32, false, 3},
    {"llama fused qkv", kTinyLlama, DType::kF32, std::nullopt, true, 1},
    {"mistral", kTinyMistral, DType::kBF16, std::nullopt, false, 1},
    {"qwen2", kTinyQwen2, DType::kBF16, DType::kF32, false, 2},
    {"qwen2 fused qkv", kTinyQwen2, DType::kF32, DType::kBF16, true, 1},
    {"glm", kTinyGlm, DType::kBF16, DType::kF32, false, 1},
    {"glm4", kTinyGlm4, DType::kF16, std::nullopt, false, 2},
};

class RanksRebuildTest : public ::testing::TestWithParam<int> {};

TEST_P(RanksRebuildTest, EveryArchitecture) {
  for (const Case& c : kCases) CheckRanksRebuildEveryTensor(c, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Tp, RanksRebuildTest, ::testing::Values(1, 2, 4),
                         [](const auto& param_info) {
                           return absl::StrCat("tp", param_info.param);
                         });

// ---------------------------------------------------------------------------------------------
// Plans

std::set<std::string> NamesOf(const WeightPlan& plan) {
  std::set<std::string> names;
  for (const PlannedTensor& tensor : plan.tensors) names.insert(tensor.name);
  return names;
}

TEST(WeightPlanTest, LlamaLayerAtTp2) {
  ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(MustParse(kTinyLlama), 2, 1));
  const std::map<std::string, std::pair<Shape, TensorSlice>> expected = {
      {"model.embed_tokens.weight", {{25, 32}, TensorSlice::Rows(25, 50)}},
      {"model.layers.0.input_layernorm.weight", {{32}, TensorSlice::Whole()}},
      {"model.layers.0.self_attn.q_proj.weight", {{16, 32}, TensorSlice::Rows(16, 32)}},
      {"model.layers.0.self_attn.q_proj.bias", {{16}, TensorSlice::Rows(16, 32)}},
      {"model.layers.0.self_attn.k_proj.weight", {{8, 32}, TensorSlice::Rows(8, 16)}},
      {"model.layers.0.self_attn.v_proj.bias", {{8}, TensorSlice::Rows(8, 16)}},
      {"model.layers.0.self_attn.o_proj.weight", {{32, 16}, TensorSlice::Columns(16, 32)}},
      {"model.layers.0.self_attn.o_proj.bias", {{32}, TensorSlice::Whole()}},
      {"model.layers.0.post_attention_layernorm.weight", {{32}, TensorSlice::Whole()}},
      {"model.layers.0.mlp.gate_proj.weight", {{24, 32}, TensorSlice::Rows(24, 48)}},
      {"model.layers.0.mlp.up_proj.weight", {{24, 32}, TensorSlice::Rows(24, 48)}},
      {"model.layers.0.mlp.down_proj.weight", {{32, 24}, TensorSlice::Columns(24, 48)}},
      {"model.norm.weight", {{32}, TensorSlice::Whole()}},
      {"lm_head.weight", {{25, 32}, TensorSlice::Rows(25, 50)}},
  };
  for (const auto& [name, shape_and_slice] : expected) {
    const PlannedTensor* tensor = plan.Find(name);
    ASSERT_NE(tensor, nullptr) << name;
    EXPECT_EQ(tensor->rank_shape, shape_and_slice.first) << name;
    EXPECT_EQ(tensor->slice, shape_and_slice.second)
        << name << ": " << tensor->slice.ToString() << " vs " << shape_and_slice.second.ToString();
  }
  EXPECT_EQ(plan.tensors.size(), 2 + 2 * 13 + 1u);
  EXPECT_EQ(plan.Find("model.layers.0.self_attn.o_proj.weight")->kind, ShardKind::kRowParallel);
  EXPECT_EQ(plan.Find("model.layers.0.self_attn.q_proj.weight")->kind, ShardKind::kColumnParallel);
  EXPECT_EQ(plan.Find("lm_head.weight")->kind, ShardKind::kVocabParallel);
  EXPECT_EQ(plan.attention.q_head_begin, 4);
  EXPECT_EQ(plan.attention.num_q_heads, 4);
  EXPECT_EQ(plan.attention.kv_head_begin, 2);
  EXPECT_EQ(plan.attention.num_kv_heads, 2);
  EXPECT_FALSE(plan.attention.kv_replicated);
  EXPECT_EQ(plan.intermediate_begin, 24);
  EXPECT_EQ(plan.intermediate_size, 24);
  EXPECT_EQ(plan.Find("model.layers.0.mlp.gate_up_proj.weight"), nullptr);
}

// Each tensor once: tied embeddings once, biases and GQA's smaller K/V counted as stored,
// the same at every TP degree (rank shards and padding do not count).
TEST(WeightPlanTest, ParameterCountCountsEveryTensorOnce) {
  // Llama: 8 heads of 4 on 4 KV heads, biases on q/k/v/o, untied.
  const int64_t h = 32, q = 32, kv = 16, i = 48, v = 50;
  const int64_t llama_layer = (q * h + q) + 2 * (kv * h + kv) + (h * q + h) + 3 * i * h + 2 * h;
  ASSERT_OK_AND_ASSIGN(int64_t llama, ParameterCount(MustParse(kTinyLlama)));
  EXPECT_EQ(llama, 2 * llama_layer + 2 * v * h + h);
  // Mistral: tied, so one embedding; no biases; 4 heads of 4 on 2 KV heads.
  const int64_t mh = 16, mkv = 8, mi = 24, mv = 64;
  const int64_t mistral_layer = mh * mh + 2 * mkv * mh + mh * mh + 3 * mi * mh + 2 * mh;
  ASSERT_OK_AND_ASSIGN(int64_t mistral, ParameterCount(MustParse(kTinyMistral)));
  EXPECT_EQ(mistral, 2 * mistral_layer + mv * mh + mh);
  // Glm4: fused gate_up and the two extra norms per layer are counted like the others.
  const ModelConfig glm4 = MustParse(kTinyGlm4);
  ASSERT_OK_AND_ASSIGN(int64_t glm4_count, ParameterCount(glm4));
  const int64_t gh = 24, gq = 32, gkv = 16, gi = 40, gv = 36;
  const int64_t glm4_layer =
      (gq * gh + gq) + 2 * (gkv * gh + gkv) + gh * gq + 2 * gi * gh + gh * gi + 4 * gh;
  EXPECT_EQ(glm4_count, 2 * glm4_layer + 2 * gv * gh + gh);
  for (int tp : {2, 4}) {
    ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(glm4, tp, tp - 1));
    EXPECT_EQ(ParameterCount(plan), glm4_count) << "tp " << tp;
  }
  // A checkpoint that stores q, k and v as one qkv_proj holds the same parameters.
  ASSERT_OK_AND_ASSIGN(WeightPlan fused, PlanWeights(glm4, 2, 0, {.fused_qkv = true}));
  ASSERT_NE(fused.Find("model.layers.0.self_attn.qkv_proj.weight"), nullptr);
  EXPECT_EQ(ParameterCount(fused), glm4_count);
}

TEST(WeightPlanTest, ReplicatedKvHeadsFollowTheQueryHeads) {
  // GLM-4-9B: 32 query heads on 2 KV heads, 8 ranks: ranks 0-3 share KV head 0, 4-7 head 1.
  ModelConfig glm = MustParse(R"({"architectures": ["GlmForCausalLM"], "vocab_size": 151552,
    "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 1,
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128})");
  for (int rank = 0; rank < 8; ++rank) {
    ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(glm, 8, rank));
    EXPECT_EQ(plan.attention.q_head_begin, rank * 4);
    EXPECT_EQ(plan.attention.num_q_heads, 4);
    EXPECT_EQ(plan.attention.kv_head_begin, rank / 4) << rank;
    EXPECT_EQ(plan.attention.num_kv_heads, 1);
    EXPECT_TRUE(plan.attention.kv_replicated);
    const int64_t kv0 = (rank / 4) * 128;
    EXPECT_EQ(plan.Find("model.layers.0.self_attn.k_proj.weight")->slice,
              TensorSlice::Rows(kv0, kv0 + 128));
    EXPECT_EQ(plan.Find("model.layers.0.self_attn.v_proj.bias")->slice,
              TensorSlice::Rows(kv0, kv0 + 128));
    const int64_t m0 = rank * 1712;
    EXPECT_EQ(
        plan.Find("model.layers.0.mlp.gate_up_proj.weight")->slice,
        (TensorSlice{
            TensorSlice::Kind::kRows, {{m0, m0 + 1712}, {13696 + m0, 13696 + m0 + 1712}}, 0}));
    EXPECT_EQ(plan.Find("model.layers.0.mlp.gate_up_proj.weight")->rank_shape, (Shape{3424, 4096}));
    EXPECT_EQ(plan.Find("model.layers.0.self_attn.o_proj.bias"), nullptr);
    EXPECT_NE(plan.Find("model.layers.0.self_attn.q_proj.bias"), nullptr);
    EXPECT_EQ(plan.Find("model.layers.0.self_attn.q_proj.weight")->rank_shape, (Shape{512, 4096}));
    EXPECT_EQ(plan.Find("lm_head.weight")->rank_shape, (Shape{18944, 4096}));
  }
}

TEST(WeightPlanTest, FusedQkvRowsOfOneRank) {
  ASSERT_OK_AND_ASSIGN(WeightPlan plan,
                       PlanWeights(MustParse(kTinyQwen2), 4, 3, WeightPlanOptions{true}));
  // 4 query heads of 4 dims: q rows [12,16); KV head 1 of 2: k rows 16+[4,8), v rows 24+[4,8).
  const TensorSlice expected{TensorSlice::Kind::kRows, {{12, 16}, {20, 24}, {28, 32}}, 0};
  EXPECT_EQ(plan.Find("model.layers.1.self_attn.qkv_proj.weight")->slice, expected);
  EXPECT_EQ(plan.Find("model.layers.1.self_attn.qkv_proj.bias")->slice, expected);
  EXPECT_EQ(plan.Find("model.layers.1.self_attn.qkv_proj.weight")->shape, (Shape{32, 16}));
  EXPECT_EQ(plan.Find("model.layers.1.self_attn.q_proj.weight"), nullptr);
  EXPECT_TRUE(plan.fused_qkv);
}

TEST(WeightPlanTest, ArchitectureSpecificTensors) {
  ASSERT_OK_AND_ASSIGN(WeightPlan glm4, PlanWeights(MustParse(kTinyGlm4), 1, 0));
  std::set<std::string> names = NamesOf(glm4);
  EXPECT_TRUE(names.count("model.layers.1.post_self_attn_layernorm.weight"));
  EXPECT_TRUE(names.count("model.layers.1.post_mlp_layernorm.weight"));
  EXPECT_TRUE(names.count("model.layers.1.mlp.gate_up_proj.weight"));
  EXPECT_FALSE(names.count("model.layers.1.mlp.gate_proj.weight"));

  ASSERT_OK_AND_ASSIGN(WeightPlan glm, PlanWeights(MustParse(kTinyGlm), 1, 0));
  EXPECT_FALSE(NamesOf(glm).count("model.layers.1.post_mlp_layernorm.weight"));
  EXPECT_EQ(glm.Find("model.layers.0.self_attn.q_proj.weight")->shape, (Shape{32, 24}));
  EXPECT_EQ(glm.Find("model.layers.0.self_attn.o_proj.weight")->shape, (Shape{24, 32}));

  ASSERT_OK_AND_ASSIGN(WeightPlan qwen, PlanWeights(MustParse(kTinyQwen2), 2, 0));
  EXPECT_TRUE(qwen.tied_lm_head);
  EXPECT_EQ(qwen.Find("lm_head.weight"), nullptr);
  EXPECT_NE(qwen.Find("model.layers.0.self_attn.k_proj.bias"), nullptr);
  EXPECT_EQ(qwen.Find("model.layers.0.self_attn.o_proj.bias"), nullptr);

  ASSERT_OK_AND_ASSIGN(WeightPlan mistral, PlanWeights(MustParse(kTinyMistral), 2, 0));
  EXPECT_EQ(mistral.Find("model.layers.0.self_attn.q_proj.bias"), nullptr);
}

TEST(WeightPlanTest, VocabShards) {
  const VocabShard expected[] = {{0, 13, 13}, {13, 26, 13}, {26, 39, 13}, {39, 50, 13}};
  for (int rank = 0; rank < 4; ++rank) {
    VocabShard shard = VocabShardOf(50, 4, rank);
    EXPECT_EQ(shard.begin, expected[rank].begin) << rank;
    EXPECT_EQ(shard.end, expected[rank].end) << rank;
    EXPECT_EQ(shard.padded_rows, 13);
  }
  // More ranks than leftover rows: the last shard is all padding.
  VocabShard last = VocabShardOf(5, 4, 3);
  EXPECT_EQ(last.begin, 5);
  EXPECT_EQ(last.end, 5);
  EXPECT_EQ(last.padded_rows, 2);

  ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(MustParse(kTinyLlama), 4, 3));
  TensorSlice padded = TensorSlice::Rows(39, 50);
  padded.padded_size = 13;
  EXPECT_EQ(plan.Find("model.embed_tokens.weight")->slice, padded);
  EXPECT_EQ(plan.Find("lm_head.weight")->rank_shape, (Shape{13, 32}));
  ASSERT_OK_AND_ASSIGN(WeightPlan even, PlanWeights(MustParse(kTinyLlama), 2, 0));
  EXPECT_EQ(even.Find("lm_head.weight")->slice, TensorSlice::Rows(0, 25));
}

TEST(WeightPlanTest, RanksTogetherHoldTheModelOncePlusReplicas) {
  // Llama-3-8B at tp 8 in bf16: the ranks' bytes sum to the model's plus 7 extra copies of
  // what is replicated (the norms), and each rank holds about an eighth.
  ModelConfig llama = MustParse(R"({"architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8})");
  ASSERT_OK_AND_ASSIGN(WeightPlan whole, PlanWeights(llama, 1, 0));
  const uint64_t model_bytes = whole.RankBytes(DType::kBF16);
  EXPECT_EQ(model_bytes, uint64_t{8030261248} * 2);  // 8.03 B parameters
  uint64_t replicated = 0;
  for (const PlannedTensor& tensor : whole.tensors) {
    if (tensor.kind == ShardKind::kReplicated) replicated += NumElements(tensor.shape) * 2;
  }
  EXPECT_EQ(replicated, (2 * 32 + 1) * 4096 * 2u);
  uint64_t sum = 0;
  for (int rank = 0; rank < 8; ++rank) {
    ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(llama, 8, rank));
    sum += plan.RankBytes(DType::kBF16);
    EXPECT_EQ(plan.Find("model.layers.31.self_attn.k_proj.weight")->rank_shape, (Shape{128, 4096}));
  }
  EXPECT_EQ(sum, model_bytes + 7 * replicated);
}

TEST(WeightPlanTest, Errors) {
  ModelConfig llama = MustParse(kTinyLlama);
  EXPECT_TRUE(IsError(PlanWeights(llama, 3, 0), absl::StatusCode::kInvalidArgument,
                      {"num_attention_heads"}));
  EXPECT_TRUE(IsError(PlanWeights(llama, 2, 2), absl::StatusCode::kInvalidArgument, {"tp_rank 2"}));
  EXPECT_TRUE(IsError(PlanWeights(llama, 2, -1), absl::StatusCode::kInvalidArgument, {"tp_rank"}));
  // 8 query heads, 4 KV heads, tp 8: KV heads replicated twice.
  ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(llama, 8, 5));
  EXPECT_EQ(plan.attention.kv_head_begin, 2);
  EXPECT_TRUE(plan.attention.kv_replicated);
}

// ---------------------------------------------------------------------------------------------
// Loader

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = MustParse(kTinyQwen2);
    tensors_ = FullTensors(config_, DType::kBF16);
  }
  // The loader's status for the current tensors_ at tp 2, rank 1.
  absl::Status Load() {
    WriteCheckpoint(dir_, kTinyQwen2, tensors_);
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir_.path());
    if (!checkpoint.ok()) return checkpoint.status();
    absl::StatusOr<RankWeights> weights = LoadRankWeights(**checkpoint, config_, 2, 1);
    if (weights.ok()) ignored_ = weights->ignored;
    return weights.status();
  }
  void Erase(absl::string_view name) {
    for (auto it = tensors_.begin(); it != tensors_.end(); ++it) {
      if (it->first == name) {
        tensors_.erase(it);
        return;
      }
    }
    ADD_FAILURE() << "no tensor " << name;
  }
  Tensor& At(absl::string_view name) {
    for (auto& [n, tensor] : tensors_) {
      if (n == name) return tensor;
    }
    ADD_FAILURE() << "no tensor " << name;
    return tensors_[0].second;
  }

  ScratchDir dir_;
  ModelConfig config_;
  Named tensors_;
  std::vector<std::string> ignored_;
};

TEST_F(LoaderTest, CompleteCheckpointLoads) {
  EXPECT_OK(Load());
  EXPECT_TRUE(ignored_.empty());
}

TEST_F(LoaderTest, MissingTensorsAreNamed) {
  Erase("model.layers.1.mlp.up_proj.weight");
  Erase("model.norm.weight");
  EXPECT_TRUE(IsError(Load(), absl::StatusCode::kInvalidArgument,
                      {dir_.path(), "missing 2 tensors", "model.layers.1.mlp.up_proj.weight",
                       "model.norm.weight"}));
}

TEST_F(LoaderTest, UnexpectedTensorsAreNamed) {
  tensors_.emplace_back("model.layers.0.self_attn.o_proj.bias",
                        PatternTensor(DType::kBF16, {16}, 1));
  tensors_.emplace_back("model.layers.2.mlp.up_proj.weight", PatternTensor(DType::kBF16, {2}, 1));
  EXPECT_TRUE(IsError(Load(), absl::StatusCode::kInvalidArgument,
                      {"unexpected 2 tensors", "model.layers.0.self_attn.o_proj.bias",
                       "model.layers.2.mlp.up_proj.weight"}));
}

TEST_F(LoaderTest, WrongShapeNamesExpectedAndActual) {
  At("model.layers.0.self_attn.k_proj.weight") = PatternTensor(DType::kBF16, {16, 16}, 1);
  EXPECT_TRUE(IsError(
      Load(), absl::StatusCode::kInvalidArgument,
      {"wrong shape", "model.layers.0.self_attn.k_proj.weight is [16,16]", "expected [8,16]"}));
}

TEST_F(LoaderTest, WrongDTypeIsNamed) {
  At("model.layers.1.input_layernorm.weight") = PatternTensor(DType::kI32, {16}, 1);
  EXPECT_TRUE(
      IsError(Load(), absl::StatusCode::kInvalidArgument,
              {"wrong dtype", "model.layers.1.input_layernorm.weight is i32", "f32, bf16 or f16"}));
}

TEST_F(LoaderTest, EveryProblemInOneMessage) {
  Erase("model.embed_tokens.weight");
  tensors_.emplace_back("extra", PatternTensor(DType::kBF16, {2}, 1));
  At("model.norm.weight") = PatternTensor(DType::kBF16, {17}, 1);
  EXPECT_TRUE(IsError(Load(), absl::StatusCode::kInvalidArgument,
                      {"missing 1 tensor: model.embed_tokens.weight", "unexpected 1 tensor: extra",
                       "model.norm.weight is [17], expected [16]"}));
}

TEST_F(LoaderTest, LongListsAreCut) {
  for (int i = 0; i < 20; ++i) {
    tensors_.emplace_back(absl::StrCat("extra.", i), PatternTensor(DType::kBF16, {1}, 1));
  }
  EXPECT_TRUE(IsError(Load(), absl::StatusCode::kInvalidArgument,
                      {"unexpected 20 tensors", "and 12 more"}));
}

TEST_F(LoaderTest, TransformersBuffersAndTiedHeadsAreIgnored) {
  tensors_.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq",
                        PatternTensor(DType::kF32, {2}, 1));
  tensors_.emplace_back("lm_head.weight", PatternTensor(DType::kBF16, {40, 16}, 1));
  EXPECT_OK(Load());
  EXPECT_EQ(ignored_, (std::vector<std::string>{"lm_head.weight",
                                                "model.layers.0.self_attn.rotary_emb.inv_freq"}));
}

TEST_F(LoaderTest, ProgressCountsEveryTensorAndByte) {
  WriteCheckpoint(dir_, kTinyQwen2, tensors_);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir_.path()));
  ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(config_, 2, 0));
  std::vector<LoadProgress> calls;
  LoadOptions options;
  options.dtype = DType::kF32;
  options.progress = [&](const LoadProgress& progress) { calls.push_back(progress); };
  ASSERT_OK_AND_ASSIGN(RankWeights weights, LoadRankWeights(*checkpoint, plan, options));
  ASSERT_EQ(calls.size(), plan.tensors.size() + 1);
  EXPECT_EQ(calls[0].tensors_done, 0);
  EXPECT_EQ(calls[0].bytes_done, 0u);
  EXPECT_EQ(calls[0].current, "");
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].tensors_done, static_cast<int>(i));
    EXPECT_EQ(calls[i].tensors_total, static_cast<int>(plan.tensors.size()));
    EXPECT_GT(calls[i].bytes_done, calls[i - 1].bytes_done);
    EXPECT_EQ(calls[i].current, plan.tensors[i - 1].name);
  }
  EXPECT_EQ(calls.back().bytes_done, calls.back().bytes_total);
  EXPECT_EQ(calls.back().bytes_total, weights.bytes);
  EXPECT_EQ(weights.bytes, plan.RankBytes(DType::kF32));
  EXPECT_TRUE(absl::StartsWith(FormatLoadProgress(calls[1]),
                               absl::StrCat("1/", plan.tensors.size(), " tensors, ")))
      << FormatLoadProgress(calls[1]);
}

TEST_F(LoaderTest, TerminalProgressWritesOneLineWhenNotATerminal) {
  WriteCheckpoint(dir_, kTinyQwen2, tensors_);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir_.path()));
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  LoadOptions options;
  options.progress = TerminalProgress(out, "rank 1 loading");
  ASSERT_OK(LoadRankWeights(*checkpoint, config_, 2, 1, options).status());
  std::rewind(out);
  char buffer[512] = {};
  size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, out);
  std::fclose(out);
  const std::string text(buffer, n);
  EXPECT_TRUE(Contains(text, "rank 1 loading 26/26 tensors")) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
}

TEST_F(LoaderTest, RefusesIntegerTarget) {
  WriteCheckpoint(dir_, kTinyQwen2, tensors_);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir_.path()));
  LoadOptions options;
  options.dtype = DType::kI8;
  EXPECT_TRUE(IsError(LoadRankWeights(*checkpoint, config_, 2, 0, options),
                      absl::StatusCode::kInvalidArgument, {"i8"}));
  EXPECT_TRUE(IsError(LoadRankWeights(*checkpoint, config_, 3, 0),
                      absl::StatusCode::kInvalidArgument, {"num_attention_heads"}));
}

}  // namespace
}  // namespace tessera::model
