#ifndef TESSERA_RUNTIME_MODEL_TRANSFORMER_H_
#define TESSERA_RUNTIME_MODEL_TRANSFORMER_H_

// One tensor-parallel rank's shard of a decoder-only transformer (Llama, Mistral, Qwen2, GLM)
// and its forward pass, on the device of its communicator: the CPU with an MPI communicator,
// a GPU with an NCCL one. The same code runs on both through kernels/ops, which choose the
// CPU or CUDA kernels by the device of the tensors. Each layer's forward is the one
// decoder_layer.h defines for serving and training alike.
//
// Megatron split: Q, K, V and gate/up are column-parallel, o_proj and down_proj
// row-parallel with one all-reduce after each, the embedding and LM head vocab-parallel
// (weight_plan.h). Every rank runs the same forward on its shard; collectives keep them in
// step, so every call below is collective over the tensor-parallel group.

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/sampling.h"
#include "kernels/ops/linear.h"
#include "runtime/core/device.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/model/adapter_forward.h"
#include "runtime/model/layer_weights.h"
#include "runtime/model/model_config.h"
#include "runtime/model/rank_adapter.h"
#include "runtime/model/stored_groups.h"
#include "runtime/model/weight_loader.h"
#include "runtime/model/weight_plan.h"

namespace tessera::model {

// Keys and values of every layer for this rank's KV heads, in fixed-size blocks:
// k[l], v[l] are (num_blocks, block_size, kv_heads_local, head_dim) in the model's
// kv_cache_dtype(), on its device (on the CPU, k[l] is laid out as KeyCacheShape says).
// One layer's keys and values per entry, in the layout of the device (kernels/ops/attention.h).
// With an int8 cache (LoadOptions::kv_cache_dtype), k and v hold i8 codes and k_scale[l],
// v_scale[l] f32 (num_blocks, kv_heads_local, block_size) one scale per token and head
// (kernels/cpu/kv_cache_int8.h); otherwise k_scale and v_scale are empty.
struct KvCache {
  int num_blocks = 0;
  int block_size = 16;
  std::vector<Tensor> k;
  std::vector<Tensor> v;
  std::vector<Tensor> k_scale;
  std::vector<Tensor> v_scale;

  int64_t capacity_tokens() const { return int64_t{num_blocks} * block_size; }
  // What the tensors take, all layers.
  int64_t bytes() const {
    int64_t total = 0;
    for (const Tensor& t : k) total += static_cast<int64_t>(t.nbytes());
    for (const Tensor& t : v) total += static_cast<int64_t>(t.nbytes());
    for (const Tensor& t : k_scale) total += static_cast<int64_t>(t.nbytes());
    for (const Tensor& t : v_scale) total += static_cast<int64_t>(t.nbytes());
    return total;
  }
};

// The new tokens of a batch of sequences, back to back (see kernels/cpu/attention.h).
// Sequence s owns rows [query_starts[s], query_starts[s+1]) and has context_lens[s] tokens
// in the cache once they are written; block_tables is (S, max_blocks) and slot_mapping
// gives each new token's cache slot (block * block_size + offset). adapters[s] is the slot of
// the LoRA adapter sequence s runs with (Transformer::LoadAdapter), -1 for the base model
// alone; empty runs every sequence on the base.
struct ForwardBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  std::vector<int32_t> query_starts;
  std::vector<int32_t> context_lens;
  std::vector<int32_t> block_tables;
  int max_blocks = 0;
  std::vector<int64_t> slot_mapping;
  std::vector<int32_t> adapters;

  int num_sequences() const { return static_cast<int>(context_lens.size()); }

  // One sequence, tokens[begin, end) new, in a cache of `num_blocks` blocks that it owns in
  // order (token p in block p / block_size): single-request generation and benchmarks.
  static ForwardBatch SingleSequence(const std::vector<int32_t>& tokens, int begin, int end,
                                     int num_blocks);
};

