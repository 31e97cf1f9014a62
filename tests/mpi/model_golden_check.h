#ifndef TESSERA_TESTS_MPI_MODEL_GOLDEN_CHECK_H_
#define TESSERA_TESTS_MPI_MODEL_GOLDEN_CHECK_H_

// The check of the tensor-parallel forward against Hugging Face transformers, shared by the
// CPU test (model_golden_test, MPI) and the GPU one (tests/cuda/model_golden_cuda_test,
// NCCL): for a golden checkpoint (tests/golden/models, made by generate.py there), the logits
// of every prompt position and the greedy continuation must match what transformers
// computed, on whatever device and at whatever degree the communicator gives.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "nlohmann/json.hpp"
#include "runtime/model/gguf_model.h"
#include "runtime/model/transformer.h"

namespace tessera::model::testing {

// The GGUF files of tests/golden/gguf_models (make_gguf_models.py there), whose goldens are
// what transformers computes after dequantizing them to f32.
inline const std::vector<std::string>& GgufGoldenModels() {
  static const std::vector<std::string> names = {"llama_f32",     "llama_f16",  "llama_q8_0",
                                                 "llama_q4_0",    "qwen2_q8_0", "llama_q4_1_tied",
                                                 "llama_k_quants"};
  return names;
}

// The checkpoints of tests/golden/models that the check runs on.
inline const std::vector<std::string>& GoldenArchitectures() {
  static const std::vector<std::string> names = {
      "llama", "llama_tied_linear", "llama_bf16", "mistral", "qwen2", "glm", "glm4"};
  return names;
}

struct Golden {
  std::string dtype;
  std::vector<int32_t> prompt;
  std::vector<std::vector<float>> logits;
  std::vector<int64_t> greedy;
};

inline Golden ReadGolden(const std::string& dir) {
  std::ifstream file(dir + "/golden.json");
  std::stringstream text;
  text << file.rdbuf();
  nlohmann::json json = nlohmann::json::parse(text.str());
  Golden golden;
  golden.dtype = json["dtype"].get<std::string>();
  golden.prompt = json["prompt"].get<std::vector<int32_t>>();
  golden.logits = json["logits"].get<std::vector<std::vector<float>>>();
  golden.greedy = json["greedy"].get<std::vector<int64_t>>();
  return golden;
}

inline ForwardBatch SequenceStep(const std::vector<int32_t>& tokens, int begin, int end,
                                 const KvCache& cache) {
  return ForwardBatch::SingleSequence(tokens, begin, end, cache.num_blocks);
}

// Loads `dir` (a golden checkpoint) over `tp`, on tp's device, with `load`, and checks its
// prefill logits and greedy tokens with gtest assertions. `tolerance`: of the logits relative
// to each row's largest; 0 for the default (1e-4, or 3e-2 for a bf16 golden). Collective
// over `tp`.
inline void ExpectMatchesGolden(const std::string& dir, comm::Communicator& tp,
                                const LoadOptions& load = {}, double tolerance = 0) {
  std::string name = dir.substr(dir.find_last_of('/') + 1);
  if (load.quantize.has_value()) name += " --quantize " + load.quantize->ToString();
  Golden golden = ReadGolden(dir);
  // A golden GGUF file (tests/golden/gguf_models) loads as `--model file.gguf` does.
  absl::StatusOr<std::string> model_dir =
      std::filesystem::exists(dir + "/config.json") ? dir : ResolveModelPath(dir + "/model.gguf");
  ASSERT_TRUE(model_dir.ok()) << model_dir.status();
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(*model_dir, tp, load);
  ASSERT_TRUE(model.ok()) << model.status();
  Transformer& m = **model;
  absl::StatusOr<KvCache> cache = m.AllocateKvCache(/*num_blocks=*/4, /*block_size=*/8);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const std::string where = m.device().ToString() + " at tp " + std::to_string(tp.size());

  // Prefill: every position's logits. f32 must agree to 1e-4 of the row's largest logit;
  // the bf16 checkpoint, which transformers runs in bf16 throughout and Tessera in f32 over
  // bf16 weights, to 3e-2.
  if (tolerance == 0) tolerance = golden.dtype == "bfloat16" ? 3e-2 : 1e-4;
  std::vector<int32_t> tokens = golden.prompt;
  int prompt = static_cast<int>(tokens.size());
  absl::StatusOr<Tensor> shard = m.Forward(SequenceStep(tokens, 0, prompt, *cache), *cache, true);
  ASSERT_TRUE(shard.ok()) << shard.status();
  absl::StatusOr<Tensor> logits = m.GatherLogits(*shard);
  ASSERT_TRUE(logits.ok()) << logits.status();
  int64_t vocab = m.config().vocab_size;
  ASSERT_EQ(logits->dim(0), prompt);
  double worst = 0;
  int64_t nans = 0;  // std::max would drop them
  for (int p = 0; p < prompt; ++p) {
    double scale = 0, diff = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      scale = std::max(scale, std::abs(static_cast<double>(golden.logits[p][v])));
      double d =
          std::abs(static_cast<double>(logits->data<float>()[p * vocab + v]) - golden.logits[p][v]);
      if (std::isnan(d)) {
        ++nans;
      } else {
        diff = std::max(diff, d);
      }
    }
    worst = std::max(worst, diff / scale);
  }
  EXPECT_EQ(nans, 0) << name << " on " << where;
  EXPECT_LE(worst, tolerance) << name << " on " << where;
  if (tp.rank() == 0) {
    std::printf("%s on %s: max relative logit error %.2e\n", name.c_str(), where.c_str(), worst);
  }

