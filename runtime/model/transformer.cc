#include "runtime/model/transformer.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_cache_int8.h"
#include "kernels/cpu/linear.h"
#include "kernels/ops/linear.h"
#include "kernels/ops/norm_activation.h"
#include "kernels/ops/rotary.h"
#include "kernels/ops/row_ops.h"
#include "runtime/core/device_memory.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/layer_weights.h"
#include "runtime/model/memory_plan.h"
#include "runtime/model/rotary_config.h"
#include "runtime/model/safetensors.h"

namespace tessera::model {
namespace {

namespace ops = kernels::ops;

absl::StatusOr<Tensor> F32(Shape shape) { return Tensor::Empty(DType::kF32, std::move(shape)); }

// The first `count` elements of `buffer` (1-D, `dtype`, on `device`), which is replaced by a
// larger one first when it holds fewer. Growth rounds up to a multiple of `granule` elements so
// that batches of slightly different sizes reuse one buffer. The old buffer's last use must
// have finished (every Forward ends with its stream finished).
absl::StatusOr<Tensor> GrowDevice(Tensor& buffer, DType dtype, Device device, int64_t count,
                                  int64_t granule) {
  if (!buffer.defined() || buffer.numel() < count) {
    int64_t size = (count + granule - 1) / granule * granule;
    buffer = Tensor();  // free the old buffer before allocating its successor
    TESSERA_ASSIGN_OR_RETURN(buffer, Tensor::Empty(dtype, {std::max<int64_t>(size, 1)}, device));
  }
  return buffer.Slice(0, count);
}

// A (rows, cols) f32 view of `buffer` grown on `device` by GrowDevice.
absl::StatusOr<Tensor> DeviceRows(Tensor& buffer, Device device, int64_t rows, int64_t cols) {
  TESSERA_ASSIGN_OR_RETURN(Tensor flat,
                           GrowDevice(buffer, DType::kF32, device, rows * cols, 64 * cols));
  return flat.Reshape({rows, cols});
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
  const Device device = tp.device();
  if (!device.is_cpu() && !BuiltWithCuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the communicator ", tp.name(), " is on ", device.ToString(),
                     " but this build has no CUDA support: the transformer runs on the CPU only"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, Stream::Create(device));
  TESSERA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  TESSERA_RETURN_IF_ERROR(config.CheckTensorParallel(tp.size()));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  TESSERA_ASSIGN_OR_RETURN(WeightPlan plan, PlanWeights(config, tp.size(), tp.rank(),
                                                        DetectWeightPlanOptions(*checkpoint)));
  LoadOptions load = options;
  if (load.kv_cache_dtype.has_value() && *load.kv_cache_dtype != DType::kI8) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-dtype ", NameOf(*load.kv_cache_dtype), ": expected auto or int8"));
  }
  if (load.quantize.has_value()) {
    TESSERA_RETURN_IF_ERROR(CheckQuantizationFits(config, plan, *load.quantize));
  }
  if (device.is_cpu()) {
    // The CPU kernels take f32 or bf16 weights: f16 checkpoints are widened to f32. The CUDA
    // kernels take all three as stored.
    if (!load.dtype.has_value() && config.torch_dtype == DType::kF16) load.dtype = DType::kF32;
    if (load.dtype == DType::kF16) {
      return absl::InvalidArgumentError("the CPU forward takes f32 or bf16 weights, not f16");
    }
  }
  TESSERA_ASSIGN_OR_RETURN(RankWeights weights, LoadRankWeights(*checkpoint, plan, load));
  std::unique_ptr<Transformer> model(
      new Transformer(std::move(config), std::move(plan), tp, std::move(stream)));
  model->quantize_ = load.quantize;
  TESSERA_RETURN_IF_ERROR(model->TakeWeights(std::move(weights)));
  TESSERA_RETURN_IF_ERROR(model->MoveWeightsToDevice());
  TESSERA_RETURN_IF_ERROR(model->TakeProjections());
  if (load.kv_cache_dtype.has_value()) model->kv_dtype_ = *load.kv_cache_dtype;
  model->weight_bytes_ = model->CountWeightBytes();
  return model;
}

absl::Status Transformer::TakeWeights(RankWeights weights) {
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
  auto find = [&](const std::string& name) {
    auto stored = weights.stored_groups.find(name);
    return stored == weights.stored_groups.end() ? LoadedWeight{take_optional(name), nullptr}
                                                 : LoadedWeight{Tensor(), stored->second};
  };
  auto rows = [](const LoadedWeight& w, int64_t begin,
                 int64_t end) -> absl::StatusOr<LoadedWeight> {
    if (w.groups == nullptr) {
      TESSERA_ASSIGN_OR_RETURN(Tensor part, w.tensor.Slice(begin, end));
      return LoadedWeight{std::move(part), nullptr};
    }
    TESSERA_ASSIGN_OR_RETURN(StoredGroups part, StoredGroupRows(*w.groups, begin, end));
    return LoadedWeight{Tensor(), std::make_shared<const StoredGroups>(std::move(part))};
  };
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    TESSERA_ASSIGN_OR_RETURN(LayerSlots<LoadedWeight> loaded,
                             AssembleLayer<LoadedWeight>(config_, plan_, l, find, rows));
    if (!loaded.gate_up.defined()) {  // stored apart: one [gate; up] matrix for one product
      TESSERA_ASSIGN_OR_RETURN(loaded.gate_up, StackGateUp(loaded.gate, loaded.up));
      loaded.gate = loaded.up = LoadedWeight();
    }
    layers_.push_back(
        MapLayerSlots<Tensor>(loaded, [](const LoadedWeight& w) { return w.tensor; }));
    stored_groups_.push_back({loaded.q.groups, loaded.k.groups, loaded.v.groups, loaded.o.groups,
                              loaded.gate_up.groups, loaded.down.groups});
  }
  rotary_ = RotaryConfigOf(config_);
  inv_freq_ = kernels::RotaryInverseFrequencies(rotary_);
  kv_dtype_ = layers_.empty() || layers_[0].q.dtype() != DType::kBF16 ? DType::kF32 : DType::kBF16;
  return absl::OkStatus();
}

