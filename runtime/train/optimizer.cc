#include "runtime/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::train {

absl::StatusOr<Schedule> ParseSchedule(absl::string_view name) {
  if (name == "constant") return Schedule::kConstant;
  if (name == "linear") return Schedule::kLinear;
  if (name == "cosine") return Schedule::kCosine;
  return absl::InvalidArgumentError(
      absl::StrCat("--schedule: '", name, "' is not one of constant, linear, cosine"));
}

absl::string_view ScheduleName(Schedule schedule) {
  switch (schedule) {
    case Schedule::kConstant:
      return "constant";
    case Schedule::kLinear:
      return "linear";
    case Schedule::kCosine:
      return "cosine";
  }
  return "?";
}

double LearningRateAt(const ScheduleOptions& options, double base_lr, int64_t step) {
  const int64_t warmup = options.warmup_steps;
  if (step < warmup) return base_lr * static_cast<double>(step) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, options.total_steps - warmup));
  switch (options.type) {
    case Schedule::kConstant:
      return base_lr;
    case Schedule::kLinear:
      return base_lr * std::max(0.0, static_cast<double>(options.total_steps - step) / span);
    case Schedule::kCosine: {
      const double progress = static_cast<double>(step - warmup) / span;
      return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    }
  }
  return base_lr;
}

absl::StatusOr<AdamW> AdamW::Create(ParameterSet& params, const AdamWOptions& options) {
  AdamW adam(params, options);
  for (const Parameter& p : params.all()) {
    if (!p.trainable) {  // frozen: no moments
      adam.exp_avg_.emplace_back();
      adam.exp_avg_sq_.emplace_back();
      continue;
    }
    TESSERA_ASSIGN_OR_RETURN(Tensor m, Tensor::Zeros(DType::kF32, p.value.shape()));
    TESSERA_ASSIGN_OR_RETURN(Tensor v, Tensor::Zeros(DType::kF32, p.value.shape()));
    adam.exp_avg_.push_back(std::move(m));
    adam.exp_avg_sq_.push_back(std::move(v));
  }
  return adam;
}

AdamWScalars::AdamWScalars(const AdamWOptions& options, double learning_rate, int64_t step)
    : lr(learning_rate), weight_decay(options.weight_decay) {
  const double bias_correction1 = 1.0 - std::pow(options.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(options.beta2, static_cast<double>(step));
  step_size = static_cast<float>(learning_rate / bias_correction1);
  bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  one_minus_beta1 = static_cast<float>(1.0 - options.beta1);
  beta2 = static_cast<float>(options.beta2);
  one_minus_beta2 = static_cast<float>(1.0 - options.beta2);
  eps = static_cast<float>(options.eps);
}

void AdamWUpdate(const AdamWScalars& s, bool decays, float* w, const float* g, float* m, float* v,
                 int64_t n) {
  const float keep = static_cast<float>(1.0 - s.lr * (decays ? s.weight_decay : 0.0));
  for (int64_t j = 0; j < n; ++j) {
    w[j] *= keep;
    m[j] += s.one_minus_beta1 * (g[j] - m[j]);  // lerp towards g, as torch's for weight < 0.5
    v[j] = v[j] * s.beta2 + s.one_minus_beta2 * g[j] * g[j];
    const float denom = std::sqrt(v[j]) / s.bias_correction2_sqrt + s.eps;
    w[j] += -s.step_size * (m[j] / denom);
  }
}

absl::StatusOr<Tensor> SavedMoment(const std::vector<std::pair<std::string, Tensor>>& state,
                                   const std::string& name, const Shape& shape) {
  for (const auto& [saved_name, saved] : state) {
    if (saved_name != name) continue;
    if (saved.shape() != shape || saved.dtype() != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("the optimizer state's ", name, " is ",
                                                     saved.DebugString(), ", this model's is f32 ",
                                                     ShapeToString(shape)));
    }
    return saved;
  }
  return absl::InvalidArgumentError(absl::StrCat("the optimizer state has no ", name));
}

