#include "runtime/model/weight_plan.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"

namespace tessera::model {
namespace {

// Builds a plan's tensor list, deriving each rank_shape from its slice.
class PlanBuilder {
 public:
  explicit PlanBuilder(WeightPlan& plan) : plan_(plan) {}

  absl::Status Add(std::string name, Shape shape, ShardKind kind, TensorSlice slice) {
    absl::StatusOr<Shape> rank_shape = slice.SlicedShape(shape);
    if (!rank_shape.ok()) {
      // The plan derives slices from a checked config, so this is a bug, not bad input.
      return absl::InternalError(
          absl::StrCat("weight plan for ", name, ": ", rank_shape.status().message()));
    }
    plan_.tensors.push_back(
        PlannedTensor{std::move(name), std::move(shape), kind, std::move(slice), *rank_shape});
    return absl::OkStatus();
  }
  absl::Status Replicated(std::string name, Shape shape) {
    return Add(std::move(name), std::move(shape), ShardKind::kReplicated, TensorSlice::Whole());
  }

 private:
  WeightPlan& plan_;
};

}  // namespace

absl::string_view ShardKindName(ShardKind kind) {
  switch (kind) {
    case ShardKind::kReplicated:
      return "replicated";
    case ShardKind::kColumnParallel:
      return "column";
    case ShardKind::kRowParallel:
      return "row";
    case ShardKind::kVocabParallel:
      return "vocab";
  }
  return "?";
}

VocabShard VocabShardOf(int64_t vocab_size, int tp, int tp_rank) {
  VocabShard shard;
  shard.padded_rows = (vocab_size + tp - 1) / tp;
  shard.begin = std::min(vocab_size, tp_rank * shard.padded_rows);
  shard.end = std::min(vocab_size, shard.begin + shard.padded_rows);
  return shard;
}

const PlannedTensor* WeightPlan::Find(absl::string_view name) const {
  for (const PlannedTensor& tensor : tensors) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

uint64_t WeightPlan::RankBytes(DType dtype) const {
  uint64_t bytes = 0;
  for (const PlannedTensor& tensor : tensors) {
    bytes += StorageBytes(dtype, NumElements(tensor.rank_shape));
  }
  return bytes;
}

absl::StatusOr<WeightPlan> PlanWeights(const ModelConfig& config, int tp, int tp_rank,
                                       const WeightPlanOptions& options) {
  TESSERA_RETURN_IF_ERROR(config.CheckTensorParallel(tp));
  if (tp_rank < 0 || tp_rank >= tp) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp_rank ", tp_rank, " is outside [0, ", tp, ")"));
  }
  WeightPlan plan;
  plan.tp = tp;
  plan.tp_rank = tp_rank;
  plan.fused_qkv = options.fused_qkv;
  plan.tied_lm_head = config.tie_word_embeddings;

  const int64_t hidden = config.hidden_size;
  const int64_t head_dim = config.head_dim;
  const int64_t q_size = config.q_size();
  const int64_t kv_size = config.kv_size();
  const int64_t inter = config.intermediate_size;

  AttentionShard& attention = plan.attention;
  attention.num_q_heads = config.num_attention_heads / tp;
  attention.q_head_begin = tp_rank * attention.num_q_heads;
  if (config.num_key_value_heads % tp == 0) {
    attention.num_kv_heads = config.num_key_value_heads / tp;
    attention.kv_head_begin = tp_rank * attention.num_kv_heads;
  } else {
    // tp is a multiple of the KV heads; tp / kv_heads consecutive ranks, whose query heads
    // all fall in one group, share a KV head.
    attention.num_kv_heads = 1;
    attention.kv_head_begin = tp_rank / (tp / config.num_key_value_heads);
    attention.kv_replicated = true;
  }
  const IndexRange q_rows{attention.q_head_begin * head_dim,
                          (attention.q_head_begin + attention.num_q_heads) * head_dim};
  const IndexRange kv_rows{attention.kv_head_begin * head_dim,
                           (attention.kv_head_begin + attention.num_kv_heads) * head_dim};

  plan.vocab = VocabShardOf(config.vocab_size, tp, tp_rank);
  TensorSlice vocab_slice = TensorSlice::Rows(plan.vocab.begin, plan.vocab.end);
  if (plan.vocab.end - plan.vocab.begin != plan.vocab.padded_rows) {
    vocab_slice.padded_size = plan.vocab.padded_rows;
  }
  plan.intermediate_size = inter / tp;
  plan.intermediate_begin = tp_rank * plan.intermediate_size;
  const IndexRange mlp_rows{plan.intermediate_begin,
                            plan.intermediate_begin + plan.intermediate_size};

  PlanBuilder add(plan);
  TESSERA_RETURN_IF_ERROR(add.Add("model.embed_tokens.weight", {config.vocab_size, hidden},
                                  ShardKind::kVocabParallel, vocab_slice));
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    const std::string attn = prefix + "self_attn.";
    const std::string mlp = prefix + "mlp.";
    TESSERA_RETURN_IF_ERROR(add.Replicated(prefix + "input_layernorm.weight", {hidden}));

    if (options.fused_qkv) {
      const TensorSlice qkv{TensorSlice::Kind::kRows,
                            {q_rows,
                             {q_size + kv_rows.begin, q_size + kv_rows.end},
                             {q_size + kv_size + kv_rows.begin, q_size + kv_size + kv_rows.end}},
                            0};
      const int64_t rows = q_size + 2 * kv_size;
      TESSERA_RETURN_IF_ERROR(
          add.Add(attn + "qkv_proj.weight", {rows, hidden}, ShardKind::kColumnParallel, qkv));
      if (config.qkv_bias) {
        TESSERA_RETURN_IF_ERROR(
            add.Add(attn + "qkv_proj.bias", {rows}, ShardKind::kColumnParallel, qkv));
      }
    } else {
      const std::pair<const char*, IndexRange> projections[] = {
          {"q_proj", q_rows}, {"k_proj", kv_rows}, {"v_proj", kv_rows}};
      for (const auto& [projection, rows] : projections) {
        const int64_t out = projection[0] == 'q' ? q_size : kv_size;
        const TensorSlice slice = TensorSlice::Rows(rows.begin, rows.end);
        TESSERA_RETURN_IF_ERROR(add.Add(absl::StrCat(attn, projection, ".weight"), {out, hidden},
                                        ShardKind::kColumnParallel, slice));
        if (config.qkv_bias) {
          TESSERA_RETURN_IF_ERROR(add.Add(absl::StrCat(attn, projection, ".bias"), {out},
                                          ShardKind::kColumnParallel, slice));
        }
      }
    }
    TESSERA_RETURN_IF_ERROR(add.Add(attn + "o_proj.weight", {hidden, q_size},
                                    ShardKind::kRowParallel,
                                    TensorSlice::Columns(q_rows.begin, q_rows.end)));
    if (config.o_proj_bias) {
      TESSERA_RETURN_IF_ERROR(add.Replicated(attn + "o_proj.bias", {hidden}));
    }
    if (config.post_sublayer_norms) {
      TESSERA_RETURN_IF_ERROR(add.Replicated(prefix + "post_self_attn_layernorm.weight", {hidden}));
    }
    TESSERA_RETURN_IF_ERROR(add.Replicated(prefix + "post_attention_layernorm.weight", {hidden}));

    if (config.fused_gate_up) {
      const TensorSlice gate_up{
          TensorSlice::Kind::kRows, {mlp_rows, {inter + mlp_rows.begin, inter + mlp_rows.end}}, 0};
      TESSERA_RETURN_IF_ERROR(add.Add(mlp + "gate_up_proj.weight", {2 * inter, hidden},
                                      ShardKind::kColumnParallel, gate_up));
    } else {
      const TensorSlice slice = TensorSlice::Rows(mlp_rows.begin, mlp_rows.end);
      TESSERA_RETURN_IF_ERROR(
          add.Add(mlp + "gate_proj.weight", {inter, hidden}, ShardKind::kColumnParallel, slice));
      TESSERA_RETURN_IF_ERROR(
          add.Add(mlp + "up_proj.weight", {inter, hidden}, ShardKind::kColumnParallel, slice));
    }
    TESSERA_RETURN_IF_ERROR(add.Add(mlp + "down_proj.weight", {hidden, inter},
                                    ShardKind::kRowParallel,
                                    TensorSlice::Columns(mlp_rows.begin, mlp_rows.end)));
    if (config.post_sublayer_norms) {
      TESSERA_RETURN_IF_ERROR(add.Replicated(prefix + "post_mlp_layernorm.weight", {hidden}));
    }
  }
  TESSERA_RETURN_IF_ERROR(add.Replicated("model.norm.weight", {hidden}));
  if (!config.tie_word_embeddings) {
    TESSERA_RETURN_IF_ERROR(add.Add("lm_head.weight", {config.vocab_size, hidden},
                                    ShardKind::kVocabParallel, vocab_slice));
  }
  return plan;
}

WeightPlanOptions DetectWeightPlanOptions(const Checkpoint& checkpoint) {
  WeightPlanOptions options;
  options.fused_qkv = checkpoint.Contains("model.layers.0.self_attn.qkv_proj.weight");
  return options;
}

int64_t ParameterCount(const WeightPlan& plan) {
  int64_t total = 0;
  for (const PlannedTensor& tensor : plan.tensors) total += NumElements(tensor.shape);
  return total;
}

absl::StatusOr<int64_t> ParameterCount(const ModelConfig& config) {
  TESSERA_ASSIGN_OR_RETURN(WeightPlan plan, PlanWeights(config, 1, 0));
  return ParameterCount(plan);
}

}  // namespace tessera::model
