#include "comm/mpi/mpi_operation.h"

#include <cstdlib>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "comm/mpi/mpi_check.h"
#include "comm/mpi/mpi_types.h"
#include "kernels/cpu/elementwise_reduce.h"
#include "runtime/core/device_memory.h"
#include "runtime/core/status_macros.h"

namespace tessera::comm {
namespace {

kernels::Reduction ToReduction(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return kernels::Reduction::kSum;
    case ReduceOp::kMax: return kernels::Reduction::kMax;
    case ReduceOp::kMin: return kernels::Reduction::kMin;
  }
  return kernels::Reduction::kSum;
}

}  // namespace

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
    : algorithm_(algorithm),
      buffer_(static_cast<char*>(buffer)),
      count_(count),
      dtype_(dtype),
      op_(op),
      comm_(comm),
      tag_(tag),
      scratch_(scratch),
      element_bytes_(StorageBytes(dtype, 1)) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  while (pof2_ * 2 <= size_) pof2_ *= 2;
  extra_ = size_ - pof2_;
  if (rank_ < 2 * extra_) {
    virtual_rank_ = rank_ % 2 == 1 ? rank_ / 2 : -1;
  } else {
    virtual_rank_ = rank_ - extra_;
  }
}

char* HostAllReduce::At(int64_t element) const {
  return buffer_ + element * static_cast<int64_t>(element_bytes_);
}

int64_t HostAllReduce::ChunkCount(int chunk) const {
  return count_ / size_ + (chunk < count_ % size_ ? 1 : 0);
}

int64_t HostAllReduce::ChunkOffset(int chunk) const {
  return chunk * (count_ / size_) + std::min<int64_t>(chunk, count_ % size_);
}

absl::Status HostAllReduce::Exchange(int send_to, const void* send, int64_t send_count,
                                     int recv_from, void* recv, int64_t recv_count) {
  MPI_Datatype type = MpiDatatypeOf(dtype_);
  if (recv_from >= 0) {
    TESSERA_MPI_CHECK(MPI_Irecv(recv, static_cast<int>(recv_count), type, recv_from, tag_, comm_,
                                &requests_[0]));
  }
  if (send_to >= 0) {
    TESSERA_MPI_CHECK(MPI_Isend(send, static_cast<int>(send_count), type, send_to, tag_, comm_,
                                &requests_[1]));
  }
  return absl::OkStatus();
}

absl::Status HostAllReduce::Reduce(void* into, int64_t count) {
  return kernels::ReduceInto(into, scratch_->data(), count, dtype_, ToReduction(op_));
}

// Steps: 0 folds the extra ranks in, 1..log2(pof2) exchange with partners at doubling
// distance, the last sends the result back to the folded ranks.
absl::Status HostAllReduce::PostRecursiveDoublingStep() {
  int rounds = 0;
  while ((1 << rounds) < pof2_) ++rounds;
  while (true) {
    if (step_ == 0) {
      if (rank_ < 2 * extra_) {
        if (rank_ % 2 == 0) return Exchange(rank_ + 1, buffer_, count_, -1, nullptr, 0);
        reduce_into_ = buffer_;
        reduce_count_ = count_;
        return Exchange(-1, nullptr, 0, rank_ - 1, scratch_->data(), count_);
      }
    } else if (step_ <= rounds) {
      if (virtual_rank_ >= 0) {
        int partner_virtual = virtual_rank_ ^ (1 << (step_ - 1));
        int partner = partner_virtual < extra_ ? partner_virtual * 2 + 1 : partner_virtual + extra_;
        reduce_into_ = buffer_;
        reduce_count_ = count_;
        return Exchange(partner, buffer_, count_, partner, scratch_->data(), count_);
      }
    } else if (step_ == rounds + 1) {
      if (rank_ < 2 * extra_) {
        if (rank_ % 2 == 1) return Exchange(rank_ - 1, buffer_, count_, -1, nullptr, 0);
        return Exchange(-1, nullptr, 0, rank_ + 1, buffer_, count_);
      }
    } else {
      done_ = true;
      return absl::OkStatus();
    }
    ++step_;  // nothing for this rank in this step
  }
}

// Steps 0..n-2 reduce-scatter: send chunk (r-k), receive chunk (r-k-1) and reduce it.
// Steps n-1..2n-3 all-gather: send chunk (r+1-k), receive chunk (r-k) in place.
absl::Status HostAllReduce::PostRingStep() {
  int n = size_;
  int right = (rank_ + 1) % n;
  int left = (rank_ + n - 1) % n;
  if (step_ >= 2 * (n - 1)) {
    done_ = true;
    return absl::OkStatus();
  }
  if (step_ < n - 1) {
    int k = step_;
    int send = ((rank_ - k) % n + n) % n;
    int recv = ((rank_ - k - 1) % n + n) % n;
    reduce_into_ = At(ChunkOffset(recv));
    reduce_count_ = ChunkCount(recv);
    return Exchange(right, At(ChunkOffset(send)), ChunkCount(send), left, scratch_->data(),
                    ChunkCount(recv));
  }
  int k = step_ - (n - 1);
  int send = ((rank_ + 1 - k) % n + n) % n;
  int recv = ((rank_ - k) % n + n) % n;
  return Exchange(right, At(ChunkOffset(send)), ChunkCount(send), left, At(ChunkOffset(recv)),
                  ChunkCount(recv));
}

absl::Status HostAllReduce::Begin() {
  step_ = 0;
  if (size_ == 1 || count_ == 0) {
    done_ = true;
    return absl::OkStatus();
  }
  return algorithm_ == Algorithm::kRing ? PostRingStep() : PostRecursiveDoublingStep();
}

absl::StatusOr<bool> HostAllReduce::Advance() {
  while (!done_) {
    int flag = 0;
    TESSERA_MPI_CHECK(MPI_Testall(2, requests_, &flag, MPI_STATUSES_IGNORE));
    if (!flag) return false;
    if (reduce_into_ != nullptr) {
      TESSERA_RETURN_IF_ERROR(Reduce(reduce_into_, reduce_count_));
      reduce_into_ = nullptr;
    }
    ++step_;
    TESSERA_RETURN_IF_ERROR(algorithm_ == Algorithm::kRing ? PostRingStep()
                                                           : PostRecursiveDoublingStep());
  }
  return true;
}

}  // namespace tessera::comm
