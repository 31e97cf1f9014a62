#include "runtime/train/vocab_parallel_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/linear.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/train/data.h"

namespace tessera::train {
namespace {

absl::StatusOr<Tensor> Empty(Shape shape) { return Tensor::Empty(DType::kF32, std::move(shape)); }

}  // namespace

absl::StatusOr<LossSum> VocabParallelCrossEntropy(const Tensor& normed, const Tensor& targets,
                                                  const VocabParallelHead& head,
                                                  comm::Communicator& tp_comm,
                                                  const float* loss_scale, Tensor* d_normed) {
  const int64_t tokens = normed.dim(0);
  const int64_t shard = head.shard.padded_rows;
  const int64_t valid = head.shard.end - head.shard.begin;
  const int tp = tp_comm.size();
  const int64_t chunk = std::max<int64_t>(1, head.chunk_rows);
  LossSum total;
  Stream cpu = Stream::Cpu();
  for (int64_t begin = 0; begin < tokens; begin += chunk) {
    const int64_t end = std::min(tokens, begin + chunk), rows = end - begin;
    TESSERA_ASSIGN_OR_RETURN(Tensor x, normed.Slice(begin, end));
    TESSERA_ASSIGN_OR_RETURN(Tensor chunk_targets, targets.Slice(begin, end));
    TESSERA_ASSIGN_OR_RETURN(Tensor logits, Empty({rows, shard}));
    TESSERA_RETURN_IF_ERROR(kernels::Linear(x, *head.weight, Tensor(), logits));
    TESSERA_ASSIGN_OR_RETURN(Tensor stats, Empty({rows, 3}));
    TESSERA_RETURN_IF_ERROR(kernels::CrossEntropyShardStats(logits, chunk_targets, head.shard.begin,
                                                            valid, head.vocab_size, stats));
    Tensor all = stats;
    if (tp > 1) {
      TESSERA_ASSIGN_OR_RETURN(all, Empty({tp * rows * 3}));
      TESSERA_RETURN_IF_ERROR(tp_comm.AllGather(stats.Flatten(), all, cpu));
    }
    TESSERA_ASSIGN_OR_RETURN(Tensor lse, Empty({rows}));
    TESSERA_ASSIGN_OR_RETURN(Tensor row_scale, Empty({rows}));
    for (int64_t i = 0; i < rows; ++i) {
      float max = -std::numeric_limits<float>::infinity();
      for (int r = 0; r < tp; ++r) max = std::max(max, all.data<float>()[(r * rows + i) * 3]);
      double sum = 0, target_logit = 0;
      for (int r = 0; r < tp; ++r) {
        const float* part = all.data<float>() + (r * rows + i) * 3;
        sum += static_cast<double>(part[1]) * std::exp(static_cast<double>(part[0]) - max);
        target_logit += part[2];
      }
      const double row_lse = max + std::log(sum);
      lse.data<float>()[i] = static_cast<float>(row_lse);
      const bool counted = chunk_targets.data<int32_t>()[i] != kIgnoreLabel;
      row_scale.data<float>()[i] = counted && loss_scale != nullptr ? *loss_scale : 0.0f;
      if (counted) {
        total.sum += row_lse - target_logit;
        ++total.targets;
      }
    }
    if (d_normed == nullptr) continue;
    TESSERA_RETURN_IF_ERROR(kernels::CrossEntropyBackward(logits, chunk_targets, head.shard.begin,
                                                          valid, lse, row_scale, logits));
    TESSERA_ASSIGN_OR_RETURN(Tensor dx, d_normed->Slice(begin, end));
    TESSERA_RETURN_IF_ERROR(kernels::LinearBackwardInput(logits, *head.weight, dx));
    if (head.grad != nullptr) {
      TESSERA_RETURN_IF_ERROR(kernels::LinearBackwardWeight(logits, x, *head.grad, nullptr));
    }
  }
  return total;
}

}  // namespace tessera::train
