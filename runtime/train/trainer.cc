#include "runtime/train/trainer.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::train {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<Trainer> Trainer::Create(TrainableModel& model, comm::Communicator& dp,
                                        const RowStream& data, const TrainerOptions& options) {
  if (options.micro_batch < 1 || options.grad_accum < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--micro-batch and --grad-accum must be at least 1, not ",
                     options.micro_batch, " and ", options.grad_accum));
  }
  TESSERA_ASSIGN_OR_RETURN(AdamW optimizer, AdamW::Create(model.parameters(), options.adamw));
  return Trainer(model, dp, data, options, std::move(optimizer));
}

absl::Status Trainer::SumOverDp(std::vector<float>& values) {
  if (dp_->size() == 1) return absl::OkStatus();
  Tensor t = Tensor::Wrap(values.data(), DType::kF32, {static_cast<int64_t>(values.size())});
  Stream cpu = Stream::Cpu();
  return dp_->AllReduce(t, comm::ReduceOp::kSum, cpu);
}

absl::Status Trainer::AllReduceGrads() {
  if (dp_->size() == 1) return absl::OkStatus();
  Stream cpu = Stream::Cpu();
  // Gate and up share one stacked gradient: reduce each distinct tensor once.
  ParameterSet& params = model_->parameters();
  for (int l = 0; l < model_->config().num_hidden_layers; ++l) {
    Tensor g = params.GateUpGrad(l);
    if (g.defined()) TESSERA_RETURN_IF_ERROR(dp_->AllReduce(g, comm::ReduceOp::kSum, cpu));
  }
  for (Parameter& p : params.all()) {
    const bool stacked = p.name.rfind("model.", 0) == 0 &&
                         (p.name.find(".mlp.gate_") != std::string::npos ||
                          p.name.find(".mlp.up_proj.") != std::string::npos);
    if (!p.grad.defined() || stacked) continue;
    TESSERA_RETURN_IF_ERROR(dp_->AllReduce(p.grad, comm::ReduceOp::kSum, cpu));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepReport> Trainer::Step() {
  const double start = Now();
  StepReport report;
  const DataPosition step_start = position_;
  // Every rank sees the whole step's rows: the targets of the global batch, without a
  // collective.
  TESSERA_ASSIGN_OR_RETURN(MicroBatch global, data_->Rows(step_start, rows_per_step()));
  report.targets = global.target_count;
  report.tokens = static_cast<int64_t>(global.tokens.size());
  if (report.targets == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "optimizer step ", steps_done() + 1, " has no target tokens in its ", rows_per_step(),
        " rows"));
  }
  const float loss_scale = 1.0f / static_cast<float>(report.targets);
  ParameterSet& params = model_->parameters();
  params.ZeroGrads();
  double loss_sum = 0;
  for (int a = 0; a < options_.grad_accum; ++a) {
    DataPosition at = data_->RankMicroBatchStart(step_start, dp_->rank(), a,
                                                 options_.micro_batch, options_.grad_accum);
    TESSERA_ASSIGN_OR_RETURN(MicroBatch batch, data_->Rows(at, options_.micro_batch));
    TESSERA_ASSIGN_OR_RETURN(LossSum loss, model_->ForwardBackward(batch, loss_scale));
    loss_sum += loss.sum;
  }
  TESSERA_RETURN_IF_ERROR(model_->ReducePartialGrads());
  const double comm_start = Now();
  TESSERA_RETURN_IF_ERROR(AllReduceGrads());
  std::vector<float> sums = {static_cast<float>(loss_sum)};
  TESSERA_RETURN_IF_ERROR(SumOverDp(sums));
  report.comm_seconds = Now() - comm_start;
  report.loss = sums[0] / static_cast<double>(report.targets);
  TESSERA_ASSIGN_OR_RETURN(report.grad_norm, GlobalGradNorm(params, model_->tp()));
  if (options_.max_grad_norm > 0) ClipGrads(params, report.grad_norm, options_.max_grad_norm);
  report.lr = LearningRateAt(options_.schedule, options_.lr, steps_done());
  optimizer_.Step(report.lr);
  position_ = data_->Advance(step_start, rows_per_step());
  report.step = steps_done();
  report.seconds = Now() - start;
  return report;
}

absl::StatusOr<double> Trainer::Evaluate(const RowStream& eval, int64_t rows) {
  const int64_t per_call = options_.micro_batch;
  double loss_sum = 0;
  int64_t targets = 0;
  // Rank d takes calls d, d + dp, ...: every rank makes the same number of TP collectives
  // within its own group, and the totals are summed over DP at the end.
  int64_t call = 0;
  for (int64_t first = 0; first < rows; first += per_call, ++call) {
    if (call % dp_->size() != dp_->rank()) continue;
    const int64_t count = std::min(per_call, rows - first);
    TESSERA_ASSIGN_OR_RETURN(MicroBatch batch, eval.Rows(eval.Advance({}, first), count));
    TESSERA_ASSIGN_OR_RETURN(LossSum loss, model_->Loss(batch));
    loss_sum += loss.sum;
    targets += loss.targets;
  }
  std::vector<float> sums = {static_cast<float>(loss_sum), static_cast<float>(targets)};
  TESSERA_RETURN_IF_ERROR(SumOverDp(sums));
  if (sums[1] == 0) return absl::FailedPreconditionError("the evaluation data has no targets");
  return sums[0] / sums[1];
}

}  // namespace tessera::train