  // Greedy continuation, one token per step through the KV cache.
  std::vector<int64_t> generated;
  absl::StatusOr<Tensor> step_logits = m.Forward(SequenceStep(tokens, 0, prompt, *cache), *cache,
                                                 /*all_positions=*/false);
  ASSERT_TRUE(step_logits.ok()) << step_logits.status();
  for (size_t i = 0; i < golden.greedy.size(); ++i) {
    absl::StatusOr<std::vector<int64_t>> next = m.NextTokens(*step_logits, {}, {i});
    ASSERT_TRUE(next.ok()) << next.status();
    generated.push_back((*next)[0]);
    tokens.push_back(static_cast<int32_t>((*next)[0]));
    int length = static_cast<int>(tokens.size());
    step_logits = m.Forward(SequenceStep(tokens, length - 1, length, *cache), *cache, false);
    ASSERT_TRUE(step_logits.ok()) << step_logits.status();
  }
  EXPECT_EQ(generated, golden.greedy) << name << " on " << where;
}

// The checkpoints that penalties.py (tests/golden/models) decoded with OpenAI's penalties.
inline const std::vector<std::string>& PenaltyGoldenArchitectures() {
  static const std::vector<std::string> names = {"llama", "qwen2", "mistral"};
  return names;
}

// Greedy decoding with presence and frequency penalties (SampleRows, the serving engine's
// sampler) against penalties.py's torch computation on transformers' logits, and each step's
// top log-probabilities against its log_softmax. Collective over `tp`.
inline void ExpectPenaltiesMatchGolden(const std::string& dir, comm::Communicator& tp) {
  const std::string name = dir.substr(dir.find_last_of('/') + 1);
  std::ifstream file(dir + "/penalties.json");
  ASSERT_TRUE(file.good()) << dir << "/penalties.json";
  std::stringstream text;
  text << file.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(text.str());
  const std::vector<int32_t> prompt = golden["prompt"].get<std::vector<int32_t>>();
  const int top = golden["top"].get<int>();
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(dir, tp);
  ASSERT_TRUE(model.ok()) << model.status();
  Transformer& m = **model;
  const std::string where = m.device().ToString() + " at tp " + std::to_string(tp.size());
  ASSERT_FALSE(golden["cases"].empty());
  for (const nlohmann::json& c : golden["cases"]) {
    const std::vector<int32_t> expected = c["tokens"].get<std::vector<int32_t>>();
    Transformer::RowSampling choice;
    choice.params.presence_penalty = c["presence_penalty"].get<float>();
    choice.params.frequency_penalty = c["frequency_penalty"].get<float>();
    choice.top_logprobs = top;
    const std::string what = name + " presence " + c["presence_penalty"].dump() + " frequency " +
                             c["frequency_penalty"].dump() + " on " + where;
    absl::StatusOr<KvCache> cache = m.AllocateKvCache(/*num_blocks=*/8, /*block_size=*/8);
    ASSERT_TRUE(cache.ok()) << cache.status();
    std::vector<int32_t> tokens = prompt;
    std::vector<int32_t> generated;
    int begin = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      const int end = static_cast<int>(tokens.size());
      absl::StatusOr<Tensor> logits =
          m.Forward(SequenceStep(tokens, begin, end, *cache), *cache, /*all_positions=*/false);
      ASSERT_TRUE(logits.ok()) << logits.status();
      choice.draw = i;
      choice.generated = generated;
      absl::StatusOr<std::vector<Transformer::SampledToken>> next = m.SampleRows(*logits, {choice});
      ASSERT_TRUE(next.ok()) << next.status();
      const Transformer::SampledToken& sampled = (*next)[0];
      const nlohmann::json& expected_top = c["top_logprobs"][i];
      ASSERT_EQ(sampled.top_logprobs.size(), expected_top.size()) << what;
      for (size_t j = 0; j < expected_top.size(); ++j) {
        EXPECT_EQ(sampled.top_logprobs[j].token, expected_top[j][0].get<int64_t>())
            << what << ", step " << i << ", alternative " << j;
        EXPECT_NEAR(sampled.top_logprobs[j].logprob, expected_top[j][1].get<double>(), 1e-4)
            << what << ", step " << i << ", alternative " << j;
      }
      generated.push_back(static_cast<int32_t>(sampled.token));
      tokens.push_back(generated.back());
      begin = end;
    }
    EXPECT_EQ(generated, expected) << what;
  }
}

}  // namespace tessera::model::testing

#endif  // TESSERA_TESTS_MPI_MODEL_GOLDEN_CHECK_H_
