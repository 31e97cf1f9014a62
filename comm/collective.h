#ifndef TESSERA_COMM_COLLECTIVE_H_
#define TESSERA_COMM_COLLECTIVE_H_

// What a collective is, independent of the backend that runs it: the operations, a batch of
// them issued together, their validation against the communicator, and the signature that
// ranks compare in validation mode.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/tensor.h"

namespace tessera::comm {

enum class ReduceOp : int32_t { kSum, kMax, kMin };
enum class CollectiveKind : int32_t {
  kAllReduce,
  kAllGather,
  kReduceScatter,
  kBroadcast,
  kBarrier,
  kSend,
  kRecv
};

absl::string_view NameOf(ReduceOp op);          // "sum", "max", "min"
absl::string_view NameOf(CollectiveKind kind);  // "AllReduce", ...
absl::StatusOr<ReduceOp> ParseReduceOp(absl::string_view name);

// One operation of a batch. Tensors are handles: the memory is the caller's and must stay
// alive and untouched until the operation completes.
//   AllReduce:     buffer (n)                     in place on every rank
//   AllGather:     input (n) -> output (size*n)   rank r's input lands at output[r*n, (r+1)*n)
//   ReduceScatter: input (size*n) -> output (n)   rank r gets the reduction of slice r
//   Broadcast:     buffer (n)                     root's buffer copied to every rank
struct CollectiveOp {
  CollectiveKind kind = CollectiveKind::kAllReduce;
  ReduceOp reduce_op = ReduceOp::kSum;
  Tensor input;   // AllReduce and Broadcast: the buffer itself
  Tensor output;  // AllGather and ReduceScatter only
  int root = 0;   // Broadcast only

  // "AllReduce(f32 x1024, sum)", "AllGather(bf16 x8)", "Broadcast(i32 x3, root 1)": the
  // kind, the dtype and element count of the (input) buffer, and the op or root.
  std::string Describe() const;
};

// Collectives to be issued together as one group (NCCL group semantics: the backend may
// fuse or overlap them; they complete together). DDP issues a gradient bucket this way.
class CollectiveBatch {
 public:
  CollectiveBatch& AllReduce(Tensor buffer, ReduceOp op);
  CollectiveBatch& AllGather(Tensor input, Tensor output);
  CollectiveBatch& ReduceScatter(Tensor input, Tensor output, ReduceOp op);
  CollectiveBatch& Broadcast(Tensor buffer, int root);

  const std::vector<CollectiveOp>& ops() const { return ops_; }
  // "AllReduce(f32 x16, sum)" for one operation, "batch of 2 [..., ...]" for more.
  std::string Describe() const;
  std::vector<CollectiveOp>& mutable_ops() { return ops_; }
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }

 private:
  std::vector<CollectiveOp> ops_;
};

// Checks an operation against the communicator it is issued on: dtypes the collectives
// support (all but int4), matching input/output dtypes and sizes, root in range, tensors on
// `device`. INVALID_ARGUMENT naming the operation and what is wrong.
absl::Status ValidateOp(const CollectiveOp& op, int comm_size, Device device);

// Fixed-size description of one call that ranks exchange in validation mode. Equal
// signatures from all ranks at the same sequence number mean they issued matching calls.
struct OpSignature {
  uint64_t sequence = 0;
  int32_t kind = 0;       // CollectiveKind
  int32_t reduce_op = 0;  // ReduceOp; 0 where it does not apply
  int32_t dtype = 0;      // DType
  int32_t root = 0;       // Broadcast root; 0 otherwise
  int64_t count = 0;      // elements of the (input) buffer on this rank

  static OpSignature Of(const CollectiveOp& op, uint64_t sequence);
  // The signatures of a batch whose first operation has sequence number `first`.
  static std::vector<OpSignature> OfBatch(const CollectiveBatch& batch, uint64_t first);
  static OpSignature OfBarrier(uint64_t sequence);
  std::string Describe() const;  // as CollectiveOp::Describe, from the signature alone
  friend bool operator==(const OpSignature&, const OpSignature&) = default;
};
static_assert(sizeof(OpSignature) == 32, "OpSignature is exchanged as raw bytes");

// Compares the signatures of one call gathered from every rank (index = group rank).
// OK if all match; otherwise FAILED_PRECONDITION naming the sequence number, the group and
// both sides of the first mismatch, e.g.
//   collective mismatch at #12 in group tp0: rank 0 called AllReduce(f32 x16, sum) but
//   rank 1 called AllGather(f32 x8)
absl::Status CompareSignatures(const std::vector<OpSignature>& signatures, absl::string_view group);

// Gathers `bytes` bytes from every rank of the group into `all` (rank-major), with the
// group's deadline: the transport a backend lends to CheckSignaturesAcrossRanks.
using GatherBytes = absl::FunctionRef<absl::Status(const void* mine, size_t bytes, void* all)>;

// Validation mode, for one batch: gathers every rank's signatures (the first with the batch
// length, then the rest) and compares them. A gather failure is returned as it is; a
// mismatch is FAILED_PRECONDITION naming both sides (see CompareSignatures), or the two
// batch lengths.
absl::Status CheckSignaturesAcrossRanks(const std::vector<OpSignature>& signatures, int group_size,
                                        absl::string_view group, GatherBytes gather);

}  // namespace tessera::comm

#endif  // TESSERA_COMM_COLLECTIVE_H_
