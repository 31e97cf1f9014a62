#ifndef TESSERA_RUNTIME_MODEL_DECODER_LAYER_H_
#define TESSERA_RUNTIME_MODEL_DECODER_LAYER_H_

// The forward of one tensor-parallel decoder layer, defined once for the serving model
// (transformer.h) and the trainer (train/trainable_model.h): which norms, projections,
// biases and sums over the tensor-parallel group run, in which order. With h the residual
// stream entering the layer (T rows):
//
//   n1 = input_layernorm(h)
//   q, k, v = n1 Wq^T + bq, n1 Wk^T + bk, n1 Wv^T + bv    column-parallel: this rank's heads
//   a = attention(rotary(q), rotary(k), v)                causal, GQA, sliding window
//   o = sum over TP(a Wo^T) + bo                           row-parallel; bo replicated
//   o = post_self_attn_layernorm(o)                        Glm4
//   h' = h + o;  n2 = post_attention_layernorm(h')
//   g = n2 [Wgate; Wup]^T;  m = silu(g[:, :I]) * g[:, I:]  column-parallel
//   d = sum over TP(m Wdown^T)                             row-parallel
//   d = post_mlp_layernorm(d)                              Glm4
//   h'' = h' + d                                           the stream leaving the layer
//
// LoRA adapters add their products to a projection's output before its sum over TP (a
// row-parallel adapter's partial product joins the layer's all-reduce).
//
// A runner says how each step runs: the serving model on its device, with its paged KV
// cache, each sequence's adapter and buffers reused across steps; the trainer on the CPU,
// keeping what its backward reads. The backward (the trainer's) mirrors this order.

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/tensor.h"
#include "runtime/model/layer_weights.h"

namespace tessera::model {

enum class LayerNorm { kInput, kPostSelfAttention, kPostAttention, kPostMlp };
enum class LayerProjection { kQ, kK, kV, kO, kGateUp, kDown };

class DecoderLayerRunner {
 public:
  virtual ~DecoderLayerRunner() = default;

  // `norm` (kInput) of the residual stream entering the layer.
  virtual absl::StatusOr<Tensor> NormStream(LayerNorm norm) = 0;
  // x times the projection's weight (transposed), plus its bias if it is column-parallel
  // (q, k, v) and the layer has one, plus the LoRA adapters' products on it.
  virtual absl::StatusOr<Tensor> Project(LayerProjection projection, const Tensor& x) = 0;
  // Rotary on q and k, then causal attention of q over k and v (each (T, heads * head_dim)).
  virtual absl::StatusOr<Tensor> Attention(const Tensor& q, const Tensor& k, const Tensor& v) = 0;
  // partial summed over the tensor-parallel group, in place.
  virtual absl::Status SumOverTp(Tensor& partial) = 0;
  // The replicated bias of a row-parallel projection (o), added once after the sum, if the
  // layer has one.
  virtual absl::Status AddReplicatedBias(LayerProjection projection, Tensor& out) = 0;
  // A sub-layer output normed by `norm` (Glm4's kPostSelfAttention, kPostMlp); x itself where
  // the layer has no such norm.
  virtual absl::StatusOr<Tensor> NormSubLayer(LayerNorm norm, const Tensor& x) = 0;
  // h' = h + sub (the stream goes on from h'), then `norm` (kPostAttention) of h'.
  virtual absl::StatusOr<Tensor> AddToStreamAndNorm(const Tensor& sub, LayerNorm norm) = 0;
  // silu(gate) * up of the stacked [gate, up] columns.
  virtual absl::StatusOr<Tensor> SiluMul(const Tensor& gate_up) = 0;
  // h'' = h' + sub: the stream leaving the layer.
  virtual absl::Status AddToStream(const Tensor& sub) = 0;
};

// The slot of `norm` in a layer's tensors.
template <typename Slot>
const Slot& NormSlot(const LayerSlots<Slot>& layer, LayerNorm norm) {
  switch (norm) {
    case LayerNorm::kInput:
      return layer.input_norm;
    case LayerNorm::kPostSelfAttention:
      return layer.post_self_attn_norm;
    case LayerNorm::kPostAttention:
      return layer.post_attention_norm;
    case LayerNorm::kPostMlp:
      return layer.post_mlp_norm;
  }
  return layer.input_norm;
}

// Runs one layer's forward through `run`, in the order above.
absl::Status DecoderLayerForward(DecoderLayerRunner& run);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_DECODER_LAYER_H_
