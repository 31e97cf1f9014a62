// `tessera plan`'s arithmetic (runtime/model/memory_plan.h) against what the runtime does: for
// golden checkpoints in each weight and KV-cache format, a rank's planned weight bytes and KV
// bytes per token equal the loaded model's, and the engine's cache holds exactly the planned
// tokens; at whatever TP degree mpirun gives (ctest runs 1 and 2 ranks).

#include "runtime/model/memory_plan.h"

#include <gtest/gtest.h>

#include <string>

#include "runtime/engine/engine.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/transformer.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::model {
namespace {

using ::tessera::testing::World;

struct Case {
  const char* model;     // under tests/golden
  const char* quantize;  // --quantize
  bool int8_kv;
};

class MemoryPlanTest : public ::testing::TestWithParam<Case> {};

TEST_P(MemoryPlanTest, PlanEqualsTheLoadedModelAndItsEngine) {
  const Case c = GetParam();
  absl::StatusOr<std::string> dir = ResolveModelPath(std::string(TESSERA_GOLDEN) + "/" + c.model);
  ASSERT_TRUE(dir.ok()) << dir.status();
  absl::StatusOr<ModelConfig> config = LoadModelConfig(*dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(*dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();

  MemoryPlanOptions options;
  options.tp = World().size();
  options.quantize = *ParseWeightQuantization(c.quantize, "");
  if (c.int8_kv) options.kv_cache_dtype = DType::kI8;
  options.kv_cache_bytes = int64_t{3} << 20;
  options.max_context = 64;
  absl::StatusOr<MemoryPlan> plan = PlanMemory(*config, **checkpoint, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->ranks.size(), static_cast<size_t>(World().size()));
  const RankMemory& mine = plan->ranks[World().rank()];

  LoadOptions load;
  load.quantize = options.quantize;
  load.kv_cache_dtype = options.kv_cache_dtype;
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(*dir, World(), load);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(mine.weight_bytes, static_cast<int64_t>((*model)->weight_bytes())) << c.model;
  EXPECT_EQ(mine.kv_bytes_per_token, (*model)->KvBytesPerToken()) << c.model;
  EXPECT_EQ(plan->kv_cache_dtype, (*model)->kv_cache_dtype());

  engine::EngineOptions engine_options;
  engine_options.kv_cache_bytes = options.kv_cache_bytes;
  engine_options.block_size = options.block_size;
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine =
      engine::Engine::Create(**model, World(), nullptr, engine_options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->capacity_tokens(), mine.kv_tokens) << c.model;
  EXPECT_EQ(mine.sequences, mine.kv_tokens / 64);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, MemoryPlanTest,
    ::testing::Values(Case{"models/llama", "none", false}, Case{"models/llama", "int8", false},
                      Case{"models/llama", "int4", false}, Case{"models/llama", "none", true},
                      Case{"models/llama_bf16", "none", false},
                      Case{"models/llama_tied_linear", "int8", true},
                      Case{"models/glm4", "none", false}, Case{"models/qwen2", "int4", true},
                      Case{"gguf_models/llama_q4_1_tied/model.gguf", "none", false},
                      Case{"gguf_models/llama_q4_1_tied/model.gguf", "stored", false},
                      Case{"gguf_models/llama_k_quants/model.gguf", "stored", true}));

// A GPU plan: the KV cache gets the fraction of what the weights and the CUDA runtime leave;
// too little memory says so, and names what would fit.
TEST(MemoryPlanDescription, SaysWhetherItFitsAndWhatWould) {
  if (World().rank() != 0) GTEST_SKIP();
  const std::string dir = std::string(TESSERA_GOLDEN) + "/models/llama";
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok());
  MemoryPlanOptions options;
  options.gpu = true;
  options.max_context = 128;
  options.max_step_tokens = 16;
  options.kv_cache_memory_fraction = 0.5;
  options.device_memory = kGpuRuntimeReserveBytes + (int64_t{8} << 20);
  absl::StatusOr<MemoryPlan> plan = PlanMemory(*config, **checkpoint, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const RankMemory& rank = plan->ranks[0];
  EXPECT_EQ(rank.kv_cache_bytes,
            KvCacheBudget(options.device_memory - kGpuRuntimeReserveBytes - rank.weight_bytes,
                          options.kv_cache_memory_fraction));
  EXPECT_TRUE(plan->fits());
  EXPECT_NE(DescribeMemoryPlan(*config, **checkpoint, options, *plan).find("fits: "),
            std::string::npos);

  // The f32 weights (about 0.42 MB) leave 75 KB of a 0.5 MB device, whose half holds no
  // sequence of 128 tokens (64 KB at TP 1); at TP 2 each rank holds half the weights.
  options.device_memory = kGpuRuntimeReserveBytes + 500'000;
  plan = PlanMemory(*config, **checkpoint, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->fits());
  const std::string text = DescribeMemoryPlan(*config, **checkpoint, options, *plan);
  EXPECT_NE(text.find("does not fit"), std::string::npos) << text;
  EXPECT_NE(text.find("would fit with --tp 2"), std::string::npos) << text;
}

}  // namespace
}  // namespace tessera::model
