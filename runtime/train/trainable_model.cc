#include "runtime/train/trainable_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "comm/agreement.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/row_ops.h"
#include "kernels/cpu/training_attention.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/decoder_layer.h"
#include "runtime/model/layer_weights.h"
#include "runtime/model/rotary_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"
#include "runtime/train/lora_layer.h"

namespace tessera::train {
namespace {

absl::StatusOr<Tensor> F32(Shape shape) { return Tensor::Empty(DType::kF32, std::move(shape)); }

Tensor WrapI32(const std::vector<int32_t>& values) {
  return Tensor::Wrap(const_cast<int32_t*>(values.data()), DType::kI32,
                      {static_cast<int64_t>(values.size())});
}

// out = a + b, elementwise, all (T, H) f32.
absl::StatusOr<Tensor> Sum(const Tensor& a, const Tensor& b) {
  TESSERA_ASSIGN_OR_RETURN(Tensor out, F32(a.shape()));
  const float* x = a.data<float>();
  const float* y = b.data<float>();
  float* z = out.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) z[i] = x[i] + y[i];
  return out;
}

// grad (N) += column sums of dy (T, N).
void AddColumnSums(const Tensor& dy, Tensor& grad) {
  const int64_t rows = dy.dim(0), cols = dy.dim(1);
  float* g = grad.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = dy.data<float>() + r * cols;
    for (int64_t c = 0; c < cols; ++c) g[c] += row[c];
  }
}

// out = x . w^T + bias, with w dense, packed (shared with a serving model) or quantized (the
// frozen base under --quantize, or a quantized serving model's).
absl::Status ProjectForward(const Tensor& x, const WeightAndGrad& w, const Tensor& bias,
                            Tensor& out) {
  if (w.q.defined()) return kernels::QuantizedLinear(x, w.q, bias, out);
  return kernels::Linear(x, w.packed.defined() ? w.packed : w.w, bias, out);
}

// dx = dy . w, overwritten: the gradient of the weights the forward multiplied by. A quantized
// w is made dense for the product, one projection at a time.
absl::Status ProjectBackwardInput(const Tensor& dy, const WeightAndGrad& w, Tensor& dx) {
  if (w.q.defined()) {
    TESSERA_ASSIGN_OR_RETURN(Tensor dense, kernels::DequantizeWeight(w.q));
    return kernels::LinearBackwardInput(dy, dense, dx);
  }
  return kernels::LinearBackwardInput(dy, w.packed.defined() ? w.packed : w.w, dx);
}

// dx += dy . w through a scratch buffer (ProjectBackwardInput overwrites).
absl::Status AddProjectBackwardInput(const Tensor& dy, const WeightAndGrad& w, Tensor& dx,
                                     Tensor& scratch) {
  TESSERA_RETURN_IF_ERROR(ProjectBackwardInput(dy, w, scratch));
  return kernels::AddInPlace(dx, scratch);
}

// dw += dy^T x (and the bias's), unless the weight is frozen.
absl::Status WeightGrad(const Tensor& dy, const Tensor& x, const WeightAndGrad& w,
                        const WeightAndGrad* bias) {
  if (!w.g.defined()) return absl::OkStatus();
  Tensor g = w.g;
  Tensor bias_g = bias != nullptr ? bias->g : Tensor();
  return kernels::LinearBackwardWeight(dy, x, g, bias_g.defined() ? &bias_g : nullptr);
}

}  // namespace

// The layer's weights with their gradients (layer_weights.h); gate_up is the stacked
// [gate; up] of the parameter set whether the checkpoint stores it fused or not.
struct TrainableModel::LayerWeights : model::LayerSlots<WeightAndGrad> {
  // LoRA: gate and up are column windows [0, I) and [I, 2I) of the stacked gate_up output;
  // a checkpoint with a fused gate_up_proj has one adapter over the whole of it.
  LoraWeights q_lora, k_lora, v_lora, o_lora, gate_lora, up_lora, gate_up_lora, down_lora;
};

// What the backward of one layer reads, all f32 with T rows.
struct TrainableModel::SavedLayer {
  Tensor h_in;      // (T, H) the residual stream entering the layer
  Tensor n1;        // (T, H) input_layernorm(h_in)
  Tensor q, k, v;   // (T, heads, D) after rotary (q, k)
  Tensor attn;      // (T, Hq * D)
  Tensor lse;       // (T, Hq)
  Tensor o_out;     // (T, H) o_proj summed over TP, bias added
  Tensor h_mid;     // (T, H) h_in + attention block
  Tensor n2;        // (T, H) post_attention_layernorm(h_mid)
  Tensor gate_up;   // (T, 2 I)
  Tensor act;       // (T, I)
  Tensor down_out;  // (T, H) down_proj summed over TP (read only by Glm4's post_mlp_norm)
  // x A^T of each LoRA adapter, (T, r).
  Tensor q_u, k_u, v_u, o_u, gate_u, up_u, gate_up_u, down_u;
};

struct TrainableModel::Forwarded {
  Tensor ids, positions, starts, targets;  // views of the batch's vectors
  std::vector<SavedLayer> layers;
  Tensor h_final;  // (T, H)
  Tensor n_final;  // (T, H) model.norm(h_final)
};

TrainableModel::TrainableModel(model::ModelConfig config, model::WeightPlan plan,
                               comm::Communicator& tp, ParameterSet params,
                               TrainableModelOptions options)
    : config_(std::move(config)),
      plan_(std::move(plan)),
      tp_(tp),
      params_(std::move(params)),
      options_(options) {}

