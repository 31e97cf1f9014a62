#ifndef TESSERA_KERNELS_CUDA_ATTENTION_H_
#define TESSERA_KERNELS_CUDA_ATTENTION_H_

// kernels/cpu/attention.h on a GPU: causal attention over a paged KV cache for prefill and
// decode alike, grouped-query heads, optional sliding window. The cache layout, the batch
// description (query_starts, context_lens, block_tables, slot_mapping) and the results are
// the CPU kernels'; every tensor lives on the stream's device.
//
// The cache may also be bf16 or f16 here (the CPU takes f32 only): WriteKvCache rounds k and
// v to nearest-even on the way in and PagedAttention widens them back to f32.
//
// The batch description is read on the device, so the CPU kernels' checks of its values
// (slots and blocks in range, query_starts from 0 to T, queries within their contexts) cannot
// return an error here. Instead nothing is ever read or written out of bounds: WriteKvCache
// skips a token whose slot is beyond the cache (as it skips negative slots), and every query
// row of PagedAttention whose sequence is inconsistent (a row no sequence claims, more queries
// than context, a context beyond its block table, a block outside the cache) comes out as
// NaN, which poisons everything computed from it.

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// The largest head_dim PagedAttention supports.
inline constexpr int kMaxAttentionHeadDim = 256;

// k, v (T, kv_heads, head_dim) f32 -> the cache slots slot_mapping (T) i64. k_cache and
// v_cache (num_blocks, block_size, kv_heads, head_dim) are both f32, bf16 or f16.
absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache, Stream& stream);

// q (T, heads, head_dim) f32 -> out (T, heads, head_dim) f32, head_dim <= 256; query head h
// reads kv head h / (heads / kv_heads). query_starts (S+1) i32, context_lens (S) i32,
// block_tables (S, max_blocks) i32. out may be q.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params, Tensor& out,
                            Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_ATTENTION_H_
