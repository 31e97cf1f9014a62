#ifndef TESSERA_KERNELS_CPU_CROSS_ENTROPY_H_
#define TESSERA_KERNELS_CPU_CROSS_ENTROPY_H_

// The local parts of a vocab-parallel cross-entropy (as Megatron's): each rank of a
// tensor-parallel group holds a shard of the logits' columns, reduces it to three numbers a
// row (CrossEntropyShardStats), the group combines them (a max, then sums) into each row's
// log-sum-exp and target logit, and each rank takes its shard's gradient
// (CrossEntropyBackward). For one row with global maximum M over the ranks r:
//   lse = M + log(sum over r of sum_r * exp(max_r - M)),  loss = lse - target_logit,
// where target_logit is the sum over r of stats[2] (only the target's rank holds it).
//
// A shard is (T, V_shard) f32 holding vocabulary columns [vocab_begin, vocab_begin +
// valid_cols); its columns from valid_cols on are padding (a vocabulary that does not divide
// evenly) and are never read. targets (T) i32 hold a token id in [0, vocab_size), or -100 for a
// row that takes no loss.
//
// Exponents go through ExpNonPositive (exp_approx.h, within 2.5e-7 of std::exp); one below
// e^-87 counts as 0. Rows split across threads, each row computed by one thread in a fixed
// order: results do not depend on the number of threads.

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// The ignored row's target, as PyTorch's ignore_index.
inline constexpr int32_t kIgnoreTarget = -100;

// logits (T, V_shard) f32 -> stats (T, 3) f32, for every row (ignored rows too):
//   stats[t][0] = the maximum of the row's valid columns (-inf when valid_cols is 0),
//   stats[t][1] = the sum of exp(logit - stats[t][0]) over them (0 when valid_cols is 0),
//   stats[t][2] = the target's logit when the target lies in this shard, else 0.
// INVALID_ARGUMENT for a target outside [0, vocab_size) other than -100 (naming its row), or
// a shard [vocab_begin, vocab_begin + valid_cols) that is not within [0, vocab_size) or wider
// than V_shard.
absl::Status CrossEntropyShardStats(const Tensor& logits, const Tensor& targets,
                                    int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                    Tensor& stats);

// The gradient of row_scale[t] * (lse[t] - target_logit[t]) with respect to the shard:
//   dlogits[t][c] = row_scale[t] * (exp(logits[t][c] - lse[t]) - [target[t] == vocab_begin + c])
// for c < valid_cols, 0 in the padding columns; a row whose row_scale is 0 is all zero (its
// lse is not read). lse (T) f32 is the row's global log-sum-exp (above), row_scale (T) f32
// (e.g. 1 / the number of rows that take a loss). dlogits (T, V_shard) f32 is overwritten and
// may be logits. A target below 0 other than -100 is INVALID_ARGUMENT naming its row.
absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                  int64_t valid_cols, const Tensor& lse, const Tensor& row_scale,
                                  Tensor& dlogits);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_CROSS_ENTROPY_H_