TrainableModel::~TrainableModel() = default;

absl::StatusOr<std::unique_ptr<TrainableModel>> TrainableModel::Load(
    const std::string& dir, comm::Communicator& tp, const TrainableModelOptions& options) {
  if (!tp.device().is_cpu()) {
    return absl::UnimplementedError(
        absl::StrCat("training runs on the CPU backend; the communicator ", tp.name(), " is on ",
                     tp.device().ToString()));
  }
  // Each rank reads its own slices and may fail alone (a damaged file on one node): the
  // group agrees on the outcome before the collective split below.
  absl::StatusOr<std::unique_ptr<TrainableModel>> loaded =
      [&]() -> absl::StatusOr<std::unique_ptr<TrainableModel>> {
    TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(dir));
    TESSERA_RETURN_IF_ERROR(config.CheckTensorParallel(tp.size()));
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> checkpoint,
                             model::Checkpoint::Open(dir));
    TESSERA_ASSIGN_OR_RETURN(model::WeightPlan plan,
                             model::PlanWeights(config, tp.size(), tp.rank(),
                                                model::DetectWeightPlanOptions(*checkpoint)));
    model::LoadOptions load;
    load.dtype = DType::kF32;  // master weights
    TESSERA_ASSIGN_OR_RETURN(model::RankWeights weights,
                             model::LoadRankWeights(*checkpoint, plan, load));
    if (options.lora.enabled() && plan.fused_qkv) {
      return absl::UnimplementedError(
          "LoRA on a checkpoint that stores q, k and v fused (qkv_proj) is not built yet");
    }
    if (options.frozen_base != nullptr && !options.lora.enabled()) {
      return absl::InvalidArgumentError(
          "a serving model's frozen base is shared only with a LoRA fine-tune");
    }
    if (options.quantize.has_value() && options.frozen_base == nullptr) {
      const std::string flag = absl::StrCat("--quantize ", options.quantize->ToString());
      if (!options.lora.enabled()) {
        return absl::InvalidArgumentError(absl::StrCat(
            flag,
            ": only the frozen base of a LoRA fine-tune is quantized (give --lora-r); a "
            "full fine-tune updates the weights"));
      }
      if (options.quantize->stored) {
        return absl::InvalidArgumentError(
            absl::StrCat(flag, ": training quantizes its base to int8 or int4"));
      }
      TESSERA_RETURN_IF_ERROR(model::CheckQuantizationFits(config, plan, *options.quantize));
    }
    TESSERA_ASSIGN_OR_RETURN(ParameterSet params,
                             ParameterSet::Create(config, plan, std::move(weights), options.lora));
    std::unique_ptr<TrainableModel> m(
        new TrainableModel(std::move(config), std::move(plan), tp, std::move(params), options));
    TESSERA_RETURN_IF_ERROR(m->BindLayers());
    return m;
  }();
  TESSERA_RETURN_IF_ERROR(
      comm::AgreeOnStatus(tp, loaded.status(), absl::StrCat("to load its shard of ", dir)));
  std::unique_ptr<TrainableModel> m = std::move(*loaded);
  if (m->plan_.attention.kv_replicated) {
    TESSERA_ASSIGN_OR_RETURN(
        m->kv_sharers_, tp.Split(m->plan_.attention.kv_head_begin, tp.rank(),
                                 absl::StrCat(tp.name(), ".kv", m->plan_.attention.kv_head_begin)));
  }
  return m;
}

absl::Status TrainableModel::BindLayers() {
  rotary_ = model::RotaryConfigOf(config_);
  inv_freq_ = kernels::RotaryInverseFrequencies(rotary_);
  auto find = [&](const std::string& name) {
    const Parameter* p = params_.Find(name);
    return p == nullptr ? WeightAndGrad{} : WeightAndGrad{p->value, p->grad};
  };
  auto rows = [](const WeightAndGrad& whole, int64_t begin,
                 int64_t end) -> absl::StatusOr<WeightAndGrad> {
    WeightAndGrad part;
    TESSERA_ASSIGN_OR_RETURN(part.w, whole.w.Slice(begin, end));
    if (whole.g.defined()) {
      TESSERA_ASSIGN_OR_RETURN(part.g, whole.g.Slice(begin, end));
    }
    return part;
  };
  auto bind_lora = [&](const std::string& weight_name, LoraWeights& out) {
    const Parameter* a = params_.LoraA(weight_name);
    const Parameter* b = params_.LoraB(weight_name);
    if (a == nullptr || b == nullptr) return;
    out.a = {a->value, a->grad};
    out.b = {b->value, b->grad};
  };
  layers_.assign(config_.num_hidden_layers, LayerWeights{});
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    LayerWeights& w = layers_[l];
    TESSERA_ASSIGN_OR_RETURN(static_cast<model::LayerSlots<WeightAndGrad>&>(w),
                             model::AssembleLayer<WeightAndGrad>(config_, plan_, l, find, rows));
    w.gate_up = {params_.GateUpValue(l), params_.GateUpGrad(l)};
    const std::string prefix = absl::StrCat("model.layers.", l, ".");
    bind_lora(prefix + "self_attn.q_proj.weight", w.q_lora);
    bind_lora(prefix + "self_attn.k_proj.weight", w.k_lora);
    bind_lora(prefix + "self_attn.v_proj.weight", w.v_lora);
    bind_lora(prefix + "self_attn.o_proj.weight", w.o_lora);
    bind_lora(prefix + "mlp.gate_proj.weight", w.gate_lora);
    bind_lora(prefix + "mlp.up_proj.weight", w.up_lora);
    bind_lora(prefix + "mlp.gate_up_proj.weight", w.gate_up_lora);
    bind_lora(prefix + "mlp.down_proj.weight", w.down_lora);
  }
  if (options_.frozen_base != nullptr) return ShareFrozenBase();
  if (options_.quantize.has_value()) return QuantizeFrozenBase();
  if (options_.pack_frozen_base) return PackFrozenBase();
  return absl::OkStatus();
}