absl::StatusOr<Transformer::LoadedWeight> Transformer::StackGateUp(const LoadedWeight& gate,
                                                                   const LoadedWeight& up) {
  if (gate.groups != nullptr && up.groups != nullptr) {
    absl::StatusOr<StoredGroups> stacked = StackStoredGroups(*gate.groups, *up.groups);
    if (stacked.ok()) {
      return LoadedWeight{Tensor(), std::make_shared<const StoredGroups>(*std::move(stacked))};
    }
  }
  // Tensors, or groups of two kinds (then both are quantized to --quantize stored's int8
  // groups).
  auto tensor_of = [&](const LoadedWeight& w, DType dtype) -> absl::StatusOr<Tensor> {
    if (w.groups == nullptr) return w.tensor;
    return DequantizeStoredGroups(*w.groups, dtype);
  };
  const DType dtype = gate.groups == nullptr ? gate.tensor.dtype()
                      : up.groups == nullptr ? up.tensor.dtype()
                                             : DType::kF32;
  TESSERA_ASSIGN_OR_RETURN(Tensor gate_tensor, tensor_of(gate, dtype));
  TESSERA_ASSIGN_OR_RETURN(Tensor up_tensor, tensor_of(up, dtype));
  TESSERA_ASSIGN_OR_RETURN(Tensor stacked, StackRows(gate_tensor, up_tensor));
  return LoadedWeight{std::move(stacked), nullptr};
}

