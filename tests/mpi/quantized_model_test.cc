// The forward with weight-only quantized projections (--quantize) against the same forward on
// a checkpoint whose projections hold the dequantized weights: the quantized kernels must
// multiply by exactly the weights they stand for, on every rank's slice, at whatever TP
// degree mpirun gives (ctest runs 1, 2 and 4 ranks); a group that a tensor-parallel split
// would cut is refused.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_quantization.h"
#include "tests/mpi/dequantized_checkpoint.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::model {
namespace {

using ::tessera::testing::World;

using testing::DequantizedCheckpoint;

// Every position's logits of a fixed prompt, gathered.
std::vector<float> PromptLogits(Transformer& model) {
  const std::vector<int32_t> prompt = {1, 17, 200, 35, 99, 4, 250, 63, 128, 7, 42, 3};
  absl::StatusOr<KvCache> cache = model.AllocateKvCache(4, 8);
  EXPECT_TRUE(cache.ok()) << cache.status();
  const int n = static_cast<int>(prompt.size());
  absl::StatusOr<Tensor> shard =
      model.Forward(ForwardBatch::SingleSequence(prompt, 0, n, cache->num_blocks), *cache, true);
  EXPECT_TRUE(shard.ok()) << shard.status();
  absl::StatusOr<Tensor> logits = model.GatherLogits(*shard);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return std::vector<float>(logits->data<float>(), logits->data<float>() + logits->numel());
}

struct Case {
  const char* model;  // in tests/golden/models
  const char* quantize;
  const char* group;
  const char* activations = "f32";
  // f32 activations multiply by exactly the dequantized weights: f32 rounding apart. int8
  // activations round each block of activations too, as llama.cpp does.
  double tolerance = 1e-4;
};

class QuantizedModel : public ::testing::TestWithParam<Case> {};

TEST_P(QuantizedModel, EqualsTheModelOfItsDequantizedWeights) {
  const Case c = GetParam();
  absl::StatusOr<std::optional<WeightQuantization>> quantization =
      ParseWeightQuantization(c.quantize, c.group, c.activations);
  ASSERT_TRUE(quantization.ok() && quantization->has_value());
  const std::string golden = std::string(TESSERA_GOLDEN_MODELS) + "/" + c.model;
  // In f32, so that the reference (an f32 checkpoint) and the quantized model keep the same
  // f32 KV cache whatever the checkpoint's dtype.
  LoadOptions options;
  options.quantize = *quantization;
  options.dtype = DType::kF32;
  absl::StatusOr<std::unique_ptr<Transformer>> quantized =
      Transformer::Load(golden, World(), options);
  // The golden models hold 16 inputs of o_proj a rank at TP 4: groups of 32, and int8
  // activations' blocks of 32, are refused there (AGroupCutByTheTensorParallelSplitIsRefused).
  if (!quantized.ok() && absl::StrContains(quantized.status().message(), "would cut a")) {
    GTEST_SKIP() << quantized.status();
  }
  // int8 with a scale per row is exact at TP 1 only: a row-parallel split gives each rank's
  // part of a row its own scale, so the reference would differ.
  if ((*quantization)->group_size == 0 && World().size() > 1) {
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    GTEST_SKIP() << "a scale per row depends on the TP split";
  }
  ASSERT_TRUE(quantized.ok()) << quantized.status();
  const std::string reference_dir = DequantizedCheckpoint(
      golden, **quantization, std::string("dequantized_") + c.model + "_" + c.quantize + c.group);
  absl::StatusOr<std::unique_ptr<Transformer>> reference =
      Transformer::Load(reference_dir, World());
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_LT((*quantized)->weight_bytes(), (*reference)->weight_bytes());

  const std::vector<float> got = PromptLogits(**quantized);
  const std::vector<float> want = PromptLogits(**reference);
  ASSERT_EQ(got.size(), want.size());
  double scale = 0, worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
  }
  EXPECT_LE(worst / scale, c.tolerance) << c.model << " " << (*quantization)->ToString();
  if (c.tolerance > 1e-4) {
    EXPECT_GT(worst / scale, 1e-6) << "int8 activations changed nothing";
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizedModel,
                         ::testing::Values(Case{"llama", "int8", "32"}, Case{"llama", "int4", "32"},
                                           Case{"llama_bf16", "int4", "32"},
                                           Case{"qwen2", "int8", "row"}, Case{"glm4", "int4", "32"},
                                           Case{"mistral", "int8", "32"},
                                           Case{"llama", "int4", "32", "int8", 5e-2},
                                           Case{"qwen2", "int4", "32", "int8", 5e-2},
                                           Case{"mistral", "int8", "32", "int8", 5e-2},
                                           Case{"qwen2", "int8", "row", "int8", 5e-2}));

// The int8 KV cache (--kv-cache-dtype int8): keys and values rounded to 8 bits with a scale
// per token and head change the logits by about their rounding, and each token takes
// head_dim + 4 bytes a head and layer instead of 4 head_dim.
TEST(Int8KvCache, StaysCloseToTheF32CacheInAQuarterOfTheBytes) {
  for (const char* name : {"llama", "qwen2", "mistral"}) {
    const std::string golden = std::string(TESSERA_GOLDEN_MODELS) + "/" + name;
    absl::StatusOr<std::unique_ptr<Transformer>> f32 = Transformer::Load(golden, World());
    ASSERT_TRUE(f32.ok()) << f32.status();
    LoadOptions options;
    options.kv_cache_dtype = DType::kI8;
    absl::StatusOr<std::unique_ptr<Transformer>> int8 = Transformer::Load(golden, World(), options);
    ASSERT_TRUE(int8.ok()) << int8.status();
    EXPECT_EQ((*int8)->kv_cache_dtype(), DType::kI8);
    const int64_t head_dim = (*f32)->config().head_dim;
    EXPECT_EQ((*int8)->KvBytesPerToken() * 4 * head_dim,
              (*f32)->KvBytesPerToken() * (head_dim + 4));
    absl::StatusOr<KvCache> cache = (*int8)->AllocateKvCache(4, 8);
    ASSERT_TRUE(cache.ok()) << cache.status();
    EXPECT_EQ(cache->bytes(), (*int8)->KvBytesPerToken() * cache->capacity_tokens());

    const std::vector<float> got = PromptLogits(**int8);
    const std::vector<float> want = PromptLogits(**f32);
    double scale = 0, worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::abs(static_cast<double>(want[i])));
      worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
    }
    EXPECT_GT(worst, 0) << name << ": the int8 cache changed nothing";
    EXPECT_LE(worst / scale, 3e-2) << name;
    if (World().rank() == 0) {
      std::printf("%s: int8 KV cache, max relative logit change %.2e\n", name, worst / scale);
    }
  }
  LoadOptions bad;
  bad.kv_cache_dtype = DType::kF16;
  EXPECT_FALSE(Transformer::Load(std::string(TESSERA_GOLDEN_MODELS) + "/llama", World(), bad).ok());
}

// At TP 4 the golden models' o_proj holds 16 inputs a rank: a group of 32 would straddle two
// ranks, and loading says so.
TEST(QuantizedModelRefusal, AGroupCutByTheTensorParallelSplitIsRefused) {
  if (World().size() != 4) GTEST_SKIP() << "needs 4 ranks";
  LoadOptions options;
  options.quantize = WeightQuantization{kernels::WeightQuant::kInt4, 32};
  absl::StatusOr<std::unique_ptr<Transformer>> model =
      Transformer::Load(std::string(TESSERA_GOLDEN_MODELS) + "/llama", World(), options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(model.status().message());
  EXPECT_TRUE(absl::StrContains(message, "o_proj") && absl::StrContains(message, "4 tensor") &&
              absl::StrContains(message, "32"))
      << message;
}

}  // namespace
}  // namespace tessera::model