absl::Status TrainableModel::ShareFrozenBase() {
  const model::Transformer& serving = *options_.frozen_base;
  if (serving.config().num_hidden_layers != config_.num_hidden_layers ||
      serving.config().hidden_size != config_.hidden_size) {
    return absl::FailedPreconditionError(
        "the serving model whose frozen base the fine-tune shares is another model");
  }
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    LayerWeights& w = layers_[l];
    const model::Transformer::LayerProjections& p = serving.projections(l);
    const std::pair<WeightAndGrad*, const kernels::ops::ProjectionWeight*> slots[] = {
        {&w.q, &p.q},      {&w.k, &p.k}, {&w.v, &p.v}, {&w.o, &p.o}, {&w.gate_up, &p.gate_up},
        {&w.down, &p.down}};
    for (const auto& [slot, from] : slots) {
      if (slot->g.defined() || !slot->w.defined()) continue;
      const int64_t n = slot->w.dim(0), k = slot->w.dim(1);
      const int64_t panels = (n + kernels::kLinearPanel - 1) / kernels::kLinearPanel;
      if (from->quantized.defined() && from->quantized.rows == n && from->quantized.cols == k) {
        slot->q = from->quantized;
      } else if (from->dense.defined() && from->dense.device().is_cpu() &&
                 from->dense.rank() == 3 && from->dense.dim(0) == panels &&
                 from->dense.dim(1) == k && from->dense.dim(2) == kernels::kLinearPanel) {
        slot->packed = from->dense;
        slot->packed_rows = n;
      } else {
        return absl::FailedPreconditionError(
            absl::StrCat("layer ", l, ": the serving model's projection is not the (", n, ", ", k,
                         ") weight this rank's fine-tune expects, packed on the CPU or quantized"));
      }
      slot->w = Tensor();
    }
  }
  params_.ReleaseFrozenProjections();
  return absl::OkStatus();
}

absl::Status TrainableModel::QuantizeFrozenBase() {
  const model::WeightQuantization& quantize = *options_.quantize;
  for (LayerWeights& w : layers_) {
    for (WeightAndGrad* slot : {&w.q, &w.k, &w.v, &w.o, &w.gate_up, &w.down}) {
      if (slot->g.defined() || !slot->w.defined()) continue;
      TESSERA_ASSIGN_OR_RETURN(
          const kernels::QuantizedWeight q,
          kernels::QuantizeWeight(slot->w, quantize.quant, quantize.GroupFor(slot->w.dim(1))));
      TESSERA_ASSIGN_OR_RETURN(slot->q, kernels::WithActivations(q, quantize.activations));
      slot->w = Tensor();
    }
  }
  params_.ReleaseFrozenProjections();
  return absl::OkStatus();
}

absl::Status TrainableModel::PackFrozenBase() {
  for (LayerWeights& w : layers_) {
    for (WeightAndGrad* slot : {&w.q, &w.k, &w.v, &w.o, &w.gate_up, &w.down}) {
      if (slot->g.defined() || !slot->w.defined()) continue;
      TESSERA_ASSIGN_OR_RETURN(slot->packed, kernels::PackLinearWeight(slot->w));
      slot->packed_rows = slot->w.dim(0);
      slot->w = Tensor();
    }
  }
  params_.ReleaseFrozenProjections();
  return absl::OkStatus();
}

absl::Status TrainableModel::SumOverTp(Tensor& t) {
  if (tp_.size() == 1) return absl::OkStatus();
  Stream cpu = Stream::Cpu();
  return tp_.AllReduce(t, comm::ReduceOp::kSum, cpu);
}

