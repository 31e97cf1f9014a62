#include "runtime/model/transformer.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/safetensors.h"

namespace tessera::model {
namespace {

absl::StatusOr<Tensor> F32(Shape shape) { return Tensor::Empty(DType::kF32, std::move(shape)); }

kernels::RotaryConfig RotaryOf(const ModelConfig& config) {
  kernels::RotaryConfig rotary;
  rotary.rotary_dim = config.rotary_dim;
  rotary.theta = static_cast<float>(config.rope_theta);
  rotary.layout = config.rotary_layout == RotaryLayout::kInterleaved
                      ? kernels::RotaryLayout::kInterleaved
                      : kernels::RotaryLayout::kHalfSplit;
  const RopeScaling& s = config.rope_scaling;
  switch (s.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      rotary.scaling.type = kernels::RotaryScaling::Type::kLinear;
      break;
    case RopeScalingType::kLlama3:
      rotary.scaling.type = kernels::RotaryScaling::Type::kLlama3;
      break;
  }
  rotary.scaling.factor = static_cast<float>(s.factor);
  rotary.scaling.low_freq_factor = static_cast<float>(s.low_freq_factor);
  rotary.scaling.high_freq_factor = static_cast<float>(s.high_freq_factor);
  rotary.scaling.original_max_position = static_cast<int>(s.original_max_position_embeddings);
  return rotary;
}

// Rows [begin, end) of every tensor in `parts`, stacked: the fused [gate; up] matrix.
absl::StatusOr<Tensor> StackRows(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.rank() != 2 || b.rank() != 2 || a.dim(1) != b.dim(1)) {
    return absl::InternalError(
        absl::StrCat("cannot stack ", a.DebugString(), " and ", b.DebugString()));
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor stacked,
                           Tensor::Empty(a.dtype(), {a.dim(0) + b.dim(0), a.dim(1)}));
  Stream cpu = Stream::Cpu();
  TESSERA_ASSIGN_OR_RETURN(Tensor top, stacked.Slice(0, a.dim(0)));
  TESSERA_ASSIGN_OR_RETURN(Tensor bottom, stacked.Slice(a.dim(0), stacked.dim(0)));
  TESSERA_RETURN_IF_ERROR(top.CopyFrom(a, cpu));
  TESSERA_RETURN_IF_ERROR(bottom.CopyFrom(b, cpu));
  return stacked;
}

}  // namespace

ForwardBatch ForwardBatch::SingleSequence(const std::vector<int32_t>& tokens, int begin, int end,
                                          int num_blocks) {
  ForwardBatch batch;
  batch.max_blocks = num_blocks;
  for (int p = begin; p < end; ++p) {
    batch.tokens.push_back(tokens[p]);
    batch.positions.push_back(p);
    batch.slot_mapping.push_back(p);  // blocks in order: slot = position
  }
  batch.query_starts = {0, end - begin};
  batch.context_lens = {end};
  for (int b = 0; b < num_blocks; ++b) batch.block_tables.push_back(b);
  return batch;
}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Load(const std::string& dir,
                                                               comm::Communicator& tp,
                                                               const LoadOptions& options) {
  if (!tp.device().is_cpu()) {
    return absl::UnimplementedError(
        "the transformer's forward runs on the CPU backend; use an MPI communicator");
  }
  TESSERA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  TESSERA_RETURN_IF_ERROR(config.CheckTensorParallel(tp.size()));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  TESSERA_ASSIGN_OR_RETURN(WeightPlan plan, PlanWeights(config, tp.size(), tp.rank(),
                                                        DetectWeightPlanOptions(*checkpoint)));
  // The CPU kernels take f32 or bf16 weights: f16 checkpoints are widened to f32.
  LoadOptions load = options;
  if (!load.dtype.has_value() && config.torch_dtype == DType::kF16) load.dtype = DType::kF32;
  if (load.dtype == DType::kF16) {
    return absl::InvalidArgumentError("the CPU forward takes f32 or bf16 weights, not f16");
  }
  TESSERA_ASSIGN_OR_RETURN(RankWeights weights, LoadRankWeights(*checkpoint, plan, load));
  std::unique_ptr<Transformer> model(new Transformer(std::move(config), std::move(plan), tp));
  TESSERA_RETURN_IF_ERROR(model->TakeWeights(std::move(weights)));
  return model;
}