absl::Status Transformer::TakeProjections() {
  // Quantized on the host (MoveWeightsToDevice left them there), then moved; on a GPU the
  // activations stay f32 (kernels/cuda/quantized_linear.h).
  auto quantized_for_device =
      [&](const kernels::QuantizedWeight& host) -> absl::StatusOr<kernels::QuantizedWeight> {
    if (device_.is_cpu()) return kernels::WithActivations(host, quantize_->activations);
    TESSERA_ASSIGN_OR_RETURN(kernels::QuantizedWeight moved,
                             kernels::QuantizedWeightTo(host, device_, *stream_));
    TESSERA_RETURN_IF_ERROR(stream_->Synchronize());  // the host copy goes on return
    return moved;
  };
  auto take = [&](Tensor& from, std::shared_ptr<const StoredGroups>& groups,
                  ops::ProjectionWeight& to) -> absl::Status {
    if (groups != nullptr) {  // --quantize stored
      TESSERA_ASSIGN_OR_RETURN(const kernels::QuantizedWeight stored, ToQuantizedWeight(*groups));
      TESSERA_ASSIGN_OR_RETURN(to.quantized, quantized_for_device(stored));
      groups = nullptr;
    } else if (quantize_.has_value()) {
      TESSERA_ASSIGN_OR_RETURN(
          const kernels::QuantizedWeight quantized,
          kernels::QuantizeWeight(from, quantize_->quant, quantize_->GroupFor(from.dim(1))));
      TESSERA_ASSIGN_OR_RETURN(to.quantized, quantized_for_device(quantized));
    } else if (!device_.is_cpu()) {
      to.dense = std::move(from);
    } else {
      TESSERA_ASSIGN_OR_RETURN(to.dense, kernels::PackLinearWeight(from));
    }
    from = Tensor();
    return absl::OkStatus();
  };
  projections_.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& w = layers_[l];
    StoredLayerGroups& g = stored_groups_[l];
    LayerProjections& p = projections_[l];
    TESSERA_RETURN_IF_ERROR(take(w.q, g.q, p.q));
    TESSERA_RETURN_IF_ERROR(take(w.k, g.k, p.k));
    TESSERA_RETURN_IF_ERROR(take(w.v, g.v, p.v));
    TESSERA_RETURN_IF_ERROR(take(w.o, g.o, p.o));
    TESSERA_RETURN_IF_ERROR(take(w.gate_up, g.gate_up, p.gate_up));
    TESSERA_RETURN_IF_ERROR(take(w.down, g.down, p.down));
  }
  stored_groups_.clear();
  return absl::OkStatus();
}

uint64_t Transformer::decode_weight_bytes() const {
  const bool head_is_embedding = plan_.tied_lm_head && !device_.is_cpu();
  return head_is_embedding ? weight_bytes_ : weight_bytes_ - embed_.nbytes();
}

uint64_t Transformer::CountWeightBytes() const {
  uint64_t bytes = embed_.nbytes() + final_norm_.nbytes();
  // Tied, the head is the embedding itself, except on the CPU where it is a packed copy.
  if (!plan_.tied_lm_head || device_.is_cpu()) bytes += lm_head_.nbytes();
  for (const Layer& w : layers_) {
    for (const Tensor* t : {&w.input_norm, &w.post_attention_norm, &w.post_self_attn_norm,
                            &w.post_mlp_norm, &w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias}) {
      if (t->defined()) bytes += t->nbytes();
    }
  }
  for (const LayerProjections& p : projections_) {
    for (const ops::ProjectionWeight* w : {&p.q, &p.k, &p.v, &p.o, &p.gate_up, &p.down}) {
      bytes += w->nbytes();
    }
  }
  return bytes;
}

