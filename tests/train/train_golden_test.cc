// The trainer's loss and gradients against PyTorch and transformers (tests/golden/train,
// written by generate.py there), at every TP x DP layout that the ranks of this run allow:
// with 4 ranks TP 1 x DP 4, TP 2 x DP 2 and TP 4 x DP 1. Each DP rank takes its share of the
// batch's rows; gradients are summed over DP as the trainer does.

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "nlohmann/json.hpp"
#include "runtime/core/stream.h"
#include "runtime/model/safetensors.h"
#include "runtime/train/optimizer.h"
#include "runtime/train/trainable_model.h"
#include "tests/mpi/mpi_test_environment.h"
#include "tests/train/golden_batch.h"

namespace tessera::train {
namespace {

using ::tessera::testing::World;

const std::string kModels = TESSERA_GOLDEN_MODELS;
const std::string kTrain = TESSERA_GOLDEN_TRAIN;

using testing::BatchOf;
using testing::ReadJson;

// Tokens [begin, end) of `b` (on document boundaries) as a batch of their own.
MicroBatch Part(const MicroBatch& b, int32_t begin, int32_t end) {
  MicroBatch part;
  part.tokens.assign(b.tokens.begin() + begin, b.tokens.begin() + end);
  part.positions.assign(b.positions.begin() + begin, b.positions.begin() + end);
  part.targets.assign(b.targets.begin() + begin, b.targets.begin() + end);
  for (int32_t s : b.sequence_starts) {
    if (s >= begin && s <= end) part.sequence_starts.push_back(s - begin);
  }
  for (int32_t t : part.targets) part.target_count += t != kIgnoreLabel;
  return part;
}

// ||a - b|| / ||b|| over a rank's shard against the same slice of the golden tensor.
double RelativeError(const Tensor& mine, const Tensor& golden) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < golden.numel(); ++i) {
    const double d = mine.data<float>()[i] - golden.data<float>()[i];
    diff += d * d;
    norm += static_cast<double>(golden.data<float>()[i]) * golden.data<float>()[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12);
}

struct Case {
  std::string model;
  std::string batch;  // "padded" or "packed"
};

class TrainGolden : public ::testing::TestWithParam<Case> {};

TEST_P(TrainGolden, LossAndEveryGradientMatchTransformers) {
  const Case& c = GetParam();
  comm::Communicator& world = World();
  const nlohmann::json batches = ReadJson(kTrain + "/" + c.model + "/batches.json");
  const MicroBatch batch = BatchOf(batches.at(c.batch));
  const double golden_loss = batches.at(c.batch).at("loss").get<double>();
  // Rows of 12 tokens for the padded batch (each a DP share), the packed one is a single row.
  const int32_t row = c.batch == "padded" ? 12 : static_cast<int32_t>(batch.tokens.size());
  const int rows = static_cast<int>(batch.tokens.size()) / row;
  absl::StatusOr<comm::Topology> topology = comm::Topology::Discover(world);
  ASSERT_TRUE(topology.ok()) << topology.status();
  absl::StatusOr<std::unique_ptr<model::SafetensorsFile>> golden =
      model::SafetensorsFile::Open(kTrain + "/" + c.model + "/grads_" + c.batch + ".safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (int tp = 1; tp <= world.size(); tp *= 2) {
    if (world.size() % tp != 0) continue;
    SCOPED_TRACE(absl::StrCat("tp ", tp, " dp ", world.size() / tp));
    absl::StatusOr<comm::Layout> layout =
        comm::Layout::Create(world, *topology, comm::LayoutOptions{.tp = tp});
    ASSERT_TRUE(layout.ok()) << layout.status();
    absl::StatusOr<std::unique_ptr<TrainableModel>> model =
        TrainableModel::Load(kModels + "/" + c.model, layout->tp(), {.loss_chunk_rows = 7});
    ASSERT_TRUE(model.ok()) << model.status();
    const int dp = layout->dp_size(), dp_rank = layout->dp_rank();
    const float scale = 1.0f / static_cast<float>(batch.target_count);
    double loss_sum = 0;
    // Rows dealt round-robin to the DP ranks (a rank may get none).
    for (int r = dp_rank; r < rows; r += dp) {
      absl::StatusOr<LossSum> loss =
          (*model)->ForwardBackward(Part(batch, r * row, (r + 1) * row), scale);
      ASSERT_TRUE(loss.ok()) << loss.status();
      loss_sum += loss->sum;
    }
    ASSERT_TRUE((*model)->ReducePartialGrads().ok());
    Stream cpu = Stream::Cpu();
    std::vector<float> total = {static_cast<float>(loss_sum)};
    Tensor total_tensor = Tensor::Wrap(total.data(), DType::kF32, {1});
    ASSERT_TRUE(layout->dp().AllReduce(total_tensor, comm::ReduceOp::kSum, cpu).ok());
    EXPECT_NEAR(total[0] / batch.target_count, golden_loss, 1e-5 * golden_loss);
    for (Parameter& p : (*model)->parameters().all()) {
      ASSERT_TRUE(layout->dp().AllReduce(p.grad, comm::ReduceOp::kSum, cpu).ok());
      absl::StatusOr<Tensor> expected = (*golden)->Read(p.name, p.planned.slice);
      ASSERT_TRUE(expected.ok()) << expected.status();
      // A vocab shard's padding rows have no golden counterpart; compare the rows it has.
      Tensor mine = p.grad;
      if (expected->numel() != mine.numel()) {
        absl::StatusOr<Tensor> rows_held = mine.Slice(0, expected->dim(0));
        ASSERT_TRUE(rows_held.ok());
        mine = *rows_held;
      }
      EXPECT_LT(RelativeError(mine, *expected), 1e-4) << p.name;
    }
    // The norm of all gradients, each tensor once however many ranks hold it.
    absl::StatusOr<double> norm = GlobalGradNorm((*model)->parameters(), layout->tp());
    ASSERT_TRUE(norm.ok()) << norm.status();
    const nlohmann::json summary = ReadJson(kTrain + "/summary.json");
    const double golden_norm =
        summary.at("models").at(c.model).at("grad_norm").at(c.batch).get<double>();
    EXPECT_NEAR(*norm, golden_norm, 1e-4 * golden_norm);
  }
}

// LoRA on q, k, v and o (r 4, alpha 8) against peft: the adapter of the golden (B nonzero)
// loaded on every rank's slices, the base frozen.
TEST(LoraGolden, LossAndAdapterGradientsMatchPeft) {
  comm::Communicator& world = World();
  const nlohmann::json lora = ReadJson(kTrain + "/llama/lora.json");
  const nlohmann::json batches = ReadJson(kTrain + "/llama/batches.json");
  const MicroBatch batch = BatchOf(batches.at("padded"));
  absl::StatusOr<comm::Topology> topology = comm::Topology::Discover(world);
  ASSERT_TRUE(topology.ok()) << topology.status();
  absl::StatusOr<std::unique_ptr<model::SafetensorsFile>> golden =
      model::SafetensorsFile::Open(kTrain + "/llama/lora_grads_padded.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  for (int tp = 1; tp <= world.size(); tp *= 2) {
    if (world.size() % tp != 0) continue;
    SCOPED_TRACE(absl::StrCat("tp ", tp));
    absl::StatusOr<comm::Layout> layout =
        comm::Layout::Create(world, *topology, comm::LayoutOptions{.tp = tp});
    ASSERT_TRUE(layout.ok()) << layout.status();
    TrainableModelOptions options;
    options.lora.r = lora.at("r").get<int>();
    options.lora.alpha = lora.at("lora_alpha").get<double>();
    options.lora.targets = lora.at("target_modules").get<std::vector<std::string>>();
    absl::StatusOr<std::unique_ptr<TrainableModel>> model =
        TrainableModel::Load(kModels + "/llama", layout->tp(), options);
    ASSERT_TRUE(model.ok()) << model.status();
    ParameterSet& params = (*model)->parameters();
    ASSERT_TRUE(params.LoadAdapter(kTrain + "/llama/lora_adapter").ok());
    absl::StatusOr<LossSum> loss =
        (*model)->ForwardBackward(batch, 1.0f / static_cast<float>(batch.target_count));
    ASSERT_TRUE(loss.ok()) << loss.status();
    ASSERT_TRUE((*model)->ReducePartialGrads().ok());
    const double golden_loss = lora.at("loss").get<double>();
    EXPECT_NEAR(loss->sum / loss->targets, golden_loss, 1e-5 * golden_loss);
    int adapters = 0;
    for (const Parameter& p : params.all()) {
      if (!p.trainable) {
        EXPECT_FALSE(p.grad.defined()) << p.name << " is frozen";
        continue;
      }
      ++adapters;
      absl::StatusOr<Tensor> expected = (*golden)->Read(p.name, p.planned.slice);
      ASSERT_TRUE(expected.ok()) << expected.status();
      EXPECT_LT(RelativeError(p.grad, *expected), 1e-4) << p.name;
    }
    EXPECT_EQ(adapters, 2 * 4 * (*model)->config().num_hidden_layers);
    absl::StatusOr<double> norm = GlobalGradNorm(params, layout->tp());
    ASSERT_TRUE(norm.ok());
    const double golden_norm = lora.at("grad_norm").get<double>();
    EXPECT_NEAR(*norm, golden_norm, 1e-4 * golden_norm);
  }
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const char* m : {"llama", "llama_tied_linear", "mistral", "qwen2", "glm", "glm4"}) {
    for (const char* b : {"padded", "packed"}) cases.push_back({m, b});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Architectures, TrainGolden, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& param) {
                           return param.param.model + "_" + param.param.batch;
                         });

}  // namespace
}  // namespace tessera::train