absl::Status Transformer::TakeWeights(RankWeights weights) {
  weight_bytes_ = weights.bytes;
  auto take = [&](const std::string& name) -> absl::StatusOr<Tensor> {
    auto it = weights.tensors.find(name);
    if (it == weights.tensors.end()) {
      return absl::InternalError(absl::StrCat("the weight plan loaded no ", name));
    }
    return it->second;
  };
  auto take_optional = [&](const std::string& name) {
    auto it = weights.tensors.find(name);
    return it == weights.tensors.end() ? Tensor() : it->second;
  };
  TESSERA_ASSIGN_OR_RETURN(embed_, take("model.embed_tokens.weight"));
  if (plan_.tied_lm_head) {
    lm_head_ = embed_;
  } else {
    TESSERA_ASSIGN_OR_RETURN(lm_head_, take("lm_head.weight"));
  }
  TESSERA_ASSIGN_OR_RETURN(final_norm_, take("model.norm.weight"));
  const AttentionShard& shard = plan_.attention;
  int64_t q_rows = int64_t{shard.num_q_heads} * config_.head_dim;
  int64_t kv_rows = int64_t{shard.num_kv_heads} * config_.head_dim;
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    std::string prefix = absl::StrCat("model.layers.", l, ".");
    Layer layer;
    TESSERA_ASSIGN_OR_RETURN(layer.input_norm, take(prefix + "input_layernorm.weight"));
    TESSERA_ASSIGN_OR_RETURN(layer.post_attention_norm,
                             take(prefix + "post_attention_layernorm.weight"));
    layer.post_self_attn_norm = take_optional(prefix + "post_self_attn_layernorm.weight");
    layer.post_mlp_norm = take_optional(prefix + "post_mlp_layernorm.weight");
    if (plan_.fused_qkv) {
      TESSERA_ASSIGN_OR_RETURN(Tensor qkv, take(prefix + "self_attn.qkv_proj.weight"));
      TESSERA_ASSIGN_OR_RETURN(layer.q, qkv.Slice(0, q_rows));
      TESSERA_ASSIGN_OR_RETURN(layer.k, qkv.Slice(q_rows, q_rows + kv_rows));
      TESSERA_ASSIGN_OR_RETURN(layer.v, qkv.Slice(q_rows + kv_rows, q_rows + 2 * kv_rows));
      Tensor bias = take_optional(prefix + "self_attn.qkv_proj.bias");
      if (bias.defined()) {
        TESSERA_ASSIGN_OR_RETURN(layer.q_bias, bias.Slice(0, q_rows));
        TESSERA_ASSIGN_OR_RETURN(layer.k_bias, bias.Slice(q_rows, q_rows + kv_rows));
        TESSERA_ASSIGN_OR_RETURN(layer.v_bias, bias.Slice(q_rows + kv_rows, q_rows + 2 * kv_rows));
      }
    } else {
      TESSERA_ASSIGN_OR_RETURN(layer.q, take(prefix + "self_attn.q_proj.weight"));
      TESSERA_ASSIGN_OR_RETURN(layer.k, take(prefix + "self_attn.k_proj.weight"));
      TESSERA_ASSIGN_OR_RETURN(layer.v, take(prefix + "self_attn.v_proj.weight"));
      layer.q_bias = take_optional(prefix + "self_attn.q_proj.bias");
      layer.k_bias = take_optional(prefix + "self_attn.k_proj.bias");
      layer.v_bias = take_optional(prefix + "self_attn.v_proj.bias");
    }
    TESSERA_ASSIGN_OR_RETURN(layer.o, take(prefix + "self_attn.o_proj.weight"));
    layer.o_bias = take_optional(prefix + "self_attn.o_proj.bias");
    if (config_.fused_gate_up) {
      TESSERA_ASSIGN_OR_RETURN(layer.gate_up, take(prefix + "mlp.gate_up_proj.weight"));
    } else {
      TESSERA_ASSIGN_OR_RETURN(Tensor gate, take(prefix + "mlp.gate_proj.weight"));
      TESSERA_ASSIGN_OR_RETURN(Tensor up, take(prefix + "mlp.up_proj.weight"));
      TESSERA_ASSIGN_OR_RETURN(layer.gate_up, StackRows(gate, up));
    }
    TESSERA_ASSIGN_OR_RETURN(layer.down, take(prefix + "mlp.down_proj.weight"));
    layers_.push_back(std::move(layer));
  }
  rotary_ = RotaryOf(config_);
  inv_freq_ = kernels::RotaryInverseFrequencies(rotary_);
  return absl::OkStatus();
}

