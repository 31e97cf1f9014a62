#ifndef TESSERA_KERNELS_CPU_KV_CACHE_INT8_H_
#define TESSERA_KERNELS_CPU_KV_CACHE_INT8_H_

// The paged KV cache of kernels/cpu/attention.h stored as int8 codes with one f32 scale per
// token and kv head, and the paged attention that reads it as it is (no dequantized copy).
//
// Quantization of one token's head vector x (head_dim values), symmetric:
//   scale = max_d |x_d| / 127, code_d = x_d / scale rounded to nearest (ties to even) and
//   clamped to [-127, 127]; an all-zero x has scale 0 and codes 0; an x with a NaN or an
//   infinity has scale NaN (every attention row that reads it comes out NaN, as with an f32
//   cache). The value the cache stands for is code_d * scale, within scale / 2 of x_d.
//
// The cache of one layer is four tensors, in the blocks and block tables of attention.h:
//   k_cache i8 KeyCacheShape(num_blocks, block_size, kv_heads, head_dim) = (num_blocks,
//     kv_heads, head_dim, block_size): keys along the positions of a block, as the f32 cache;
//   v_cache i8 (num_blocks, block_size, kv_heads, head_dim): a row of values per position;
//   k_scale, v_scale f32 KvScaleShape(...) = (num_blocks, kv_heads, block_size): the scales
//     of one kv head at consecutive positions of a block lie together, so that the keys'
//     vector of positions takes its scales in one load.
// The CUDA kernels keep keys as rows, in v_cache's shape, and the scales as here
// (kernels/cuda/kv_cache_int8.h).
//
// Memory, per token and layer: 2 * kv_heads * (head_dim + 4) bytes (codes, then two f32
// scales a kv head), against 4 * kv_heads * head_dim for bf16 and 8 * kv_heads * head_dim
// for f32. In the same memory int8 therefore holds 2 * head_dim / (head_dim + 4) times the
// tokens of bf16: 1.882 (32/17) at head_dim 64, 1.939 (64/33) at 128, 1.969 at 256; and
// 4 * head_dim / (head_dim + 4) times those of f32.
//
// Thread safety: the functions are safe to call concurrently on distinct caches, and
// PagedAttentionInt8 concurrently with itself on the same one; a call runs on the shared
// kernel thread pool (kernels/cpu/parallel.h).

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// Bytes one token takes in one layer's int8 cache, codes and scales of keys and values: for
// a memory planner (see above for the ratio to bf16).
inline constexpr int64_t KvCacheInt8BytesPerToken(int64_t kv_heads, int64_t head_dim) {
  return 2 * kv_heads * (head_dim + static_cast<int64_t>(sizeof(float)));
}

// The shape of k_scale and v_scale for a cache of num_blocks blocks of block_size positions.
inline Shape KvScaleShape(int64_t num_blocks, int64_t block_size, int64_t kv_heads) {
  return {num_blocks, kv_heads, block_size};
}

// k, v (T, kv_heads, head_dim) f32 -> the cache slots slot_mapping (T) i64, where a slot is
// block * block_size + offset: each token's head vectors quantized (above) into the codes
// and scales of its slot. A negative slot skips the token and leaves the cache untouched.
// INVALID_ARGUMENT naming the tensor for a wrong dtype, shape or device; OUT_OF_RANGE for a
// slot beyond the cache, and then nothing of the call is written.
absl::Status WriteKvCacheInt8(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, Tensor& k_scale, Tensor& v_scale);

// PagedAttention (attention.h) over the int8 cache: q (T, heads, head_dim) f32 -> out (T,
// heads, head_dim) f32, heads a multiple of kv_heads; query_starts (S+1) i32, context_lens
// (S) i32, block_tables (S, max_blocks) i32 with the same meaning and checks: INVALID_ARGUMENT
// naming the tensor, or the sequence, that is wrong; OUT_OF_RANGE for a block outside the cache.
//
// For query head h of kv head g, at position j (block b, offset o) of its row's span:
//   score_j = (sum_d q_d * code_d) * (k_scale[b][g][o] * params.scale), the sum one chain of
//     fused multiply-adds over d in index order from 0;
//   out_d = sum_j (p_j * v_scale[b][g][o]) * vcode_{j,d}, fused multiply-adds in position
//     order from 0, p the softmax of the scores.
// So a scale is applied once a position and head, never inside the loops over head_dim. The
// result is within f32 rounding of PagedAttention over a cache holding code * scale, not
// the same bits. A row's result depends only on its own sequence's context, bitwise, whatever
// else the batch holds and however many threads run (the path is chosen once a process,
// kernels/cpu/cpu_features.h; AVX2 here also on AVX-512 machines).
absl::Status PagedAttentionInt8(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& k_scale, const Tensor& v_scale,
                                const Tensor& query_starts, const Tensor& context_lens,
                                const Tensor& block_tables, const AttentionParams& params,
                                Tensor& out);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_KV_CACHE_INT8_H_
