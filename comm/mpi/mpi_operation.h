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

// An operation made of steps, each a pair of non-blocking point-to-point messages (one send,
// one receive) followed by local work once both have completed.
class SteppedOperation : public MpiOperation {
 public:
  SteppedOperation(MPI_Comm comm, int tag, DType dtype);
  // Posts the first step.
  absl::Status Begin();
  absl::StatusOr<bool> Advance() final;

 protected:
  // Posts the messages of step `step()` with Exchange(), or calls Finish() when there are no
  // more steps. May post nothing for a step (then the next step is posted at once).
  virtual absl::Status PostStep() = 0;
  // Local work after the messages of step `step()` have completed.
  virtual absl::Status CompleteStep() = 0;

  // Receive `recv_count` elements from `recv_from` and send `send_count` to `send_to`;
  // a negative rank skips that direction.
  absl::Status Exchange(int send_to, const void* send, int64_t send_count, int recv_from,
                        void* recv, int64_t recv_count);
  void Finish() { done_ = true; }
  bool posted() const;
  int step() const { return step_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  DType dtype() const { return dtype_; }
  // Element `index` of an array of this operation's dtype.
  char* Element(const void* base, int64_t index) const {
    return static_cast<char*>(const_cast<void*>(base)) + index * element_bytes_;
  }

 private:
  MPI_Comm comm_;
  int tag_;
  DType dtype_;
  int64_t element_bytes_;
  int rank_ = 0;
  int size_ = 1;
  int step_ = 0;
  bool done_ = false;
  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
};

// All-reduce in place. Every rank ends with bitwise-identical results (each partial result
// is formed in one place and copied), which tensor parallelism relies on.
//  - recursive doubling (log2 n exchanges of the whole buffer): latency-bound sizes;
//  - ring (reduce-scatter then all-gather of n chunks, 2(n-1) steps): bandwidth-bound sizes.
// Recursive doubling on a group that is not a power of two folds the extra ranks into their
// neighbours first and sends them the result at the end.
// buffer: `count` elements; scratch: at least ScratchBytes() bytes.
class HostAllReduce final : public SteppedOperation {
 public:
  enum class Algorithm { kRecursiveDoubling, kRing };

  // Below this many bytes recursive doubling is used, from it on the ring.
  static constexpr size_t kRingThresholdBytes = 32 * 1024;
  static Algorithm Choose(size_t bytes, int group_size);
  static size_t ScratchBytes(Algorithm algorithm, int64_t count, DType dtype, int group_size);

  HostAllReduce(Algorithm algorithm, void* buffer, int64_t count, DType dtype, ReduceOp op,
                MPI_Comm comm, int tag, ScratchBuffer* scratch);

 private:
  absl::Status PostStep() override;
  absl::Status CompleteStep() override;
  absl::Status PostRecursiveDoublingStep();
  absl::Status PostRingStep();
  int64_t ChunkOffset(int chunk) const;
  int64_t ChunkCount(int chunk) const;

  Algorithm algorithm_;
  void* buffer_;
  int64_t count_;
  ReduceOp op_;
  ScratchBuffer* scratch_;
  int pof2_ = 1;                 // largest power of two <= size
  int extra_ = 0;                // size - pof2_: ranks folded into a neighbour
  int virtual_rank_ = -1;        // rank among the pof2_ participants; -1 when folded out
  void* reduce_into_ = nullptr;  // where the step in flight's data is reduced, if anywhere
  int64_t reduce_count_ = 0;
};

// Ring reduce-scatter: input (n*m) -> output (m), rank r receiving the reduction of slice r.
// Step k sends the running partial sum of slice (r-k-1) to the right neighbour and adds
// its own input to the partial sum of slice (r-k-2) arriving from the left; after n-1
// steps that slice is r. scratch: 2*m elements (the arriving slice and the running sum).
class HostReduceScatter final : public SteppedOperation {
 public:
  HostReduceScatter(const void* input, void* output, int64_t count, DType dtype, ReduceOp op,
                    MPI_Comm comm, int tag, ScratchBuffer* scratch);
  static size_t ScratchBytes(int64_t count, DType dtype);

 private:
  absl::Status PostStep() override;
  absl::Status CompleteStep() override;
  int Slice(int offset) const { return ((rank() + offset) % size() + size()) % size(); }

  const void* input_;
  void* output_;
  int64_t count_;
  ReduceOp op_;
  void* arriving_;
  void* running_;
};

// Ring all-gather: input (m) -> output (n*m), rank r's input landing in slice r. Step k
// forwards slice (r-k) to the right and receives slice (r-k-1) from the left in place.
class HostAllGather final : public SteppedOperation {
 public:
  HostAllGather(const void* input, void* output, int64_t count, DType dtype, MPI_Comm comm,
                int tag);

 private:
  absl::Status PostStep() override;
  absl::Status CompleteStep() override { return absl::OkStatus(); }
  int Slice(int offset) const { return ((rank() + offset) % size() + size()) % size(); }

  const void* input_;
  void* output_;
  int64_t count_;
};

}  // namespace tessera::comm

#endif  // TESSERA_COMM_MPI_MPI_OPERATION_H_
