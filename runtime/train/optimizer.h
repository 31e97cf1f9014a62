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

// The per-step scalars of torch's AdamW update, formed as torch forms them (Python floats),
// each then used in f32.
struct AdamWScalars {
  // Step `step` (1-based) at `learning_rate`.
  AdamWScalars(const AdamWOptions& options, double learning_rate, int64_t step);
  double lr;
  double weight_decay;
  float step_size;
  float bias_correction2_sqrt;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float eps;
};

// AdamW on `n` elements: w (values), g (gradients), m and v (the moments), all (n). `decays`:
// whether weight decay applies to them. The one definition of the update, shared by AdamW
// and the sharded optimizer (zero_optimizer.h) so that both give bitwise the same values.
void AdamWUpdate(const AdamWScalars& scalars, bool decays, float* w, const float* g, float* m,
                 float* v, int64_t n);

// The saved moment `name` from `state`, checked to be f32 and `shape`: INVALID_ARGUMENT
// naming the tensor when it is missing or of another shape.
absl::StatusOr<Tensor> SavedMoment(const std::vector<std::pair<std::string, Tensor>>& state,
                                   const std::string& name, const Shape& shape);

class AdamW {
 public:
  // First and second moments of every parameter, zero. `params` must outlive the optimizer.
  static absl::StatusOr<AdamW> Create(ParameterSet& params, const AdamWOptions& options);

  // One update of every parameter from its gradient, at learning rate `lr`.
  void Step(double lr);
  int64_t steps_done() const { return steps_; }
  // Bytes of the two moments.
  int64_t state_bytes() const;

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

// The sum of g[k]^2 over the elements [begin, begin + count) of `p`'s gradient whose values
// this TP rank counts in the global norm (Parameter::counted_here, kv_rows_counted_here);
// g (count) holds those elements' gradients, wherever they are kept.
double CountedSquares(const Parameter& p, const float* g, int64_t begin, int64_t count);

// `value` summed over the ranks of `group` exactly as double, in rank order (every rank's
// value is gathered): the same result on every rank. Collective over `group`.
absl::StatusOr<double> SumOverGroup(comm::Communicator& group, double value);

// The factor clip_grad_norm_ scales gradients by when it is below 1: max_norm / (norm + 1e-6).
double ClipCoefficient(double norm, double max_norm);

// Scales every gradient by min(1, ClipCoefficient(norm, max_norm)), as clip_grad_norm_.
void ClipGrads(ParameterSet& params, double norm, double max_norm);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_OPTIMIZER_H_