absl::Status Transformer::MoveWeightsToDevice() {
  if (device_.is_cpu()) {
    // The CPU head is packed for Linear; tied, it is a packed copy and the embedding lookup
    // still reads rows of embed_.
    TESSERA_ASSIGN_OR_RETURN(lm_head_, kernels::PackLinearWeight(lm_head_));
    return absl::OkStatus();
  }
  Stream& stream = *stream_;
  auto move = [&](Tensor& t) -> absl::Status {
    if (!t.defined()) return absl::OkStatus();
    TESSERA_ASSIGN_OR_RETURN(t, t.To(device_, stream));
    return absl::OkStatus();
  };
  TESSERA_RETURN_IF_ERROR(move(embed_));
  if (plan_.tied_lm_head) {
    lm_head_ = embed_;
  } else {
    TESSERA_RETURN_IF_ERROR(move(lm_head_));
  }
  TESSERA_RETURN_IF_ERROR(move(final_norm_));
  for (Layer& layer : layers_) {
    for (Tensor* t :
         {&layer.input_norm, &layer.post_attention_norm, &layer.post_self_attn_norm,
          &layer.post_mlp_norm, &layer.q_bias, &layer.k_bias, &layer.v_bias, &layer.o_bias}) {
      TESSERA_RETURN_IF_ERROR(move(*t));
    }
    // Quantized projections are quantized on the host first (TakeProjections).
    if (quantize_.has_value()) continue;
    for (Tensor* t : {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate_up, &layer.down}) {
      TESSERA_RETURN_IF_ERROR(move(*t));
    }
  }
  // The host copies go when the caller's RankWeights does: the copies must be done by then.
  return stream.Synchronize();
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
  if (kv_dtype_ == DType::kI8) {
    const Shape scales = kernels::KvScaleShape(num_blocks, block_size, shape[2]);
    for (int l = 0; l < config_.num_hidden_layers; ++l) {
      TESSERA_ASSIGN_OR_RETURN(Tensor k_scale, Tensor::Zeros(DType::kF32, scales));
      TESSERA_ASSIGN_OR_RETURN(Tensor v_scale, Tensor::Zeros(DType::kF32, scales));
      TESSERA_ASSIGN_OR_RETURN(k_scale, k_scale.To(device_, *stream_));
      TESSERA_ASSIGN_OR_RETURN(v_scale, v_scale.To(device_, *stream_));
      cache.k_scale.push_back(std::move(k_scale));
      cache.v_scale.push_back(std::move(v_scale));
    }
  }
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    // Zeroed, which also makes the whole cache resident now rather than page by page in
    // the middle of serving.
    if (device_.is_cpu()) {
      TESSERA_ASSIGN_OR_RETURN(
          Tensor k,
          Tensor::Zeros(kv_dtype_, kernels::KeyCacheShape(shape[0], shape[1], shape[2], shape[3])));
      TESSERA_ASSIGN_OR_RETURN(Tensor v, Tensor::Zeros(kv_dtype_, shape));
      cache.k.push_back(std::move(k));
      cache.v.push_back(std::move(v));
      continue;
    }
    // On the GPU the zeroing is ordered on the model's stream (Tensor::Zeros would use the
    // legacy default stream, which the model's non-blocking stream does not wait for).
    TESSERA_ASSIGN_OR_RETURN(Tensor k, Tensor::Empty(kv_dtype_, shape, device_));
    TESSERA_ASSIGN_OR_RETURN(Tensor v, Tensor::Empty(kv_dtype_, shape, device_));
    TESSERA_RETURN_IF_ERROR(ZeroBytes(k.data(), device_, k.nbytes(), *stream_));
    TESSERA_RETURN_IF_ERROR(ZeroBytes(v.data(), device_, v.nbytes(), *stream_));
    cache.k.push_back(std::move(k));
    cache.v.push_back(std::move(v));
  }
  TESSERA_RETURN_IF_ERROR(stream_->Synchronize());
  return cache;
}

int64_t Transformer::KvBytesPerToken() const {
  return model::KvBytesPerToken(config_, plan_.attention.num_kv_heads, kv_dtype_);
}

absl::Status Transformer::SumOverGroup(Tensor& partial) {
  if (tp_.size() == 1) return absl::OkStatus();
  return tp_.AllReduce(partial, comm::ReduceOp::kSum, *stream_);
}

absl::Status Transformer::AllGatherHost(const Tensor& in, Tensor& out) {
  if (device_.is_cpu()) {
    Stream cpu = Stream::Cpu();
    return tp_.AllGather(in, out, cpu);
  }
  // NCCL moves device memory: through the GPU and back, on the model's stream.
  Stream& stream = *stream_;
  TESSERA_ASSIGN_OR_RETURN(Tensor device_in, in.To(device_, stream));
  TESSERA_ASSIGN_OR_RETURN(Tensor device_out, Tensor::Empty(out.dtype(), out.shape(), device_));
  TESSERA_RETURN_IF_ERROR(tp_.AllGather(device_in, device_out, stream));
  TESSERA_RETURN_IF_ERROR(out.CopyFrom(device_out, stream));
  return stream.Synchronize();
}

