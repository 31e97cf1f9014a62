#include "runtime/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::train {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::Status ValidateTrainerOptions(const TrainerOptions& options) {
  if (options.micro_batch < 1 || options.grad_accum < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--micro-batch and --grad-accum must be at least 1, not ", options.micro_batch,
                     " and ", options.grad_accum));
  }
  if (options.zero_stage != 0 && options.zero_stage != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--zero ", options.zero_stage,
                     ": the ZeRO stages are 0 (AdamW's moments whole on every data-parallel "
                     "replica) and 1 (sharded over the replicas); gradient and parameter "
                     "sharding (stages 2 and 3) are not built"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Trainer> Trainer::Create(TrainableModel& model, comm::Communicator& dp,
                                        const RowStream& data, const TrainerOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateTrainerOptions(options));
  Trainer trainer(model, dp, data, options);
  ParameterSet& params = model.parameters();
  if (dp.size() > 1 && options.zero_stage == 1) {
    // Every trainable parameter apart (gate and up too): the shards map back to parameters.
    std::vector<GradientReducer::Entry> entries;
    for (size_t i = 0; i < params.all().size(); ++i) {
      const Parameter& p = params.all()[i];
      if (p.trainable) {
        entries.push_back({p.grad, model.BackwardStageOf(p.name), static_cast<int>(i)});
      }
    }
    std::reverse(entries.begin(), entries.end());  // the order the backward finishes them
    TESSERA_ASSIGN_OR_RETURN(trainer.reducer_,
                             GradientReducer::Create(dp, std::move(entries), options.buckets,
                                                     Reduction::kReduceScatter));
    TESSERA_ASSIGN_OR_RETURN(trainer.sharded_,
                             ShardedAdamW::Create(params, *trainer.reducer_, dp, options.adamw));
    return trainer;
  }
  TESSERA_ASSIGN_OR_RETURN(trainer.adam_, AdamW::Create(params, options.adamw));
  if (dp.size() > 1) {
    // Every distinct gradient tensor once: gate and up share one stacked gradient.
    std::vector<GradientReducer::Entry> entries;
    for (int l = 0; l < model.config().num_hidden_layers; ++l) {
      const Tensor& stacked = params.GateUpGrad(l);
      if (stacked.defined()) {
        entries.push_back(
            {stacked, model.BackwardStageOf(absl::StrCat("model.layers.", l, ".mlp"))});
      }
    }
    for (const Parameter& p : params.all()) {
      const bool in_stack =
          p.name.rfind("model.", 0) == 0 && (p.name.find(".mlp.gate_") != std::string::npos ||
                                             p.name.find(".mlp.up_proj.") != std::string::npos);
      if (p.grad.defined() && !in_stack) entries.push_back({p.grad, model.BackwardStageOf(p.name)});
    }
    // Within a stage, the order the backward produces them: the parameters' reverse order.
    std::reverse(entries.begin(), entries.end());
    TESSERA_ASSIGN_OR_RETURN(trainer.reducer_,
                             GradientReducer::Create(dp, std::move(entries), options.buckets));
  }
  return trainer;
}

absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> Trainer::OptimizerState(
    bool materialize) {
  if (sharded_ != nullptr) return sharded_->State(materialize);
  return adam_->State();
}

absl::Status Trainer::RestoreOptimizer(const std::vector<std::pair<std::string, Tensor>>& state,
                                       int64_t steps) {
  if (sharded_ != nullptr) return sharded_->Restore(state, steps);
  return adam_->Restore(state, steps);
}

absl::Status Trainer::SumOverDp(std::vector<float>& values) {
  if (dp_->size() == 1) return absl::OkStatus();
  Tensor t = Tensor::Wrap(values.data(), DType::kF32, {static_cast<int64_t>(values.size())});
  Stream cpu = Stream::Cpu();
  return dp_->AllReduce(t, comm::ReduceOp::kSum, cpu);
}

absl::StatusOr<StepReport> Trainer::Step() {
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(std::optional<StepReport> report, StepPiece());
    if (report.has_value()) return *std::move(report);
  }
}

absl::StatusOr<std::optional<StepReport>> Trainer::StepPiece() {
  const double start = Now();
  const int kind = PieceKind(0);
  absl::StatusOr<std::optional<StepReport>> ran = RunStepPiece();
  const double seconds = Now() - start;
  if (!ran.ok()) {
    step_.reset();
    return ran.status();
  }
  if (piece_seconds_.empty()) piece_seconds_.resize(model_->pieces_per_pass() + 1);
  std::vector<double>& runs = piece_seconds_[kind];
  if (runs.size() == 3) runs.erase(runs.begin());
  runs.push_back(seconds);
  if (ran->has_value()) {
    (*ran)->seconds += seconds;
  } else {
    step_->report.seconds += seconds;
  }
  return ran;
}

