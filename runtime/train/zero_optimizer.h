#ifndef TESSERA_RUNTIME_TRAIN_ZERO_OPTIMIZER_H_
#define TESSERA_RUNTIME_TRAIN_ZERO_OPTIMIZER_H_

// ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
// Parameter Models", 2020): AdamW whose moments are sharded over the data-parallel group, so
// that each of dp replicas keeps 1/dp of them.
//
// The partition is the gradient buckets' in reduce-scatter mode (grad_buckets.h): bucket b's
// gradients laid end to end, padded to dp * s_b elements with s_b = ceil(elements / dp); DP
// rank r owns elements [r * s_b, (r + 1) * s_b) of every bucket. It depends on the parameter
// shapes, the bucket sizes and dp only, so every rank derives the same one. A step:
//   1. the reducer reduce-scatters each bucket while the backward goes on: rank r receives
//      the summed gradients of the elements it owns (GradientReducer::shard);
//   2. GradNorm: each rank's sum of squares over its elements (counted over TP as
//      GlobalGradNorm counts them: every element of the model once), summed over DP, then TP;
//   3. ClipGrads scales the owned gradients as ClipGrads (optimizer.h) scales all of them;
//   4. Step: AdamW (AdamWUpdate, the unsharded optimizer's arithmetic) on the owned elements,
//      then every bucket's updated shard is all-gathered into every rank's parameters.
// Each element thus gets the unsharded update from the same summed gradient: the values
// equal --zero 0's up to the order of the DP sums and the grad norm's summation order.
//
// State and Restore use the unsharded form (AdamW::State's names and whole tensors), so a
// checkpoint looks the same with or without sharding and resumes at any DP degree.
//
// Collective as marked: over the DP group, and GradNorm over TP too. Thread compatible; used
// between the reducer's Finish and its next BeginStep.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/core/tensor.h"
#include "runtime/train/grad_buckets.h"
#include "runtime/train/optimizer.h"
#include "runtime/train/parameters.h"

namespace tessera::train {

class ShardedAdamW {
 public:
  // Moments (zero) for this rank's share of every bucket of `reducer`, which must be in
  // reduce-scatter mode over `dp` with one entry per trainable parameter, its id the index in
  // params.all(): INTERNAL otherwise. `params`, `reducer` and `dp` must outlive the optimizer.
  static absl::StatusOr<std::unique_ptr<ShardedAdamW>> Create(ParameterSet& params,
                                                              GradientReducer& reducer,
                                                              comm::Communicator& dp,
                                                              const AdamWOptions& options);

  // The global L2 norm of the gradients the reducer left, as GlobalGradNorm computes it over
  // whole gradients. Collective over the DP group and over `tp`; the same value on every rank.
  absl::StatusOr<double> GradNorm(comm::Communicator& tp) const;
  // Scales this rank's summed gradients as ClipGrads does.
  void ClipGrads(double norm, double max_norm);
  // One update of this rank's elements at learning rate `lr`, then the all-gather: on return
  // every rank's parameters hold every new value. *gather_seconds: the all-gathers' time.
  // Collective over the DP group. Consumes the reducer's shards (they carry the new values).
  absl::Status Step(double lr, double* gather_seconds);
  int64_t steps_done() const { return steps_; }
  // Bytes of this rank's moments.
  int64_t state_bytes() const;

  // Every trainable parameter's whole moments, named and ordered as AdamW::State, on a rank
  // that passes `materialize`; an empty list elsewhere (the rank only takes part). Collective
  // over the DP group.
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> State(bool materialize);
  // Takes this rank's share of whole moments (AdamW::State's form, saved at any DP degree);
  // INVALID_ARGUMENT naming the tensor when one is missing or of another shape.
  absl::Status Restore(const std::vector<std::pair<std::string, Tensor>>& state, int64_t steps);

 private:
  // Elements [begin, begin + count) of parameter `param` (index in params.all()), which this
  // rank owns, at `shard_offset` in its bucket's shard.
  struct Piece {
    int param = 0;
    int64_t begin = 0;
    int64_t count = 0;
    int64_t shard_offset = 0;
  };
  struct Bucket {
    std::vector<Piece> pieces;
    Tensor exp_avg, exp_avg_sq;  // (shard_elements): the moments of the owned elements
  };

  ShardedAdamW(ParameterSet& params, GradientReducer& reducer, comm::Communicator& dp,
               AdamWOptions options)
      : params_(&params), reducer_(&reducer), dp_(&dp), options_(options) {}
  // Gathers `shard` (bucket b's shard_elements) from every rank into gathered_ and copies
  // each slot's elements to `whole[slot.id]` where that is defined. Collective over DP.
  absl::Status GatherBucket(int b, const Tensor& shard, std::vector<Tensor>& whole);

  ParameterSet* params_;
  GradientReducer* reducer_;
  comm::Communicator* dp_;
  AdamWOptions options_;
  std::vector<Bucket> buckets_;
  Tensor gathered_;  // (dp * the largest shard_elements): a bucket's all-gather
  int64_t steps_ = 0;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_ZERO_OPTIMIZER_H_
