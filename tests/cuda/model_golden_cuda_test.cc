// The tensor-parallel forward on GPUs with NCCL: every golden checkpoint against Hugging Face
// transformers (tests/mpi/model_golden_check.h, the CPU test's check, with its tolerances),
// and the serving engine on the GPU against the engine on the CPU. One rank per GPU under
// mpirun (ctest runs 1 and 2 ranks); skipped with "no GPU" where there are fewer GPUs than
// ranks.

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "comm/nccl/nccl_communicator.h"
#include "runtime/core/gpu_info.h"
#include "runtime/engine/engine.h"
#include "runtime/model/default_model.h"
#include "runtime/model/weight_quantization.h"
#include "tests/mpi/model_golden_check.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::model {
namespace {

using ::tessera::testing::World;

// One NCCL communicator over the world for the whole binary, rank r on GPU r (one host).
class OnGpus : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (static_cast<int>(ListGpus().size()) < World().size()) return;
    absl::StatusOr<std::unique_ptr<comm::NcclCommunicator>> nccl = comm::NcclCommunicator::Create(
        World(), Device::Cuda(World().rank()), World().options(), "world-nccl");
    created_ = new absl::Status(nccl.status());
    if (nccl.ok()) nccl_ = nccl->release();
  }
  static void TearDownTestSuite() {
    delete nccl_;
    nccl_ = nullptr;
    delete created_;
    created_ = nullptr;
  }

  void SetUp() override {
    if (created_ == nullptr) {
      GTEST_SKIP() << "no GPU for each of the " << World().size() << " ranks (" << ListGpus().size()
                   << " visible)";
    }
    ASSERT_TRUE(created_->ok()) << *created_;
  }

  static comm::Communicator& Gpus() { return *nccl_; }

 private:
  static absl::Status* created_;
  static comm::NcclCommunicator* nccl_;
};

absl::Status* OnGpus::created_ = nullptr;
comm::NcclCommunicator* OnGpus::nccl_ = nullptr;

class ModelGoldenCuda : public OnGpus, public ::testing::WithParamInterface<std::string> {};

TEST_P(ModelGoldenCuda, LogitsAndGreedyTokensMatchTransformers) {
  testing::ExpectMatchesGolden(std::string(TESSERA_GOLDEN_MODELS) + "/" + GetParam(), Gpus());
}

INSTANTIATE_TEST_SUITE_P(Architectures, ModelGoldenCuda,
                         ::testing::ValuesIn(testing::GoldenArchitectures()));

// The engine's greedy tokens for `requests` on `model`, whose group is the world (the engine
// itself talks over the host communicator). Collective; the leader's results.
std::vector<std::vector<int32_t>> GenerateWithEngine(
    Transformer& model, const std::vector<engine::GenerationRequest>& requests) {
  engine::EngineOptions options;
  options.num_blocks = 256;
  options.max_step_tokens = 32;  // the longer prompts arrive in chunks
  absl::StatusOr<std::unique_ptr<engine::Engine>> created =
      engine::Engine::Create(model, World(), nullptr, options);
  EXPECT_TRUE(created.ok()) << created.status();
  if (!created.ok()) return {};
  engine::Engine& e = **created;
  std::vector<std::shared_ptr<engine::RequestStream>> streams;
  if (e.is_leader()) {
    for (const engine::GenerationRequest& request : requests) {
      absl::StatusOr<std::shared_ptr<engine::RequestStream>> stream = e.Submit(request);
      EXPECT_TRUE(stream.ok()) << stream.status();
      if (stream.ok()) streams.push_back(*stream);
    }
    e.StopWhenIdle();
  }
  absl::Status run = e.Run();
  EXPECT_TRUE(run.ok()) << run;
  std::vector<std::vector<int32_t>> results;
  for (const std::shared_ptr<engine::RequestStream>& stream : streams) {
    std::vector<int32_t> tokens;
    engine::TokenEvent event;
    while (stream->Next(&event) && !event.final) tokens.push_back(event.token);
    results.push_back(std::move(tokens));
  }
  return results;
}

