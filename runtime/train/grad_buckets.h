#ifndef TESSERA_RUNTIME_TRAIN_GRAD_BUCKETS_H_
#define TESSERA_RUNTIME_TRAIN_GRAD_BUCKETS_H_

// Data-parallel gradient all-reduce in buckets, overlapped with the backward pass (as
// PyTorch's DDP): gradients are grouped into buckets of about 25 MiB (the first one small, so
// that communication starts early) in the order the backward finishes them, and each bucket
// starts its all-reduce as soon as all of its gradients are final, on a thread of its own
// that drives the collective while the backward computes the next layers. Buckets start in
// the same order on every rank. The optimizer step waits for all of them (Finish).
//
// The communicator is used only by the reducer's thread between BeginStep and Finish; it
// needs an MPI library with MPI_THREAD_MULTIPLE when other communicators run collectives on
// other threads meanwhile (without it, set overlap off: the buckets then run in Finish).
// Thread compatible otherwise.
//
// In reduce-scatter mode (ZeRO, zero_optimizer.h) each bucket's gradients are laid end to end
// in a flat buffer (slots()), padded with zeros to dp * shard_elements(), and reduce-scattered:
// DP rank r receives the sums of elements [r * shard_elements, (r + 1) * shard_elements) of
// the flat bucket into shard(b); the gradient tensors themselves keep this rank's own
// contributions. The layout is a function of the entries and the DP degree only, so it is the
// same on every rank of the group.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/core/tensor.h"

namespace tessera::train {

struct BucketOptions {
  int64_t bucket_bytes = int64_t{25} << 20;
  int64_t first_bucket_bytes = int64_t{1} << 20;
  bool overlap = true;  // all-reduce on a thread while the backward goes on
};

// What a bucket's collective leaves on each rank.
enum class Reduction {
  kAllReduce,      // every gradient summed over the group, in place
  kReduceScatter,  // each rank receives the sums of its shard of the flat bucket (shard())
};

class GradientReducer {
 public:
  // A gradient tensor and the backward stage that finishes it (stages are reported in
  // increasing order, see TrainableModel::BackwardStageOf).
  struct Entry {
    Tensor grad;
    int stage = 0;
    int id = -1;  // the caller's name for it (a parameter index), reported back in slots()
  };
  // Where an entry's gradient lies in its bucket's flat layout: elements
  // [offset, offset + numel).
  struct Slot {
    int id = -1;
    int64_t offset = 0;
    int64_t numel = 0;
  };
  // Buckets over `entries` (in stage order, then as given). `dp` must outlive the reducer.
  static absl::StatusOr<std::unique_ptr<GradientReducer>> Create(
      comm::Communicator& dp, std::vector<Entry> entries, const BucketOptions& options,
      Reduction reduction = Reduction::kAllReduce);
  ~GradientReducer();

  // A new optimizer step: no bucket is ready yet.
  void BeginStep();
  // Every gradient of `stage` (and of the stages before it) is final for this step.
  void StageDone(int stage);
  // Waits until every bucket has been summed over the group. *exposed_seconds: how long this
  // call waited; *comm_seconds: how long the all-reduces took in all. The first error of any
  // bucket (a deadline naming the missing rank, say).
  absl::Status Finish(double* exposed_seconds, double* comm_seconds);

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  int64_t bucket_bytes(int b) const { return buckets_[b].bytes; }
  Reduction reduction() const { return reduction_; }
  // The entries of bucket `b` in its flat layout, in order, end to end from offset 0.
  const std::vector<Slot>& slots(int b) const { return buckets_[b].slots; }
  // Reduce-scatter mode: elements of each rank's shard of bucket `b`, (bucket elements) / dp
  // rounded up; and this rank's shard (shard_elements), f32, which Finish fills with the
  // summed gradients and the caller may use (and overwrite) until the next BeginStep.
  int64_t shard_elements(int b) const { return buckets_[b].shard_elements; }
  const Tensor& shard(int b) const { return buckets_[b].shard; }
  Tensor& shard(int b) { return buckets_[b].shard; }

 private:
  struct Bucket {
    std::vector<Tensor> grads;
    std::vector<Slot> slots;  // one per grad
    int last_stage = 0;       // the bucket is ready once this stage is done
    int64_t bytes = 0;
    int64_t shard_elements = 0;  // reduce-scatter mode only, as shard
    Tensor shard;
  };

  GradientReducer(comm::Communicator& dp, BucketOptions options, Reduction reduction)
      : dp_(dp), options_(options), reduction_(reduction) {}
  // Runs bucket `b`'s collective to completion on the calling thread.
  absl::Status Reduce(int b);
  void ThreadMain();

  comm::Communicator& dp_;
  BucketOptions options_;
  Reduction reduction_;
  std::vector<Bucket> buckets_;
  // Reduce-scatter mode: the flat layout of the bucket being reduced (dp * the largest
  // shard), used by one bucket at a time: by the thread, or by Finish without overlap.
  Tensor flat_;
  int next_to_queue_ = 0;  // buckets before it have been handed to the thread (or run)

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<int> queue_;    // guarded by mutex_
  int done_ = 0;             // guarded by mutex_: buckets completed this step
  absl::Status status_;      // guarded by mutex_: the first error of this step
  double comm_seconds_ = 0;  // guarded by mutex_
  bool stopping_ = false;    // guarded by mutex_
  std::thread thread_;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_GRAD_BUCKETS_H_
