#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/check_shapes.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;

absl::Status CheckCache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_cache", k_cache, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k_cache", k_cache, 4));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_cache", v_cache, {DType::kF32}));
  return ExpectShape(kernel, "v_cache", v_cache, k_cache.shape());
}

}  // namespace

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache) {
  constexpr char kKernel[] = "WriteKvCache";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache));
  int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "k", k, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "k", k, 3));
  int64_t tokens = k.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "k", k, {tokens, kv_heads, head_dim}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "v", v, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "slot_mapping", slot_mapping, {DType::kI64}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "slot_mapping", slot_mapping, {tokens}));
  int64_t row = kv_heads * head_dim;
  const int64_t* slots = slot_mapping.data<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    if (slots[t] >= blocks * block_size) {
      return absl::OutOfRangeError(absl::StrCat(kKernel, ": slot ", slots[t], " of token ", t,
                                                " is beyond the cache's ", blocks * block_size,
                                                " slots"));
    }
    std::copy_n(k.data<float>() + t * row, row, k_cache.data<float>() + slots[t] * row);
    std::copy_n(v.data<float>() + t * row, row, v_cache.data<float>() + slots[t] * row);
  }
  return absl::OkStatus();
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params,
                            Tensor& out) {
  constexpr char kKernel[] = "PagedAttention";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache));
  int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "q", q, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "q", q, 3));
  int64_t tokens = q.dim(0), heads = q.dim(1);
  if (q.dim(2) != head_dim || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": q ", q.DebugString(),
                                                   " does not match a cache of ", kv_heads,
                                                   " kv heads of ", head_dim, " dimensions"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "context_lens", context_lens, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "context_lens", context_lens, 1));
  int64_t sequences = context_lens.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "query_starts", query_starts, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "query_starts", query_starts, {sequences + 1}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "block_tables", block_tables, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "block_tables", block_tables, 2));
  if (block_tables.dim(0) != sequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKernel, ": block_tables ", block_tables.DebugString(), " for ", sequences, " sequences"));
  }
  int64_t max_blocks = block_tables.dim(1);
  const int32_t* starts = query_starts.data<int32_t>();
  const int32_t* lens = context_lens.data<int32_t>();
  const int32_t* tables = block_tables.data<int32_t>();
  if (starts[0] != 0 || starts[sequences] != tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": query_starts must run from 0 to the ", tokens, " query rows"));
  }

  int64_t group = heads / kv_heads;
  int64_t kv_row = kv_heads * head_dim;
  const float* k_data = k_cache.data<float>();
  const float* v_data = v_cache.data<float>();
  std::vector<float> scores;
  for (int64_t s = 0; s < sequences; ++s) {
    int64_t new_tokens = starts[s + 1] - starts[s];
    int64_t context = lens[s];
    if (new_tokens < 0 || new_tokens > context || context > max_blocks * block_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          kKernel, ": sequence ", s, " has ", new_tokens, " queries over a context of ", context,
          " tokens and room for ", max_blocks * block_size));
    }
    const int32_t* table = tables + s * max_blocks;
    for (int64_t b = 0; b < (context + block_size - 1) / block_size; ++b) {
      if (table[b] < 0 || table[b] >= blocks) {
        return absl::OutOfRangeError(absl::StrCat(kKernel, ": sequence ", s, " block ", b, " is ",
                                                  table[b], ", not one of the ", blocks,
                                                  " cache blocks"));
      }
    }
    auto key_row = [&](const float* cache, int64_t position, int64_t kv_head) {
      int64_t slot = table[position / block_size] * block_size + position % block_size;
      return cache + slot * kv_row + kv_head * head_dim;
    };
    for (int64_t i = 0; i < new_tokens; ++i) {
      int64_t row = starts[s] + i;
      int64_t position = context - new_tokens + i;
      int64_t first = 0;
      if (params.sliding_window > 0)
        first = std::max<int64_t>(0, position - params.sliding_window + 1);
      int64_t span = position - first + 1;
      scores.resize(span);
      for (int64_t h = 0; h < heads; ++h) {
        const float* query = q.data<float>() + (row * heads + h) * head_dim;
        int64_t kv_head = h / group;
        float max = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < span; ++j) {
          const float* key = key_row(k_data, first + j, kv_head);
          float dot = 0.0f;
          for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
          scores[j] = dot * params.scale;
          max = std::max(max, scores[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < span; ++j) {
          scores[j] = std::exp(scores[j] - max);
          sum += scores[j];
        }
        float* o = out.data<float>() + (row * heads + h) * head_dim;
        std::fill(o, o + head_dim, 0.0f);
        for (int64_t j = 0; j < span; ++j) {
          const float* value = key_row(v_data, first + j, kv_head);
          float weight = scores[j] / sum;
          for (int64_t d = 0; d < head_dim; ++d) o[d] += weight * value[d];
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
