#include "runtime/train/parameters.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::train {
namespace {

bool DecaysByDefault(absl::string_view name) {
  // Hugging Face's Trainer leaves biases and norm weights out of weight decay.
  return !absl::EndsWith(name, ".bias") && !absl::EndsWith(name, "norm.weight");
}

// Rows of a K/V projection (or fused QKV) that other TP ranks hold too, as [begin, end).
std::pair<int64_t, int64_t> KvReplicatedRows(const model::ModelConfig& config,
                                             const model::WeightPlan& plan,
                                             absl::string_view name) {
  if (!plan.attention.kv_replicated) return {0, 0};
  const int64_t kv_rows = int64_t{plan.attention.num_kv_heads} * config.head_dim;
  if (absl::StrContains(name, "self_attn.k_proj.") || absl::StrContains(name, "self_attn.v_proj.")) {
    return {0, kv_rows};
  }
  if (absl::StrContains(name, "self_attn.qkv_proj.")) {
    const int64_t q_rows = int64_t{plan.attention.num_q_heads} * config.head_dim;
    return {q_rows, q_rows + 2 * kv_rows};
  }
  return {0, 0};
}

}  // namespace

absl::StatusOr<ParameterSet> ParameterSet::Create(const model::ModelConfig& config,
                                                  const model::WeightPlan& plan,
                                                  model::RankWeights weights) {
  ParameterSet set;
  const int tp = plan.tp;
  const int kv_sharers = plan.attention.kv_replicated ? tp / config.num_key_value_heads : 1;
  set.gate_up_values_.resize(config.num_hidden_layers);
  set.gate_up_grads_.resize(config.num_hidden_layers);
  Stream cpu = Stream::Cpu();
  for (const model::PlannedTensor& planned : plan.tensors) {
    auto found = weights.tensors.find(planned.name);
    if (found == weights.tensors.end()) {
      return absl::InternalError(absl::StrCat("the weight plan loaded no ", planned.name));
    }
    Tensor value = found->second;
    if (value.dtype() != DType::kF32) {
      return absl::InternalError(absl::StrCat("training needs f32 master weights, ", planned.name,
                                              " is ", value.DebugString()));
    }
    Parameter p;
    p.name = planned.name;
    p.planned = planned;
    p.tp_replicas = planned.kind == model::ShardKind::kReplicated ? tp : 1;
    p.counted_here = planned.kind != model::ShardKind::kReplicated || plan.tp_rank == 0;
    std::tie(p.kv_rows_begin, p.kv_rows_end) = KvReplicatedRows(config, plan, planned.name);
    if (p.kv_rows_end > p.kv_rows_begin) {
      p.kv_rows_counted_here = plan.tp_rank % kv_sharers == 0;
      if (p.kv_rows_begin == 0 && p.kv_rows_end == planned.rank_shape[0]) {
        p.tp_replicas = kv_sharers;
      }
    }
    p.weight_decay = DecaysByDefault(planned.name);
    p.value = value;
    TESSERA_ASSIGN_OR_RETURN(p.grad, Tensor::Zeros(DType::kF32, value.shape()));
    set.params_.push_back(std::move(p));
  }
  // The MLP's [gate; up] as one tensor: the fused checkpoint tensor, or gate and up copied
  // into one and replaced by views of its rows.
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const std::string prefix = absl::StrCat("model.layers.", l, ".mlp.");
    if (Parameter* fused = set.Find(prefix + "gate_up_proj.weight")) {
      set.gate_up_values_[l] = fused->value;
      set.gate_up_grads_[l] = fused->grad;
      continue;
    }
    Parameter* gate = set.Find(prefix + "gate_proj.weight");
    Parameter* up = set.Find(prefix + "up_proj.weight");
    if (gate == nullptr || up == nullptr) {
      return absl::InternalError(absl::StrCat("layer ", l, " has no gate and up projections"));
    }
    const int64_t rows = gate->value.dim(0);
    TESSERA_ASSIGN_OR_RETURN(Tensor stacked,
                             Tensor::Empty(DType::kF32, {2 * rows, gate->value.dim(1)}));
    TESSERA_ASSIGN_OR_RETURN(Tensor stacked_grad,
                             Tensor::Zeros(DType::kF32, {2 * rows, gate->value.dim(1)}));
    TESSERA_ASSIGN_OR_RETURN(Tensor top, stacked.Slice(0, rows));
    TESSERA_ASSIGN_OR_RETURN(Tensor bottom, stacked.Slice(rows, 2 * rows));
    TESSERA_RETURN_IF_ERROR(top.CopyFrom(gate->value, cpu));
    TESSERA_RETURN_IF_ERROR(bottom.CopyFrom(up->value, cpu));
    gate->value = top;
    up->value = bottom;
    TESSERA_ASSIGN_OR_RETURN(gate->grad, stacked_grad.Slice(0, rows));
    TESSERA_ASSIGN_OR_RETURN(up->grad, stacked_grad.Slice(rows, 2 * rows));
    set.gate_up_values_[l] = stacked;
    set.gate_up_grads_[l] = stacked_grad;
  }
  return set;
}

Parameter* ParameterSet::Find(absl::string_view name) {
  for (Parameter& p : params_) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const Parameter* ParameterSet::Find(absl::string_view name) const {
  return const_cast<ParameterSet*>(this)->Find(name);
}

absl::StatusOr<Tensor> ParameterSet::Value(absl::string_view name) const {
  const Parameter* p = Find(name);
  if (p == nullptr) return absl::InternalError(absl::StrCat("no parameter ", name));
  return p->value;
}

absl::StatusOr<Tensor> ParameterSet::Grad(absl::string_view name) const {
  const Parameter* p = Find(name);
  if (p == nullptr) return absl::InternalError(absl::StrCat("no parameter ", name));
  return p->grad;
}

void ParameterSet::ZeroGrads() {
  for (Parameter& p : params_) {
    std::fill_n(p.grad.data<float>(), p.grad.numel(), 0.0f);
  }
}

int64_t ParameterSet::NumElements() const {
  int64_t total = 0;
  for (const Parameter& p : params_) total += p.value.numel();
  return total;
}

}  // namespace tessera::train
