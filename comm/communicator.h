#ifndef TESSERA_COMM_COMMUNICATOR_H_
#define TESSERA_COMM_COMMUNICATOR_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/collective.h"
#include "comm/comm_options.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::comm {

// Completion of a batch of collectives started with Communicator::Start.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the batch has completed (host backend: the results are in place; device
  // backend: the stream work has finished) or failed. Fails with DEADLINE_EXCEEDED when the
  // communicator's timeout passes first.
  virtual absl::Status Wait() = 0;
  // Returns at once: true when complete. Drives progress of host collectives, so a caller
  // overlapping compute with communication should poll between pieces of compute.
  virtual absl::StatusOr<bool> Poll() = 0;
};

// A group of ranks that run collectives together (gloo's and NCCL's sense of a communicator).
//
// Every rank of the group must issue the same collectives in the same order. Each call has a
// deadline (CommOptions::timeout): a rank that dies or never arrives makes the others fail
// with DEADLINE_EXCEEDED, naming the collective, its sequence number, the group and the
// ranks that did not arrive, instead of hanging. After any failure the communicator stays
// failed and every later call returns the same error.
//
// Host backends complete each synchronous call before returning; device backends order it
// on `stream` and return once it is enqueued. A communicator is used by one thread at a time.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Name of the group in messages ("world", "tp0", "dp1").
  virtual const std::string& name() const = 0;
  // The device whose memory the collectives read and write.
  virtual Device device() const = 0;
  // World rank of each group rank, for messages.
  virtual const std::vector<int>& world_ranks() const = 0;

  // Starts a batch and returns at once. The tensors must stay alive and unmodified until the
  // returned Work completes.
  virtual absl::StatusOr<std::unique_ptr<Work>> Start(CollectiveBatch batch, Stream& stream) = 0;

  // Runs a batch: complete on return for host backends, ordered on `stream` for device ones.
  virtual absl::Status Run(CollectiveBatch batch, Stream& stream);

  // Single collectives (see CollectiveOp for shapes), each a batch of one.
  absl::Status AllReduce(Tensor& buffer, ReduceOp op, Stream& stream);
  // Called after every successful AllReduce with its size and the time the call took (host
  // backends: the whole collective; device backends: until it was enqueued). For the
  // per-rank latency histograms of a serving process; set before use, not while in use.
  using AllReduceObserver = std::function<void(int64_t bytes, double seconds)>;
  void set_allreduce_observer(AllReduceObserver observer) {
    allreduce_observer_ = std::move(observer);
  }
  absl::Status AllGather(const Tensor& input, Tensor& output, Stream& stream);
  absl::Status ReduceScatter(const Tensor& input, Tensor& output, ReduceOp op, Stream& stream);
  absl::Status Broadcast(Tensor& buffer, int root, Stream& stream);

  // Point-to-point: `peer` must issue the matching Recv/Send with the same dtype and count.
  virtual absl::Status Send(const Tensor& buffer, int peer, Stream& stream) = 0;
  virtual absl::Status Recv(Tensor& buffer, int peer, Stream& stream) = 0;

  // Returns once every rank of the group has called Barrier (all prior work complete).
  virtual absl::Status Barrier() = 0;

  // Collective over this group: ranks passing the same color form a new group, ordered by
  // key (ties by rank). A rank passing kNoColor joins none and gets nullptr.
  static constexpr int kNoColor = -1;
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                              std::string name) = 0;

 private:
  AllReduceObserver allreduce_observer_;
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_COMMUNICATOR_H_
