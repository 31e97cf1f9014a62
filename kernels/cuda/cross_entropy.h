#ifndef TESSERA_KERNELS_CUDA_CROSS_ENTROPY_H_
#define TESSERA_KERNELS_CUDA_CROSS_ENTROPY_H_

// kernels/cpu/cross_entropy.h on a GPU: the local parts of a vocab-parallel cross-entropy.
// Same arguments and results as the CPU kernels (see there for how a tensor-parallel group
// combines the per-row stats into each row's log-sum-exp and loss), with every tensor on the
// device of `stream` (a CUDA stream); work is queued on the stream and the call returns
// without waiting for it. One block per row, its threads striding over the row's columns and
// reducing in a fixed order: deterministic, and equal to the CPU's results to rounding.
// Exponents are CUDA's expf; one below e^-87 counts as 0, as on the CPU.
//
// The targets are on the device, so a bad target cannot be reported as the CPU kernels report
// it (INVALID_ARGUMENT naming its row): its row comes out as NaN instead, which poisons the
// loss and the gradient computed from it (validate targets while they are on the host). The
// checks of the shard (vocab_begin, valid_cols, vocab_size) are on the host and return errors
// as on the CPU.

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/cross_entropy.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// logits (T, V_shard) f32 holding vocabulary columns [vocab_begin, vocab_begin + valid_cols),
// targets (T) i32 -> stats (T, 3) f32, for every row (ignored rows too):
//   stats[t][0] = the maximum of the row's valid columns (-inf when valid_cols is 0),
//   stats[t][1] = the sum of exp(logit - stats[t][0]) over them (0 when valid_cols is 0),
//   stats[t][2] = the target's logit when the target lies in this shard, else 0.
// A row whose target is outside [0, vocab_size) and not -100 gets NaN in all three.
// INVALID_ARGUMENT for a shard [vocab_begin, vocab_begin + valid_cols) that is not within
// [0, vocab_size) or wider than V_shard.
absl::Status CrossEntropyShardStats(const Tensor& logits, const Tensor& targets,
                                    int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                    Tensor& stats, Stream& stream);

// dlogits (T, V_shard) f32, overwritten (it may be logits):
//   dlogits[t][c] = row_scale[t] * (exp(logits[t][c] - lse[t]) - [target[t] == vocab_begin + c])
// for c < valid_cols, 0 in the padding columns; a row whose row_scale is 0 is all zero (its
// lse is not read). lse (T) and row_scale (T) f32. A row whose target is below 0 and not -100
// is all NaN.
absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                  int64_t valid_cols, const Tensor& lse, const Tensor& row_scale,
                                  Tensor& dlogits, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_CROSS_ENTROPY_H_
