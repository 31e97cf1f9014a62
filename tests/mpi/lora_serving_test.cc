// Many LoRA adapters served on one base (Transformer::LoadAdapter, ForwardBatch::adapters) at
// whatever TP degree mpirun gives (ctest runs 1, 2 and 4 ranks): each adapter's logits against
// transformers + peft (tests/golden/lora_serving, made by make_lora_goldens.py there), a batch
// mixing adapters and the base against each sequence alone (bitwise), slot reuse, and the
// adapters a loader must refuse.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/model/safetensors.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_quantization.h"
#include "tests/mpi/dequantized_checkpoint.h"
#include "tests/mpi/model_golden_check.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::model {
namespace {

using ::tessera::testing::World;

// The base of adapters a, b and c (adapter glm4's is glm4).
const std::string kBase = std::string(TESSERA_GOLDEN_MODELS) + "/llama";
const std::string kAdapters = TESSERA_GOLDEN_LORA;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return nlohmann::json::parse(text.str());
}

const std::vector<int32_t>& Prompt() {
  static const std::vector<int32_t> prompt =
      ReadJson(kAdapters + "/summary.json")["prompt"].get<std::vector<int32_t>>();
  return prompt;
}

std::unique_ptr<Transformer> LoadBase(const LoadOptions& load = {},
                                      const std::string& dir = kBase) {
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(dir, World(), load);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

// The prompt's logits (prompt, vocab) with `slot`'s adapter (-1: the base), every rank's shard
// gathered.
Tensor PromptLogits(Transformer& m, int slot) {
  absl::StatusOr<KvCache> cache = m.AllocateKvCache(/*num_blocks=*/4, /*block_size=*/8);
  EXPECT_TRUE(cache.ok()) << cache.status();
  const int length = static_cast<int>(Prompt().size());
  ForwardBatch batch = ForwardBatch::SingleSequence(Prompt(), 0, length, cache->num_blocks);
  batch.adapters = {slot};
  absl::StatusOr<Tensor> shard = m.Forward(batch, *cache, /*all_positions=*/true);
  EXPECT_TRUE(shard.ok()) << shard.status();
  if (!shard.ok()) return Tensor();
  absl::StatusOr<Tensor> logits = m.GatherLogits(*shard);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : Tensor();
}

// The largest difference from peft's logits of adapter `name`, relative to each row's largest
// logit.
double ErrorAgainstPeft(const Tensor& logits, const std::string& name) {
  const auto golden = ReadJson(kAdapters + "/" + name + "/golden.json")["logits"]
                          .get<std::vector<std::vector<float>>>();
  EXPECT_EQ(logits.dim(0), static_cast<int64_t>(golden.size()));
  const int64_t vocab = logits.dim(1);
  double worst = 0;
  for (size_t p = 0; p < golden.size() && static_cast<int64_t>(p) < logits.dim(0); ++p) {
    double scale = 0, diff = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      scale = std::max(scale, std::abs(static_cast<double>(golden[p][v])));
      const double d = std::abs(logits.data<float>()[p * vocab + v] - golden[p][v]);
      diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

std::string Where() { return "at tp " + std::to_string(World().size()); }

class PeftGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftGolden, AdapterLogitsMatchPeft) {
  const std::string base =
      ReadJson(kAdapters + "/" + GetParam() + "/golden.json")["base"].get<std::string>();
  std::unique_ptr<Transformer> m = LoadBase({}, std::string(TESSERA_GOLDEN_MODELS) + "/" + base);
  ASSERT_NE(m, nullptr);
  absl::StatusOr<int> slot = m->LoadAdapter(kAdapters + "/" + GetParam());
  ASSERT_TRUE(slot.ok()) << slot.status();
  const double error = ErrorAgainstPeft(PromptLogits(*m, *slot), GetParam());
  EXPECT_LE(error, 1e-4) << "adapter " << GetParam() << " " << Where();
  if (World().rank() == 0) {
    std::printf("adapter %s %s: max relative logit error %.2e\n", GetParam().c_str(),
                Where().c_str(), error);
  }
}

INSTANTIATE_TEST_SUITE_P(Adapters, PeftGolden, ::testing::Values("a", "b", "c", "glm4"));

// Sequences of different lengths and adapters, in one batch and each alone: sequence s owns
// cache blocks [s * kMaxBlocks, (s + 1) * kMaxBlocks).
constexpr int kMaxBlocks = 3;
constexpr int kBlockSize = 8;

struct Sequence {
  std::vector<int32_t> tokens;
  int adapter;
};

ForwardBatch BatchOf(const std::vector<Sequence>& sequences, const std::vector<int>& begins) {
  ForwardBatch batch;
  batch.max_blocks = kMaxBlocks;
  batch.query_starts = {0};
  for (size_t s = 0; s < sequences.size(); ++s) {
    const std::vector<int32_t>& tokens = sequences[s].tokens;
    for (int p = begins[s]; p < static_cast<int>(tokens.size()); ++p) {
      batch.tokens.push_back(tokens[p]);
      batch.positions.push_back(p);
      const int block = static_cast<int>(s) * kMaxBlocks + p / kBlockSize;
      batch.slot_mapping.push_back(int64_t{block} * kBlockSize + p % kBlockSize);
    }
    batch.query_starts.push_back(static_cast<int32_t>(batch.tokens.size()));
    batch.context_lens.push_back(static_cast<int32_t>(tokens.size()));
    for (int b = 0; b < kMaxBlocks; ++b) {
      batch.block_tables.push_back(static_cast<int32_t>(s) * kMaxBlocks + b);
    }
    batch.adapters.push_back(sequences[s].adapter);
  }
  return batch;
}

// Prefill then one decode step of `sequences` together, and of each alone, on this rank's
// logits shard: every row must be the same bits.
void ExpectBatchedEqualsAlone(Transformer& m, std::vector<Sequence> sequences) {
  const int count = static_cast<int>(sequences.size());
  absl::StatusOr<KvCache> cache = m.AllocateKvCache(count * kMaxBlocks, kBlockSize);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::vector<int> begins(count, 0);
  absl::StatusOr<Tensor> prefill = m.Forward(BatchOf(sequences, begins), *cache, true);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  std::vector<int> ends;
  for (Sequence& s : sequences) {
    ends.push_back(static_cast<int>(s.tokens.size()));
    s.tokens.push_back(static_cast<int32_t>(7 + s.tokens.size()));  // one decode token each
  }
  absl::StatusOr<Tensor> decode = m.Forward(BatchOf(sequences, ends), *cache, false);
  ASSERT_TRUE(decode.ok()) << decode.status();
  const int64_t width = prefill->dim(1);
  int64_t row = 0;
  for (int s = 0; s < count; ++s) {
    absl::StatusOr<KvCache> own = m.AllocateKvCache(kMaxBlocks, kBlockSize);
    ASSERT_TRUE(own.ok()) << own.status();
    std::vector<Sequence> alone = {sequences[s]};
    alone[0].tokens.pop_back();
    absl::StatusOr<Tensor> alone_prefill = m.Forward(BatchOf(alone, {0}), *own, true);
    ASSERT_TRUE(alone_prefill.ok()) << alone_prefill.status();
    alone[0].tokens.push_back(sequences[s].tokens.back());
    absl::StatusOr<Tensor> alone_decode = m.Forward(BatchOf(alone, {ends[s]}), *own, false);
    ASSERT_TRUE(alone_decode.ok()) << alone_decode.status();
    const std::string what = "sequence " + std::to_string(s) + " (adapter slot " +
                             std::to_string(sequences[s].adapter) + ") " + Where();
    EXPECT_EQ(std::memcmp(alone_prefill->data<float>(), prefill->data<float>() + row * width,
                          ends[s] * width * sizeof(float)),
              0)
        << what << ": prefill logits differ from the batch's";
    EXPECT_EQ(std::memcmp(alone_decode->data<float>(), decode->data<float>() + s * width,
                          width * sizeof(float)),
              0)
        << what << ": decode logits differ from the batch's";
    row += ends[s];
  }
}

std::vector<Sequence> MixedSequences(const std::vector<int>& slots) {
  const std::vector<int32_t>& p = Prompt();
  return {{p, slots[1]},
          {{5, 9, 200, 31, 77, 4, 18}, -1},
          {std::vector<int32_t>(p.begin(), p.begin() + 9), slots[0]},
          {{250, 3, 3, 60, 101}, slots[2]},
          {std::vector<int32_t>(p.begin() + 2, p.end()), slots[1]}};
}

TEST(LoraServing, MixedBatchGivesEachSequenceItsLogitsAlone) {
  std::unique_ptr<Transformer> m = LoadBase();
  ASSERT_NE(m, nullptr);
  std::vector<int> slots;
  for (const char* name : {"a", "b", "c"}) {
    absl::StatusOr<int> slot = m->LoadAdapter(kAdapters + "/" + name);
    ASSERT_TRUE(slot.ok()) << slot.status();
    slots.push_back(*slot);
  }
  EXPECT_EQ(slots, (std::vector<int>{0, 1, 2}));
  ExpectBatchedEqualsAlone(*m, MixedSequences(slots));
}

// The base product is whatever ProjectionWeight holds: with --quantize int8 the adapters (f32)
// are added to the quantized product, row invariant as before, and each adapter's logits are
// those of the same adapter on a checkpoint of the dequantized weights, to f32 rounding (the
// golden models' 16 inputs of o_proj a rank at TP 4 rule out groups of 32: a scale per row).
TEST(LoraServing, AdaptersOverAQuantizedBase) {
  const WeightQuantization int8 = **ParseWeightQuantization("int8", "");
  LoadOptions load;
  load.quantize = int8;
  std::unique_ptr<Transformer> m = LoadBase(load);
  ASSERT_NE(m, nullptr);
  absl::StatusOr<std::unique_ptr<Transformer>> reference =
      Transformer::Load(testing::DequantizedCheckpoint(kBase, int8, "lora_serving_int8"), World());
  ASSERT_TRUE(reference.ok()) << reference.status();
  std::vector<int> slots;
  for (const char* name : {"a", "b", "c"}) {
    absl::StatusOr<int> slot = m->LoadAdapter(kAdapters + "/" + name);
    ASSERT_TRUE(slot.ok()) << slot.status();
    absl::StatusOr<int> reference_slot = (*reference)->LoadAdapter(kAdapters + "/" + name);
    ASSERT_TRUE(reference_slot.ok()) << reference_slot.status();
    ASSERT_EQ(*slot, *reference_slot);
    slots.push_back(*slot);
  }
  ExpectBatchedEqualsAlone(*m, MixedSequences(slots));
  // int8 with a scale per row equals its dequantized checkpoint at TP 1 only: a row-parallel
  // split gives each rank's part of a row its own scale (as in quantized_model_test).
  if (World().size() > 1) return;
  for (int slot : slots) {
    const Tensor quantized = PromptLogits(*m, slot);
    const Tensor expected = PromptLogits(**reference, slot);
    ASSERT_EQ(quantized.shape(), expected.shape());
    const int64_t vocab = quantized.dim(1);
    double worst = 0;
    for (int64_t p = 0; p < quantized.dim(0); ++p) {
      double scale = 0, diff = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        const float want = expected.data<float>()[p * vocab + v];
        scale = std::max(scale, std::abs(static_cast<double>(want)));
        diff = std::max(
            diff, std::abs(static_cast<double>(quantized.data<float>()[p * vocab + v]) - want));
      }
      worst = std::max(worst, diff / scale);
    }
    EXPECT_LE(worst, 1e-4) << "adapter slot " << slot << " over int8 " << Where();
  }
}

TEST(LoraServing, UnloadFreesTheSlotForTheNextAdapter) {
  std::unique_ptr<Transformer> m = LoadBase();
  ASSERT_NE(m, nullptr);
  absl::StatusOr<int> a = m->LoadAdapter(kAdapters + "/a");
  absl::StatusOr<int> b = m->LoadAdapter(kAdapters + "/b");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, 0);
  EXPECT_EQ(*b, 1);
  ASSERT_TRUE(m->UnloadAdapter(*a).ok());
  EXPECT_FALSE(m->HasAdapter(*a));
  EXPECT_EQ(m->UnloadAdapter(*a).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->UnloadAdapter(7).code(), absl::StatusCode::kNotFound);

  // A batch naming the freed slot is refused before anything runs.
  absl::StatusOr<KvCache> cache = m->AllocateKvCache(4, 8);
  ASSERT_TRUE(cache.ok());
  ForwardBatch batch = ForwardBatch::SingleSequence(Prompt(), 0, 4, cache->num_blocks);
  batch.adapters = {*a};
  absl::StatusOr<Tensor> refused = m->Forward(batch, *cache, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("slot 0"), std::string::npos) << refused.status();
  batch.adapters = {-1, -1};
  refused = m->Forward(batch, *cache, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();

  absl::StatusOr<int> c = m->LoadAdapter(kAdapters + "/c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, *a) << "the freed slot is reused";
  EXPECT_LE(ErrorAgainstPeft(PromptLogits(*m, *c), "c"), 1e-4) << Where();
  EXPECT_LE(ErrorAgainstPeft(PromptLogits(*m, *b), "b"), 1e-4) << Where();
}

// A copy of adapter `a` in a folder of this rank's own, changed by `edit_config` and
// `edit_tensors`.
std::string BadAdapter(
    const std::string& name, const std::function<void(nlohmann::json&)>& edit_config,
    const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit_tensors) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    ("lora_serving_" + std::to_string(World().rank())) / name;
  std::filesystem::create_directories(dir);
  nlohmann::json config = ReadJson(kAdapters + "/a/adapter_config.json");
  edit_config(config);
  std::ofstream(dir / "adapter_config.json") << config.dump(2);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kAdapters + "/a/adapter_model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const TensorInfo& info : (*file)->tensors()) {
    absl::StatusOr<Tensor> t = (*file)->Read(info.name, TensorSlice(), DType::kF32);
    EXPECT_TRUE(t.ok()) << t.status();
    tensors.emplace_back(info.name, *t);
  }
  edit_tensors(tensors);
  EXPECT_TRUE(WriteSafetensors((dir / "adapter_model.safetensors").string(), tensors).ok());
  return dir.string();
}