absl::StatusOr<KvCache> Transformer::AllocateKvCache(int num_blocks, int block_size) const {
  if (num_blocks < 1 || block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a KV cache needs at least one block of one token, not ", num_blocks, " x ", block_size));
  }
  KvCache cache;
  cache.num_blocks = num_blocks;
  cache.block_size = block_size;
  Shape shape{num_blocks, block_size, plan_.attention.num_kv_heads, config_.head_dim};
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    // Zeroed, which also makes the whole cache resident now rather than page by page in
    // the middle of serving.
    TESSERA_ASSIGN_OR_RETURN(Tensor k, Tensor::Zeros(DType::kF32, shape));
    TESSERA_ASSIGN_OR_RETURN(Tensor v, Tensor::Zeros(DType::kF32, shape));
    cache.k.push_back(std::move(k));
    cache.v.push_back(std::move(v));
  }
  return cache;
}

int64_t Transformer::KvBytesPerToken() const {
  return 2 * int64_t{config_.num_hidden_layers} * plan_.attention.num_kv_heads * config_.head_dim *
         static_cast<int64_t>(sizeof(float));
}

absl::Status Transformer::SumOverGroup(Tensor& partial) {
  if (tp_.size() == 1) return absl::OkStatus();
  Stream cpu = Stream::Cpu();
  return tp_.AllReduce(partial, comm::ReduceOp::kSum, cpu);
}

