#ifndef TESSERA_RUNTIME_MODEL_WEIGHT_PLAN_H_
#define TESSERA_RUNTIME_MODEL_WEIGHT_PLAN_H_

// Which part of every checkpoint tensor one tensor-parallel rank holds (Megatron split).
//
// Tensors are named as in the Hugging Face checkpoints and keep their [out, in] layout:
//   model.embed_tokens.weight [vocab, hidden]   vocab-parallel: rows of this rank's vocab shard
//   lm_head.weight            [vocab, hidden]   vocab-parallel; absent when embeddings are tied
//   model.layers.N.
//     self_attn.q_proj.{weight,bias}  [q_size, hidden], [q_size]     column-parallel: rows of
//                                                                    this rank's query heads
//     self_attn.{k,v}_proj.{weight,bias} [kv_size, hidden], [kv_size] column-parallel: rows of
//                                     this rank's KV heads: its own when tp divides
//                                     num_key_value_heads, otherwise the one KV head its query
//                                     heads share (replicated on tp / kv_heads ranks)
//     self_attn.qkv_proj.{weight,bias} [q_size + 2 kv_size, hidden]  fused form of the three
//                                     above (WeightPlanOptions::fused_qkv): this rank's q rows,
//                                     then its k rows, then its v rows
//     self_attn.o_proj.weight  [hidden, q_size]   row-parallel: columns of this rank's heads
//     self_attn.o_proj.bias    [hidden]           replicated (added once, after the all-reduce)
//     mlp.{gate,up}_proj.weight [intermediate, hidden]     column-parallel
//     mlp.gate_up_proj.weight  [2 intermediate, hidden]    GLM: this rank's gate rows, then its
//                                                          up rows
//     mlp.down_proj.weight     [hidden, intermediate]      row-parallel
//     input_layernorm.weight, post_attention_layernorm.weight,
//     post_self_attn_layernorm.weight, post_mlp_layernorm.weight (Glm4)   [hidden] replicated
//   model.norm.weight [hidden]   replicated
//
// A vocabulary that tp does not divide is padded: every rank holds ceil(vocab / tp) rows,
// the last shard's rows past the vocabulary are zero, and the forward must mask their logits.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/tensor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"

namespace tessera::model {

enum class ShardKind {
  kReplicated,      // every rank holds the whole tensor
  kColumnParallel,  // rows of [out, in] (and of its bias): output features split
  kRowParallel,     // columns of [out, in]: input features split
  kVocabParallel,   // rows of [vocab, hidden], padded to equal shards
};
absl::string_view ShardKindName(ShardKind kind);  // "replicated", "column", "row", "vocab"

// One tensor this rank reads.
struct PlannedTensor {
  std::string name;  // as stored in the checkpoint
  Shape shape;       // expected in the checkpoint
  ShardKind kind = ShardKind::kReplicated;
  TensorSlice slice;  // the part this rank reads
  Shape rank_shape;   // what this rank holds: slice.SlicedShape(shape)
};

// This rank's attention heads. Query heads [q_head_begin, q_head_begin + num_q_heads) use
// KV heads [kv_head_begin, kv_head_begin + num_kv_heads), with the model's grouping.
struct AttentionShard {
  int q_head_begin = 0;
  int num_q_heads = 0;
  int kv_head_begin = 0;
  int num_kv_heads = 0;
  bool kv_replicated = false;  // tp > num_key_value_heads: other ranks hold the same KV head
};

// This rank's rows of the vocabulary: token ids [begin, end) are rows 0 .. end-begin-1 of its
// embedding and LM-head shards, which have `padded_rows` rows (the same on every rank).
struct VocabShard {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t padded_rows = 0;
};
VocabShard VocabShardOf(int64_t vocab_size, int tp, int tp_rank);

struct WeightPlanOptions {
  // Plan self_attn.qkv_proj instead of q_proj, k_proj and v_proj (checkpoints that store the
  // projections fused; see DetectWeightPlanOptions).
  bool fused_qkv = false;
};

struct WeightPlan {
  int tp = 1;
  int tp_rank = 0;
  AttentionShard attention;
  VocabShard vocab;
  int64_t intermediate_begin = 0;  // this rank's MLP columns [begin, begin + size)
  int64_t intermediate_size = 0;
  bool fused_qkv = false;
  // lm_head.weight is not stored: the LM head is this rank's embed_tokens shard.
  bool tied_lm_head = false;
  std::vector<PlannedTensor> tensors;  // checkpoint order: embeddings, layers, norm, head

  // nullptr when the plan has no such tensor.
  const PlannedTensor* Find(absl::string_view name) const;
  // Bytes this rank holds when every tensor is `dtype`.
  uint64_t RankBytes(DType dtype) const;
};

// The plan for rank `tp_rank` of `tp`. INVALID_ARGUMENT when config.CheckTensorParallel(tp)
// fails or tp_rank is outside [0, tp).
absl::StatusOr<WeightPlan> PlanWeights(const ModelConfig& config, int tp, int tp_rank,
                                       const WeightPlanOptions& options = {});

// Parameters of the whole model: the elements of every checkpoint tensor of a plan, each
// tensor once (a tied embedding once: the plan has no lm_head then), however it is split.
int64_t ParameterCount(const WeightPlan& plan);
// The same from a config alone (the tp = 1 plan; fused or separate projections hold the
// same parameters).
absl::StatusOr<int64_t> ParameterCount(const ModelConfig& config);

// The options that match what `checkpoint` stores (fused qkv when layer 0 has qkv_proj).
WeightPlanOptions DetectWeightPlanOptions(const Checkpoint& checkpoint);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_WEIGHT_PLAN_H_