int Trainer::PieceKind(int ahead) const {
  const int per_pass = model_->pieces_per_pass();
  const int per_step = options_.grad_accum * per_pass + 1;
  int at = 0;  // the next piece's place in its step
  if (step_.has_value()) {
    at = step_->micro * per_pass + (step_->pass != nullptr ? step_->pass->pieces_done() : 0);
  }
  at = (at + ahead) % per_step;
  return at == per_step - 1 ? per_pass : at % per_pass;
}

int Trainer::PiecesBeforeUpdate() const {
  for (int ahead = 0;; ++ahead) {
    if (PieceKind(ahead) == model_->pieces_per_pass()) return ahead;
  }
}

std::optional<double> Trainer::ExpectedPieceSeconds(int ahead) const {
  if (piece_seconds_.empty()) return std::nullopt;
  std::vector<double> runs = piece_seconds_[PieceKind(ahead)];
  if (runs.empty()) return std::nullopt;
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

absl::Status Trainer::BeginStep() {
  StepInProgress s;
  s.start = position_;
  // Every rank knows the whole step's targets from the stream's plan, without a collective
  // and without the other ranks' tokens.
  TESSERA_ASSIGN_OR_RETURN(RowTotals global, data_->Totals(s.start, rows_per_step()));
  s.report.targets = global.targets;
  s.report.tokens = rows_per_step() * data_->options().seq_len;
  if (s.report.targets == 0) {
    return absl::FailedPreconditionError(absl::StrCat("optimizer step ", steps_done() + 1,
                                                      " has no target tokens in its ",
                                                      rows_per_step(), " rows"));
  }
  s.loss_scale = 1.0f / static_cast<float>(s.report.targets);
  model_->parameters().ZeroGrads();
  if (reducer_ != nullptr) reducer_->BeginStep();
  step_ = std::move(s);
  return absl::OkStatus();
}

absl::Status Trainer::BeginMicroBatch() {
  StepInProgress& s = *step_;
  DataPosition at = data_->RankMicroBatchStart(s.start, dp_->rank(), s.micro, options_.micro_batch,
                                               options_.grad_accum);
  TESSERA_ASSIGN_OR_RETURN(MicroBatch batch, data_->Rows(at, options_.micro_batch));
  // On the last micro-batch each finished stage is final: its partial sums over TP, then its
  // buckets' all-reduce over DP, while the backward goes on.
  TrainableModel::StageCallback stage_done;
  if (s.micro + 1 == options_.grad_accum) {
    stage_done = [this](int stage) -> absl::Status {
      TESSERA_RETURN_IF_ERROR(model_->ReducePartialGrads(stage));
      if (reducer_ != nullptr) reducer_->StageDone(stage);
      return absl::OkStatus();
    };
  }
  TESSERA_ASSIGN_OR_RETURN(
      s.pass, model_->BeginForwardBackward(std::move(batch), s.loss_scale, std::move(stage_done)));
  return absl::OkStatus();
}

absl::StatusOr<std::optional<StepReport>> Trainer::RunStepPiece() {
  if (!step_.has_value()) TESSERA_RETURN_IF_ERROR(BeginStep());
  StepInProgress& s = *step_;
  if (s.micro == options_.grad_accum) return FinishStep();
  if (s.pass == nullptr) TESSERA_RETURN_IF_ERROR(BeginMicroBatch());
  TESSERA_RETURN_IF_ERROR(s.pass->RunPiece());
  if (s.pass->done()) {
    s.loss_sum += s.pass->loss().sum;
    s.pass.reset();
    ++s.micro;
  }
  return std::nullopt;
}

absl::StatusOr<StepReport> Trainer::FinishStep() {
  StepReport report = step_->report;
  if (reducer_ != nullptr) {
    TESSERA_RETURN_IF_ERROR(reducer_->Finish(&report.exposed_comm_seconds, &report.comm_seconds));
  }
  std::vector<float> sums = {static_cast<float>(step_->loss_sum)};
  TESSERA_RETURN_IF_ERROR(SumOverDp(sums));
  report.loss = sums[0] / static_cast<double>(report.targets);
  report.lr = LearningRateAt(options_.schedule, options_.lr, steps_done());
  ParameterSet& params = model_->parameters();
  if (sharded_ != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(report.grad_norm, sharded_->GradNorm(model_->tp()));
    if (options_.max_grad_norm > 0) sharded_->ClipGrads(report.grad_norm, options_.max_grad_norm);
    TESSERA_RETURN_IF_ERROR(sharded_->Step(report.lr, &report.gather_seconds));
  } else {
    TESSERA_ASSIGN_OR_RETURN(report.grad_norm, GlobalGradNorm(params, model_->tp()));
    if (options_.max_grad_norm > 0) ClipGrads(params, report.grad_norm, options_.max_grad_norm);
    adam_->Step(report.lr);
  }
  position_ = data_->Advance(step_->start, rows_per_step());
  report.step = steps_done();
  step_.reset();
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