absl::Status Transformer::Attention(int layer, const Tensor& normed, const ForwardBatch& batch,
                                    const Tensor& positions, KvCache& cache, Tensor& out) {
  const Layer& w = layers_[layer];
  int64_t tokens = normed.dim(0);
  int64_t dim = config_.head_dim;
  int64_t q_heads = plan_.attention.num_q_heads, kv_heads = plan_.attention.num_kv_heads;
  TESSERA_ASSIGN_OR_RETURN(Tensor q, F32({tokens, q_heads * dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor k, F32({tokens, kv_heads * dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor v, F32({tokens, kv_heads * dim}));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(normed, w.q, w.q_bias, q));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(normed, w.k, w.k_bias, k));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(normed, w.v, w.v_bias, v));
  TESSERA_ASSIGN_OR_RETURN(Tensor q_heads_view, q.Reshape({tokens, q_heads, dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor k_heads_view, k.Reshape({tokens, kv_heads, dim}));
  TESSERA_ASSIGN_OR_RETURN(Tensor v_heads_view, v.Reshape({tokens, kv_heads, dim}));
  TESSERA_RETURN_IF_ERROR(kernels::ApplyRotary(q_heads_view, positions, inv_freq_, rotary_));
  TESSERA_RETURN_IF_ERROR(kernels::ApplyRotary(k_heads_view, positions, inv_freq_, rotary_));

  int64_t sequences = batch.num_sequences();
  Tensor slots =
      Tensor::Wrap(const_cast<int64_t*>(batch.slot_mapping.data()), DType::kI64, {tokens});
  TESSERA_RETURN_IF_ERROR(
      kernels::WriteKvCache(k_heads_view, v_heads_view, slots, cache.k[layer], cache.v[layer]));
  Tensor starts =
      Tensor::Wrap(const_cast<int32_t*>(batch.query_starts.data()), DType::kI32, {sequences + 1});
  Tensor lens =
      Tensor::Wrap(const_cast<int32_t*>(batch.context_lens.data()), DType::kI32, {sequences});
  Tensor tables = Tensor::Wrap(const_cast<int32_t*>(batch.block_tables.data()), DType::kI32,
                               {sequences, batch.max_blocks});
  kernels::AttentionParams params;
  params.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  params.sliding_window = static_cast<int>(config_.SlidingWindowFor(layer));
  TESSERA_ASSIGN_OR_RETURN(Tensor out_heads, out.Reshape({tokens, q_heads, dim}));
  return kernels::PagedAttention(q_heads_view, cache.k[layer], cache.v[layer], starts, lens, tables,
                                 params, out_heads);
}

absl::StatusOr<Tensor> Transformer::Forward(const ForwardBatch& batch, KvCache& cache,
                                            bool all_positions) {
  int64_t tokens = static_cast<int64_t>(batch.tokens.size());
  int64_t sequences = batch.num_sequences();
  if (tokens == 0 || sequences == 0 || batch.positions.size() != batch.tokens.size() ||
      batch.slot_mapping.size() != batch.tokens.size() ||
      batch.query_starts.size() != batch.context_lens.size() + 1 ||
      batch.block_tables.size() != static_cast<size_t>(sequences * batch.max_blocks)) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: inconsistent batch of ", tokens,
                                                   " tokens and ", sequences, " sequences"));
  }
  if (static_cast<int>(cache.k.size()) != config_.num_hidden_layers) {
    return absl::InvalidArgumentError("Forward: the KV cache was not made for this model");
  }
  int64_t hidden = config_.hidden_size;
  float eps = static_cast<float>(config_.rms_norm_eps);
  Tensor ids = Tensor::Wrap(const_cast<int32_t*>(batch.tokens.data()), DType::kI32, {tokens});
  Tensor positions =
      Tensor::Wrap(const_cast<int32_t*>(batch.positions.data()), DType::kI32, {tokens});

  // The residual stream, and the output of the previous sub-layer still to be added to it.
  TESSERA_ASSIGN_OR_RETURN(Tensor residual, F32({tokens, hidden}));
  TESSERA_RETURN_IF_ERROR(
      kernels::EmbeddingLookup(ids, embed_, plan_.vocab.begin, config_.vocab_size, residual));
  TESSERA_RETURN_IF_ERROR(SumOverGroup(residual));
  TESSERA_ASSIGN_OR_RETURN(Tensor pending, F32({tokens, hidden}));
  TESSERA_ASSIGN_OR_RETURN(Tensor normed, F32({tokens, hidden}));
  int64_t q_rows = int64_t{plan_.attention.num_q_heads} * config_.head_dim;
  TESSERA_ASSIGN_OR_RETURN(Tensor attention, F32({tokens, q_rows}));
  TESSERA_ASSIGN_OR_RETURN(Tensor gate_up, F32({tokens, 2 * plan_.intermediate_size}));
  TESSERA_ASSIGN_OR_RETURN(Tensor activated, F32({tokens, plan_.intermediate_size}));

  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const Layer& w = layers_[l];
    if (l == 0) {
      TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(residual, w.input_norm, eps, normed));
    } else {
      TESSERA_RETURN_IF_ERROR(kernels::AddRmsNorm(residual, pending, w.input_norm, eps, normed));
    }
    TESSERA_RETURN_IF_ERROR(Attention(l, normed, batch, positions, cache, attention));
    TESSERA_RETURN_IF_ERROR(kernels::Linear(attention, w.o, Tensor(), pending));
    TESSERA_RETURN_IF_ERROR(SumOverGroup(pending));
    if (w.o_bias.defined()) {  // replicated: added once, after the sum
      for (int64_t t = 0; t < tokens; ++t) {
        float* row = pending.data<float>() + t * hidden;
        for (int64_t i = 0; i < hidden; ++i) {
          row[i] += w.o_bias.dtype() == DType::kF32 ? w.o_bias.data<float>()[i]
                                                    : w.o_bias.data<BFloat16>()[i].ToFloat();
        }
      }
    }
    if (w.post_self_attn_norm.defined()) {
      TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(pending, w.post_self_attn_norm, eps, pending));
    }
    TESSERA_RETURN_IF_ERROR(
        kernels::AddRmsNorm(residual, pending, w.post_attention_norm, eps, normed));
    TESSERA_RETURN_IF_ERROR(kernels::Linear(normed, w.gate_up, Tensor(), gate_up));
    TESSERA_RETURN_IF_ERROR(kernels::SiluMul(gate_up, activated));
    TESSERA_RETURN_IF_ERROR(kernels::Linear(activated, w.down, Tensor(), pending));
    TESSERA_RETURN_IF_ERROR(SumOverGroup(pending));
    if (w.post_mlp_norm.defined()) {
      TESSERA_RETURN_IF_ERROR(kernels::RmsNorm(pending, w.post_mlp_norm, eps, pending));
    }
  }
  TESSERA_RETURN_IF_ERROR(kernels::AddRmsNorm(residual, pending, final_norm_, eps, normed));

  // The rows whose logits are wanted: every token, or each sequence's last.
  Tensor rows = normed;
  if (!all_positions) {
    TESSERA_ASSIGN_OR_RETURN(rows, F32({sequences, hidden}));
    for (int64_t s = 0; s < sequences; ++s) {
      int64_t last = batch.query_starts[s + 1] - 1;
      std::copy_n(normed.data<float>() + last * hidden, hidden, rows.data<float>() + s * hidden);
    }
  }
  int64_t shard = plan_.vocab.padded_rows;
  TESSERA_ASSIGN_OR_RETURN(Tensor logits, F32({rows.dim(0), shard}));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(rows, lm_head_, Tensor(), logits));
  int64_t valid = plan_.vocab.end - plan_.vocab.begin;
  for (int64_t r = 0; r < rows.dim(0); ++r) {
    float* row = logits.data<float>() + r * shard;
    std::fill(row + valid, row + shard, -std::numeric_limits<float>::infinity());
  }
  return logits;
}