void AdamW::Step(double lr) {
  ++steps_;
  const AdamWScalars scalars(options_, lr, steps_);
  std::vector<Parameter>& params = params_->all();
  for (size_t i = 0; i < params.size(); ++i) {
    Parameter& p = params[i];
    if (!p.trainable) continue;
    AdamWUpdate(scalars, options_.decay_all || p.weight_decay, p.value.data<float>(),
                p.grad.data<float>(), exp_avg_[i].data<float>(), exp_avg_sq_[i].data<float>(),
                p.value.numel());
  }
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (size_t i = 0; i < exp_avg_.size(); ++i) {
    if (exp_avg_[i].defined()) bytes += exp_avg_[i].nbytes() + exp_avg_sq_[i].nbytes();
  }
  return bytes;
}

std::vector<std::pair<std::string, Tensor>> AdamW::State() const {
  std::vector<std::pair<std::string, Tensor>> state;
  const std::vector<Parameter>& params = params_->all();
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].trainable) continue;
    state.emplace_back(params[i].name + ".exp_avg", exp_avg_[i]);
    state.emplace_back(params[i].name + ".exp_avg_sq", exp_avg_sq_[i]);
  }
  return state;
}

absl::Status AdamW::Restore(const std::vector<std::pair<std::string, Tensor>>& state,
                            int64_t steps) {
  const std::vector<Parameter>& params = params_->all();
  Stream cpu = Stream::Cpu();
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].trainable) continue;
    for (auto& [suffix, mine] : {std::pair<std::string, Tensor*>{".exp_avg", &exp_avg_[i]},
                                 {".exp_avg_sq", &exp_avg_sq_[i]}}) {
      TESSERA_ASSIGN_OR_RETURN(Tensor saved,
                               SavedMoment(state, params[i].name + suffix, mine->shape()));
      TESSERA_RETURN_IF_ERROR(mine->CopyFrom(saved, cpu));
    }
  }
  steps_ = steps;
  return absl::OkStatus();
}

double CountedSquares(const Parameter& p, const float* g, int64_t begin, int64_t count) {
  const int64_t n = p.value.numel();
  const int64_t row = p.value.rank() > 1 ? n / p.value.dim(0) : 1;
  const int64_t kv_begin = p.kv_rows_begin * row, kv_end = p.kv_rows_end * row;
  double sum = 0;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t j = begin + k;
    const bool in_kv = j >= kv_begin && j < kv_end;
    if (in_kv ? !p.kv_rows_counted_here : !p.counted_here) continue;
    sum += static_cast<double>(g[k]) * g[k];
  }
  return sum;
}

absl::StatusOr<double> SumOverGroup(comm::Communicator& group, double value) {
  if (group.size() == 1) return value;
  // The bits of a double travel as an i64: the collectives reduce no f64.
  int64_t mine;
  static_assert(sizeof(mine) == sizeof(value));
  std::memcpy(&mine, &value, sizeof(mine));
  TESSERA_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty(DType::kI64, {group.size()}));
  Tensor local = Tensor::Wrap(&mine, DType::kI64, {1});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(group.AllGather(local, all, cpu));
  double sum = 0;
  for (int r = 0; r < group.size(); ++r) {
    double each;
    std::memcpy(&each, all.data<int64_t>() + r, sizeof(each));
    sum += each;
  }
  return sum;
}

absl::StatusOr<double> GlobalGradNorm(const ParameterSet& params, comm::Communicator& tp) {
  double sum = 0;
  for (const Parameter& p : params.all()) {
    if (p.grad.defined()) sum += CountedSquares(p, p.grad.data<float>(), 0, p.grad.numel());
  }
  TESSERA_ASSIGN_OR_RETURN(sum, SumOverGroup(tp, sum));
  return std::sqrt(sum);
}

double ClipCoefficient(double norm, double max_norm) { return max_norm / (norm + 1e-6); }

void ClipGrads(ParameterSet& params, double norm, double max_norm) {
  const double coefficient = ClipCoefficient(norm, max_norm);
  if (coefficient >= 1.0) return;
  const float scale = static_cast<float>(coefficient);
  for (Parameter& p : params.all()) {
    if (!p.grad.defined()) continue;
    float* g = p.grad.data<float>();
    for (int64_t j = 0; j < p.grad.numel(); ++j) g[j] *= scale;
  }
}

}  // namespace tessera::train
