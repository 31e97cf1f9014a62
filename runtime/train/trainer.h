#ifndef TESSERA_RUNTIME_TRAIN_TRAINER_H_
#define TESSERA_RUNTIME_TRAIN_TRAINER_H_

// The optimizer step of a data-parallel x tensor-parallel fine-tune, DDP-style: every
// replica runs its micro-batches forward and backward on its TP shards, the gradients are
// summed over the data-parallel group, and every replica applies the same AdamW update.
// With ZeRO stage 1 (TrainerOptions::zero_stage) the gradients are reduce-scattered instead,
// each replica updates the share of the parameters whose AdamW moments it keeps, and the new
// values are all-gathered (zero_optimizer.h): the same steps for 1/dp of the moments.
//
// The loss is the mean over every target token of the global batch (all micro-batches of
// all DP ranks), not a mean of per-micro-batch means: each micro-batch's gradient is scaled
// by 1 / (targets of the whole step), which every rank computes from the row stream's plan
// (RowStream::Totals, batches.h), so micro-batches with different numbers of targets give the same
// loss and update as the same rows in one batch.
//
// Collective over the model's TP communicator and the DP communicator. Thread compatible.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/train/batches.h"
#include "runtime/train/grad_buckets.h"
#include "runtime/train/optimizer.h"
#include "runtime/train/trainable_model.h"
#include "runtime/train/zero_optimizer.h"

namespace tessera::train {

struct TrainerOptions {
  int micro_batch = 4;  // rows (of seq_len tokens) per forward/backward on each rank
  int grad_accum = 1;   // micro-batches per optimizer step on each rank
  double lr = 2e-4;     // peak learning rate
  ScheduleOptions schedule;
  AdamWOptions adamw;
  double max_grad_norm = 1.0;  // 0: no clipping
  // Data-parallel gradient buckets; overlap needs MPI_THREAD_MULTIPLE (grad_buckets.h).
  BucketOptions buckets;
  // ZeRO stage: 0 keeps AdamW's moments whole on every replica; 1 shards them over the
  // data-parallel group (zero_optimizer.h). With one replica 1 is the same as 0.
  int zero_stage = 0;
};

// INVALID_ARGUMENT naming the flag for a micro-batch or accumulation below 1 and a ZeRO stage
// other than 0 or 1.
absl::Status ValidateTrainerOptions(const TrainerOptions& options);

struct StepReport {
  int64_t step = 0;                 // the optimizer step just taken (1-based)
  double loss = 0;                  // mean over the step's targets, before the update
  double lr = 0;                    // the learning rate it used
  double grad_norm = 0;             // before clipping
  int64_t targets = 0;              // target tokens of the global batch
  int64_t tokens = 0;               // tokens of the global batch, padding included
  double seconds = 0;               // wall time of the step on this rank
  double comm_seconds = 0;          // the DP gradient all-reduces (ZeRO: reduce-scatters)
  double exposed_comm_seconds = 0;  // of which the step waited for after its backward
  double gather_seconds = 0;        // ZeRO: the all-gathers of the updated parameters
};

class Trainer {
 public:
  // `model`, `dp` and `data` must outlive the trainer. INVALID_ARGUMENT for options that
  // ValidateTrainerOptions refuses.
  static absl::StatusOr<Trainer> Create(TrainableModel& model, comm::Communicator& dp,
                                        const RowStream& data, const TrainerOptions& options);

