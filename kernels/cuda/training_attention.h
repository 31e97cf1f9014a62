#ifndef TESSERA_KERNELS_CUDA_TRAINING_ATTENTION_H_
#define TESSERA_KERNELS_CUDA_TRAINING_ATTENTION_H_

// kernels/cpu/training_attention.h on a GPU: causal self-attention for training, forward and
// backward, over documents packed one after another into a batch of T tokens. Same arguments
// and results as the CPU kernels, with every tensor on the device of `stream` (a CUDA stream);
// work is queued on the stream and the call returns without waiting for it.
//
// q (T, Hq, D), k and v (T, Hkv, D), f32, row-major, D <= kMaxTrainingAttentionHeadDim; query
// head h reads kv head h / (Hq / Hkv). sequence_starts (S+1) i32 with 0 = starts[0] <= ... <=
// starts[S] = T; empty documents (repeated starts) are allowed. Token t of a document attends
// to its tokens j <= t and, when params.sliding_window = w > 0, t - j < w. Scores are
// params.scale * q_t . k_j; exponents are CUDA's expf.
//
// Simple kernels, not flash attention's tiling: a block per (token, head) walks the keys or
// queries it needs straight from global memory, four warps each taking every fourth one, and
// merges the warps' shares through shared memory in warp order. Every output element is
// written by one thread in an order fixed by the shapes, never with atomics, so results are
// deterministic (a rerun gives the same bits); they agree with the CPU's to rounding.
//
// sequence_starts is read on the device, so the CPU kernels' checks of its values cannot
// return an error here. Nothing is read or written out of bounds whatever its values: a token
// whose document is inconsistent (the last s with starts[s] <= t does not have t < starts[s+1]
// <= T, or no such s) gets NaN in every output row it owns, which poisons what is computed from
// it (validate document boundaries while they are on the host).

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// The largest head_dim the training attention kernels support.
inline constexpr int kMaxTrainingAttentionHeadDim = 256;

// out (T, Hq, D) f32 = softmax(scores) . v over each token's attended keys, per head; lse
// (T, Hq) f32 = log(sum over the attended j of exp(scale * q_t . k_j)), saved for the
// backward. Both overwritten. Grid (T, Hq): each block an online softmax over its keys.
absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse, Stream& stream);

// The backward of CausalAttention: q, k, v, sequence_starts and params as given to the
// forward, out and lse as it returned them, dout (T, Hq, D) f32 the gradient of out ->
// dq (T, Hq, D), dk and dv (T, Hkv, D), f32, overwritten. With P = exp(scores - lse) and
// D_t = dout_t . out_t (per head):
//   dv_j = sum_t P_tj dout_t,  dS_tj = P_tj (dout_t . v_j - D_t),
//   dq_t = scale sum_j dS_tj k_j,  dk_j = scale sum_t dS_tj q_t,
// dk and dv summed over the query heads that share a kv head. Three kernels: D (T, Hq) into
// stream-ordered scratch (released in stream order); dq with a block per (query, query head)
// over its keys; dk and dv with a block per (key, kv head) over the (query, query head) pairs
// that attend to it.
absl::Status CausalAttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& sequence_starts, const AttentionParams& params,
                                     Tensor& dq, Tensor& dk, Tensor& dv, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_TRAINING_ATTENTION_H_
