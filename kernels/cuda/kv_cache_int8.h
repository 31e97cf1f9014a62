#ifndef TESSERA_KERNELS_CUDA_KV_CACHE_INT8_H_
#define TESSERA_KERNELS_CUDA_KV_CACHE_INT8_H_

// kernels/cpu/kv_cache_int8.h on a GPU: the int8 paged KV cache (one f32 scale per token and
// kv head) and the paged attention that reads its codes and scales directly. Quantization,
// scales, batch description and results are the CPU kernels'; every tensor lives on the
// stream's device.
//
// Layouts of one layer's cache, as the CUDA f32 cache (kernels/cuda/attention.h) keeps keys
// as rows:
//   k_cache, v_cache i8 (num_blocks, block_size, kv_heads, head_dim);
//   k_scale, v_scale f32 KvScaleShape(...) = (num_blocks, kv_heads, block_size), as on the CPU.
// Only k_cache differs from the CPU's layout (there KeyCacheShape); the codes and scales are
// bitwise the CPU's for the same k and v (the same IEEE division and rounding to nearest
// even), so KvCacheInt8BytesPerToken holds here too.
//
// Bad values of the batch description are handled as in kernels/cuda/attention.h: a token
// whose slot is negative or beyond the cache is skipped, and every query row of an
// inconsistent sequence comes out NaN.

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_cache_int8.h"
#include "kernels/cuda/attention.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// k, v (T, kv_heads, head_dim) f32 -> the cache slots slot_mapping (T) i64, quantized.
absl::Status WriteKvCacheInt8(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, Tensor& k_scale, Tensor& v_scale,
                              Stream& stream);

// q (T, heads, head_dim) f32 -> out (T, heads, head_dim) f32, head_dim <= 256
// (kMaxAttentionHeadDim); query head h reads kv head h / (heads / kv_heads). query_starts
// (S+1) i32, context_lens (S) i32, block_tables (S, max_blocks) i32. out may be q.
absl::Status PagedAttentionInt8(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& k_scale, const Tensor& v_scale,
                                const Tensor& query_starts, const Tensor& context_lens,
                                const Tensor& block_tables, const AttentionParams& params,
                                Tensor& out, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_KV_CACHE_INT8_H_