absl::Status Transformer::CheckBatchValues(const ForwardBatch& batch, const KvCache& cache,
                                           bool all_positions) const {
  // The messages are those of the CPU kernels, so that a bad batch reads the same anywhere.
  const int64_t tokens = static_cast<int64_t>(batch.tokens.size());
  const int64_t sequences = batch.num_sequences();
  for (int64_t t = 0; t < tokens; ++t) {
    if (batch.tokens[t] < 0 || batch.tokens[t] >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("EmbeddingLookup: token id ", batch.tokens[t], " at position ", t,
                       " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  const int64_t blocks = cache.num_blocks, block_size = cache.block_size;
  for (int64_t t = 0; t < tokens; ++t) {
    if (batch.slot_mapping[t] >= blocks * block_size) {
      return absl::OutOfRangeError(absl::StrCat("WriteKvCache: slot ", batch.slot_mapping[t],
                                                " of token ", t, " is beyond the cache's ",
                                                blocks * block_size, " slots"));
    }
  }
  const std::vector<int32_t>& starts = batch.query_starts;
  if (starts[0] != 0 || starts[sequences] != tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PagedAttention: query_starts must run from 0 to the ", tokens, " query rows"));
  }
  const int64_t max_blocks = batch.max_blocks;
  for (int64_t s = 0; s < sequences; ++s) {
    int64_t new_tokens = starts[s + 1] - starts[s];
    int64_t context = batch.context_lens[s];
    if (new_tokens < 0 || new_tokens > context || context > max_blocks * block_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PagedAttention: sequence ", s, " has ", new_tokens, " queries over a context of ",
          context, " tokens and room for ", max_blocks * block_size));
    }
    const int32_t* table = batch.block_tables.data() + s * max_blocks;
    for (int64_t b = 0; b < (context + block_size - 1) / block_size; ++b) {
      if (table[b] < 0 || table[b] >= blocks) {
        return absl::OutOfRangeError(absl::StrCat("PagedAttention: sequence ", s, " block ", b,
                                                  " is ", table[b], ", not one of the ", blocks,
                                                  " cache blocks"));
      }
    }
    if (!all_positions && starts[s + 1] < 1) {
      return absl::InvalidArgumentError(absl::StrCat("GatherRows: rows[", s,
                                                     "] = ", starts[s + 1] - 1, " is outside the ",
                                                     tokens, " rows of x"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Transformer::BatchTensors> Transformer::StageBatch(
    const ForwardBatch& batch, const std::vector<int32_t>& last_rows) {
  const int64_t tokens = static_cast<int64_t>(batch.tokens.size());
  const int64_t sequences = batch.num_sequences();
  auto wrap_i32 = [](const std::vector<int32_t>& values, Shape shape) {
    return Tensor::Wrap(const_cast<int32_t*>(values.data()), DType::kI32, std::move(shape));
  };
  Tensor slots =
      Tensor::Wrap(const_cast<int64_t*>(batch.slot_mapping.data()), DType::kI64, {tokens});
  BatchTensors in;
  if (device_.is_cpu()) {
    in.ids = wrap_i32(batch.tokens, {tokens});
    in.positions = wrap_i32(batch.positions, {tokens});
    in.slots = slots;
    in.query_starts = wrap_i32(batch.query_starts, {sequences + 1});
    in.context_lens = wrap_i32(batch.context_lens, {sequences});
    in.block_tables = wrap_i32(batch.block_tables, {sequences, batch.max_blocks});
    in.last_rows = wrap_i32(last_rows, {sequences});
    return in;
  }
  // Every i32 array back to back in one buffer, then one copy of it and one of the slots.
  const std::vector<const std::vector<int32_t>*> parts = {&batch.tokens,       &batch.positions,
                                                          &batch.query_starts, &batch.context_lens,
                                                          &batch.block_tables, &last_rows};
  staged_indices_.clear();
  for (const std::vector<int32_t>* part : parts) {
    staged_indices_.insert(staged_indices_.end(), part->begin(), part->end());
  }
  const int64_t count = static_cast<int64_t>(staged_indices_.size());
  Stream& stream = *stream_;
  TESSERA_ASSIGN_OR_RETURN(Tensor indices,
                           GrowDevice(device_indices_, DType::kI32, device_, count, 4096));
  TESSERA_RETURN_IF_ERROR(indices.CopyFrom(wrap_i32(staged_indices_, {count}), stream));
  TESSERA_ASSIGN_OR_RETURN(in.slots, GrowDevice(device_slots_, DType::kI64, device_, tokens, 1024));
  TESSERA_RETURN_IF_ERROR(in.slots.CopyFrom(slots, stream));
  int64_t offset = 0;
  auto next = [&](int64_t n, Shape shape) -> absl::StatusOr<Tensor> {
    TESSERA_ASSIGN_OR_RETURN(Tensor part, indices.Slice(offset, offset + n));
    offset += n;
    return part.Reshape(std::move(shape));
  };
  TESSERA_ASSIGN_OR_RETURN(in.ids, next(tokens, {tokens}));
  TESSERA_ASSIGN_OR_RETURN(in.positions, next(tokens, {tokens}));
  TESSERA_ASSIGN_OR_RETURN(in.query_starts, next(sequences + 1, {sequences + 1}));
  TESSERA_ASSIGN_OR_RETURN(in.context_lens, next(sequences, {sequences}));
  TESSERA_ASSIGN_OR_RETURN(in.block_tables,
                           next(sequences * batch.max_blocks, {sequences, batch.max_blocks}));
  TESSERA_ASSIGN_OR_RETURN(in.last_rows, next(sequences, {sequences}));
  return in;
}

absl::StatusOr<Transformer::Activations> Transformer::ActivationsFor(int64_t tokens) {
  const int64_t hidden = config_.hidden_size;
  const int64_t q_rows = int64_t{plan_.attention.num_q_heads} * config_.head_dim;
  const int64_t kv_rows = int64_t{plan_.attention.num_kv_heads} * config_.head_dim;
  const int64_t intermediate = plan_.intermediate_size;
  Activations a;
  Activations& kept = device_activations_;
  const std::vector<std::tuple<Tensor*, Tensor*, int64_t>> buffers = {
      {&a.residual, &kept.residual, hidden},
      {&a.pending, &kept.pending, hidden},
      {&a.normed, &kept.normed, hidden},
      {&a.q, &kept.q, q_rows},
      {&a.k, &kept.k, kv_rows},
      {&a.v, &kept.v, kv_rows},
      {&a.attention, &kept.attention, q_rows},
      {&a.gate_up, &kept.gate_up, 2 * intermediate},
      {&a.activated, &kept.activated, intermediate}};
  for (const auto& [view, buffer, width] : buffers) {
    if (device_.is_cpu()) {
      TESSERA_ASSIGN_OR_RETURN(*view, F32({tokens, width}));
    } else {
      TESSERA_ASSIGN_OR_RETURN(*view, DeviceRows(*buffer, device_, tokens, width));
    }
  }
  return a;
}

absl::StatusOr<int> Transformer::LoadAdapter(const std::string& dir) {
  if (!device_.is_cpu()) {
    return absl::UnimplementedError(absl::StrCat(
        "LoRA adapters (", dir, ") run on the CPU only so far, not on ", device_.ToString()));
  }
  // Factors in the base's dtype when it is bf16 (as vLLM holds them): with many adapters in a
  // step, reading them costs about as much as their products.
  const bool bf16_base =
      !layers_.empty() && layers_[0].q.defined() && layers_[0].q.dtype() == DType::kBF16;
  TESSERA_ASSIGN_OR_RETURN(
      RankAdapter adapter,
      LoadRankAdapter(dir, config_, plan_, bf16_base ? DType::kBF16 : DType::kF32));
  auto free = std::find(adapters_.begin(), adapters_.end(), nullptr);
  const int slot = static_cast<int>(free - adapters_.begin());
  if (free == adapters_.end()) adapters_.emplace_back();
  adapters_[slot] = std::make_unique<const RankAdapter>(std::move(adapter));
  return slot;
}

absl::Status Transformer::UnloadAdapter(int slot) {
  if (!HasAdapter(slot)) {
    return absl::NotFoundError(absl::StrCat("UnloadAdapter: no adapter in slot ", slot));
  }
  adapters_[slot] = nullptr;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<AdapterRows>> Transformer::AdapterRowsOf(
    const ForwardBatch& batch) const {
  if (batch.adapters.empty()) return std::vector<AdapterRows>();
  const int sequences = batch.num_sequences();
  if (static_cast<int>(batch.adapters.size()) != sequences) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: ", batch.adapters.size(),
                                                   " adapters for ", sequences, " sequences"));
  }
  for (int s = 0; s < sequences; ++s) {
    const int slot = batch.adapters[s];
    if (slot == -1) continue;
    if (!device_.is_cpu()) {
      return absl::UnimplementedError(absl::StrCat(
          "Forward: LoRA adapters run on the CPU only so far, not on ", device_.ToString()));
    }
    if (!HasAdapter(slot)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: sequence ", s, " asks for adapter slot ", slot,
                       ", which holds no adapter (-1 runs the base model alone)"));
    }
  }
  // The rows of a sequence are [query_starts[s], query_starts[s+1]). The CPU attention kernel
  // checks them only when it runs, after the first adapter product has used them.
  for (int s = 0; s < sequences; ++s) {
    if (batch.query_starts[s] < 0 || batch.query_starts[s] > batch.query_starts[s + 1] ||
        batch.query_starts[s + 1] > static_cast<int32_t>(batch.tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: sequence ", s, "'s rows [", batch.query_starts[s], ", ",
          batch.query_starts[s + 1], ") are not rows of the batch's ", batch.tokens.size()));
    }
  }
  return GroupRowsByAdapter(batch.adapters, batch.query_starts);
}

absl::Status Transformer::AddAdapters(const std::vector<AdapterRows>& adapted, int layer,
                                      std::initializer_list<LoraModule> modules, const Tensor& x,
                                      Tensor& out) {
  if (adapted.empty()) return absl::OkStatus();
  std::vector<LoraProduct> products;
  for (const AdapterRows& group : adapted) {
    for (const LoraModule module : modules) {
      const RankLoraFactors& f = adapters_[group.slot]->layers[layer][static_cast<int>(module)];
      if (f.defined()) products.push_back({group.rows, &f, &out});
    }
  }
  return AddLoraProducts(x, products);
}

absl::StatusOr<Tensor> Transformer::Forward(const ForwardBatch& batch, KvCache& cache,
                                            bool all_positions) {
  absl::StatusOr<Tensor> logits = RunForward(batch, cache, all_positions);
  // A failed step may have left work queued: let it finish before the buffers it uses are
  // reused or freed.
  if (!logits.ok() && !device_.is_cpu()) (void)stream_->Synchronize();
  return logits;
}

absl::StatusOr<Tensor> Transformer::RunForward(const ForwardBatch& batch, KvCache& cache,
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
  if (static_cast<int>(cache.k.size()) != config_.num_hidden_layers ||
      static_cast<int>(cache.v.size()) != config_.num_hidden_layers) {
    return absl::InvalidArgumentError("Forward: the KV cache was not made for this model");
  }
  if (cache.k[0].device() != device_) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: the KV cache is on ",
                                                   cache.k[0].device().ToString(),
                                                   ", the model on ", device_.ToString()));
  }
  if (!device_.is_cpu()) TESSERA_RETURN_IF_ERROR(CheckBatchValues(batch, cache, all_positions));
  Stream& stream = *stream_;
  int64_t hidden = config_.hidden_size;
  float eps = static_cast<float>(config_.rms_norm_eps);
  std::vector<int32_t> last_rows(sequences);  // each sequence's last new token
  for (int64_t s = 0; s < sequences; ++s) last_rows[s] = batch.query_starts[s + 1] - 1;
  TESSERA_ASSIGN_OR_RETURN(BatchTensors in, StageBatch(batch, last_rows));
  TESSERA_ASSIGN_OR_RETURN(const std::vector<AdapterRows> adapted, AdapterRowsOf(batch));
  // The residual stream, and the output of the previous sub-layer still to be added to it.
  TESSERA_ASSIGN_OR_RETURN(Activations a, ActivationsFor(tokens));

  TESSERA_RETURN_IF_ERROR(ops::EmbeddingLookup(in.ids, embed_, plan_.vocab.begin,
                                               config_.vocab_size, a.residual, stream));
  TESSERA_RETURN_IF_ERROR(SumOverGroup(a.residual));
  bool pending = false;  // whether a.pending holds a sub-layer output to add to the stream
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    TESSERA_RETURN_IF_ERROR(ForwardLayer(l, in, adapted, a, cache, pending));
  }
  if (pending) {
    TESSERA_RETURN_IF_ERROR(
        ops::AddRmsNorm(a.residual, a.pending, final_norm_, eps, a.normed, stream));
  } else {
    TESSERA_RETURN_IF_ERROR(ops::RmsNorm(a.residual, final_norm_, eps, a.normed, stream));
  }

  // The rows whose logits are wanted: every token, or each sequence's last.
  Tensor rows = a.normed;
  if (!all_positions) {
    if (device_.is_cpu()) {
      TESSERA_ASSIGN_OR_RETURN(rows, F32({sequences, hidden}));
    } else {
      TESSERA_ASSIGN_OR_RETURN(rows, DeviceRows(device_last_, device_, sequences, hidden));
    }
    TESSERA_RETURN_IF_ERROR(ops::GatherRows(a.normed, in.last_rows, rows, stream));
  }
  const int64_t shard = plan_.vocab.padded_rows;
  const int64_t valid = plan_.vocab.end - plan_.vocab.begin;
  if (device_.is_cpu()) {
    TESSERA_ASSIGN_OR_RETURN(Tensor logits, F32({rows.dim(0), shard}));
    TESSERA_RETURN_IF_ERROR(ops::Linear(rows, lm_head_, Tensor(), logits, stream));
    TESSERA_RETURN_IF_ERROR(
        ops::FillColumns(logits, valid, shard, -std::numeric_limits<float>::infinity(), stream));
    return logits;
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor device_logits,
                           DeviceRows(device_logits_, device_, rows.dim(0), shard));
  TESSERA_RETURN_IF_ERROR(ops::Linear(rows, lm_head_, Tensor(), device_logits, stream));
  TESSERA_RETURN_IF_ERROR(ops::FillColumns(device_logits, valid, shard,
                                           -std::numeric_limits<float>::infinity(), stream));
  TESSERA_ASSIGN_OR_RETURN(Tensor logits, F32({rows.dim(0), shard}));
  TESSERA_RETURN_IF_ERROR(logits.CopyFrom(device_logits, stream));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  return logits;
}

