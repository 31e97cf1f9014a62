#ifndef TESSERA_COMM_MPI_MPI_OPERATION_H_
#define TESSERA_COMM_MPI_MPI_OPERATION_H_

// Operations in flight on the MPI backend. Nothing here blocks: the communicator polls
// Advance() until every operation of a batch reports completion or the deadline passes.

#include <mpi.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "comm/collective.h"

namespace tessera::comm {

class MpiOperation {
 public:
  virtual ~MpiOperation() = default;
  // Tests the outstanding requests; when they are done, finishes the current step and
  // starts the next. True once the whole operation has completed.
  virtual absl::StatusOr<bool> Advance() = 0;
};

// A single non-blocking MPI call (MPI_Iallgather, MPI_Ibcast, ...) already posted.
class RequestOperation final : public MpiOperation {
 public:
  explicit RequestOperation(MPI_Request request) : request_(request) {}
  absl::StatusOr<bool> Advance() override;

 private:
  MPI_Request request_;
};

// Host memory an operation borrows for incoming data: 64-byte aligned, reused across calls.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer();
  // Grows (never shrinks) to at least `bytes`.
  absl::Status Reserve(size_t bytes);
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// All-reduce in place over non-blocking point-to-point messages, as a step-wise state
// machine. Every rank ends with bitwise-identical results (each partial sum is formed in one
// place and copied), which tensor parallelism relies on.
//  - recursive doubling (log2 n exchanges of the whole buffer): latency-bound sizes;
//  - ring (reduce-scatter then all-gather of n chunks, 2(n-1) steps): bandwidth-bound sizes.
// Non-power-of-two groups fold the extra ranks into their neighbours first.
// buffer: `count` elements of `dtype`; scratch: at least ScratchBytes() bytes.
class HostAllReduce final : public MpiOperation {
 public:
  enum class Algorithm { kRecursiveDoubling, kRing };

  // Below this many bytes recursive doubling is used, from it on the ring.
  static constexpr size_t kRingThresholdBytes = 32 * 1024;
  static Algorithm Choose(size_t bytes, int group_size);

  HostAllReduce(Algorithm algorithm, void* buffer, int64_t count, DType dtype, ReduceOp op,
                MPI_Comm comm, int tag, ScratchBuffer* scratch);
  static size_t ScratchBytes(Algorithm algorithm, int64_t count, DType dtype, int group_size);

  // Posts the first step.
  absl::Status Begin();
  absl::StatusOr<bool> Advance() override;

 private:
  absl::Status PostRecursiveDoublingStep();
  absl::Status PostRingStep();
  absl::Status Exchange(int send_to, const void* send, int64_t send_count, int recv_from,
                        void* recv, int64_t recv_count);
  absl::Status Reduce(void* into, int64_t count);
  int64_t ChunkOffset(int chunk) const;
  int64_t ChunkCount(int chunk) const;
  char* At(int64_t element) const;

  Algorithm algorithm_;
  char* buffer_;
  int64_t count_;
  DType dtype_;
  ReduceOp op_;
  MPI_Comm comm_;
  int tag_;
  ScratchBuffer* scratch_;
  size_t element_bytes_;
  int rank_ = 0;
  int size_ = 1;

  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  int step_ = 0;          // index of the step whose messages are in flight
  bool done_ = false;
  // Recursive doubling.
  int pof2_ = 1;          // largest power of two <= size
  int extra_ = 0;         // size - pof2_: ranks folded into a neighbour
  int virtual_rank_ = -1; // rank among the pof2_ participants; -1 when folded out
  // What to do when the step in flight completes.
  void* reduce_into_ = nullptr;
  int64_t reduce_count_ = 0;
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_MPI_MPI_OPERATION_H_
