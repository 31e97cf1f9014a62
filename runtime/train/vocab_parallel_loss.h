#ifndef TESSERA_RUNTIME_TRAIN_VOCAB_PARALLEL_LOSS_H_
#define TESSERA_RUNTIME_TRAIN_VOCAB_PARALLEL_LOSS_H_

// The LM head and cross-entropy of a vocab-parallel model (Megatron): each TP rank holds the
// head's rows of its vocabulary shard, computes its logits shard, and the ranks exchange only
// (row maximum, sum of exponentials, target logit) per row, 3 floats, never the full logits.
// The backward is local: each rank's logits gradient is softmax - one-hot on its own columns.
// Logits are computed `chunk_rows` rows at a time, so the (rows, vocab shard) buffer stays
// bounded, and each chunk's backward runs right after its loss.

#include <cstdint>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/core/tensor.h"
#include "runtime/model/weight_plan.h"

namespace tessera::train {

// Sum of the token losses of some rows and how many targets they had.
struct LossSum {
  double sum = 0;
  int64_t targets = 0;
};

struct VocabParallelHead {
  const Tensor* weight = nullptr;  // (shard.padded_rows, H) f32: this rank's rows of the head
  Tensor* grad = nullptr;          // same shape, accumulated into; null for a frozen head
  model::VocabShard shard;
  int64_t vocab_size = 0;
  int64_t chunk_rows = 1024;
};

// The cross-entropy of rows `normed` (T, H) f32 against `targets` (T) i32 (a token id or
// kIgnoreLabel). With `loss_scale` and `d_normed` (T, H): also loss_scale times the loss's
// gradient, written into d_normed (this rank's part: the caller sums it over TP) and added
// into head.grad. Collective over `tp` (one all-gather of 3 floats a row per chunk).
absl::StatusOr<LossSum> VocabParallelCrossEntropy(const Tensor& normed, const Tensor& targets,
                                                  const VocabParallelHead& head,
                                                  comm::Communicator& tp, const float* loss_scale,
                                                  Tensor* d_normed);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_VOCAB_PARALLEL_LOSS_H_