absl::StatusOr<Tensor> Transformer::GatherLogits(const Tensor& shard) {
  int64_t rows = shard.dim(0), width = shard.dim(1), vocab = config_.vocab_size;
  Tensor all = shard;
  if (tp_.size() > 1) {
    TESSERA_ASSIGN_OR_RETURN(all, F32({tp_.size() * rows * width}));
    Stream cpu = Stream::Cpu();
    TESSERA_RETURN_IF_ERROR(tp_.AllGather(shard.Flatten(), all, cpu));
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor full, F32({rows, vocab}));
  for (int r = 0; r < tp_.size(); ++r) {
    VocabShard part = VocabShardOf(vocab, tp_.size(), r);
    for (int64_t i = 0; i < rows; ++i) {
      const float* from = all.data<float>() + (r * rows + i) * width;
      std::copy_n(from, part.end - part.begin, full.data<float>() + i * vocab + part.begin);
    }
  }
  return full;
}

absl::StatusOr<std::vector<int64_t>> Transformer::NextTokens(const Tensor& shard,
                                                             const kernels::SamplingParams& params,
                                                             const std::vector<uint64_t>& draws) {
  std::vector<RowSampling> rows(shard.dim(0));
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i].params = params;
    rows[i].draw = i < draws.size() ? draws[i] : 0;
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<SampledToken> sampled, SampleRows(shard, rows));
  std::vector<int64_t> next(sampled.size());
  for (size_t i = 0; i < sampled.size(); ++i) next[i] = sampled[i].token;
  return next;
}

namespace {

// log(sum(exp(row))) over a full row, or over a shard (combined across shards by
// CombineLogSumExp).
double LogSumExp(const float* row, int64_t n) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max(max, row[i]);
  if (max == -std::numeric_limits<float>::infinity()) return max;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(row[i]) - max);
  return max + std::log(sum);
}

double CombineLogSumExp(const std::vector<double>& parts) {
  double max = -std::numeric_limits<double>::infinity();
  for (double p : parts) max = std::max(max, p);
  if (max == -std::numeric_limits<double>::infinity()) return max;
  double sum = 0;
  for (double p : parts) sum += std::exp(p - max);
  return max + std::log(sum);
}

}  // namespace

