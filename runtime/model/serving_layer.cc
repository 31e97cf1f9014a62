// How the serving model runs one decoder layer (decoder_layer.h): Transformer::ForwardLayer.

#include <cmath>
#include <initializer_list>
#include <vector>

#include "absl/status/status.h"
#include "kernels/ops/attention.h"
#include "kernels/ops/linear.h"
#include "kernels/ops/norm_activation.h"
#include "kernels/ops/rotary.h"
#include "kernels/ops/row_ops.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/decoder_layer.h"
#include "runtime/model/transformer.h"

namespace tessera::model {

namespace ops = kernels::ops;

// One layer of a Forward (decoder_layer.h): on device_, into the activations of the step,
// reading and writing the paged KV cache, with each sequence's adapter. The residual stream is
// a.residual; a sub-layer's output waits in a.pending, and the next norm adds it to the stream
// (AddRmsNorm) so that no step writes the stream alone: `pending` says whether one waits.
class Transformer::ServingLayer final : public DecoderLayerRunner {
 public:
  ServingLayer(Transformer& model, int layer, const BatchTensors& in,
               const std::vector<AdapterRows>& adapted, Activations& a, KvCache& cache,
               bool& pending)
      : model_(model),
        layer_(layer),
        w_(model.layers_[layer]),
        p_(model.projections_[layer]),
        in_(in),
        adapted_(adapted),
        a_(a),
        cache_(cache),
        pending_(pending),
        stream_(*model.stream_),
        eps_(static_cast<float>(model.config_.rms_norm_eps)) {}

  absl::StatusOr<Tensor> NormStream(LayerNorm norm) override {
    if (pending_) {
      TESSERA_RETURN_IF_ERROR(
          ops::AddRmsNorm(a_.residual, a_.pending, NormWeight(norm), eps_, a_.normed, stream_));
    } else {
      TESSERA_RETURN_IF_ERROR(
          ops::RmsNorm(a_.residual, NormWeight(norm), eps_, a_.normed, stream_));
    }
    pending_ = false;
    return a_.normed;
  }

  absl::StatusOr<Tensor> Project(LayerProjection projection, const Tensor& x) override {
    switch (projection) {
      case LayerProjection::kQ:
        return Projected(x, p_.q, w_.q_bias, {LoraModule::kQ}, a_.q);
      case LayerProjection::kK:
        return Projected(x, p_.k, w_.k_bias, {LoraModule::kK}, a_.k);
      case LayerProjection::kV:
        return Projected(x, p_.v, w_.v_bias, {LoraModule::kV}, a_.v);
      case LayerProjection::kO:
        return Projected(x, p_.o, Tensor(), {LoraModule::kO}, a_.pending);
      case LayerProjection::kGateUp:
        return Projected(x, p_.gate_up, Tensor(),
                         {LoraModule::kGate, LoraModule::kUp, LoraModule::kGateUp}, a_.gate_up);
      case LayerProjection::kDown:
        return Projected(x, p_.down, Tensor(), {LoraModule::kDown}, a_.pending);
    }
    return absl::InternalError("Project: no such projection");
  }