absl::StatusOr<Tensor> Transformer::GatherLogits(const Tensor& shard) {
  if (!shard.device().is_cpu() || shard.dtype() != DType::kF32 || shard.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GatherLogits: the shard is ", shard.DebugString(), ", expected host f32 (rows, width)"));
  }
  int64_t rows = shard.dim(0), width = shard.dim(1), vocab = config_.vocab_size;
  Tensor all = shard;
  if (tp_.size() > 1) {
    TESSERA_ASSIGN_OR_RETURN(all, F32({tp_.size() * rows * width}));
    TESSERA_RETURN_IF_ERROR(AllGatherHost(shard.Flatten(), all));
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
  if (!shard.device().is_cpu() || shard.dtype() != DType::kF32 || shard.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("SampleRows: the shard is ", shard.DebugString(),
                                                   ", expected host f32 (rows, width)"));
  }
  int64_t count = shard.dim(0);
  if (static_cast<int64_t>(rows.size()) != count) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleRows: ", rows.size(), " sampling choices for ", count, " rows"));
  }
  bool any_full = false, any_logprob = false;
  for (const RowSampling& row : rows) {
    TESSERA_RETURN_IF_ERROR(kernels::ValidateSamplingParams(row.params));
    if (row.top_logprobs < 0 || row.top_logprobs > kernels::kMaxTopLogprobs) {
      return absl::InvalidArgumentError(absl::StrCat(
          "top_logprobs: must be in [0, ", kernels::kMaxTopLogprobs, "], not ", row.top_logprobs));
    }
    any_full |= row.params.temperature > 0.0f || row.params.has_penalties() || row.top_logprobs > 0;
    any_logprob |= row.logprob;
  }
  std::vector<SampledToken> out(count);
  int64_t vocab = config_.vocab_size;
  if (any_full) {
    // Sampling, penalties and top log-probabilities need the whole row; plain greedy rows
    // take the full row's argmax, which is the shard-wise choice below (lowest index on ties).
    TESSERA_ASSIGN_OR_RETURN(Tensor full, GatherLogits(shard));
    std::vector<float> penalized;
    for (int64_t i = 0; i < count; ++i) {
      const float* row = full.data<float>() + i * vocab;
      const RowSampling& choice = rows[i];
      absl::Span<const float> choose_from(row, vocab);
      if (choice.params.has_penalties()) {
        penalized.assign(row, row + vocab);
        kernels::ApplyPenalties(absl::MakeSpan(penalized), choice.params, choice.generated);
        choose_from = penalized;
      }
      out[i].token = kernels::SampleToken(choose_from, choice.params, choice.draw);
      if (choice.logprob || choice.top_logprobs > 0) {
        const double log_sum_exp = LogSumExp(row, vocab);
        if (choice.logprob) out[i].logprob = static_cast<float>(row[out[i].token] - log_sum_exp);
        out[i].top_logprobs = kernels::TopLogprobs(absl::Span<const float>(row, vocab),
                                                   choice.top_logprobs, log_sum_exp);
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
    TESSERA_RETURN_IF_ERROR(AllGatherHost(mine, all));
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