absl::Status TrainableModel::CheckBatch(const MicroBatch& batch) const {
  const size_t tokens = batch.tokens.size();
  if (tokens == 0 || batch.positions.size() != tokens || batch.targets.size() != tokens ||
      batch.sequence_starts.size() < 2 || batch.sequence_starts.front() != 0 ||
      batch.sequence_starts.back() != static_cast<int32_t>(tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "training batch: ", tokens, " tokens, ", batch.positions.size(), " positions, ",
        batch.targets.size(), " targets and sequence_starts of ", batch.sequence_starts.size(),
        " entries do not describe one batch (starts must run from 0 to the token count)"));
  }
  for (size_t s = 0; s + 1 < batch.sequence_starts.size(); ++s) {
    if (batch.sequence_starts[s + 1] <= batch.sequence_starts[s]) {
      return absl::InvalidArgumentError(
          absl::StrCat("training batch: sequence_starts must increase, entry ", s + 1, " is ",
                       batch.sequence_starts[s + 1], " after ", batch.sequence_starts[s]));
    }
  }
  for (size_t t = 0; t < tokens; ++t) {
    const int32_t target = batch.targets[t];
    if (target != kIgnoreLabel && (target < 0 || target >= config_.vocab_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat("training batch: target ", target, " at position ", t,
                       " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
    if (batch.positions[t] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("training batch: position ", batch.positions[t], " at token ", t));
    }
  }
  return absl::OkStatus();
}

// One layer's forward (model/decoder_layer.h) on the CPU, each activation fresh and kept in
// the SavedLayer for the backward, the LoRA adapters' x A^T with them.
class TrainableModel::TrainingLayer final : public model::DecoderLayerRunner {
 public:
  TrainingLayer(TrainableModel& model, int layer, const Tensor& positions, const Tensor& starts,
                SavedLayer& s)
      : model_(model),
        layer_(layer),
        w_(model.layers_[layer]),
        positions_(positions),
        starts_(starts),
        s_(s),
        tokens_(s.h_in.dim(0)),
        eps_(static_cast<float>(model.config_.rms_norm_eps)),
        lora_scale_(model.options_.lora.enabled() ? model.options_.lora.scale() : 0.0f) {}

  // The stream leaving the layer, once AddToStream has run.
  const Tensor& stream_out() const { return stream_out_; }

  absl::StatusOr<Tensor> NormStream(model::LayerNorm norm) override {
    TESSERA_ASSIGN_OR_RETURN(s_.n1, F32(s_.h_in.shape()));
    TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(s_.h_in, NormWeight(norm), eps_, s_.n1));
    return s_.n1;
  }

  absl::StatusOr<Tensor> Project(model::LayerProjection projection, const Tensor& x) override {
    const int64_t hidden = model_.config_.hidden_size;
    const int64_t q_rows = int64_t{model_.plan_.attention.num_q_heads} * model_.config_.head_dim;
    const int64_t kv_rows = int64_t{model_.plan_.attention.num_kv_heads} * model_.config_.head_dim;
    switch (projection) {
      case model::LayerProjection::kQ:
        return Projected(x, w_.q, w_.q_bias.w, q_rows, {{&w_.q_lora, &s_.q_u, 0}});
      case model::LayerProjection::kK:
        return Projected(x, w_.k, w_.k_bias.w, kv_rows, {{&w_.k_lora, &s_.k_u, 0}});
      case model::LayerProjection::kV:
        return Projected(x, w_.v, w_.v_bias.w, kv_rows, {{&w_.v_lora, &s_.v_u, 0}});
      case model::LayerProjection::kO: {
        TESSERA_ASSIGN_OR_RETURN(s_.o_out,
                                 Projected(x, w_.o, Tensor(), hidden, {{&w_.o_lora, &s_.o_u, 0}}));
        return s_.o_out;
      }
      case model::LayerProjection::kGateUp: {
        // gate and up are column windows [0, I) and [I, 2I) of the stacked output.
        const int64_t intermediate = w_.gate_up.rows() / 2;
        TESSERA_ASSIGN_OR_RETURN(s_.gate_up, Projected(x, w_.gate_up, Tensor(), 2 * intermediate,
                                                       {{&w_.gate_lora, &s_.gate_u, 0},
                                                        {&w_.up_lora, &s_.up_u, intermediate},
                                                        {&w_.gate_up_lora, &s_.gate_up_u, 0}}));
        return s_.gate_up;
      }
      case model::LayerProjection::kDown: {
        TESSERA_ASSIGN_OR_RETURN(
            s_.down_out, Projected(x, w_.down, Tensor(), hidden, {{&w_.down_lora, &s_.down_u, 0}}));
        return s_.down_out;
      }
    }
    return absl::InternalError("Project: no such projection");
  }

  absl::StatusOr<Tensor> Attention(const Tensor& q, const Tensor& k, const Tensor& v) override {
    const int64_t dim = model_.config_.head_dim;
    const int64_t q_heads = model_.plan_.attention.num_q_heads;
    const int64_t kv_heads = model_.plan_.attention.num_kv_heads;
    TESSERA_ASSIGN_OR_RETURN(s_.q, q.Reshape({tokens_, q_heads, dim}));
    TESSERA_ASSIGN_OR_RETURN(s_.k, k.Reshape({tokens_, kv_heads, dim}));
    TESSERA_ASSIGN_OR_RETURN(s_.v, v.Reshape({tokens_, kv_heads, dim}));
    TESSERA_RETURN_IF_ERROR(
        kernels::ApplyRotary(s_.q, positions_, model_.inv_freq_, model_.rotary_));
    TESSERA_RETURN_IF_ERROR(
        kernels::ApplyRotary(s_.k, positions_, model_.inv_freq_, model_.rotary_));
    kernels::AttentionParams params;
    params.scale = 1.0f / std::sqrt(static_cast<float>(dim));
    params.sliding_window = static_cast<int>(model_.config_.SlidingWindowFor(layer_));
    TESSERA_ASSIGN_OR_RETURN(s_.attn, F32({tokens_, q_heads * dim}));
    TESSERA_ASSIGN_OR_RETURN(s_.lse, F32({tokens_, q_heads}));
    TESSERA_ASSIGN_OR_RETURN(Tensor attn_heads, s_.attn.Reshape({tokens_, q_heads, dim}));
    TESSERA_RETURN_IF_ERROR(
        kernels::CausalAttention(s_.q, s_.k, s_.v, starts_, params, attn_heads, s_.lse));
    return s_.attn;
  }

  absl::Status SumOverTp(Tensor& partial) override { return model_.SumOverTp(partial); }

  absl::Status AddReplicatedBias(model::LayerProjection projection, Tensor& out) override {
    if (projection != model::LayerProjection::kO || !w_.o_bias.defined()) {
      return absl::OkStatus();
    }
    return kernels::AddBias(out, w_.o_bias.w);
  }

  absl::StatusOr<Tensor> NormSubLayer(model::LayerNorm norm, const Tensor& x) override {
    const Tensor& weight = NormWeight(norm);
    if (!weight.defined()) return x;
    TESSERA_ASSIGN_OR_RETURN(Tensor out, F32(x.shape()));  // x is kept for the backward
    TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(x, weight, eps_, out));
    return out;
  }

  absl::StatusOr<Tensor> AddToStreamAndNorm(const Tensor& sub, model::LayerNorm norm) override {
    TESSERA_ASSIGN_OR_RETURN(s_.h_mid, Sum(s_.h_in, sub));
    TESSERA_ASSIGN_OR_RETURN(s_.n2, F32(s_.h_mid.shape()));
    TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(s_.h_mid, NormWeight(norm), eps_, s_.n2));
    return s_.n2;
  }

  absl::StatusOr<Tensor> SiluMul(const Tensor& gate_up) override {
    TESSERA_ASSIGN_OR_RETURN(s_.act, F32({tokens_, gate_up.dim(1) / 2}));
    TESSERA_RETURN_IF_ERROR(kernels::SiluMul(gate_up, s_.act));
    return s_.act;
  }

  absl::Status AddToStream(const Tensor& sub) override {
    TESSERA_ASSIGN_OR_RETURN(stream_out_, Sum(s_.h_mid, sub));
    return absl::OkStatus();
  }

 private:
  // A LoRA adapter on a projection: its weights, where its x A^T is kept, and the first
  // column of the projection's output it adds to.
  struct Adapter {
    const LoraWeights* lora;
    Tensor* u;
    int64_t column;
  };

  const Tensor& NormWeight(model::LayerNorm norm) const {
    return model::NormSlot<WeightAndGrad>(w_, norm).w;
  }

  // x weight^T + bias (T, outputs), plus each defined adapter's product.
  absl::StatusOr<Tensor> Projected(const Tensor& x, const WeightAndGrad& weight, const Tensor& bias,
                                   int64_t outputs, std::initializer_list<Adapter> adapters) {
    TESSERA_ASSIGN_OR_RETURN(Tensor out, F32({tokens_, outputs}));
    TESSERA_RETURN_IF_ERROR(ProjectForward(x, weight, bias, out));
    for (const Adapter& adapter : adapters) {
      if (!adapter.lora->defined()) continue;
      TESSERA_ASSIGN_OR_RETURN(*adapter.u,
                               ApplyLora(x, *adapter.lora, lora_scale_, out, adapter.column));
    }
    return out;
  }

  TrainableModel& model_;
  const int layer_;
  const LayerWeights& w_;
  const Tensor& positions_;
  const Tensor& starts_;
  SavedLayer& s_;
  const int64_t tokens_;
  const float eps_;
  const float lora_scale_;
  Tensor stream_out_;
};

