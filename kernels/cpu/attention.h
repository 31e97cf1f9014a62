#ifndef TESSERA_KERNELS_CPU_ATTENTION_H_
#define TESSERA_KERNELS_CPU_ATTENTION_H_

// Causal attention over a paged KV cache, for prefill and decode alike, with grouped-query
// heads and an optional sliding window.
//
// The cache of one layer is two tensors, a sequence owns a list of blocks (its block table),
// and token position p of the sequence lives in block block_table[p / block_size] at offset
// p % block_size:
//   v_cache (num_blocks, block_size, kv_heads, head_dim): a row of values per position;
//   k_cache (num_blocks, kv_heads, head_dim, block_size) on the CPU: within a block, the keys
//     lie along the positions, so that a vector load takes one dimension of one head at
//     consecutive positions and q . k needs no sums across lanes (KeyCacheShape). The CUDA
//     kernels keep keys as rows, in v_cache's shape (kernels/cuda/attention.h).
//
// A batch holds S sequences. Sequence s contributes the query rows
// [query_starts[s], query_starts[s+1]) of q, the newest tokens of the sequence, and has
// context_lens[s] tokens in the cache (the new ones included, written by WriteKvCache
// first). Its query row i therefore sits at position
//   p = context_lens[s] - (query_starts[s+1] - query_starts[s]) + (i - query_starts[s])
// and attends to the cached positions j with j <= p and, with a window w > 0, p - j < w.

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

struct AttentionParams {
  float scale = 1.0f;      // applied to q.k (1/sqrt(head_dim) for these families)
  int sliding_window = 0;  // 0: attend to the whole context
};

// The CPU k_cache's shape for a v_cache of (num_blocks, block_size, kv_heads, head_dim).
inline Shape KeyCacheShape(int64_t num_blocks, int64_t block_size, int64_t kv_heads,
                           int64_t head_dim) {
  return {num_blocks, kv_heads, head_dim, block_size};
}

// k, v (T, kv_heads, head_dim) f32 -> the cache slots slot_mapping (T) i64, where a slot is
// block * block_size + offset. A negative slot skips the token.
absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache);

// q (T, heads, head_dim) f32 -> out (T, heads, head_dim) f32. heads must be a multiple of
// kv_heads; query head h reads kv head h / (heads / kv_heads).
// query_starts (S+1) i32, context_lens (S) i32, block_tables (S, max_blocks) i32.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params, Tensor& out);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_ATTENTION_H_
