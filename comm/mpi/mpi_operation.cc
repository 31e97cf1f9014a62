#include "comm/mpi/mpi_operation.h"

#include <cstdlib>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "comm/mpi/mpi_check.h"
#include "comm/mpi/mpi_types.h"
#include "kernels/cpu/elementwise_reduce.h"
#include "runtime/core/device_memory.h"
#include "runtime/core/status_macros.h"

namespace tessera::comm {

absl::StatusOr<bool> RequestOperation::Advance() {
  int done = 0;
  TESSERA_MPI_CHECK(MPI_Test(&request_, &done, MPI_STATUS_IGNORE));
  return done != 0;
}

ScratchBuffer::~ScratchBuffer() { FreeBytes(Device::Cpu(), data_); }

absl::Status ScratchBuffer::Reserve(size_t bytes) {
  if (bytes <= capacity_) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(void* grown, AllocateBytes(Device::Cpu(), bytes));
  FreeBytes(Device::Cpu(), data_);
  data_ = grown;
  capacity_ = bytes;
  return absl::OkStatus();
}

SteppedOperation::SteppedOperation(MPI_Comm comm, int tag, DType dtype)
    : comm_(comm), tag_(tag), dtype_(dtype), element_bytes_(StorageBytes(dtype, 1)) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

bool SteppedOperation::posted() const {
  return requests_[0] != MPI_REQUEST_NULL || requests_[1] != MPI_REQUEST_NULL;
}

absl::Status SteppedOperation::Exchange(int send_to, const void* send, int64_t send_count,
                                        int recv_from, void* recv, int64_t recv_count) {
  MPI_Datatype type = MpiDatatypeOf(dtype_);
  if (recv_from >= 0) {
    TESSERA_MPI_CHECK(
        MPI_Irecv(recv, static_cast<int>(recv_count), type, recv_from, tag_, comm_, &requests_[0]));
  }
  if (send_to >= 0) {
    TESSERA_MPI_CHECK(
        MPI_Isend(send, static_cast<int>(send_count), type, send_to, tag_, comm_, &requests_[1]));
  }
  return absl::OkStatus();
}

absl::Status SteppedOperation::Begin() {
  step_ = 0;
  // Steps that involve no message on this rank are skipped at once.
  while (!done_) {
    TESSERA_RETURN_IF_ERROR(PostStep());
    if (done_ || posted()) break;
    ++step_;
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> SteppedOperation::Advance() {
  while (!done_) {
    int flag = 0;
    TESSERA_MPI_CHECK(MPI_Testall(2, requests_, &flag, MPI_STATUSES_IGNORE));
    if (!flag) return false;
    TESSERA_RETURN_IF_ERROR(CompleteStep());
    do {
      ++step_;
      TESSERA_RETURN_IF_ERROR(PostStep());
    } while (!done_ && !posted());
  }
  return true;
}

HostAllReduce::Algorithm HostAllReduce::Choose(size_t bytes, int group_size) {
  (void)group_size;
  // TESSERA_ALLREDUCE_ALGORITHM=ring|recursive_doubling forces one (for measurement).
  static const char* forced = std::getenv("TESSERA_ALLREDUCE_ALGORITHM");
  if (forced != nullptr && std::string_view(forced) == "ring") return Algorithm::kRing;
  if (forced != nullptr && std::string_view(forced) == "recursive_doubling") {
    return Algorithm::kRecursiveDoubling;
  }
  return bytes < kRingThresholdBytes ? Algorithm::kRecursiveDoubling : Algorithm::kRing;
}

size_t HostAllReduce::ScratchBytes(Algorithm algorithm, int64_t count, DType dtype,
                                   int group_size) {
  int64_t elements = algorithm == Algorithm::kRing ? (count + group_size - 1) / group_size : count;
  return StorageBytes(dtype, elements);
}

HostAllReduce::HostAllReduce(Algorithm algorithm, void* buffer, int64_t count, DType dtype,
                             ReduceOp op, MPI_Comm comm, int tag, ScratchBuffer* scratch)
    : SteppedOperation(comm, tag, dtype),
      algorithm_(algorithm),
      buffer_(buffer),
      count_(count),
      op_(op),
      scratch_(scratch) {
  while (pof2_ * 2 <= size()) pof2_ *= 2;
  extra_ = size() - pof2_;
  if (rank() < 2 * extra_) {
    virtual_rank_ = rank() % 2 == 1 ? rank() / 2 : -1;
  } else {
    virtual_rank_ = rank() - extra_;
  }
}

int64_t HostAllReduce::ChunkCount(int chunk) const {
  return count_ / size() + (chunk < count_ % size() ? 1 : 0);
}

int64_t HostAllReduce::ChunkOffset(int chunk) const {
  return chunk * (count_ / size()) + std::min<int64_t>(chunk, count_ % size());
}

absl::Status HostAllReduce::PostStep() {
  reduce_into_ = nullptr;
  if (size() == 1 || count_ == 0) {
    Finish();
    return absl::OkStatus();
  }
  return algorithm_ == Algorithm::kRing ? PostRingStep() : PostRecursiveDoublingStep();
}

absl::Status HostAllReduce::CompleteStep() {
  if (reduce_into_ == nullptr) return absl::OkStatus();
  return kernels::ReduceInto(reduce_into_, scratch_->data(), reduce_count_, dtype(),
                             ToReduction(op_));
}

// Steps: 0 folds the extra ranks in, 1..log2(pof2) exchange with partners at doubling
// distance, the last sends the result back to the folded ranks. A step with nothing for
// this rank posts nothing.
absl::Status HostAllReduce::PostRecursiveDoublingStep() {
  int rounds = 0;
  while ((1 << rounds) < pof2_) ++rounds;
  int r = rank();
  if (step() == 0) {
    if (r >= 2 * extra_) return absl::OkStatus();
    if (r % 2 == 0) return Exchange(r + 1, buffer_, count_, -1, nullptr, 0);
    reduce_into_ = buffer_;
    reduce_count_ = count_;
    return Exchange(-1, nullptr, 0, r - 1, scratch_->data(), count_);
  }
  if (step() <= rounds) {
    if (virtual_rank_ < 0) return absl::OkStatus();
    int partner_virtual = virtual_rank_ ^ (1 << (step() - 1));
    int partner = partner_virtual < extra_ ? partner_virtual * 2 + 1 : partner_virtual + extra_;
    reduce_into_ = buffer_;
    reduce_count_ = count_;
    return Exchange(partner, buffer_, count_, partner, scratch_->data(), count_);
  }
  if (step() == rounds + 1) {
    if (r >= 2 * extra_) return absl::OkStatus();
    if (r % 2 == 1) return Exchange(r - 1, buffer_, count_, -1, nullptr, 0);
    return Exchange(-1, nullptr, 0, r + 1, buffer_, count_);
  }
  Finish();
  return absl::OkStatus();
}

// Steps 0..n-2 reduce-scatter: send chunk (r-k), receive chunk (r-k-1) and reduce it.
// Steps n-1..2n-3 all-gather: send chunk (r+1-k), receive chunk (r-k) in place.
absl::Status HostAllReduce::PostRingStep() {
  int n = size();
  int r = rank();
  int right = (r + 1) % n;
  int left = (r + n - 1) % n;
  auto chunk = [n](int c) { return (c % n + n) % n; };
  if (step() >= 2 * (n - 1)) {
    Finish();
    return absl::OkStatus();
  }
  if (step() < n - 1) {
    int k = step();
    int send = chunk(r - k);
    int recv = chunk(r - k - 1);
    reduce_into_ = Element(buffer_, ChunkOffset(recv));
    reduce_count_ = ChunkCount(recv);
    return Exchange(right, Element(buffer_, ChunkOffset(send)), ChunkCount(send), left,
                    scratch_->data(), ChunkCount(recv));
  }
  int k = step() - (n - 1);
  int send = chunk(r + 1 - k);
  int recv = chunk(r - k);
  return Exchange(right, Element(buffer_, ChunkOffset(send)), ChunkCount(send), left,
                  Element(buffer_, ChunkOffset(recv)), ChunkCount(recv));
}

size_t HostReduceScatter::ScratchBytes(int64_t count, DType dtype) {
  return 2 * StorageBytes(dtype, count);
}

HostReduceScatter::HostReduceScatter(const void* input, void* output, int64_t count, DType dtype,
                                     ReduceOp op, MPI_Comm comm, int tag, ScratchBuffer* scratch)
    : SteppedOperation(comm, tag, dtype),
      input_(input),
      output_(output),
      count_(count),
      op_(op),
      arriving_(scratch->data()),
      running_(Element(scratch->data(), count)) {}

absl::Status HostReduceScatter::PostStep() {
  int n = size();
  if (count_ == 0 || step() >= n - 1) {
    if (n == 1 && count_ > 0 && step() == 0) {
      std::memcpy(output_, input_, StorageBytes(dtype(), count_));
    }
    Finish();
    return absl::OkStatus();
  }
  int k = step();
  const void* send = k == 0 ? Element(input_, Slice(-1) * count_) : running_;
  return Exchange((rank() + 1) % n, send, count_, (rank() + n - 1) % n, arriving_, count_);
}

absl::Status HostReduceScatter::CompleteStep() {
  int k = step();
  void* into = k == size() - 2 ? output_ : running_;
  return kernels::Reduce(into, Element(input_, Slice(-k - 2) * count_), arriving_, count_, dtype(),
                         ToReduction(op_));
}

HostAllGather::HostAllGather(const void* input, void* output, int64_t count, DType dtype,
                             MPI_Comm comm, int tag)
    : SteppedOperation(comm, tag, dtype), input_(input), output_(output), count_(count) {}

absl::Status HostAllGather::PostStep() {
  int n = size();
  if (step() == 0 && count_ > 0) {
    std::memcpy(Element(output_, rank() * count_), input_, StorageBytes(dtype(), count_));
  }
  if (count_ == 0 || step() >= n - 1) {
    Finish();
    return absl::OkStatus();
  }
  int k = step();
  return Exchange((rank() + 1) % n, Element(output_, Slice(-k) * count_), count_,
                  (rank() + n - 1) % n, Element(output_, Slice(-k - 1) * count_), count_);
}

}  // namespace tessera::comm
