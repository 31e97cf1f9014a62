#include "runtime/train/parameters.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/lora_adapter.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"

namespace tessera::train {
namespace {

bool DecaysByDefault(absl::string_view name) {
  // Hugging Face's Trainer leaves biases and norm weights out of weight decay.
  return !absl::EndsWith(name, ".bias") && !absl::EndsWith(name, "norm.weight");
}

// FNV-1a: the same on every rank, build and machine.
uint64_t NameHash(absl::string_view name) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : name) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

// Rows of a K/V projection (or fused QKV) that other TP ranks hold too, as [begin, end).
std::pair<int64_t, int64_t> KvReplicatedRows(const model::ModelConfig& config,
                                             const model::WeightPlan& plan,
                                             absl::string_view name) {
  if (!plan.attention.kv_replicated) return {0, 0};
  const int64_t kv_rows = int64_t{plan.attention.num_kv_heads} * config.head_dim;
  if (absl::StrContains(name, "self_attn.k_proj.") ||
      absl::StrContains(name, "self_attn.v_proj.")) {
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
                                                  model::RankWeights weights,
                                                  const LoraOptions& lora) {
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
    p.trainable = !lora.enabled();
    p.value = value;
    if (p.trainable) {
      TESSERA_ASSIGN_OR_RETURN(p.grad, Tensor::Zeros(DType::kF32, value.shape()));
    }
    set.params_.push_back(std::move(p));
  }
  if (lora.enabled()) TESSERA_RETURN_IF_ERROR(set.AddLora(config, plan, lora));
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
    TESSERA_ASSIGN_OR_RETURN(Tensor top, stacked.Slice(0, rows));
    TESSERA_ASSIGN_OR_RETURN(Tensor bottom, stacked.Slice(rows, 2 * rows));
    TESSERA_RETURN_IF_ERROR(top.CopyFrom(gate->value, cpu));
    TESSERA_RETURN_IF_ERROR(bottom.CopyFrom(up->value, cpu));
    gate->value = top;
    up->value = bottom;
    set.gate_up_values_[l] = stacked;
    if (gate->trainable) {
      TESSERA_ASSIGN_OR_RETURN(Tensor stacked_grad,
                               Tensor::Zeros(DType::kF32, {2 * rows, gate->value.dim(1)}));
      TESSERA_ASSIGN_OR_RETURN(gate->grad, stacked_grad.Slice(0, rows));
      TESSERA_ASSIGN_OR_RETURN(up->grad, stacked_grad.Slice(rows, 2 * rows));
      set.gate_up_grads_[l] = stacked_grad;
    }
  }
  return set;
}