Tensor Zeros(Shape shape) { return *Tensor::Zeros(DType::kF32, std::move(shape)); }

TEST(LoraServing, RefusesAdaptersItCannotServeAsPeftWould) {
  std::unique_ptr<Transformer> m = LoadBase();
  ASSERT_NE(m, nullptr);
  const std::string q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const std::string q_b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
  auto same_config = [](nlohmann::json&) {};
  auto same_tensors = [](std::vector<std::pair<std::string, Tensor>>&) {};
  struct Case {
    std::string name;
    std::string dir;
    std::string message;  // part of the error
  };
  const std::vector<Case> cases = {
      {"dora",
       BadAdapter(
           "dora", [](nlohmann::json& c) { c["use_dora"] = true; }, same_tensors),
       "adapter_config.json: use_dora: DoRA"},
      {"dora magnitudes",
       BadAdapter("dora_tensor", same_config,
                  [](auto& t) {
                    t.emplace_back(
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                        Zeros({64}));
                  }),
       "lora_magnitude_vector is a DoRA magnitude"},
      {"unknown target",
       BadAdapter(
           "target",
           [](nlohmann::json& c) {
             c["target_modules"] = {"q_proj", "lm_head"};
           },
           same_tensors),
       "target_modules: 'lm_head' is not a Linear of this LlamaForCausalLM checkpoint"},
      {"lm_head factors",
       BadAdapter("lm_head", same_config,
                  [](auto& t) {
                    t.emplace_back("base_model.model.lm_head.lora_A.weight", Zeros({4, 64}));
                  }),
       "lm_head.lora_A.weight is an adapter on lm_head"},
      {"bias",
       BadAdapter(
           "bias", [](nlohmann::json& c) { c["bias"] = "all"; }, same_tensors),
       "adapter_config.json: bias: \"all\""},
      {"modules_to_save",
       BadAdapter(
           "save", [](nlohmann::json& c) { c["modules_to_save"] = {"lm_head"}; }, same_tensors),
       "modules_to_save"},
      {"fan_in_fan_out",
       BadAdapter(
           "fan", [](nlohmann::json& c) { c["fan_in_fan_out"] = true; }, same_tensors),
       "fan_in_fan_out"},
      {"wrong shape",
       BadAdapter("shape", same_config,
                  [&](auto& t) {
                    for (auto& [name, tensor] : t) {
                      if (name == q_b) tensor = Zeros({48, 4});
                    }
                  }),
       q_b + " has shape [48,4] (this model's is [64,4])"},
      {"r disagrees",
       BadAdapter(
           "rank", [](nlohmann::json& c) { c["r"] = 5; }, same_tensors),
       q_a + " has shape [4,64] but"},
      {"missing partner",
       BadAdapter("partner", same_config,
                  [&](auto& t) {
                    std::erase_if(t, [&](const auto& named) { return named.first == q_b; });
                  }),
       q_a + " has no " + q_b},
      {"no factors", BadAdapter("empty", same_config, [](auto& t) { t.clear(); }),
       "holds no LoRA factors"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<int> slot = m->LoadAdapter(c.dir);
    ASSERT_FALSE(slot.ok()) << c.name << " loaded";
    EXPECT_EQ(slot.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(slot.status().message().find(c.message), std::string::npos)
        << c.name << ": " << slot.status();
  }
  // Nothing refused took a slot.
  absl::StatusOr<int> good = m->LoadAdapter(kAdapters + "/a");
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(*good, 0);
  EXPECT_EQ(m->LoadAdapter(kAdapters + "/absent").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tessera::model