  absl::StatusOr<Tensor> Attention(const Tensor& q, const Tensor& k, const Tensor& v) override {
    const ModelConfig& config = model_.config_;
    const int64_t tokens = q.dim(0), dim = config.head_dim;
    const int64_t q_heads = model_.plan_.attention.num_q_heads;
    const int64_t kv_heads = model_.plan_.attention.num_kv_heads;
    TESSERA_ASSIGN_OR_RETURN(Tensor q_heads_view, q.Reshape({tokens, q_heads, dim}));
    TESSERA_ASSIGN_OR_RETURN(Tensor k_heads_view, k.Reshape({tokens, kv_heads, dim}));
    TESSERA_ASSIGN_OR_RETURN(Tensor v_heads_view, v.Reshape({tokens, kv_heads, dim}));
    TESSERA_RETURN_IF_ERROR(
        ops::ApplyRotary(q_heads_view, in_.positions, model_.inv_freq_, model_.rotary_, stream_));
    TESSERA_RETURN_IF_ERROR(
        ops::ApplyRotary(k_heads_view, in_.positions, model_.inv_freq_, model_.rotary_, stream_));
    kernels::AttentionParams params;
    params.scale = 1.0f / std::sqrt(static_cast<float>(dim));
    params.sliding_window = static_cast<int>(config.SlidingWindowFor(layer_));
    TESSERA_ASSIGN_OR_RETURN(Tensor out_heads, a_.attention.Reshape({tokens, q_heads, dim}));
    Tensor& k_cache = cache_.k[layer_];
    Tensor& v_cache = cache_.v[layer_];
    if (model_.kv_dtype_ == DType::kI8) {
      TESSERA_RETURN_IF_ERROR(ops::WriteKvCacheInt8(k_heads_view, v_heads_view, in_.slots, k_cache,
                                                    v_cache, cache_.k_scale[layer_],
                                                    cache_.v_scale[layer_], stream_));
      TESSERA_RETURN_IF_ERROR(ops::PagedAttentionInt8(
          q_heads_view, k_cache, v_cache, cache_.k_scale[layer_], cache_.v_scale[layer_],
          in_.query_starts, in_.context_lens, in_.block_tables, params, out_heads, stream_));
      return a_.attention;
    }
    TESSERA_RETURN_IF_ERROR(
        ops::WriteKvCache(k_heads_view, v_heads_view, in_.slots, k_cache, v_cache, stream_));
    TESSERA_RETURN_IF_ERROR(ops::PagedAttention(q_heads_view, k_cache, v_cache, in_.query_starts,
                                                in_.context_lens, in_.block_tables, params,
                                                out_heads, stream_));
    return a_.attention;
  }

  absl::Status SumOverTp(Tensor& partial) override { return model_.SumOverGroup(partial); }

  absl::Status AddReplicatedBias(LayerProjection projection, Tensor& out) override {
    if (projection != LayerProjection::kO || !w_.o_bias.defined()) return absl::OkStatus();
    return ops::AddBias(out, w_.o_bias, stream_);
  }

  absl::StatusOr<Tensor> NormSubLayer(LayerNorm norm, const Tensor& x) override {
    const Tensor& weight = NormWeight(norm);
    if (!weight.defined()) return x;
    Tensor out = x;  // in place
    TESSERA_RETURN_IF_ERROR(ops::RmsNorm(x, weight, eps_, out, stream_));
    return out;
  }

  absl::StatusOr<Tensor> AddToStreamAndNorm(const Tensor& sub, LayerNorm norm) override {
    TESSERA_RETURN_IF_ERROR(
        ops::AddRmsNorm(a_.residual, sub, NormWeight(norm), eps_, a_.normed, stream_));
    return a_.normed;
  }

  absl::StatusOr<Tensor> SiluMul(const Tensor& gate_up) override {
    TESSERA_RETURN_IF_ERROR(ops::SiluMul(gate_up, a_.activated, stream_));
    return a_.activated;
  }

  absl::Status AddToStream(const Tensor& sub) override {
    if (sub.data() != a_.pending.data()) {
      return absl::InternalError("ServingLayer: a sub-layer output outside a.pending");
    }
    pending_ = true;  // added by the next norm
    return absl::OkStatus();
  }

 private:
  const Tensor& NormWeight(LayerNorm norm) const { return NormSlot(w_, norm); }

  // out = x weight^T + bias, plus the adapters' products of `modules`.
  absl::StatusOr<Tensor> Projected(const Tensor& x, const kernels::ops::ProjectionWeight& weight,
                                   const Tensor& bias, std::initializer_list<LoraModule> modules,
                                   Tensor& out) {
    TESSERA_RETURN_IF_ERROR(ops::Linear(x, weight, bias, out, stream_));
    TESSERA_RETURN_IF_ERROR(model_.AddAdapters(adapted_, layer_, modules, x, out));
    return out;
  }

  Transformer& model_;
  const int layer_;
  const Layer& w_;
  const LayerProjections& p_;
  const BatchTensors& in_;
  const std::vector<AdapterRows>& adapted_;
  Activations& a_;
  KvCache& cache_;
  bool& pending_;
  Stream& stream_;
  const float eps_;
};

absl::Status Transformer::ForwardLayer(int layer, const BatchTensors& in,
                                       const std::vector<AdapterRows>& adapted, Activations& a,
                                       KvCache& cache, bool& pending) {
  ServingLayer run(*this, layer, in, adapted, a, cache, pending);
  return DecoderLayerForward(run);
}

}  // namespace tessera::model