class Transformer {
 public:
  // Loads this rank's shard from a Hugging Face model directory (config.json,
  // generation_config.json, safetensors). The rank and degree come from `tp`, and so does
  // the device: the weights are read into host memory and, for a GPU communicator (NCCL),
  // copied to its GPU in their stored dtype (f32, bf16 or f16; the CPU widens f16 to f32).
  // `tp` must outlive the model. Collective only in that every rank must load. Errors name
  // the file, tensor or option at fault.
  static absl::StatusOr<std::unique_ptr<Transformer>> Load(const std::string& dir,
                                                           comm::Communicator& tp,
                                                           const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const WeightPlan& plan() const { return plan_; }
  uint64_t weight_bytes() const { return weight_bytes_; }
  // The weight bytes a decode step reads: every weight but the embedding, of which it reads
  // one row a token (unless the LM head is the embedding itself).
  uint64_t decode_weight_bytes() const;
  // Where the weights, the KV cache and the forward live: the communicator's device.
  Device device() const { return device_; }
  // The stream every op of Forward runs on, and the collectives with them (the CPU stream on
  // the CPU, a stream of its own on a GPU).
  Stream& stream() { return *stream_; }

  // A cache of `num_blocks` blocks of `block_size` tokens for this rank's KV heads, zeroed,
  // on device().
  absl::StatusOr<KvCache> AllocateKvCache(int num_blocks, int block_size) const;
  // The cache's element type: i8 when LoadOptions::kv_cache_dtype asked for it, else the
  // weights' when they are bf16 (as Hugging Face keeps a bf16 model's keys and values), else
  // f32.
  DType kv_cache_dtype() const { return kv_dtype_; }
  // Bytes of cache one token takes on this rank: 2 * layers * kv_heads_local * head_dim *
  // bytes of kv_cache_dtype(), and for i8 the f32 scale of each token's head.
  int64_t KvBytesPerToken() const;

  // Runs the batch through the model on stream(), writing its keys and values into `cache`
  // (which AllocateKvCache made). The batch's index arrays are copied to the device once per
  // call. Returns this rank's logits shard in host memory, (rows, padded vocab shard) f32:
  // one row per new token with `all_positions`, else one per sequence (its last token).
  // Columns past the vocabulary's end (padding) hold -inf. On a GPU the call returns once
  // the stream has finished, so nothing it queued is left running. Bad token ids, slots,
  // block tables or query ranges are INVALID_ARGUMENT or OUT_OF_RANGE on every device.
  absl::StatusOr<Tensor> Forward(const ForwardBatch& batch, KvCache& cache, bool all_positions);

  // LoRA adapters served beside the base (PEFT format: lora_adapter.h), any number of them in
  // one batch (ForwardBatch::adapters); CPU only so far. Every rank must load and unload the
  // same adapters in the same order, so that a slot means the same adapter on every rank.
  //
  // Loads this rank's part of the PEFT adapter directory `dir` (LoadRankAdapter says what it
  // refuses, and how) into the lowest free slot, which it returns. UNIMPLEMENTED on a GPU.
  // Not collective, but every rank must call it.
  absl::StatusOr<int> LoadAdapter(const std::string& dir);
  // Frees `slot` for a later LoadAdapter; NOT_FOUND when no adapter is loaded there.
  absl::Status UnloadAdapter(int slot);
  bool HasAdapter(int slot) const {
    return slot >= 0 && slot < static_cast<int>(adapters_.size()) && adapters_[slot] != nullptr;
  }

  // The full logits (rows, vocab_size), gathered from every rank's shard. `shard` and the
  // result are host tensors (as Forward returns them) on every device.
  absl::StatusOr<Tensor> GatherLogits(const Tensor& shard);
  // The next token of each row under `params`, the same on every rank and at every degree:
  // greedy rows need only each shard's maximum; sampled rows gather the full logits.
  // draws[r] numbers row r's draw (its generated-token index) for the seeded generator.
  absl::StatusOr<std::vector<int64_t>> NextTokens(const Tensor& shard,
                                                  const kernels::SamplingParams& params,
                                                  const std::vector<uint64_t>& draws);

  // How one row of logits chooses its token.
  struct RowSampling {
    kernels::SamplingParams params;
    uint64_t draw = 0;     // the request's generated-token index
    bool logprob = false;  // also compute log softmax(logits)[token]
    int top_logprobs = 0;  // also this many of the most likely tokens, 0..kMaxTopLogprobs
    // The tokens the request generated so far (not its prompt), which the penalties count;
    // must stay valid during SampleRows. Only read when params has penalties.
    absl::Span<const int32_t> generated;
  };
  struct SampledToken {
    int64_t token = -1;
    float logprob = 0.0f;                             // 0 unless asked for
    std::vector<kernels::TokenLogprob> top_logprobs;  // most likely first, when asked for
  };
  // NextTokens with a choice per row (rows.size() == shard.dim(0)), as the serving engine
  // needs: the same tokens on every rank and at every degree. Penalties change the logits the
  // token is chosen from; log-probabilities (the chosen token's and the top ones) are of the
  // model's own distribution, log_softmax of the logits before penalties, temperature, top-k
  // and top-p (vLLM's default "raw" log-probabilities). Greedy rows without penalties or top
  // log-probabilities need only each shard's maximum; the others gather the full logits.
  absl::StatusOr<std::vector<SampledToken>> SampleRows(const Tensor& shard,
                                                       const std::vector<RowSampling>& rows);

  // A layer's projection weights as the forward multiplies by them: on the device, on the CPU
  // packed (ceil(N / 16), K, 16) or quantized (LoadOptions::quantize).
  struct LayerProjections {
    kernels::ops::ProjectionWeight q, k, v, o, gate_up, down;
  };
  // Layer `l`'s projections, for a trainer that multiplies by this model's frozen base instead
  // of a copy of its own (train/trainable_model.h): shared, not copied.
  const LayerProjections& projections(int l) const { return projections_[l]; }

 private:
  // A layer's tensors (layer_weights.h) as loaded: gate and up always stacked into gate_up,
  // (2 * intermediate shard, hidden). The forward reads the norms and biases from here and the
  // projections from LayerProjections, into which they move once loaded.
  using Layer = LayerSlots<Tensor>;
  // A weight as loaded: a tensor, or (`--quantize stored`) the checkpoint's own groups.
  struct LoadedWeight {
    Tensor tensor;
    std::shared_ptr<const StoredGroups> groups;
    bool defined() const { return tensor.defined() || groups != nullptr; }
  };

  // The activations of one Forward, `tokens` rows each (views of buffers kept across calls
  // on a GPU, fresh host memory on the CPU).
  struct Activations {
    Tensor residual, pending, normed;  // (tokens, hidden)
    Tensor q;                          // (tokens, q heads of this rank * head_dim)
    Tensor k, v;                       // (tokens, kv heads of this rank * head_dim)
    Tensor attention;                  // (tokens, q heads of this rank * head_dim)
    Tensor gate_up;                    // (tokens, 2 * intermediate shard)
    Tensor activated;                  // (tokens, intermediate shard)
  };
  // The batch's index arrays on the model's device.
  struct BatchTensors {
    Tensor ids, positions;  // (T) i32
    Tensor slots;           // (T) i64
    Tensor query_starts;    // (S+1) i32
    Tensor context_lens;    // (S) i32
    Tensor block_tables;    // (S, max_blocks) i32
    Tensor last_rows;       // (S) i32: query_starts[s+1] - 1
  };

  Transformer(ModelConfig config, WeightPlan plan, comm::Communicator& tp,
              std::unique_ptr<Stream> stream)
      : config_(std::move(config)),
        plan_(std::move(plan)),
        tp_(tp),
        device_(tp.device()),
        stream_(std::move(stream)) {}
  absl::Status TakeWeights(RankWeights weights);
  // gate and up as one [gate; up] weight: stacked groups when both are groups of one kind,
  // else a tensor (groups of two kinds dequantized, to be quantized again as
  // `--quantize stored` quantizes tensors).
  static absl::StatusOr<LoadedWeight> StackGateUp(const LoadedWeight& gate, const LoadedWeight& up);
  // Copies every weight to device_ and waits for the copies; tied tensors stay one tensor.
  // On the CPU, packs the LM head instead (the projections: TakeProjections).
  absl::Status MoveWeightsToDevice();
  // Moves each layer's projections into projections_: on the CPU as panels for Linear
  // (kernels/cpu/linear.h) or quantized (quantize_), on a GPU as they are.
  absl::Status TakeProjections();
  // The bytes of every weight the model holds, each tied tensor once.
  uint64_t CountWeightBytes() const;
  absl::Status SumOverGroup(Tensor& partial);
  // in (n) -> out (size * n), both host tensors, over tp_ on whichever device it runs.
  absl::Status AllGatherHost(const Tensor& in, Tensor& out);
  // On a GPU, the checks of the batch's values that the CPU kernels make and the CUDA
  // kernels cannot (the values are in device memory there), made on the host first.
  absl::Status CheckBatchValues(const ForwardBatch& batch, const KvCache& cache,
                                bool all_positions) const;
  // The batch's arrays as tensors on device_: views of its vectors (and of `last_rows`) on
  // the CPU, copies in the reused device buffers on a GPU.
  absl::StatusOr<BatchTensors> StageBatch(const ForwardBatch& batch,
                                          const std::vector<int32_t>& last_rows);
  absl::StatusOr<Activations> ActivationsFor(int64_t tokens);
  absl::StatusOr<Tensor> RunForward(const ForwardBatch& batch, KvCache& cache, bool all_positions);
  // Layer `layer` of a Forward (decoder_layer.h, serving_layer.cc): the stream in a.residual,
  // `pending` whether a.pending holds a sub-layer output still to be added to it.
  class ServingLayer;
  absl::Status ForwardLayer(int layer, const BatchTensors& in,
                            const std::vector<AdapterRows>& adapted, Activations& a, KvCache& cache,
                            bool& pending);
  // The batch's rows grouped by adapter; INVALID_ARGUMENT for a slot that holds none,
  // UNIMPLEMENTED for adapters off the CPU.
  absl::StatusOr<std::vector<AdapterRows>> AdapterRowsOf(const ForwardBatch& batch) const;
  // Adds each group's adapter products of `modules` of layer `layer`, taking input x
  // (adapter_forward.h), to its rows of out, in one pass over the threads.
  absl::Status AddAdapters(const std::vector<AdapterRows>& adapted, int layer,
                           std::initializer_list<LoraModule> modules, const Tensor& x, Tensor& out);

  ModelConfig config_;
  WeightPlan plan_;
  comm::Communicator& tp_;
  Device device_;
  std::unique_ptr<Stream> stream_;
  kernels::RotaryConfig rotary_;
  std::vector<float> inv_freq_;
  Tensor embed_;    // (padded vocab shard, hidden)
  Tensor lm_head_;  // same shape (packed on the CPU); the embedding itself when tied on a GPU
  Tensor final_norm_;
  std::vector<Layer> layers_;
  std::vector<LayerProjections> projections_;
  // The projections loaded as the checkpoint's groups (`--quantize stored`), null elsewhere;
  // TakeProjections packs them and empties this.
  struct StoredLayerGroups {
    std::shared_ptr<const StoredGroups> q, k, v, o, gate_up, down;
  };
  std::vector<StoredLayerGroups> stored_groups_;
  std::optional<WeightQuantization> quantize_;
  // The LoRA adapters by slot; null where a slot is free.
  std::vector<std::unique_ptr<const RankAdapter>> adapters_;
  uint64_t weight_bytes_ = 0;
  DType kv_dtype_ = DType::kF32;

  // GPU only, reused by every Forward and grown when a batch needs more (each Forward
  // returns after its stream work has finished): the activations, the batch's index arrays
  // packed into one i32 and one i64 buffer, the rows of each sequence's last token and the
  // logits before their copy to the host. Each is a flat buffer.
  Activations device_activations_;
  std::vector<int32_t> staged_indices_;  // host side of device_indices_
  Tensor device_indices_;                // i32
  Tensor device_slots_;                  // i64
  Tensor device_last_;                   // f32
  Tensor device_logits_;                 // f32
};

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_TRANSFORMER_H_
