// The optimizer step against torch.optim.AdamW with transformers' cosine schedule and
// clip_grad_norm_ (tests/golden/train/llama/adamw.json), at every TP degree the ranks allow;
// the loss's definition: a step's rows split into micro-batches, accumulation steps or
// data-parallel ranks give the same losses and weights; and ZeRO-1 (moments sharded over the
// data-parallel ranks) takes the same steps and saves the same moments as the replicated
// optimizer at every TP x DP layout with DP >= 2; a step taken a piece at a time between
// other collectives is bitwise the step taken at once.

#include "runtime/train/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "kernels/cpu/quantized_linear.h"
#include "nlohmann/json.hpp"
#include "runtime/core/stream.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_loader.h"
#include "runtime/model/weight_quantization.h"
#include "runtime/train/batches.h"
#include "runtime/train/lora.h"
#include "runtime/train/optimizer.h"
#include "runtime/train/trainable_model.h"
#include "runtime/train/zero_optimizer.h"
#include "tests/mpi/mpi_test_environment.h"
#include "tests/train/golden_batch.h"

namespace tessera::train {
namespace {

using ::tessera::testing::World;

const std::string kModels = TESSERA_GOLDEN_MODELS;
const std::string kTrain = TESSERA_GOLDEN_TRAIN;

using testing::BatchOf;
using testing::ReadJson;

TEST(AdamW, TenStepsFollowTorchWithScheduleAndClipping) {
  comm::Communicator& world = World();
  const nlohmann::json golden = ReadJson(kTrain + "/llama/adamw.json");
  const nlohmann::json& hp = golden.at("hyperparameters");
  const nlohmann::json batches = ReadJson(kTrain + "/llama/batches.json");
  absl::StatusOr<comm::Topology> topology = comm::Topology::Discover(world);
  ASSERT_TRUE(topology.ok()) << topology.status();
  absl::StatusOr<std::unique_ptr<model::SafetensorsFile>> final_weights =
      model::SafetensorsFile::Open(kTrain + "/llama/adamw_final.safetensors");
  ASSERT_TRUE(final_weights.ok()) << final_weights.status();
  for (int tp = 1; tp <= world.size(); tp *= 2) {
    if (world.size() % tp != 0) continue;
    SCOPED_TRACE(absl::StrCat("tp ", tp));
    absl::StatusOr<comm::Layout> layout =
        comm::Layout::Create(world, *topology, comm::LayoutOptions{.tp = tp});
    ASSERT_TRUE(layout.ok()) << layout.status();
    absl::StatusOr<std::unique_ptr<TrainableModel>> model =
        TrainableModel::Load(kModels + "/llama", layout->tp());
    ASSERT_TRUE(model.ok()) << model.status();
    ParameterSet& params = (*model)->parameters();
    AdamWOptions options;
    options.beta1 = hp.at("betas")[0].get<double>();
    options.beta2 = hp.at("betas")[1].get<double>();
    options.eps = hp.at("eps").get<double>();
    options.weight_decay = hp.at("weight_decay").get<double>();
    options.decay_all = true;  // one parameter group, as the golden's optimizer
    absl::StatusOr<AdamW> adam = AdamW::Create(params, options);
    ASSERT_TRUE(adam.ok());
    const ScheduleOptions schedule{Schedule::kCosine, hp.at("num_warmup_steps").get<int64_t>(),
                                   hp.at("num_training_steps").get<int64_t>()};
    for (const nlohmann::json& step : golden.at("steps")) {
      const int64_t s = step.at("step").get<int64_t>();
      SCOPED_TRACE(absl::StrCat("step ", s));
      const MicroBatch batch = BatchOf(batches.at(step.at("batch").get<std::string>()));
      params.ZeroGrads();
      absl::StatusOr<LossSum> loss =
          (*model)->ForwardBackward(batch, 1.0f / static_cast<float>(batch.target_count));
      ASSERT_TRUE(loss.ok()) << loss.status();
      ASSERT_TRUE((*model)->ReducePartialGrads().ok());
      const double expected_loss = step.at("loss").get<double>();
      EXPECT_NEAR(loss->sum / loss->targets, expected_loss, 1e-5 * expected_loss);
      absl::StatusOr<double> norm = GlobalGradNorm(params, layout->tp());
      ASSERT_TRUE(norm.ok());
      const double expected_norm = step.at("grad_norm").get<double>();
      EXPECT_NEAR(*norm, expected_norm, 1e-4 * expected_norm);
      ClipGrads(params, *norm, hp.at("max_grad_norm").get<double>());
      const double lr = LearningRateAt(schedule, hp.at("lr").get<double>(), s);
      EXPECT_NEAR(lr, step.at("lr").get<double>(), 1e-12);
      adam->Step(lr);
    }
    for (const Parameter& p : params.all()) {
      absl::StatusOr<Tensor> expected = (*final_weights)->Read(p.name, p.planned.slice);
      ASSERT_TRUE(expected.ok()) << expected.status();
      double diff = 0, norm = 0;
      for (int64_t i = 0; i < expected->numel(); ++i) {
        const double d = p.value.data<float>()[i] - expected->data<float>()[i];
        diff += d * d;
        norm += static_cast<double>(expected->data<float>()[i]) * expected->data<float>()[i];
      }
      EXPECT_LT(std::sqrt(diff / norm), 1e-4) << p.name;
    }
  }
}

// Recomputing each layer in the backward gives bitwise the gradients of keeping its
// activations, for a full fine-tune and for LoRA, at the TP degree of all ranks.
TEST(Recompute, GivesBitwiseTheSameGradients) {
  comm::Communicator& world = World();
  const MicroBatch batch = BatchOf(ReadJson(kTrain + "/glm4/batches.json").at("packed"));
  for (bool lora : {false, true}) {
    std::vector<std::vector<float>> grads[2];
    for (bool recompute : {false, true}) {
      TrainableModelOptions options;
      options.recompute = recompute;
      if (lora) options.lora.r = 4;
      absl::StatusOr<std::unique_ptr<TrainableModel>> model =
          TrainableModel::Load(kModels + "/glm4", world, options);
      ASSERT_TRUE(model.ok()) << model.status();
      ASSERT_TRUE((*model)->ForwardBackward(batch, 0.25f).ok());
      for (const Parameter& p : (*model)->parameters().all()) {
        if (p.grad.defined()) {
          grads[recompute].emplace_back(p.grad.data<float>(),
                                        p.grad.data<float>() + p.grad.numel());
        }
      }
    }
    ASSERT_EQ(grads[0].size(), grads[1].size());
    ASSERT_FALSE(grads[0].empty());
    for (size_t i = 0; i < grads[0].size(); ++i) {
      EXPECT_EQ(grads[0][i], grads[1][i]) << "tensor " << i << (lora ? " (LoRA)" : "");
    }
  }
}

// LoRA over a base quantized at load (--quantize int8 / int4): the loss and the adapters'
// gradients are those of LoRA over the dequantized base (each rank's slice quantized as the
// quantized model quantizes it), to f32 rounding, at the TP degree of all ranks; the base's
// f32 values are released.
// The frozen layer projections `m` holds no values of (quantized, or shared with a serving
// model): every one of them, 7 a layer.
void ExpectFrozenProjectionsReleased(const TrainableModel& m) {
  int64_t released = 0;
  for (const Parameter& p : m.parameters().all()) {
    if (!p.trainable && model::IsLayerProjection(p.name)) {
      EXPECT_FALSE(p.value.defined()) << p.name;
      ++released;
    }
  }
  EXPECT_EQ(released, 7 * m.config().num_hidden_layers);
}

// Values for the LoRA B factors (they start at zero, which would leave A without a
// gradient).
void GiveLoraBValues(TrainableModel& m) {
  for (Parameter& p : m.parameters().all()) {
    if (p.name.find("lora_B") == std::string::npos) continue;
    for (int64_t i = 0; i < p.value.numel(); ++i) {
      p.value.data<float>()[i] = 0.02f * std::sin(0.7f * static_cast<float>(i) + 1.0f);
    }
  }
}

TEST(QuantizedBase, LoraLearnsAgainstTheDequantizedWeights) {
  comm::Communicator& world = World();
  const MicroBatch batch = BatchOf(ReadJson(kTrain + "/llama/batches.json").at("packed"));
  for (const char* quant : {"int8", "int4"}) {
    SCOPED_TRACE(quant);
    TrainableModelOptions options;
    options.lora.r = 4;
    absl::StatusOr<std::vector<std::string>> targets =
        ParseLoraTargets("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    ASSERT_TRUE(targets.ok()) << targets.status();
    options.lora.targets = *targets;
    options.quantize = *model::ParseWeightQuantization(quant, "");
    absl::StatusOr<std::unique_ptr<TrainableModel>> quantized =
        TrainableModel::Load(kModels + "/llama", world, options);
    if (world.size() == 4 && std::string(quant) == "int4") {
      // o_proj's 64 inputs over 4 ranks would cut int4's groups of 32.
      ASSERT_FALSE(quantized.ok());
      EXPECT_NE(quantized.status().message().find("would cut a group of 32"), std::string::npos)
          << quantized.status();
      continue;
    }
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    TrainableModelOptions dense_options = options;
    dense_options.quantize.reset();
    absl::StatusOr<std::unique_ptr<TrainableModel>> dense =
        TrainableModel::Load(kModels + "/llama", world, dense_options);
    ASSERT_TRUE(dense.ok()) << dense.status();

    ExpectFrozenProjectionsReleased(**quantized);
    GiveLoraBValues(**quantized);
    GiveLoraBValues(**dense);
    // The dense model's base becomes the quantized weights' values.
    for (Parameter& p : (*dense)->parameters().all()) {
      if (p.trainable || !model::IsLayerProjection(p.name)) continue;
      absl::StatusOr<kernels::QuantizedWeight> q = kernels::QuantizeWeight(
          p.value, options.quantize->quant, options.quantize->GroupFor(p.value.dim(1)));
      ASSERT_TRUE(q.ok()) << q.status();
      absl::StatusOr<Tensor> values = kernels::DequantizeWeight(*q);
      ASSERT_TRUE(values.ok()) << values.status();
      std::copy_n(values->data<float>(), p.value.numel(), p.value.data<float>());
    }
    absl::StatusOr<LossSum> loss_q = (*quantized)->ForwardBackward(batch, 0.25f);
    absl::StatusOr<LossSum> loss_d = (*dense)->ForwardBackward(batch, 0.25f);
    ASSERT_TRUE(loss_q.ok()) << loss_q.status();
    ASSERT_TRUE(loss_d.ok()) << loss_d.status();
    EXPECT_NEAR(loss_q->sum, loss_d->sum, 1e-5 * std::abs(loss_d->sum));
    int compared = 0;
    for (const Parameter& p : (*dense)->parameters().all()) {
      if (!p.grad.defined()) continue;
      const Parameter* q = (*quantized)->parameters().Find(p.name);
      ASSERT_NE(q, nullptr) << p.name;
      ASSERT_EQ(q->grad.numel(), p.grad.numel()) << p.name;
      float largest = 0;
      for (int64_t i = 0; i < p.grad.numel(); ++i) {
        largest = std::max(largest, std::abs(p.grad.data<float>()[i]));
      }
      EXPECT_GT(largest, 0.0f) << p.name;
      for (int64_t i = 0; i < p.grad.numel(); ++i) {
        ASSERT_NEAR(q->grad.data<float>()[i], p.grad.data<float>()[i], 1e-4 * largest)
            << p.name << " element " << i;
      }
      ++compared;
    }
    EXPECT_EQ(compared, 2 * 7 * (*dense)->config().num_hidden_layers);
  }
  TrainableModelOptions full;
  full.quantize = *model::ParseWeightQuantization("int8", "");
  absl::StatusOr<std::unique_ptr<TrainableModel>> refused =
      TrainableModel::Load(kModels + "/llama", world, full);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("only the frozen base of a LoRA fine-tune"),
            std::string::npos)
      << refused.status();
}

// A serving model's projections as the frozen base (TrainableModelOptions::frozen_base): the
// trainable model keeps no copy of them, and its loss and adapter gradients are bitwise those
// of the same fine-tune on its own copy (f32, or quantized to int8 as the serving model is:
// the same values, multiplied by the same kernels). So are those of its own copy packed once
// at load (pack_frozen_base).
TEST(SharedFrozenBase, LoraOnTheServingModelsProjectionsIsBitwiseItsOwnCopys) {
  comm::Communicator& world = World();
  const MicroBatch batch = BatchOf(ReadJson(kTrain + "/llama/batches.json").at("packed"));
  // The serving model as loaded (packed f32), and quantized to int8 at load.
  for (const char* quant : {"none", "int8"}) {
    SCOPED_TRACE(quant);
    model::LoadOptions load;
    if (std::string(quant) != "none") load.quantize = *model::ParseWeightQuantization(quant, "");
    absl::StatusOr<std::unique_ptr<model::Transformer>> serving =
        model::Transformer::Load(kModels + "/llama", world, load);
    ASSERT_TRUE(serving.ok()) << serving.status();
    TrainableModelOptions options;
    options.lora.r = 4;
    absl::StatusOr<std::vector<std::string>> targets =
        ParseLoraTargets("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    ASSERT_TRUE(targets.ok()) << targets.status();
    options.lora.targets = *targets;
    options.quantize = load.quantize;  // its own copy, quantized as the serving model is
    absl::StatusOr<std::unique_ptr<TrainableModel>> own =
        TrainableModel::Load(kModels + "/llama", world, options);
    ASSERT_TRUE(own.ok()) << own.status();
    options.quantize.reset();
    options.frozen_base = serving->get();
    absl::StatusOr<std::unique_ptr<TrainableModel>> shared =
        TrainableModel::Load(kModels + "/llama", world, options);
    ASSERT_TRUE(shared.ok()) << shared.status();
    ExpectFrozenProjectionsReleased(**shared);
    GiveLoraBValues(**own);
    std::vector<std::unique_ptr<TrainableModel>> others;
    others.push_back(*std::move(shared));
    if (!load.quantize.has_value()) {
      // Its own copy packed once at load (pack_frozen_base), as `tessera train` holds it.
      options.frozen_base = nullptr;
      options.pack_frozen_base = true;
      absl::StatusOr<std::unique_ptr<TrainableModel>> packed =
          TrainableModel::Load(kModels + "/llama", world, options);
      ASSERT_TRUE(packed.ok()) << packed.status();
      ExpectFrozenProjectionsReleased(**packed);
      others.push_back(*std::move(packed));
    }
    absl::StatusOr<LossSum> loss_own = (*own)->ForwardBackward(batch, 0.25f);
    ASSERT_TRUE(loss_own.ok()) << loss_own.status();
    for (const std::unique_ptr<TrainableModel>& other : others) {
      GiveLoraBValues(*other);
      absl::StatusOr<LossSum> loss_other = other->ForwardBackward(batch, 0.25f);
      ASSERT_TRUE(loss_other.ok()) << loss_other.status();
      EXPECT_EQ(loss_other->sum, loss_own->sum);
      int compared = 0;
      for (const Parameter& p : (*own)->parameters().all()) {
        if (!p.grad.defined()) continue;
        const Parameter* q = other->parameters().Find(p.name);
        ASSERT_NE(q, nullptr) << p.name;
        ASSERT_EQ(q->grad.numel(), p.grad.numel()) << p.name;
        EXPECT_TRUE(std::equal(p.grad.data<float>(), p.grad.data<float>() + p.grad.numel(),
                               q->grad.data<float>()))
            << p.name;
        ++compared;
      }
      EXPECT_EQ(compared, 2 * 7 * (*own)->config().num_hidden_layers);
    }
  }
  absl::StatusOr<std::unique_ptr<model::Transformer>> serving =
      model::Transformer::Load(kModels + "/llama", world);
  ASSERT_TRUE(serving.ok()) << serving.status();
  // A full fine-tune updates its weights: it cannot share them.
  TrainableModelOptions full;
  full.frozen_base = serving->get();
  absl::StatusOr<std::unique_ptr<TrainableModel>> refused =
      TrainableModel::Load(kModels + "/llama", world, full);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("shared only with a LoRA fine-tune"), std::string::npos)
      << refused.status();
}

// Examples of uneven lengths and prompt masks, so that micro-batches hold different numbers
// of targets.
std::vector<Example> UnevenExamples() {
  std::vector<Example> examples;
  uint32_t state = 12345;
  auto next = [&]() {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  for (int e = 0; e < 40; ++e) {
    Example example;
    const int length = 3 + static_cast<int>(next() % 14);
    const int prompt = static_cast<int>(next() % length);
    for (int t = 0; t < length; ++t) {
      example.tokens.push_back(3 + static_cast<int32_t>(next() % 250));
      example.labels.push_back(t < prompt ? kIgnoreLabel : example.tokens.back());
    }
    example.labels.back() = example.tokens.back();  // at least one trained token
    examples.push_back(std::move(example));
  }
  return examples;
}

struct Split {
  int micro_batch, grad_accum, dp;
};

struct TrainedRun {
  std::vector<double> losses;
  std::vector<std::vector<float>> weights;
};

// Three steps of `split` on the llama golden model over `tp`; the ranks of `dp` share them.
// `in_pieces`: each step a piece at a time (Trainer::StepPiece), with an all-reduce of
// another tensor over `tp` between two pieces, as serving steps run between them.
TrainedRun TrainSteps(const Split& split, comm::Communicator& tp, comm::Communicator& dp,
                      bool in_pieces = false) {
  TrainedRun run;
  BatchOptions batching;
  batching.seq_len = 16;
  absl::StatusOr<RowStream> data = RowStream::Create(UnevenExamples(), batching);
  EXPECT_TRUE(data.ok()) << data.status();
  absl::StatusOr<std::unique_ptr<TrainableModel>> model =
      TrainableModel::Load(kModels + "/llama", tp);
  EXPECT_TRUE(model.ok()) << model.status();
  TrainerOptions options;
  options.micro_batch = split.micro_batch;
  options.grad_accum = split.grad_accum;
  options.lr = 1e-3;
  options.schedule = {Schedule::kConstant, 0, 3};
  options.adamw.weight_decay = 0.01;
  absl::StatusOr<Trainer> trainer = Trainer::Create(**model, dp, *data, options);
  EXPECT_TRUE(trainer.ok());
  const int pieces_per_step = split.grad_accum * (*model)->pieces_per_pass() + 1;
  for (int s = 0; s < 3; ++s) {
    if (!in_pieces) {
      absl::StatusOr<StepReport> report = trainer->Step();
      EXPECT_TRUE(report.ok()) << report.status();
      run.losses.push_back(report->loss);
      continue;
    }
    for (int piece = 1;; ++piece) {
      // Known once the same piece of an earlier micro-batch (or the update) ran.
      const int per_pass = (*model)->pieces_per_pass();
      EXPECT_EQ(trainer->ExpectedPieceSeconds(0).has_value(),
                s > 0 || (piece > per_pass && piece < pieces_per_step))
          << "step " << s << " piece " << piece;
      absl::StatusOr<std::optional<StepReport>> ran = trainer->StepPiece();
      EXPECT_TRUE(ran.ok()) << ran.status();
      if (!ran.ok()) return run;
      std::vector<float> other = {1.0f, static_cast<float>(piece)};
      Tensor view = Tensor::Wrap(other.data(), DType::kF32, {2});
      Stream cpu = Stream::Cpu();
      EXPECT_TRUE(tp.AllReduce(view, comm::ReduceOp::kSum, cpu).ok());
      EXPECT_EQ(other[0], static_cast<float>(tp.size()));
      if (!ran->has_value()) continue;
      EXPECT_EQ(piece, pieces_per_step);
      EXPECT_EQ((*ran)->step, s + 1);
      run.losses.push_back((*ran)->loss);
      break;
    }
  }
  for (const Parameter& p : (*model)->parameters().all()) {
    run.weights.emplace_back(p.value.data<float>(), p.value.data<float>() + p.value.numel());
  }
  return run;
}

TEST(Trainer, MicroBatchesAccumulationAndDataParallelGiveTheSameSteps) {
  comm::Communicator& world = World();
  absl::StatusOr<std::unique_ptr<comm::Communicator>> self =
      world.Split(world.rank(), 0, absl::StrCat("self", world.rank()));
  ASSERT_TRUE(self.ok());
  const TrainedRun accumulated = TrainSteps({2, 4, 1}, **self, **self);
  const TrainedRun one_batch = TrainSteps({8, 1, 1}, **self, **self);
  std::vector<TrainedRun> others = {one_batch};
  std::unique_ptr<comm::Communicator> pair;
  if (world.size() % 2 == 0) {
    absl::StatusOr<std::unique_ptr<comm::Communicator>> split =
        world.Split(world.rank() / 2, world.rank() % 2, absl::StrCat("dp", world.rank() / 2));
    ASSERT_TRUE(split.ok());
    pair = std::move(*split);
    others.push_back(TrainSteps({4, 1, 2}, **self, *pair));
  }
  for (const TrainedRun& other : others) {
    ASSERT_EQ(other.losses.size(), accumulated.losses.size());
    for (size_t s = 0; s < other.losses.size(); ++s) {
      EXPECT_NEAR(other.losses[s], accumulated.losses[s], 1e-6 * accumulated.losses[s]);
    }
    // Each tensor within 1e-6 of its norm: the same sums in another order (Adam divides by
    // the root of the second moment, so an element whose gradient nearly cancels moves by a
    // larger share of its own update).
    for (size_t p = 0; p < other.weights.size(); ++p) {
      double diff = 0, norm = 0;
      for (size_t i = 0; i < other.weights[p].size(); ++i) {
        const double d = other.weights[p][i] - accumulated.weights[p][i];
        diff += d * d;
        norm += static_cast<double>(accumulated.weights[p][i]) * accumulated.weights[p][i];
      }
      EXPECT_LT(std::sqrt(diff / norm), 1e-6) << "tensor " << p;
    }
  }
}

TEST(Trainer, StepsTakenAPieceAtATimeBesideOtherCollectivesAreBitwiseTheSame) {
  comm::Communicator& world = World();
  absl::StatusOr<std::unique_ptr<comm::Communicator>> self =
      world.Split(world.rank(), 0, absl::StrCat("self", world.rank()));
  ASSERT_TRUE(self.ok());
  const TrainedRun whole = TrainSteps({2, 3, 1}, world, **self);
  const TrainedRun pieces = TrainSteps({2, 3, 1}, world, **self, /*in_pieces=*/true);
  ASSERT_EQ(pieces.losses.size(), whole.losses.size());
  for (size_t s = 0; s < whole.losses.size(); ++s) {
    EXPECT_EQ(pieces.losses[s], whole.losses[s]) << "step " << s;
  }
  ASSERT_EQ(pieces.weights.size(), whole.weights.size());
  for (size_t p = 0; p < whole.weights.size(); ++p) {
    EXPECT_EQ(pieces.weights[p], whole.weights[p]) << "tensor " << p;
  }
}

// Within 1e-6 of the tensor's norm, each tensor.
void ExpectSameWeights(const std::vector<std::vector<float>>& got,
                       const std::vector<std::vector<float>>& expected, absl::string_view what) {
  ASSERT_EQ(got.size(), expected.size()) << what;
  for (size_t p = 0; p < got.size(); ++p) {
    ASSERT_EQ(got[p].size(), expected[p].size()) << what << " tensor " << p;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < got[p].size(); ++i) {
      const double d = got[p][i] - expected[p][i];
      diff += d * d;
      norm += static_cast<double>(expected[p][i]) * expected[p][i];
    }
    EXPECT_LE(std::sqrt(diff), 1e-6 * std::sqrt(norm)) << what << " tensor " << p;
  }
}

struct ZeroRun {
  std::vector<double> losses, grad_norms;
  std::vector<std::vector<float>> weights;
  std::vector<std::vector<float>> moments;  // AdamW::State's order
  int64_t state_bytes = 0;
};

// Four steps of 2 rows x 2 accumulations a replica on the llama golden model over `layout`,
// with weight decay and clipping at a norm below every step's, and small gradient buckets so
// that shards cut through tensors; the whole moments at the end.
ZeroRun TrainWithZero(comm::Layout& layout, int zero_stage) {
  ZeroRun run;
  BatchOptions batching;
  batching.seq_len = 16;
  absl::StatusOr<RowStream> data = RowStream::Create(UnevenExamples(), batching);
  EXPECT_TRUE(data.ok()) << data.status();
  absl::StatusOr<std::unique_ptr<TrainableModel>> model =
      TrainableModel::Load(kModels + "/llama", layout.tp());
  EXPECT_TRUE(model.ok()) << model.status();
  TrainerOptions options;
  options.micro_batch = 2;
  options.grad_accum = 2;
  options.lr = 1e-3;
  options.schedule = {Schedule::kCosine, 1, 4};
  options.adamw.weight_decay = 0.01;
  options.max_grad_norm = 0.5;
  options.buckets.first_bucket_bytes = 1000;
  options.buckets.bucket_bytes = 30000;
  options.zero_stage = zero_stage;
  absl::StatusOr<Trainer> trainer = Trainer::Create(**model, layout.dp(), *data, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_EQ(trainer->sharded(), zero_stage == 1);
  run.state_bytes = trainer->optimizer_state_bytes();
  for (int s = 0; s < 4; ++s) {
    absl::StatusOr<StepReport> report = trainer->Step();
    EXPECT_TRUE(report.ok()) << report.status();
    run.losses.push_back(report->loss);
    run.grad_norms.push_back(report->grad_norm);
  }
  for (const Parameter& p : (*model)->parameters().all()) {
    run.weights.emplace_back(p.value.data<float>(), p.value.data<float>() + p.value.numel());
  }
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> state =
      trainer->OptimizerState(/*materialize=*/true);
  EXPECT_TRUE(state.ok()) << state.status();
  for (const auto& [name, moment] : *state) {
    run.moments.emplace_back(moment.data<float>(), moment.data<float>() + moment.numel());
  }
  return run;
}

// ZeRO-1 against the replicated optimizer. Not bitwise: the reduce-scatter may sum a DP group's
// gradients in another order than the all-reduce (at DP 4), and the grad norm adds the same
// squares in another grouping (per owned piece, then over DP), which moves the clipping
// factor in its last bits. So losses, norms, weights and moments agree within 1e-6 relative.
TEST(Trainer, ZeroOneShardsTheMomentsAndTakesTheSameSteps) {
  comm::Communicator& world = World();
  absl::StatusOr<comm::Topology> topology = comm::Topology::Discover(world);
  ASSERT_TRUE(topology.ok()) << topology.status();
  if (world.size() < 2) GTEST_SKIP() << "ZeRO needs two data-parallel ranks";
  for (int tp = 1; 2 * tp <= world.size(); tp *= 2) {
    if (world.size() % tp != 0) continue;
    const int dp = world.size() / tp;
    SCOPED_TRACE(absl::StrCat("tp ", tp, " x dp ", dp));
    absl::StatusOr<comm::Layout> layout =
        comm::Layout::Create(world, *topology, comm::LayoutOptions{.tp = tp});
    ASSERT_TRUE(layout.ok()) << layout.status();
    const ZeroRun replicated = TrainWithZero(*layout, 0);
    const ZeroRun sharded = TrainWithZero(*layout, 1);
    ASSERT_EQ(sharded.losses.size(), replicated.losses.size());
    for (size_t s = 0; s < replicated.losses.size(); ++s) {
      EXPECT_NEAR(sharded.losses[s], replicated.losses[s], 1e-6 * replicated.losses[s]);
      EXPECT_NEAR(sharded.grad_norms[s], replicated.grad_norms[s], 1e-6 * replicated.grad_norms[s]);
      EXPECT_GT(replicated.grad_norms[s], 0.5) << "clipping is active at step " << s + 1;
    }
    ExpectSameWeights(sharded.weights, replicated.weights, "weights");
    ExpectSameWeights(sharded.moments, replicated.moments, "moments");
    // Each rank keeps 1/dp of the moments, up to the padding of each bucket to dp elements.
    EXPECT_LE(sharded.state_bytes, replicated.state_bytes / dp + 2 * 4 * 64 * dp);
    EXPECT_GE(sharded.state_bytes, replicated.state_bytes / dp);
  }
}

// Moments restored from the unsharded form continue as the optimizer that saved them: a
// replicated optimizer's state, taken by a sharded one (and back) after two steps, gives the
// third step of an uninterrupted run.
TEST(Trainer, ZeroOneRestoresTheReplicatedFormEitherWay) {
  comm::Communicator& world = World();
  absl::StatusOr<comm::Topology> topology = comm::Topology::Discover(world);
  ASSERT_TRUE(topology.ok()) << topology.status();
  if (world.size() < 2) GTEST_SKIP() << "ZeRO needs two data-parallel ranks";
  absl::StatusOr<comm::Layout> layout =
      comm::Layout::Create(world, *topology, comm::LayoutOptions{.tp = 1});
  ASSERT_TRUE(layout.ok()) << layout.status();
  BatchOptions batching;
  batching.seq_len = 16;
  absl::StatusOr<RowStream> data = RowStream::Create(UnevenExamples(), batching);
  ASSERT_TRUE(data.ok()) << data.status();
  TrainerOptions options;
  options.micro_batch = 2;
  options.lr = 1e-3;
  options.schedule = {Schedule::kConstant, 0, 3};
  options.adamw.weight_decay = 0.01;
  options.buckets.first_bucket_bytes = 1000;
  options.buckets.bucket_bytes = 30000;
  for (int saver : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("saved with --zero ", saver));
    std::vector<std::unique_ptr<TrainableModel>> models;
    std::vector<Trainer> trainers;
    for (int zero : {saver, 1 - saver}) {
      absl::StatusOr<std::unique_ptr<TrainableModel>> model =
          TrainableModel::Load(kModels + "/llama", layout->tp());
      ASSERT_TRUE(model.ok()) << model.status();
      options.zero_stage = zero;
      absl::StatusOr<Trainer> trainer = Trainer::Create(**model, layout->dp(), *data, options);
      ASSERT_TRUE(trainer.ok()) << trainer.status();
      models.push_back(std::move(*model));
      trainers.push_back(std::move(*trainer));
    }
    Trainer& whole = trainers[0];
    Trainer& resumed = trainers[1];
    for (int s = 0; s < 2; ++s) ASSERT_TRUE(whole.Step().ok());
    // What a checkpoint holds: the weights, the whole moments, the step and the position.
    std::vector<Parameter>& from = models[0]->parameters().all();
    std::vector<Parameter>& to = models[1]->parameters().all();
    Stream cpu = Stream::Cpu();
    for (size_t i = 0; i < from.size(); ++i)
      ASSERT_TRUE(to[i].value.CopyFrom(from[i].value, cpu).ok());
    absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> state =
        whole.OptimizerState(/*materialize=*/true);
    ASSERT_TRUE(state.ok()) << state.status();
    ASSERT_TRUE(resumed.RestoreOptimizer(*state, whole.steps_done()).ok());
    resumed.SetPosition(whole.position());
    absl::StatusOr<StepReport> expected = whole.Step();
    absl::StatusOr<StepReport> got = resumed.Step();
    ASSERT_TRUE(expected.ok() && got.ok());
    EXPECT_EQ(got->step, 3);
    EXPECT_NEAR(got->loss, expected->loss, 1e-6 * expected->loss);
    for (size_t i = 0; i < from.size(); ++i) {
      std::vector<std::vector<float>> a = {std::vector<float>(
          from[i].value.data<float>(), from[i].value.data<float>() + from[i].value.numel())};
      std::vector<std::vector<float>> b = {std::vector<float>(
          to[i].value.data<float>(), to[i].value.data<float>() + to[i].value.numel())};
      ExpectSameWeights(b, a, from[i].name);
    }
  }
  // A moment of another shape is refused, naming it.
  absl::StatusOr<std::unique_ptr<TrainableModel>> model =
      TrainableModel::Load(kModels + "/llama", layout->tp());
  ASSERT_TRUE(model.ok());
  options.zero_stage = 1;
  absl::StatusOr<Trainer> trainer = Trainer::Create(**model, layout->dp(), *data, options);
  ASSERT_TRUE(trainer.ok());
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> state =
      trainer->OptimizerState(/*materialize=*/true);
  ASSERT_TRUE(state.ok());
  absl::StatusOr<Tensor> wrong = Tensor::Zeros(DType::kF32, {3});
  ASSERT_TRUE(wrong.ok());
  (*state)[0].second = *wrong;
  absl::Status refused = trainer->RestoreOptimizer(*state, 1);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find((*state)[0].first), std::string::npos) << refused;
}

TEST(Trainer, RefusesZeroStagesBeyondOne) {
  TrainerOptions options;
  options.zero_stage = 2;
  absl::Status refused = ValidateTrainerOptions(options);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("--zero 2"), std::string::npos) << refused;
  options.zero_stage = 1;
  EXPECT_TRUE(ValidateTrainerOptions(options).ok());
}

}  // namespace
}  // namespace tessera::train
