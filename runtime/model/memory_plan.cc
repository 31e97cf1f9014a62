#include "runtime/model/memory_plan.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/kv_cache_int8.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/resident_memory.h"

namespace tessera::model {
namespace {

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

bool EndsWithAny(const std::string& name, std::initializer_list<const char*> suffixes) {
  for (const char* suffix : suffixes) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

// The activations of one step of `tokens` tokens (Transformer's Activations, f32) and the
// logits of up to `rows` sequences' last tokens.
int64_t StepActivationBytes(const ModelConfig& config, const WeightPlan& plan, int64_t tokens,
                            int64_t rows) {
  const int64_t q = int64_t{plan.attention.num_q_heads} * config.head_dim;
  const int64_t kv = int64_t{plan.attention.num_kv_heads} * config.head_dim;
  const int64_t width = 3 * config.hidden_size + 2 * q + 2 * kv + 3 * plan.intermediate_size;
  return 4 * (tokens * width + std::min(rows, tokens) * plan.vocab.padded_rows);
}

// Bytes of one rank's weights as Transformer holds them.
absl::StatusOr<int64_t> WeightBytes(const ModelConfig& config, const Checkpoint& checkpoint,
                                    const WeightPlan& plan, const MemoryPlanOptions& options,
                                    DType* projection_dtype) {
  std::optional<DType> dtype = options.dtype;
  // The CPU kernels widen f16 to f32 (Transformer::Load).
  if (!options.gpu && !dtype.has_value() && config.torch_dtype == DType::kF16) {
    dtype = DType::kF32;
  }
  auto dtype_of = [&](const std::string& name) -> absl::StatusOr<DType> {
    if (dtype.has_value()) return *dtype;
    TESSERA_ASSIGN_OR_RETURN(TensorInfo info, checkpoint.Info(name));
    return info.dtype;
  };
  // A projection's (rows, cols) as the forward multiplies by it; `stored`: the format of its
  // groups in the checkpoint, which `--quantize stored` keeps.
  auto projection = [&](int64_t rows, int64_t cols, DType type,
                        std::optional<StoredGroupFormat> stored) -> int64_t {
    if (options.quantize.has_value() && options.quantize->stored && stored.has_value()) {
      return static_cast<int64_t>(
          kernels::QuantizedWeightBytes(stored->quant, rows, cols, stored->group_size));
    }
    if (options.quantize.has_value()) {
      return static_cast<int64_t>(kernels::QuantizedWeightBytes(options.quantize->quant, rows, cols,
                                                                options.quantize->GroupFor(cols)));
    }
    const int64_t stored_rows = options.gpu ? rows : RoundUp(rows, kernels::kLinearPanel);
    return static_cast<int64_t>(StorageBytes(type, stored_rows * cols));
  };
  int64_t bytes = 0;
  for (const PlannedTensor& tensor : plan.tensors) {
    TESSERA_ASSIGN_OR_RETURN(DType type, dtype_of(tensor.name));
    const int64_t rows = tensor.rank_shape.empty() ? 0 : tensor.rank_shape[0];
    const int64_t numel = NumElements(tensor.rank_shape);
    const std::string& name = tensor.name;
    if (name == "model.embed_tokens.weight") {
      bytes += static_cast<int64_t>(StorageBytes(type, numel));
      // The CPU head is a packed copy, of the embedding itself when tied.
      if (plan.tied_lm_head && !options.gpu) {
        bytes += static_cast<int64_t>(
            StorageBytes(type, RoundUp(rows, kernels::kLinearPanel) * tensor.rank_shape[1]));
      }
    } else if (name == "lm_head.weight") {
      bytes += static_cast<int64_t>(StorageBytes(
          type,
          (options.gpu ? rows : RoundUp(rows, kernels::kLinearPanel)) * tensor.rank_shape[1]));
    } else if (EndsWithAny(name, {"mlp.up_proj.weight"})) {
      continue;  // stacked under gate_proj's entry
    } else if (EndsWithAny(name, {"mlp.gate_proj.weight"})) {
      // Stacked with up_proj: groups only when both are stored alike (Transformer).
      std::optional<StoredGroupFormat> gate = checkpoint.StoredFormat(name);
      if (gate !=
          checkpoint.StoredFormat(absl::StrCat(
              name.substr(0, name.size() - sizeof("gate_proj.weight") + 1), "up_proj.weight"))) {
        gate.reset();
      }
      bytes += projection(2 * rows, tensor.rank_shape[1], type, gate);
    } else if (EndsWithAny(name, {"self_attn.qkv_proj.weight"})) {
      // Row views of q, k and v, each its own product.
      const int64_t q = int64_t{plan.attention.num_q_heads} * config.head_dim;
      const int64_t kv = int64_t{plan.attention.num_kv_heads} * config.head_dim;
      for (int64_t part : {q, kv, kv}) {
        bytes += projection(part, tensor.rank_shape[1], type, checkpoint.StoredFormat(name));
      }
    } else if (EndsWithAny(name, {"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                  "o_proj.weight", "gate_up_proj.weight", "down_proj.weight"})) {
      bytes += projection(rows, tensor.rank_shape[1], type, checkpoint.StoredFormat(name));
      if (absl::EndsWith(name, "q_proj.weight")) *projection_dtype = type;
    } else {
      bytes += static_cast<int64_t>(StorageBytes(type, numel));
    }
    if (absl::EndsWith(name, "qkv_proj.weight")) *projection_dtype = type;
  }
  return bytes;
}

}  // namespace

int64_t KvBytesPerToken(const ModelConfig& config, int kv_heads, DType kv_dtype) {
  if (kv_dtype == DType::kI8) {
    return config.num_hidden_layers * kernels::KvCacheInt8BytesPerToken(kv_heads, config.head_dim);
  }
  return 2 * int64_t{config.num_hidden_layers} * kv_heads * config.head_dim *
         static_cast<int64_t>(StorageBytes(kv_dtype, 1));
}

int64_t KvCacheBlocks(int64_t budget_bytes, int64_t bytes_per_token, int block_size) {
  const int64_t block_bytes = bytes_per_token * block_size;
  if (budget_bytes <= 0 || block_bytes <= 0) return 0;
  return budget_bytes / block_bytes;
}

int64_t KvCacheBudget(int64_t free_after_weights, double fraction) {
  if (free_after_weights <= 0) return free_after_weights;
  return static_cast<int64_t>(static_cast<double>(free_after_weights) * fraction);
}

bool MemoryPlan::fits() const {
  for (const RankMemory& rank : ranks) {
    if (rank.sequences < 1 || !rank.activations_fit) return false;
  }
  return !ranks.empty();
}

absl::StatusOr<MemoryPlan> PlanMemory(const ModelConfig& config, const Checkpoint& checkpoint,
                                      const MemoryPlanOptions& options) {
  TESSERA_RETURN_IF_ERROR(config.CheckTensorParallel(options.tp));
  MemoryPlan plan;
  plan.max_context = options.max_context > 0 ? options.max_context : config.max_position_embeddings;
  if (plan.max_context <= 0) {
    return absl::InvalidArgumentError("--max-context: the model names no context length");
  }
  for (int rank = 0; rank < options.tp; ++rank) {
    TESSERA_ASSIGN_OR_RETURN(WeightPlan weights, PlanWeights(config, options.tp, rank,
                                                             DetectWeightPlanOptions(checkpoint)));
    if (options.quantize.has_value()) {
      TESSERA_RETURN_IF_ERROR(CheckQuantizationFits(config, weights, *options.quantize));
    }
    RankMemory memory;
    memory.tp_rank = rank;
    DType projection_dtype = DType::kF32;
    TESSERA_ASSIGN_OR_RETURN(memory.weight_bytes,
                             WeightBytes(config, checkpoint, weights, options, &projection_dtype));
    plan.weight_dtype = projection_dtype;
    plan.kv_cache_dtype = options.kv_cache_dtype.value_or(
        projection_dtype == DType::kBF16 ? DType::kBF16 : DType::kF32);
    memory.kv_bytes_per_token =
        KvBytesPerToken(config, weights.attention.num_kv_heads, plan.kv_cache_dtype);
    memory.activation_bytes =
        StepActivationBytes(config, weights, options.max_step_tokens, options.max_running);
    if (options.gpu && options.quantize.has_value()) {
      // A prefill's product widens its weight to bf16 first (kernels/cuda/quantized_linear.h):
      // the largest, gate and up stacked.
      memory.activation_bytes += 2 * (2 * weights.intermediate_size) * config.hidden_size;
    }
    if (options.device_memory > 0) {
      const int64_t reserve = options.gpu ? kGpuRuntimeReserveBytes : 0;
      const int64_t free = options.device_memory - reserve - memory.weight_bytes;
      memory.kv_cache_bytes = KvCacheBudget(free, options.kv_cache_memory_fraction);
      // The activations live in what the fraction leaves.
      memory.activations_fit = free - memory.kv_cache_bytes >= memory.activation_bytes;
    } else {
      memory.kv_cache_bytes = options.kv_cache_bytes;
    }
    const int64_t blocks =
        KvCacheBlocks(memory.kv_cache_bytes, memory.kv_bytes_per_token, options.block_size);
    memory.kv_tokens = blocks * options.block_size;
    const int64_t blocks_per_sequence =
        (plan.max_context + options.block_size - 1) / options.block_size;
    memory.sequences = blocks / blocks_per_sequence;
    plan.ranks.push_back(memory);
  }
  return plan;
}

std::string DescribeMemoryPlan(const ModelConfig& config, const Checkpoint& checkpoint,
                               const MemoryPlanOptions& options, const MemoryPlan& plan) {
  auto bytes = [](int64_t n) {
    return n < 0 ? absl::StrCat("-", FormatBytes(static_cast<uint64_t>(-n)))
                 : FormatBytes(static_cast<uint64_t>(n));
  };
  std::string text = absl::StrFormat(
      "weights %s%s, KV cache %s, TP %d, context %d, steps of %d tokens, blocks of %d\n",
      options.quantize.has_value() ? options.quantize->ToString()
                                   : std::string(NameOf(plan.weight_dtype)),
      options.quantize.has_value() ? absl::StrCat(" (the rest ", NameOf(plan.weight_dtype), ")")
                                   : "",
      NameOf(plan.kv_cache_dtype), options.tp, plan.max_context, options.max_step_tokens,
      options.block_size);
  absl::StrAppendFormat(&text, "%-5s %12s %14s %14s %14s %12s %12s\n", "rank", "weights",
                        "KV per token", "activations", "KV cache", "KV tokens", "sequences");
  for (const RankMemory& rank : plan.ranks) {
    absl::StrAppendFormat(&text, "%-5d %12s %14s %14s %14s %12d %12d\n", rank.tp_rank,
                          bytes(rank.weight_bytes), bytes(rank.kv_bytes_per_token),
                          bytes(rank.activation_bytes), bytes(rank.kv_cache_bytes), rank.kv_tokens,
                          rank.sequences);
  }
  if (plan.fits()) {
    int64_t fewest = plan.ranks[0].sequences;
    for (const RankMemory& rank : plan.ranks) fewest = std::min(fewest, rank.sequences);
    absl::StrAppendFormat(&text, "fits: %d sequences of %d tokens at once\n", fewest,
                          plan.max_context);
    return text;
  }
  bool weights = true, activations = true;
  for (const RankMemory& rank : plan.ranks) {
    weights = weights && rank.kv_cache_bytes >= 0;
    activations = activations && rank.activations_fit;
  }
  if (!weights) {
    absl::StrAppendFormat(&text, "does not fit: the weights take more than the %s of memory%s\n",
                          bytes(options.device_memory),
                          options.gpu ? " the CUDA runtime leaves" : "");
  } else if (!activations) {
    absl::StrAppendFormat(&text,
                          "does not fit: a step's activations need more than the %g of free "
                          "memory that the KV cache leaves (lower --max-step-tokens, or "
                          "--kv-cache-memory-fraction)\n",
                          1 - options.kv_cache_memory_fraction);
  } else {
    absl::StrAppendFormat(&text, "does not fit: a rank holds no sequence of %d tokens\n",
                          plan.max_context);
  }
  // What would: each alternative planned the same way.
  std::vector<std::pair<std::string, MemoryPlanOptions>> alternatives;
  for (int tp = options.tp * 2; tp <= 64; tp *= 2) {
    MemoryPlanOptions more = options;
    more.tp = tp;
    alternatives.emplace_back(absl::StrCat("--tp ", tp), more);
  }
  for (const char* quant : {"int8", "int4"}) {
    MemoryPlanOptions quantized = options;
    quantized.quantize = *ParseWeightQuantization(quant, "");
    alternatives.emplace_back(absl::StrCat("--quantize ", quant), quantized);
  }
  if (options.kv_cache_dtype != DType::kI8) {
    MemoryPlanOptions int8 = options;
    int8.kv_cache_dtype = DType::kI8;
    alternatives.emplace_back("--kv-cache-dtype int8", int8);
  }
  std::vector<std::string> would;
  for (const auto& [flags, alternative] : alternatives) {
    absl::StatusOr<MemoryPlan> planned = PlanMemory(config, checkpoint, alternative);
    if (planned.ok() && planned->fits()) would.push_back(flags);
  }
  if (would.empty()) {
    absl::StrAppend(&text,
                    "nothing tried fits (more TP, int8 or int4 weights, an int8 KV "
                    "cache): more memory, or a shorter --max-context\n");
  } else {
    for (const std::string& flags : would) absl::StrAppend(&text, "would fit with ", flags, "\n");
  }
  return text;
}

}  // namespace tessera::model