absl::StatusOr<Tensor> TrainableModel::LayerForward(int l, const Tensor& h, const Tensor& positions,
                                                    const Tensor& starts, SavedLayer& s) {
  s.h_in = h;
  TrainingLayer layer(*this, l, positions, starts, s);
  TESSERA_RETURN_IF_ERROR(model::DecoderLayerForward(layer));
  return layer.stream_out();
}

absl::StatusOr<LossSum> TrainableModel::LossAndHeadBackward(const Tensor& normed,
                                                            const Tensor& targets,
                                                            const float* loss_scale,
                                                            Tensor* d_normed) {
  const std::string head_name = plan_.tied_lm_head ? "model.embed_tokens.weight" : "lm_head.weight";
  Parameter* head = params_.Find(head_name);
  if (head == nullptr) return absl::InternalError(absl::StrCat("no ", head_name));
  VocabParallelHead vocab_head;
  vocab_head.weight = &head->value;
  vocab_head.grad = head->grad.defined() ? &head->grad : nullptr;
  vocab_head.shard = plan_.vocab;
  vocab_head.vocab_size = config_.vocab_size;
  vocab_head.chunk_rows = options_.loss_chunk_rows;
  return VocabParallelCrossEntropy(normed, targets, vocab_head, tp_, loss_scale, d_normed);
}

