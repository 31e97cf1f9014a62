#include "runtime/train/optimizer.h"

#include <algorithm>
#include <cmath>
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

void AdamW::Step(double lr) {
  ++steps_;
  // The scalars as torch forms them (Python floats), each op then in f32.
  const double bias_correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bias_correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float one_minus_beta1 = static_cast<float>(1.0 - options_.beta1);
  const float beta2 = static_cast<float>(options_.beta2);
  const float one_minus_beta2 = static_cast<float>(1.0 - options_.beta2);
  const float eps = static_cast<float>(options_.eps);
  std::vector<Parameter>& params = params_->all();
  for (size_t i = 0; i < params.size(); ++i) {
    Parameter& p = params[i];
    if (!p.trainable) continue;
    const bool decays = options_.decay_all || p.weight_decay;
    const float keep = static_cast<float>(1.0 - lr * (decays ? options_.weight_decay : 0.0));
    float* w = p.value.data<float>();
    const float* g = p.grad.data<float>();
    float* m = exp_avg_[i].data<float>();
    float* v = exp_avg_sq_[i].data<float>();
    const int64_t n = p.value.numel();
    for (int64_t j = 0; j < n; ++j) {
      w[j] *= keep;
      m[j] += one_minus_beta1 * (g[j] - m[j]);  // lerp towards g, as torch's for weight < 0.5
      v[j] = v[j] * beta2 + one_minus_beta2 * g[j] * g[j];
      const float denom = std::sqrt(v[j]) / bias_correction2_sqrt + eps;
      w[j] += -step_size * (m[j] / denom);
    }
  }
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
  auto find = [&](const std::string& name) -> const Tensor* {
    for (const auto& [n, t] : state) {
      if (n == name) return &t;
    }
    return nullptr;
  };
  Stream cpu = Stream::Cpu();
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].trainable) continue;
    for (auto& [suffix, mine] : {std::pair<std::string, Tensor*>{".exp_avg", &exp_avg_[i]},
                                 {".exp_avg_sq", &exp_avg_sq_[i]}}) {
      const std::string name = params[i].name + suffix;
      const Tensor* saved = find(name);
      if (saved == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("the optimizer state has no ", name));
      }
      if (saved->shape() != mine->shape() || saved->dtype() != DType::kF32) {
        return absl::InvalidArgumentError(absl::StrCat("the optimizer state's ", name, " is ",
                                                       saved->DebugString(), ", this model's ",
                                                       mine->DebugString()));
      }
      TESSERA_RETURN_IF_ERROR(mine->CopyFrom(*saved, cpu));
    }
  }
  steps_ = steps;
  return absl::OkStatus();
}

absl::StatusOr<double> GlobalGradNorm(const ParameterSet& params, comm::Communicator& tp) {
  double sum = 0;
  for (const Parameter& p : params.all()) {
    if (!p.grad.defined()) continue;
    const float* g = p.grad.data<float>();
    const int64_t n = p.grad.numel();
    const int64_t row = p.grad.rank() > 1 ? n / p.grad.dim(0) : 1;
    const int64_t kv_begin = p.kv_rows_begin * row, kv_end = p.kv_rows_end * row;
    double tensor_sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const bool in_kv = j >= kv_begin && j < kv_end;
      if (in_kv ? !p.kv_rows_counted_here : !p.counted_here) continue;
      tensor_sum += static_cast<double>(g[j]) * g[j];
    }
    sum += tensor_sum;
  }
  if (tp.size() > 1) {
    const float mine = static_cast<float>(sum);
    TESSERA_ASSIGN_OR_RETURN(Tensor total,
                             Tensor::FromValues<float>(absl::MakeConstSpan(&mine, 1)));
    Stream cpu = Stream::Cpu();
    TESSERA_RETURN_IF_ERROR(tp.AllReduce(total, comm::ReduceOp::kSum, cpu));
    sum = total.data<float>()[0];
  }
  return std::sqrt(sum);
}

void ClipGrads(ParameterSet& params, double norm, double max_norm) {
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return;
  const float scale = static_cast<float>(coefficient);
  for (Parameter& p : params.all()) {
    if (!p.grad.defined()) continue;
    float* g = p.grad.data<float>();
    for (int64_t j = 0; j < p.grad.numel(); ++j) g[j] *= scale;
  }
}

}  // namespace tessera::train
