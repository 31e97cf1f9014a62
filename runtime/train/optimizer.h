#ifndef TESSERA_RUNTIME_TRAIN_OPTIMIZER_H_
#define TESSERA_RUNTIME_TRAIN_OPTIMIZER_H_

// AdamW over a rank's parameters, learning-rate schedules, and gradient clipping by the
// global norm, with the arithmetic of torch.optim.AdamW (single-tensor path) and
// torch.nn.utils.clip_grad_norm_, and the schedules of transformers' get_*_schedule_with_warmup,
// so that a run here follows the same trajectory as one written with those.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "comm/communicator.h"
#include "runtime/core/tensor.h"
#include "runtime/train/parameters.h"

namespace tessera::train {

enum class Schedule { kConstant, kLinear, kCosine };
// "constant", "linear", "cosine"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<Schedule> ParseSchedule(absl::string_view name);
absl::string_view ScheduleName(Schedule schedule);

struct ScheduleOptions {
  Schedule type = Schedule::kCosine;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
};
// The learning rate of optimizer step `step` (0-based): base_lr times
//   step / warmup during warm-up, then 1 (constant), (total - step) / (total - warmup)
//   (linear, floored at 0) or 0.5 (1 + cos(pi progress)) (cosine) as transformers computes it.
double LearningRateAt(const ScheduleOptions& options, double base_lr, int64_t step);

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Decay every parameter (torch.optim.AdamW over model.parameters()) instead of leaving out
  // biases and norm weights (Parameter::weight_decay, as Hugging Face's Trainer does).
  bool decay_all = false;
};

class AdamW {
 public:
  // First and second moments of every parameter, zero. `params` must outlive the optimizer.
  static absl::StatusOr<AdamW> Create(ParameterSet& params, const AdamWOptions& options);

  // One update of every parameter from its gradient, at learning rate `lr`.
  void Step(double lr);
  int64_t steps_done() const { return steps_; }

  // The moments, named "<parameter>.exp_avg" / ".exp_avg_sq", for checkpoints; Restore
  // takes them back (shapes must match: INVALID_ARGUMENT naming the tensor otherwise).
  std::vector<std::pair<std::string, Tensor>> State() const;
  absl::Status Restore(const std::vector<std::pair<std::string, Tensor>>& state, int64_t steps);

 private:
  AdamW(ParameterSet& params, AdamWOptions options) : params_(&params), options_(options) {}

  ParameterSet* params_;
  AdamWOptions options_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_;  // by parameter index
  int64_t steps_ = 0;
};

// The L2 norm of all gradients of the model (every TP rank's shard, each tensor counted once
// however many ranks hold it). Collective over `tp`; the same value on every rank.
absl::StatusOr<double> GlobalGradNorm(const ParameterSet& params, comm::Communicator& tp);

// Scales every gradient by min(1, max_norm / (norm + 1e-6)), as clip_grad_norm_.
void ClipGrads(ParameterSet& params, double norm, double max_norm);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_OPTIMIZER_H_