absl::StatusOr<std::vector<Transformer::SampledToken>> Transformer::SampleRows(
    const Tensor& shard, const std::vector<RowSampling>& rows) {
  int64_t count = shard.dim(0);
  if (static_cast<int64_t>(rows.size()) != count) {
    return absl::InvalidArgumentError(absl::StrCat("SampleRows: ", rows.size(),
                                                   " sampling choices for ", count, " rows"));
  }
  bool any_sampled = false, any_logprob = false;
  for (const RowSampling& row : rows) {
    TESSERA_RETURN_IF_ERROR(kernels::ValidateSamplingParams(row.params));
    any_sampled |= row.params.temperature > 0.0f;
    any_logprob |= row.logprob;
  }
  std::vector<SampledToken> out(count);
  int64_t vocab = config_.vocab_size;
  if (any_sampled) {
    // Sampling needs the whole row; greedy rows take the full row's argmax, which is the
    // shard-wise choice below (lowest index on ties).
    TESSERA_ASSIGN_OR_RETURN(Tensor full, GatherLogits(shard));
    for (int64_t i = 0; i < count; ++i) {
      const float* row = full.data<float>() + i * vocab;
      const RowSampling& choice = rows[i];
      if (choice.params.temperature > 0.0f) {
        out[i].token = kernels::SampleToken(absl::Span<const float>(row, vocab), choice.params,
                                            choice.draw);
      } else {
        std::vector<kernels::ArgmaxResult> best;
        Tensor view = Tensor::Wrap(const_cast<float*>(row), DType::kF32, {1, vocab});
        TESSERA_RETURN_IF_ERROR(kernels::ShardArgmax(view, 0, &best));
        out[i].token = best[0].index;
      }
      if (choice.logprob) {
        out[i].logprob = static_cast<float>(row[out[i].token] - LogSumExp(row, vocab));
      }
    }
    return out;
  }
  std::vector<kernels::ArgmaxResult> local;
  TESSERA_RETURN_IF_ERROR(kernels::ShardArgmax(shard, plan_.vocab.begin, &local));
  // Each row's (value, index[, log-sum-exp]) from every rank; floats travel as their bits.
  const int64_t width = any_logprob ? 3 : 2;
  TESSERA_ASSIGN_OR_RETURN(Tensor mine, Tensor::Empty(DType::kI64, {count * width}));
  int64_t valid = plan_.vocab.end - plan_.vocab.begin;
  for (int64_t i = 0; i < count; ++i) {
    int64_t* entry = mine.data<int64_t>() + width * i;
    entry[0] = std::bit_cast<int32_t>(local[i].value);
    entry[1] = local[i].index;
    if (any_logprob) {
      entry[2] = std::bit_cast<int64_t>(
          rows[i].logprob ? LogSumExp(shard.data<float>() + i * shard.dim(1), valid) : 0.0);
    }
  }
  Tensor all = mine;
  if (tp_.size() > 1) {
    TESSERA_ASSIGN_OR_RETURN(all, Tensor::Empty(DType::kI64, {tp_.size() * count * width}));
    Stream cpu = Stream::Cpu();
    TESSERA_RETURN_IF_ERROR(tp_.AllGather(mine, all, cpu));
  }
  for (int64_t i = 0; i < count; ++i) {
    kernels::ArgmaxResult best;
    std::vector<double> sums;
    for (int r = 0; r < tp_.size(); ++r) {
      const int64_t* entry = all.data<int64_t>() + (r * count + i) * width;
      best = kernels::CombineArgmax(
          best, {std::bit_cast<float>(static_cast<int32_t>(entry[0])), entry[1]});
      if (any_logprob) sums.push_back(std::bit_cast<double>(entry[2]));
    }
    out[i].token = best.index;
    if (rows[i].logprob) out[i].logprob = static_cast<float>(best.value - CombineLogSumExp(sums));
  }
  return out;
}

}  // namespace tessera::model
