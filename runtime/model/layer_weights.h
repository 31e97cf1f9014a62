#ifndef TESSERA_RUNTIME_MODEL_LAYER_WEIGHTS_H_
#define TESSERA_RUNTIME_MODEL_LAYER_WEIGHTS_H_

// Which checkpoint tensors make up one decoder layer, by the role each plays: one definition
// for the serving model (a layer of Tensors) and the trainer (a layer of weights with their
// gradients). The shard of each tensor is the weight plan's (weight_plan.h).

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/model_config.h"
#include "runtime/model/weight_plan.h"

namespace tessera::model {

// One layer's tensors as this rank holds them. A Slot is a Tensor, or anything with
// defined() that stands for one. Optional roles are undefined where the checkpoint has none.
template <typename Slot>
struct LayerSlots {
  Slot input_norm, post_attention_norm;
  Slot post_self_attn_norm, post_mlp_norm;  // Glm4's extra norms
  // (rows of this rank's heads, hidden); from the fused qkv_proj as row views where the
  // checkpoint stores it so.
  Slot q, k, v;
  Slot q_bias, k_bias, v_bias;  // optional
  Slot o;                       // (hidden, q rows)
  Slot o_bias;                  // optional, replicated
  Slot gate, up;                // checkpoints with separate gate_proj and up_proj
  Slot gate_up;                 // checkpoints that store [gate; up] fused (mlp.gate_up_proj)
  Slot down;                    // (hidden, intermediate shard)
};

// Each slot of `from` through `f` (a slot of `from` to a slot of `to`), role for role.
template <typename To, typename From, typename F>
LayerSlots<To> MapLayerSlots(const LayerSlots<From>& from, const F& f) {
  LayerSlots<To> to;
  to.input_norm = f(from.input_norm);
  to.post_attention_norm = f(from.post_attention_norm);
  to.post_self_attn_norm = f(from.post_self_attn_norm);
  to.post_mlp_norm = f(from.post_mlp_norm);
  to.q = f(from.q);
  to.k = f(from.k);
  to.v = f(from.v);
  to.q_bias = f(from.q_bias);
  to.k_bias = f(from.k_bias);
  to.v_bias = f(from.v_bias);
  to.o = f(from.o);
  to.o_bias = f(from.o_bias);
  to.gate = f(from.gate);
  to.up = f(from.up);
  to.gate_up = f(from.gate_up);
  to.down = f(from.down);
  return to;
}

// Assembles layer `layer` from `find(name)`, which gives the slot of a checkpoint tensor by
// its name (undefined when absent), and `rows(slot, begin, end)`, which gives a view of rows
// [begin, end) of a slot (absl::StatusOr<Slot>). INTERNAL naming the tensor when a required
// one is missing: the weight plan and the loader must agree.
template <typename Slot, typename Find, typename Rows>
absl::StatusOr<LayerSlots<Slot>> AssembleLayer(const ModelConfig& config, const WeightPlan& plan,
                                               int layer, const Find& find, const Rows& rows) {
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  auto required = [&](const std::string& suffix) -> absl::StatusOr<Slot> {
    Slot slot = find(prefix + suffix);
    if (!slot.defined()) {
      return absl::InternalError(absl::StrCat("the weight plan loaded no ", prefix, suffix));
    }
    return slot;
  };
  LayerSlots<Slot> l;
  TESSERA_ASSIGN_OR_RETURN(l.input_norm, required("input_layernorm.weight"));
  TESSERA_ASSIGN_OR_RETURN(l.post_attention_norm, required("post_attention_layernorm.weight"));
  l.post_self_attn_norm = find(prefix + "post_self_attn_layernorm.weight");
  l.post_mlp_norm = find(prefix + "post_mlp_layernorm.weight");
  if (plan.fused_qkv) {
    // This rank's q rows, then its k rows, then its v rows.
    const int64_t q_rows = int64_t{plan.attention.num_q_heads} * config.head_dim;
    const int64_t kv_rows = int64_t{plan.attention.num_kv_heads} * config.head_dim;
    const std::pair<int64_t, int64_t> ranges[] = {
        {0, q_rows}, {q_rows, q_rows + kv_rows}, {q_rows + kv_rows, q_rows + 2 * kv_rows}};
    TESSERA_ASSIGN_OR_RETURN(Slot qkv, required("self_attn.qkv_proj.weight"));
    Slot bias = find(prefix + "self_attn.qkv_proj.bias");
    Slot* weights[] = {&l.q, &l.k, &l.v};
    Slot* biases[] = {&l.q_bias, &l.k_bias, &l.v_bias};
    for (int i = 0; i < 3; ++i) {
      TESSERA_ASSIGN_OR_RETURN(*weights[i], rows(qkv, ranges[i].first, ranges[i].second));
      if (bias.defined()) {
        TESSERA_ASSIGN_OR_RETURN(*biases[i], rows(bias, ranges[i].first, ranges[i].second));
      }
    }
  } else {
    TESSERA_ASSIGN_OR_RETURN(l.q, required("self_attn.q_proj.weight"));
    TESSERA_ASSIGN_OR_RETURN(l.k, required("self_attn.k_proj.weight"));
    TESSERA_ASSIGN_OR_RETURN(l.v, required("self_attn.v_proj.weight"));
    l.q_bias = find(prefix + "self_attn.q_proj.bias");
    l.k_bias = find(prefix + "self_attn.k_proj.bias");
    l.v_bias = find(prefix + "self_attn.v_proj.bias");
  }
  TESSERA_ASSIGN_OR_RETURN(l.o, required("self_attn.o_proj.weight"));
  l.o_bias = find(prefix + "self_attn.o_proj.bias");
  if (config.fused_gate_up) {
    TESSERA_ASSIGN_OR_RETURN(l.gate_up, required("mlp.gate_up_proj.weight"));
  } else {
    TESSERA_ASSIGN_OR_RETURN(l.gate, required("mlp.gate_proj.weight"));
    TESSERA_ASSIGN_OR_RETURN(l.up, required("mlp.up_proj.weight"));
  }
  TESSERA_ASSIGN_OR_RETURN(l.down, required("mlp.down_proj.weight"));
  return l;
}

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_LAYER_WEIGHTS_H_
