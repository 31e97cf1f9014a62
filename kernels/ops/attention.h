#ifndef TESSERA_KERNELS_OPS_ATTENTION_H_
#define TESSERA_KERNELS_OPS_ATTENTION_H_

// Paged attention on the device of the tensor written (see dispatch.h): kernels/cpu/
// attention.h on the CPU, kernels/cuda/attention.h on a GPU. The cache layout and the batch
// description (slot_mapping, query_starts, context_lens, block_tables) are those of
// kernels/cpu/attention.h, all on the cache's device. The CPU kernels check the batch's
// values and return an error; the GPU kernels cannot read them without waiting and turn bad
// ones into skipped writes and NaN rows instead (check them while on the host).

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_cache_int8.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

// k, v (T, kv_heads, head_dim) f32 -> the cache slots slot_mapping (T) i64 of k_cache and
// v_cache (num_blocks, block_size, kv_heads, head_dim); on the CPU k_cache is
// KeyCacheShape(...) instead (kernels/cpu/attention.h). A negative slot skips the token.
absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache, Stream& stream);

// q (T, heads, head_dim) f32 -> out (T, heads, head_dim) f32 over the cache;
// query_starts (S+1) i32, context_lens (S) i32, block_tables (S, max_blocks) i32.
absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params, Tensor& out,
                            Stream& stream);

// The int8 cache (kernels/cpu/kv_cache_int8.h, kernels/cuda/kv_cache_int8.h): codes i8 and
// scales f32 KvScaleShape(...); on the CPU k_cache is KeyCacheShape(...), on a GPU rows.
absl::Status WriteKvCacheInt8(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, Tensor& k_scale, Tensor& v_scale,
                              Stream& stream);

// PagedAttention over the int8 cache, reading its codes and scales directly.
absl::Status PagedAttentionInt8(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& k_scale, const Tensor& v_scale,
                                const Tensor& query_starts, const Tensor& context_lens,
                                const Tensor& block_tables, const AttentionParams& params,
                                Tensor& out, Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_ATTENTION_H_
