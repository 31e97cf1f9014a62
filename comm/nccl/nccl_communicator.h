#ifndef TESSERA_COMM_NCCL_NCCL_COMMUNICATOR_H_
#define TESSERA_COMM_NCCL_NCCL_COMMUNICATOR_H_

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "comm/communicator.h"
#include "comm/mpi/mpi_communicator.h"

namespace tessera::comm {

class NcclWork;

// The device backend: collectives over NCCL on tensors in one GPU's memory, ordered on CUDA
// streams of that GPU. Shapes are those of CollectiveOp (comm/collective.h):
//   AllReduce:     buffer (n)                     in place on every rank
//   AllGather:     input (n) -> output (size*n)   rank r's input lands at output[r*n, (r+1)*n)
//   ReduceScatter: input (size*n) -> output (n)   rank r gets the reduction of slice r
//   Broadcast:     buffer (n)                     root's buffer copied to every rank
//   Send/Recv:     buffer (n) to / from one peer
// Supported dtypes: f32, bf16, f16, i8, i32, i64 (not int4); reductions sum, max, min.
//
// Contract. One process per GPU; every rank of the group issues the same collectives in the
// same order (TESSERA_COMM_VALIDATE=1 checks it). Calls return once the work is enqueued on
// the stream (Run, the single collectives, Send, Recv) and never wait for it on the host;
// Start returns a Work whose Wait blocks the host until the stream work has finished;
// Barrier blocks the host. The tensors must stay alive and unmodified until the stream
// reaches the end of the operation (handles kept by the communicator keep owned memory
// alive; views need their owner to).
//
// Deadlines. NCCL itself never times out: a rank that dies or never arrives leaves the
// others' kernels spinning. Each operation therefore has a deadline, CommOptions::timeout
// after it was issued. Wait() enforces it for Start's Work; for Run, Send and Recv a
// watchdog thread owned by the communicator polls every outstanding operation about every
// millisecond. When a deadline passes, or NCCL reports an asynchronous error (a peer's
// network or process failure), the communicator is aborted (ncclCommAbort, which stops the
// spinning kernels) and fails: the error names the operation, its sequence number, the
// group and the timeout (NCCL does not report which rank is missing), and every later call
// returns "communicator <name> failed earlier: ...". Data written by aborted operations is
// undefined. The process should then exit non-zero (see MpiRuntime).
//
// Thread safety. Like every Communicator, used by one thread at a time; the watchdog runs
// beside it and shares only mutex-guarded state. Every NCCL call on the communicator is
// serialized under one mutex, because NCCL communicators are not thread safe and the
// watchdog queries and aborts concurrently with the user thread's launches.
//
// Internals. NCCL runs in non-blocking mode (ncclConfig_t::blocking = 0): calls may return
// ncclInProgress, and the communicator is polled, with the deadline, until it is ready.
// The communicator owns a host communicator over the same ranks (a Split of the bootstrap
// communicator) for the unique-id exchange, validation signatures and Split.
class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`, a host communicator of the ranks that form the group
  // (group rank = bootstrap rank). `device` is this rank's GPU. INVALID_ARGUMENT for a
  // non-CUDA device or a non-host bootstrap; DEADLINE_EXCEEDED naming the group when not
  // every rank reaches NCCL's initialization within options.timeout; the NCCL or CUDA error
  // otherwise.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(Communicator& bootstrap,
                                                                  Device device,
                                                                  CommOptions options,
                                                                  std::string name);
  // The world group on this rank's GPU as topology discovery assigns it (RankPlacement::gpu),
  // with world's options. Collective over `world`. FAILED_PRECONDITION naming the ranks when
  // any rank has no GPU or two ranks of a host would share one.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> CreateForLocalGpu(
      MpiCommunicator& world);

  // Waits for the work the watchdog tracks (each bounded by its deadline), then releases
  // NCCL's resources (or, after a failure, leaves them to the abort).
  ~NcclCommunicator() override;

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  Device device() const override { return device_; }
  const std::vector<int>& world_ranks() const override { return host_->world_ranks(); }
  const CommOptions& options() const { return options_; }

  // `stream` must be a CUDA stream of device(). The Work's Wait blocks until the stream has
  // finished the batch, or fails at the deadline (aborting the communicator).
  absl::StatusOr<std::unique_ptr<Work>> Start(CollectiveBatch batch, Stream& stream) override;
  // Enqueues the batch on `stream` and returns without waiting on the host; the watchdog
  // enforces the deadline.
  absl::Status Run(CollectiveBatch batch, Stream& stream) override;
  // Enqueued on `stream` like Run; `peer` is a group rank other than this one.
  absl::Status Send(const Tensor& buffer, int peer, Stream& stream) override;
  absl::Status Recv(Tensor& buffer, int peer, Stream& stream) override;
  // Waits for the operations the watchdog tracks, then all-reduces one int32 on an internal
  // stream and blocks until every rank has joined it (deadline applies).
  absl::Status Barrier() override;
  // ncclCommSplit plus the same split of the host communicator. nullptr for kNoColor.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      std::string name) override;

 private:
  friend class NcclWork;

  NcclCommunicator(ncclComm_t comm, std::unique_ptr<Communicator> host, Device device,
                   std::string name, CommOptions options);

  absl::Status CheckUsable() const;
  absl::Status CheckStream(const Stream& stream, const char* what) const;
  // Records the first failure (sticky) and marks the process (MarkCommunicatorFailed).
  absl::Status Fail(absl::Status status);
  // Fail, then ncclCommAbort: other threads see the failure before the handle goes away.
  absl::Status FailAndAbort(absl::Status status);
  void Abort();
  // The failure that made another thread abort the communicator.
  absl::Status AbortedStatus() const;

  // Validates, numbers and launches a batch; the returned work is not yet tracked.
  absl::StatusOr<std::unique_ptr<NcclWork>> Enqueue(CollectiveBatch batch, Stream& stream);
  absl::StatusOr<std::unique_ptr<NcclWork>> EnqueuePointToPoint(CollectiveOp op, Stream& stream);
  // Issues the work's operations as one NCCL group on `stream` and records its event.
  absl::Status Launch(NcclWork& work, Stream& stream);
  absl::Status IssueGroup(const NcclWork& work, cudaStream_t stream, bool* in_progress)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(nccl_mu_);
  // Polls ncclCommGetAsyncError until the communicator leaves ncclInProgress: true when
  // ready, false at the deadline, the NCCL error otherwise.
  absl::StatusOr<bool> AwaitReady(std::chrono::steady_clock::time_point deadline);
  // ncclCommGetAsyncError under nccl_mu_; the recorded failure once aborted.
  absl::StatusOr<ncclResult_t> QueryAsyncState();
  absl::Status ExchangeSignatures(const std::vector<OpSignature>& signatures);
  absl::Status GatherBytes(const void* mine, size_t bytes, void* all, const OpSignature& what);

  // One check of a work: complete, still running, or failed (aborting the communicator).
  absl::StatusOr<bool> Progress(NcclWork& work);
  absl::Status CheckAsyncError(const NcclWork& work);
  absl::StatusOr<bool> QueryEvent(NcclWork& work);
  std::string TimeoutMessage(const NcclWork& work, bool launching) const;

  absl::StatusOr<cudaEvent_t> AcquireEvent();
  void ReleaseEvent(cudaEvent_t event, bool reusable);

  // Hands a launched work to the watchdog, starting it on first use.
  void Track(std::unique_ptr<NcclWork> work);
  // Blocks until the watchdog has nothing left (each work ends by its deadline).
  absl::Status DrainTracked();
  void WatchdogLoop();
  void PollTracked(std::vector<std::unique_ptr<NcclWork>>& works);
  bool Drained() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return submitted_.empty() && watched_ == 0;
  }
  bool HasSubmissionsOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !submitted_.empty();
  }

  // Serializes every NCCL call on comm_ (user thread, watchdog, destructor).
  mutable absl::Mutex nccl_mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(nccl_mu_);
  bool aborted_ ABSL_GUARDED_BY(nccl_mu_) = false;

  std::unique_ptr<Communicator> host_;  // same ranks, host memory
  Device device_;
  std::string name_;
  CommOptions options_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t next_sequence_ = 0;  // user thread only

  // Barrier's all-reduce runs on its own stream over its own int32, made on first use.
  std::unique_ptr<Stream> barrier_stream_;
  Tensor barrier_buffer_;

  mutable absl::Mutex mu_;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);  // sticky once set
  std::vector<cudaEvent_t> free_events_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<NcclWork>> submitted_ ABSL_GUARDED_BY(mu_);  // for the watchdog
  size_t watched_ ABSL_GUARDED_BY(mu_) = 0;  // works the watchdog holds
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;  // started by the user thread on first Track
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_NCCL_NCCL_COMMUNICATOR_H_