absl::Status TrainableModel::LayerBackward(int l, const Tensor& positions, const Tensor& starts,
                                           const SavedLayer& s, Tensor& d_residual) {
  const LayerWeights& w = layers_[l];
  const int64_t tokens = s.h_in.dim(0), hidden = config_.hidden_size, dim = config_.head_dim;
  const int64_t q_heads = plan_.attention.num_q_heads, kv_heads = plan_.attention.num_kv_heads;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float lora_scale = options_.lora.enabled() ? options_.lora.scale() : 0.0f;
  // A frozen norm's weight gradient goes to scratch.
  TESSERA_ASSIGN_OR_RETURN(Tensor norm_scratch, F32({hidden}));
  auto norm_grad = [&](const WeightAndGrad& norm) {
    return norm.g.defined() ? norm.g : norm_scratch;
  };

  // MLP block: h_out = h_mid + post_mlp_norm?(sum_tp(down(silu(gate) * up)(n2))).
  Tensor d_down = d_residual;  // the gradient of down_out (replicated over TP)
  if (w.post_mlp_norm.defined()) {
    TESSERA_ASSIGN_OR_RETURN(d_down, F32({tokens, hidden}));
    Tensor g = norm_grad(w.post_mlp_norm);
    TESSERA_RETURN_IF_ERROR(
        kernels::RmsNormBackward(s.down_out, w.post_mlp_norm.w, eps, d_residual, d_down, g));
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor d_act, F32(s.act.shape()));
  TESSERA_RETURN_IF_ERROR(ProjectBackwardInput(d_down, w.down, d_act));
  TESSERA_RETURN_IF_ERROR(WeightGrad(d_down, s.act, w.down, nullptr));
  if (w.down_lora.defined()) {
    TESSERA_RETURN_IF_ERROR(
        LoraBackward(d_down, 0, s.act, s.down_u, w.down_lora, lora_scale, d_act));
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor d_gate_up, F32(s.gate_up.shape()));
  TESSERA_RETURN_IF_ERROR(kernels::SiluMulBackward(s.gate_up, d_act, d_gate_up));
  TESSERA_ASSIGN_OR_RETURN(Tensor d_n2, F32({tokens, hidden}));
  TESSERA_RETURN_IF_ERROR(ProjectBackwardInput(d_gate_up, w.gate_up, d_n2));
  TESSERA_RETURN_IF_ERROR(WeightGrad(d_gate_up, s.n2, w.gate_up, nullptr));
  const int64_t intermediate = w.gate_up.rows() / 2;
  if (w.gate_lora.defined()) {
    TESSERA_RETURN_IF_ERROR(
        LoraBackward(d_gate_up, 0, s.n2, s.gate_u, w.gate_lora, lora_scale, d_n2));
  }
  if (w.up_lora.defined()) {
    TESSERA_RETURN_IF_ERROR(
        LoraBackward(d_gate_up, intermediate, s.n2, s.up_u, w.up_lora, lora_scale, d_n2));
  }
  if (w.gate_up_lora.defined()) {
    TESSERA_RETURN_IF_ERROR(
        LoraBackward(d_gate_up, 0, s.n2, s.gate_up_u, w.gate_up_lora, lora_scale, d_n2));
  }
  TESSERA_RETURN_IF_ERROR(SumOverTp(d_n2));  // column-parallel input: the conjugate all-reduce
  TESSERA_ASSIGN_OR_RETURN(Tensor d_h_mid, F32({tokens, hidden}));
  {
    Tensor g = norm_grad(w.post_attention_norm);
    TESSERA_RETURN_IF_ERROR(
        kernels::RmsNormBackward(s.h_mid, w.post_attention_norm.w, eps, d_n2, d_h_mid, g));
  }
  TESSERA_RETURN_IF_ERROR(kernels::AddInPlace(d_h_mid, d_residual));

  // Attention block: h_mid = h_in + post_self_attn_norm?(sum_tp(o(attention(n1))) + o_bias).
  Tensor d_o = d_h_mid;
  if (w.post_self_attn_norm.defined()) {
    TESSERA_ASSIGN_OR_RETURN(d_o, F32({tokens, hidden}));
    Tensor g = norm_grad(w.post_self_attn_norm);
    TESSERA_RETURN_IF_ERROR(
        kernels::RmsNormBackward(s.o_out, w.post_self_attn_norm.w, eps, d_h_mid, d_o, g));
  }
  if (w.o_bias.defined() && w.o_bias.g.defined()) {
    Tensor g = w.o_bias.g;
    AddColumnSums(d_o, g);
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor d_attn, F32(s.attn.shape()));
  TESSERA_RETURN_IF_ERROR(ProjectBackwardInput(d_o, w.o, d_attn));
  TESSERA_RETURN_IF_ERROR(WeightGrad(d_o, s.attn, w.o, nullptr));
  if (w.o_lora.defined()) {
    TESSERA_RETURN_IF_ERROR(LoraBackward(d_o, 0, s.attn, s.o_u, w.o_lora, lora_scale, d_attn));
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor d_q, F32({tokens, q_heads, dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor d_k, F32({tokens, kv_heads, dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor d_v, F32({tokens, kv_heads, dim}));
  kernels::AttentionParams params;
  params.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  params.sliding_window = static_cast<int>(config_.SlidingWindowFor(l));
  TESSERA_ASSIGN_OR_RETURN(Tensor attn_heads, s.attn.Reshape({tokens, q_heads, dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor d_attn_heads, d_attn.Reshape({tokens, q_heads, dim}));
  TESSERA_RETURN_IF_ERROR(kernels::CausalAttentionBackward(
      s.q, s.k, s.v, attn_heads, s.lse, d_attn_heads, starts, params, d_q, d_k, d_v));
  TESSERA_RETURN_IF_ERROR(kernels::ApplyRotaryBackward(d_q, positions, inv_freq_, rotary_));
  TESSERA_RETURN_IF_ERROR(kernels::ApplyRotaryBackward(d_k, positions, inv_freq_, rotary_));
  TESSERA_ASSIGN_OR_RETURN(Tensor d_n1, F32({tokens, hidden}));
  TESSERA_ASSIGN_OR_RETURN(Tensor scratch, F32({tokens, hidden}));
  struct Projection {
    Tensor d_out;
    const WeightAndGrad* weight;
    const WeightAndGrad* bias;
    const LoraWeights* lora;
    const Tensor* u;
  };
  const Projection projections[] = {{d_q.Flatten(), &w.q, &w.q_bias, &w.q_lora, &s.q_u},
                                    {d_k.Flatten(), &w.k, &w.k_bias, &w.k_lora, &s.k_u},
                                    {d_v.Flatten(), &w.v, &w.v_bias, &w.v_lora, &s.v_u}};
  bool first = true;
  for (const Projection& p : projections) {
    TESSERA_ASSIGN_OR_RETURN(Tensor dy, p.d_out.Reshape({tokens, p.weight->rows()}));
    if (first) {
      TESSERA_RETURN_IF_ERROR(ProjectBackwardInput(dy, *p.weight, d_n1));
      first = false;
    } else {
      TESSERA_RETURN_IF_ERROR(AddProjectBackwardInput(dy, *p.weight, d_n1, scratch));
    }
    TESSERA_RETURN_IF_ERROR(WeightGrad(dy, s.n1, *p.weight, p.bias->defined() ? p.bias : nullptr));
    if (p.lora->defined()) {
      TESSERA_RETURN_IF_ERROR(LoraBackward(dy, 0, s.n1, *p.u, *p.lora, lora_scale, d_n1));
    }
  }
  TESSERA_RETURN_IF_ERROR(SumOverTp(d_n1));
  // d_residual becomes the gradient of h_in: d_h_mid plus the input norm's share.
  {
    Tensor g = norm_grad(w.input_norm);
    TESSERA_RETURN_IF_ERROR(
        kernels::RmsNormBackward(s.h_in, w.input_norm.w, eps, d_n1, d_residual, g));
  }
  return kernels::AddInPlace(d_residual, d_h_mid);
}

// The pass's pieces, by index k: 0 the embedding; 1..L layer k-1's forward; L+1 the final
// norm and the loss, with the head's and the final norm's backward; L+2..2L+1 layer 2L+1-k's
// backward; 2L+2 the embedding's backward.
struct TrainableModel::PassState {
  MicroBatch batch;
  std::optional<float> loss_scale;  // unset: forward and loss only
  StageCallback stage_done;
  Forwarded f;
  Tensor h;           // (T, H) the residual stream through the forward
  Tensor d_residual;  // (T, H) its gradient through the backward
  LossSum loss;
};

TrainableModel::Pass::Pass(TrainableModel& model, std::unique_ptr<PassState> state)
    : model_(model), state_(std::move(state)) {}
TrainableModel::Pass::~Pass() = default;

int TrainableModel::Pass::pieces() const {
  const int layers = model_.config_.num_hidden_layers;
  return state_->loss_scale.has_value() ? 2 * layers + 3 : layers + 2;
}

absl::Status TrainableModel::Pass::RunPiece() {
  if (done()) return absl::FailedPreconditionError("the pass is done");
  absl::Status ran = model_.RunPassPiece(next_, *state_);
  next_ = ran.ok() ? next_ + 1 : pieces();
  if (ran.ok() && done()) loss_ = state_->loss;
  return ran;
}

absl::StatusOr<std::unique_ptr<TrainableModel::Pass>> TrainableModel::BeginPass(
    MicroBatch batch, std::optional<float> loss_scale, StageCallback stage_done) {
  TESSERA_RETURN_IF_ERROR(CheckBatch(batch));
  auto state = std::make_unique<PassState>();
  state->batch = std::move(batch);
  state->loss_scale = loss_scale;
  state->stage_done = std::move(stage_done);
  Forwarded& f = state->f;
  f.ids = WrapI32(state->batch.tokens);
  f.positions = WrapI32(state->batch.positions);
  f.starts = WrapI32(state->batch.sequence_starts);
  f.targets = WrapI32(state->batch.targets);
  return std::unique_ptr<Pass>(new Pass(*this, std::move(state)));
}

absl::StatusOr<std::unique_ptr<TrainableModel::Pass>> TrainableModel::BeginForwardBackward(
    MicroBatch batch, float loss_scale, StageCallback stage_done) {
  return BeginPass(std::move(batch), loss_scale, std::move(stage_done));
}

absl::Status TrainableModel::RunPassPiece(int k, PassState& s) {
  const int layers = config_.num_hidden_layers;
  Forwarded& f = s.f;
  const int64_t tokens = f.ids.dim(0), hidden = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  auto done = [&](int stage) { return s.stage_done ? s.stage_done(stage) : absl::OkStatus(); };
  if (k == 0) {
    TESSERA_ASSIGN_OR_RETURN(Parameter * embed, [&]() -> absl::StatusOr<Parameter*> {
      Parameter* p = params_.Find("model.embed_tokens.weight");
      if (p == nullptr) return absl::InternalError("no embedding");
      return p;
    }());
    TESSERA_ASSIGN_OR_RETURN(s.h, F32({tokens, hidden}));
    TESSERA_RETURN_IF_ERROR(
        kernels::EmbeddingLookup(f.ids, embed->value, plan_.vocab.begin, config_.vocab_size, s.h));
    TESSERA_RETURN_IF_ERROR(SumOverTp(s.h));
    f.layers.resize(layers);
    return absl::OkStatus();
  }
  if (k <= layers) {
    const int l = k - 1;
    if (options_.recompute) {
      // Keep only the layer's input: the backward runs the layer again from it.
      SavedLayer transient;
      f.layers[l].h_in = s.h;
      TESSERA_ASSIGN_OR_RETURN(s.h, LayerForward(l, s.h, f.positions, f.starts, transient));
    } else {
      TESSERA_ASSIGN_OR_RETURN(s.h, LayerForward(l, s.h, f.positions, f.starts, f.layers[l]));
    }
    return absl::OkStatus();
  }
  if (k == layers + 1) {
    f.h_final = std::move(s.h);
    TESSERA_ASSIGN_OR_RETURN(f.n_final, F32({tokens, hidden}));
    TESSERA_ASSIGN_OR_RETURN(Tensor final_norm_value, params_.Value("model.norm.weight"));
    TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(f.h_final, final_norm_value, eps, f.n_final));
    if (!s.loss_scale.has_value()) {
      TESSERA_ASSIGN_OR_RETURN(s.loss, LossAndHeadBackward(f.n_final, f.targets, nullptr, nullptr));
      return absl::OkStatus();
    }
    TESSERA_ASSIGN_OR_RETURN(Tensor d_normed, F32({tokens, hidden}));
    const float loss_scale = *s.loss_scale;
    TESSERA_ASSIGN_OR_RETURN(s.loss,
                             LossAndHeadBackward(f.n_final, f.targets, &loss_scale, &d_normed));
    TESSERA_RETURN_IF_ERROR(SumOverTp(d_normed));  // the vocab-parallel head's input
    TESSERA_ASSIGN_OR_RETURN(Parameter * final_norm, [&]() -> absl::StatusOr<Parameter*> {
      Parameter* p = params_.Find("model.norm.weight");
      if (p == nullptr) return absl::InternalError("no final norm");
      return p;
    }());
    TESSERA_ASSIGN_OR_RETURN(s.d_residual, F32({tokens, hidden}));
    TESSERA_ASSIGN_OR_RETURN(Tensor norm_scratch, F32({hidden}));
    Tensor final_norm_grad = final_norm->grad.defined() ? final_norm->grad : norm_scratch;
    TESSERA_RETURN_IF_ERROR(kernels::RmsNormBackward(f.h_final, final_norm->value, eps, d_normed,
                                                     s.d_residual, final_norm_grad));
    return done(0);
  }
  if (k <= 2 * layers + 1) {
    const int l = 2 * layers + 1 - k;
    if (options_.recompute) {
      const Tensor h_in = f.layers[l].h_in;
      TESSERA_RETURN_IF_ERROR(LayerForward(l, h_in, f.positions, f.starts, f.layers[l]).status());
    }
    TESSERA_RETURN_IF_ERROR(LayerBackward(l, f.positions, f.starts, f.layers[l], s.d_residual));
    f.layers[l] = SavedLayer{};  // free what the rest of the backward no longer reads
    return done(layers - l);
  }
  Parameter* embed = params_.Find("model.embed_tokens.weight");
  if (embed == nullptr) return absl::InternalError("no embedding");
  if (embed->grad.defined()) {
    TESSERA_RETURN_IF_ERROR(kernels::EmbeddingBackward(f.ids, s.d_residual, plan_.vocab.begin,
                                                       config_.vocab_size, embed->grad));
  }
  return done(layers + 1);
}

absl::StatusOr<LossSum> TrainableModel::RunWholePass(MicroBatch batch,
                                                     std::optional<float> loss_scale,
                                                     StageCallback stage_done) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Pass> pass,
                           BeginPass(std::move(batch), loss_scale, std::move(stage_done)));
  while (!pass->done()) TESSERA_RETURN_IF_ERROR(pass->RunPiece());
  return pass->loss();
}

absl::StatusOr<LossSum> TrainableModel::ForwardBackward(const MicroBatch& batch, float loss_scale,
                                                        const StageCallback& stage_done) {
  return RunWholePass(batch, loss_scale, stage_done);
}

absl::StatusOr<LossSum> TrainableModel::Loss(const MicroBatch& batch) {
  return RunWholePass(batch, std::nullopt, nullptr);
}

int TrainableModel::BackwardStageOf(absl::string_view name) const {
  const int layers = config_.num_hidden_layers;
  if (name == "model.embed_tokens.weight") return layers + 1;  // tied: the head's too
  for (absl::string_view prefix : {"model.layers.", "base_model.model.model.layers."}) {
    if (absl::StartsWith(name, prefix)) {
      int layer = 0;
      absl::string_view rest = name.substr(prefix.size());
      if (absl::SimpleAtoi(rest.substr(0, rest.find('.')), &layer)) return layers - layer;
    }
  }
  return 0;  // the LM head and the final norm
}

absl::Status TrainableModel::ReducePartialGrads(int stage) {
  Stream cpu = Stream::Cpu();
  for (Parameter& p : params_.all()) {
    if (p.tp_partial_grad && BackwardStageOf(p.name) == stage) {
      TESSERA_RETURN_IF_ERROR(tp_.AllReduce(p.grad, comm::ReduceOp::kSum, cpu));
    }
  }
  if (kv_sharers_ == nullptr) return absl::OkStatus();
  for (Parameter& p : params_.all()) {
    if (p.kv_rows_end <= p.kv_rows_begin || !p.grad.defined() || BackwardStageOf(p.name) != stage) {
      continue;
    }
    TESSERA_ASSIGN_OR_RETURN(Tensor rows, p.grad.Slice(p.kv_rows_begin, p.kv_rows_end));
    TESSERA_RETURN_IF_ERROR(kv_sharers_->AllReduce(rows, comm::ReduceOp::kSum, cpu));
  }
  return absl::OkStatus();
}

absl::Status TrainableModel::ReducePartialGrads() {
  for (int stage = 0; stage < num_backward_stages(); ++stage) {
    TESSERA_RETURN_IF_ERROR(ReducePartialGrads(stage));
  }
  return absl::OkStatus();
}

}  // namespace tessera::train