absl::Status ParameterSet::AddLora(const model::ModelConfig& config, const model::WeightPlan& plan,
                                   const LoraOptions& lora) {
  has_lora_ = true;
  for (const std::string& target : lora.targets) {
    bool found = false;
    for (const model::PlannedTensor& planned : plan.tensors) {
      found |= absl::EndsWith(planned.name, absl::StrCat(".", target, ".weight"));
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--lora-targets: this ", model::ArchitectureName(config.architecture),
          " checkpoint has no ", target,
          " (its Linears: ", plan.fused_qkv ? "qkv_proj" : "q_proj, k_proj, v_proj", ", o_proj, ",
          config.fused_gate_up ? "gate_up_proj" : "gate_proj, up_proj", ", down_proj)"));
    }
  }
  const int kv_sharers = plan.attention.kv_replicated ? plan.tp / config.num_key_value_heads : 1;
  std::vector<Parameter> adapters;
  for (const Parameter& base : params_) {
    if (!IsLoraTarget(lora, base.name)) continue;
    for (const model::PlannedTensor& planned :
         {PlanLoraA(base.planned, lora.r), PlanLoraB(base.planned, lora.r)}) {
      Parameter p;
      p.name = planned.name;
      p.planned = planned;
      p.weight_decay = true;
      const bool whole = planned.kind == model::ShardKind::kReplicated;
      p.tp_replicas = whole ? plan.tp : 1;
      p.counted_here = !whole || plan.tp_rank == 0;
      // The whole factor beside a split layer gets a partial gradient on every rank.
      p.tp_partial_grad = whole && plan.tp > 1;
      const bool is_b = planned.name == LoraBName(base.name);
      if (is_b && base.kv_rows_end > base.kv_rows_begin) {
        p.kv_rows_begin = base.kv_rows_begin;
        p.kv_rows_end = base.kv_rows_end;
        p.kv_rows_counted_here = plan.tp_rank % kv_sharers == 0;
        p.tp_replicas = base.tp_replicas;
      }
      TESSERA_ASSIGN_OR_RETURN(p.grad, Tensor::Zeros(DType::kF32, planned.rank_shape));
      if (is_b) {
        TESSERA_ASSIGN_OR_RETURN(p.value, Tensor::Zeros(DType::kF32, planned.rank_shape));
      } else {
        // The whole A, drawn from the seed and its name, then this rank's columns of it.
        TESSERA_ASSIGN_OR_RETURN(Tensor full, Tensor::Empty(DType::kF32, planned.shape));
        const float bound = 1.0f / std::sqrt(static_cast<float>(planned.shape[1]));
        uint64_t state = lora.seed ^ NameHash(planned.name);
        for (int64_t i = 0; i < full.numel(); ++i) {
          state += 0x9E3779B97F4A7C15ull;  // SplitMix64
          uint64_t z = state;
          z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
          z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
          z ^= z >> 31;
          const float unit = static_cast<float>(z >> 40) / static_cast<float>(1 << 24);
          full.data<float>()[i] = bound * (2.0f * unit - 1.0f);
        }
        TESSERA_ASSIGN_OR_RETURN(p.value, SliceOf(full, planned.slice));
      }
      adapters.push_back(std::move(p));
    }
  }
  for (Parameter& p : adapters) params_.push_back(std::move(p));
  return absl::OkStatus();
}

absl::Status ParameterSet::LoadAdapter(const std::string& dir) {
  const std::string path = dir + "/adapter_model.safetensors";
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::SafetensorsFile> file,
                           model::SafetensorsFile::Open(path));
  Stream cpu = Stream::Cpu();
  for (Parameter& p : params_) {
    if (p.name.rfind("base_model.", 0) != 0) continue;
    TESSERA_ASSIGN_OR_RETURN(Tensor slice, model::ReadLoraFactor(*file, p.planned));
    TESSERA_RETURN_IF_ERROR(p.value.CopyFrom(slice, cpu));
  }
  return absl::OkStatus();
}

const Parameter* ParameterSet::LoraA(absl::string_view weight_name) const {
  return Find(LoraAName(weight_name));
}

const Parameter* ParameterSet::LoraB(absl::string_view weight_name) const {
  return Find(LoraBName(weight_name));
}

int64_t ParameterSet::TrainableElements() const {
  int64_t total = 0;
  for (const Parameter& p : params_) {
    if (p.trainable) total += ::tessera::NumElements(p.planned.shape);
  }
  return total;
}

absl::StatusOr<Tensor> SliceOf(const Tensor& full, const model::TensorSlice& slice) {
  model::TensorInfo info;
  info.dtype = full.dtype();
  info.shape = full.shape();
  info.nbytes = full.nbytes();
  return model::ReadTensorSlice(info, static_cast<const uint8_t*>(full.data()), slice,
                                std::nullopt);
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
    if (p.grad.defined()) std::fill_n(p.grad.data<float>(), p.grad.numel(), 0.0f);
  }
}

void ParameterSet::ReleaseFrozenProjections() {
  for (Parameter& p : params_) {
    if (!p.trainable && model::IsLayerProjection(p.name)) p.value = Tensor();
  }
  for (size_t l = 0; l < gate_up_values_.size(); ++l) {
    if (!gate_up_grads_[l].defined()) gate_up_values_[l] = Tensor();
  }
}

int64_t ParameterSet::NumElements() const {
  int64_t total = 0;
  for (const Parameter& p : params_) total += p.value.numel();
  return total;
}

}  // namespace tessera::train