  absl::StatusOr<StepReport> Step();
  // The same step a piece at a time, for a fine-tune inside a serving group that runs a few
  // pieces between two serving steps: each piece is one of a micro-batch's pass
  // (TrainableModel::Pass: a layer's forward or backward, the loss, the embedding), and the
  // step's last piece is the update, which returns the step's report (its `seconds` the sum
  // of its pieces'). Collective as Step. Between the pieces of a step the trainer must not be
  // moved nor its model, data or optimizer used otherwise. A piece that fails abandons the
  // step: the next piece begins it again.
  absl::StatusOr<std::optional<StepReport>> StepPiece();
  // The seconds that the piece `ahead` places after the next one (0: the next) is expected to
  // take on this rank: the median of the same piece's (of any micro-batch, or the update's)
  // last three runs, so that one run slowed by something else does not count; nullopt before
  // it ran.
  std::optional<double> ExpectedPieceSeconds(int ahead) const;
  // Whether a step's pieces have begun and its update has not run yet.
  bool step_under_way() const { return step_.has_value(); }
  // The pieces before the next update (0: the next piece is the update).
  int PiecesBeforeUpdate() const;

  // The mean loss over `rows` rows of `eval` from its start, `micro_batch` rows at a time,
  // each DP rank taking its share. Collective.
  absl::StatusOr<double> Evaluate(const RowStream& eval, int64_t rows);

  int64_t steps_done() const {
    return sharded_ != nullptr ? sharded_->steps_done() : adam_->steps_done();
  }
  DataPosition position() const { return position_; }
  int64_t rows_per_step() const {
    return int64_t{options_.micro_batch} * options_.grad_accum * dp_->size();
  }
  // Whether the AdamW moments are sharded over the DP group (ZeRO stage 1 with dp > 1).
  bool sharded() const { return sharded_ != nullptr; }
  // Bytes of the AdamW moments this rank keeps.
  int64_t optimizer_state_bytes() const {
    return sharded_ != nullptr ? sharded_->state_bytes() : adam_->state_bytes();
  }
  // The whole AdamW moments in AdamW::State's form, sharded or not, on ranks passing
  // `materialize`; others may get an empty list. Collective over DP when sharded.
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> OptimizerState(bool materialize);
  // Restores the moments from that form (saved at any DP degree, sharded or not) and the
  // optimizer step count. INVALID_ARGUMENT naming a missing or misshapen tensor.
  absl::Status RestoreOptimizer(const std::vector<std::pair<std::string, Tensor>>& state,
                                int64_t steps);
  TrainableModel& model() { return *model_; }
  const TrainerOptions& options() const { return options_; }
  // Where a resumed run continues: the optimizer's state is restored separately.
  void SetPosition(DataPosition position) { position_ = position; }

 private:
  Trainer(TrainableModel& model, comm::Communicator& dp, const RowStream& data,
          TrainerOptions options)
      : model_(&model), dp_(&dp), data_(&data), options_(options) {}
  // Sums `values` over the DP group (f32 sums of a few counters).
  absl::Status SumOverDp(std::vector<float>& values);

  // An optimizer step under way, between its pieces.
  struct StepInProgress {
    DataPosition start;
    StepReport report;  // its seconds so far
    float loss_scale = 0;
    double loss_sum = 0;
    int micro = 0;  // the micro-batch whose pass runs; grad_accum: the update is next
    std::unique_ptr<TrainableModel::Pass> pass;  // null before the micro-batch's first piece
  };
  absl::Status BeginStep();
  absl::Status BeginMicroBatch();
  absl::StatusOr<std::optional<StepReport>> RunStepPiece();
  absl::StatusOr<StepReport> FinishStep();
  // What the piece `ahead` places after the next one is: its index in its micro-batch's pass,
  // or pieces_per_pass() for the update.
  int PieceKind(int ahead) const;

  TrainableModel* model_;
  comm::Communicator* dp_;
  const RowStream* data_;
  TrainerOptions options_;
  std::unique_ptr<GradientReducer> reducer_;  // null with one replica
  // Exactly one of the two: the whole moments, or this rank's share of them.
  std::optional<AdamW> adam_;
  std::unique_ptr<ShardedAdamW> sharded_;
  DataPosition position_;
  std::optional<StepInProgress> step_;
  // By PieceKind, the seconds of its last runs, the newest last (at most three).
  std::vector<std::vector<double>> piece_seconds_;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_TRAINER_H_
