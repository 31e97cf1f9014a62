#ifndef TESSERA_KERNELS_CPU_ATTENTION_H_
#define TESSERA_KERNELS_CPU_ATTENTION_H_

// Causal attention over a paged KV cache, for prefill and decode alike, with grouped-query
// heads and an optional sliding window.
//
// The cache of one layer is two tensors, k_cache and v_cache, each
//   (num_blocks, block_size, kv_heads, head_dim)
// and a sequence owns a list of blocks (its block table): token position p of the sequence
// lives in block block_table[p / block_size] at offset p % block_size.
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