// The default model loaded with `options` on the CPU and on `gpus`: the GPU engine
// generates the CPU engine's greedy tokens for four random prompts (up to 62 tokens, so that
// prefills take many rows at once).
void ExpectGpuGeneratesTheCpusTokens(comm::Communicator& gpus, const LoadOptions& options,
                                     uint32_t seed) {
  absl::StatusOr<std::string> dir = EnsureDefaultModel();
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::mt19937 random(seed);
  std::vector<engine::GenerationRequest> requests(4);
  for (size_t i = 0; i < requests.size(); ++i) {
    int length = 3 + static_cast<int>(random() % 60);
    for (int j = 0; j < length; ++j) {
      requests[i].prompt_tokens.push_back(static_cast<int32_t>(random() % 256));
    }
    requests[i].sampling.max_tokens = 8;
    requests[i].sampling.ignore_eos = true;
  }
  absl::StatusOr<std::unique_ptr<Transformer>> on_cpu = Transformer::Load(*dir, World(), options);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  absl::StatusOr<std::unique_ptr<Transformer>> on_gpu = Transformer::Load(*dir, gpus, options);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
  ASSERT_TRUE((*on_gpu)->device().is_cuda());
  std::vector<std::vector<int32_t>> expected = GenerateWithEngine(**on_cpu, requests);
  std::vector<std::vector<int32_t>> actual = GenerateWithEngine(**on_gpu, requests);
  if (World().rank() != 0) return;
  ASSERT_EQ(actual.size(), requests.size());
  ASSERT_EQ(expected.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(actual[i].size(), 8u) << "request " << i;
    EXPECT_EQ(actual[i], expected[i]) << "request " << i << " at tp " << World().size();
  }
}

TEST_F(OnGpus, EngineGeneratesTheCpuEnginesGreedyTokens) {
  ExpectGpuGeneratesTheCpusTokens(Gpus(), LoadOptions(), 5);
}

// Weights quantized at load (int8, a scale a row): the GPU widens the same codes
// (kernels/cuda/quantized_linear.h), f32 activations on both.
TEST_F(OnGpus, QuantizedEngineGeneratesTheCpuEnginesGreedyTokens) {
  absl::StatusOr<std::optional<WeightQuantization>> int8 =
      ParseWeightQuantization("int8", "", "f32");
  ASSERT_TRUE(int8.ok()) << int8.status();
  LoadOptions options;
  options.quantize = *int8;
  ExpectGpuGeneratesTheCpusTokens(Gpus(), options, 7);
}

TEST_F(OnGpus, ForwardRefusesBadBatchValuesAsTheCpuDoes) {
  absl::StatusOr<std::string> dir = EnsureDefaultModel();
  ASSERT_TRUE(dir.ok()) << dir.status();
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(*dir, Gpus());
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<KvCache> cache = (*model)->AllocateKvCache(2, 8);
  ASSERT_TRUE(cache.ok()) << cache.status();
  ASSERT_TRUE(cache->k[0].device().is_cuda());
  const int64_t vocab = (*model)->config().vocab_size;
  std::vector<int32_t> tokens = {1, static_cast<int32_t>(vocab), 3};
  absl::StatusOr<Tensor> bad_id =
      (*model)->Forward(ForwardBatch::SingleSequence(tokens, 0, 3, 2), *cache, false);
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument) << bad_id.status();
  EXPECT_NE(bad_id.status().message().find("token id " + std::to_string(vocab) + " at position 1"),
            std::string::npos)
      << bad_id.status();
  // The CPU model refuses the same batch with the same error.
  absl::StatusOr<std::unique_ptr<Transformer>> on_cpu = Transformer::Load(*dir, World());
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  absl::StatusOr<KvCache> cpu_cache = (*on_cpu)->AllocateKvCache(2, 8);
  ASSERT_TRUE(cpu_cache.ok()) << cpu_cache.status();
  absl::StatusOr<Tensor> cpu_bad_id =
      (*on_cpu)->Forward(ForwardBatch::SingleSequence(tokens, 0, 3, 2), *cpu_cache, false);
  EXPECT_EQ(cpu_bad_id.status(), bad_id.status());

  tokens[1] = 2;
  ForwardBatch beyond = ForwardBatch::SingleSequence(tokens, 0, 3, 2);
  beyond.slot_mapping[2] = 16;  // 2 blocks of 8 slots
  absl::StatusOr<Tensor> bad_slot = (*model)->Forward(beyond, *cache, false);
  EXPECT_EQ(bad_slot.status().code(), absl::StatusCode::kOutOfRange) << bad_slot.status();
  EXPECT_EQ((*on_cpu)->Forward(beyond, *cpu_cache, false).status(), bad_slot.status());
  // The model still works after refusing both.
  absl::StatusOr<Tensor> good =
      (*model)->Forward(ForwardBatch::SingleSequence(tokens, 0, 3, 2), *cache, false);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE(good->device().is_cpu());
  EXPECT_EQ(good->dim(0), 1);
  EXPECT_EQ(good->dim(1), (*model)->plan().vocab.padded_rows);
}

}  // namespace
}  // namespace tessera::model
