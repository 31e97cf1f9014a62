#ifndef TESSERA_KERNELS_CPU_TRAINING_ATTENTION_H_
#define TESSERA_KERNELS_CPU_TRAINING_ATTENTION_H_

// Causal self-attention for training, forward and backward, over documents packed one after
// another into a batch of T tokens (no KV cache: keys and values are the batch's own rows).
//
// q (T, Hq, D), k and v (T, Hkv, D), f32, row-major. Hq is a multiple of Hkv; query head h
// reads kv head h / (Hq / Hkv) (grouped-query attention; Hq == Hkv is plain multi-head).
// sequence_starts (S+1) i32 with 0 = starts[0] <= starts[1] <= ... <= starts[S] = T: document
// s is tokens [starts[s], starts[s+1]) (an empty document has no tokens). Token t of document
// s attends to the tokens j of the same document with j <= t and, when params.sliding_window
// = w > 0, t - j < w; never to another document. Scores are params.scale * q_t . k_j.
//
// Both run flash-attention style, over blocks of 64 queries by 64 keys that stay in the
// caches, never holding a (T, T) matrix: the forward keeps a running maximum and sum per row
// (online softmax) and saves each row's log-sum-exp, from which the backward recomputes the
// probabilities. Exponents go through ExpNonPositive (exp_approx.h, within 2.5e-7 of
// std::exp). The forward's work items are (document, query block, query head). The
// backward's are (document, query head) when there are at least twice as many as threads;
// else it spends 40% more arithmetic on two passes, over (document, head, key block) and
// (document, head, query block), with the same results.
//
// Deterministic: every output element is computed by one thread in an order fixed by the
// shapes, so results never depend on the number of threads (row invariance, as the serving
// kernels promise it, is not promised here). Copies of the inputs laid out for the block
// products are kept per calling thread between calls (up to (4 Hq + 3 Hkv) T D floats, for
// the backward), since training calls the same shapes layer after layer. Thread safe; uses
// the kernel threads (parallel.h), so not to be called from inside a ParallelFor.

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// out (T, Hq, D) f32 = softmax(scores) . v over each token's attended keys, per head;
// lse (T, Hq) f32 = log(sum over the attended j of exp(scale * q_t . k_j)), saved for the
// backward. Both overwritten.
absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse);

// The backward of CausalAttention: q, k, v, sequence_starts and params as given to the
// forward, out and lse as it returned them, dout (T, Hq, D) f32 the gradient of out ->
// dq (T, Hq, D), dk and dv (T, Hkv, D), f32, overwritten. With P = exp(scores - lse) and
// D_t = dout_t . out_t (per head):
//   dv_j = sum_t P_tj dout_t,  dS_tj = P_tj (dout_t . v_j - D_t),
//   dq_t = scale sum_j dS_tj k_j,  dk_j = scale sum_t dS_tj q_t,
// dk and dv summed over the query heads that share a kv head.
absl::Status CausalAttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& sequence_starts, const AttentionParams& params,
                                     Tensor& dq, Tensor& dk, Tensor& dv);

// For tests: 1 or 2 makes CausalAttentionBackward take one pass or two (see
// training_attention.cc) whatever the number of threads; 0 (the default) lets it choose.
// Both give the same bits.
void TEST_SetCausalAttentionBackwardPasses(int passes);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_TRAINING_ATTENTION_H_
