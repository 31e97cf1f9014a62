#include "comm/collective.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::comm {

absl::string_view NameOf(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

absl::string_view NameOf(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllReduce:
      return "AllReduce";
    case CollectiveKind::kAllGather:
      return "AllGather";
    case CollectiveKind::kReduceScatter:
      return "ReduceScatter";
    case CollectiveKind::kBroadcast:
      return "Broadcast";
    case CollectiveKind::kBarrier:
      return "Barrier";
    case CollectiveKind::kSend:
      return "Send";
    case CollectiveKind::kRecv:
      return "Recv";
  }
  return "?";
}

absl::StatusOr<ReduceOp> ParseReduceOp(absl::string_view name) {
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    if (NameOf(op) == name) return op;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown reduce op '", name, "' (expected sum, max or min)"));
}

std::string CollectiveOp::Describe() const { return OpSignature::Of(*this, 0).Describe(); }

CollectiveBatch& CollectiveBatch::AllReduce(Tensor buffer, ReduceOp op) {
  ops_.push_back({CollectiveKind::kAllReduce, op, std::move(buffer), Tensor(), 0});
  return *this;
}

CollectiveBatch& CollectiveBatch::AllGather(Tensor input, Tensor output) {
  ops_.push_back(
      {CollectiveKind::kAllGather, ReduceOp::kSum, std::move(input), std::move(output), 0});
  return *this;
}

CollectiveBatch& CollectiveBatch::ReduceScatter(Tensor input, Tensor output, ReduceOp op) {
  ops_.push_back({CollectiveKind::kReduceScatter, op, std::move(input), std::move(output), 0});
  return *this;
}

CollectiveBatch& CollectiveBatch::Broadcast(Tensor buffer, int root) {
  ops_.push_back({CollectiveKind::kBroadcast, ReduceOp::kSum, std::move(buffer), Tensor(), root});
  return *this;
}

std::string CollectiveBatch::Describe() const {
  if (ops_.size() == 1) return ops_[0].Describe();
  std::vector<std::string> parts;
  for (const CollectiveOp& op : ops_) parts.push_back(op.Describe());
  return absl::StrCat("batch of ", ops_.size(), " [", absl::StrJoin(parts, ", "), "]");
}

absl::Status ValidateOp(const CollectiveOp& op, int comm_size, Device device) {
  auto invalid = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(op.Describe(), ": ", what));
  };
  if (op.input.dtype() == DType::kI4) {
    return invalid("collectives do not support packed int4; reinterpret the bytes as i8");
  }
  if (op.input.numel() > 0 && op.input.data() == nullptr) return invalid("input has no memory");
  if (op.input.device() != device) {
    return invalid(absl::StrCat("input is on ", op.input.device().ToString(),
                                " but the communicator works on ", device.ToString()));
  }
  switch (op.kind) {
    case CollectiveKind::kAllGather:
    case CollectiveKind::kReduceScatter: {
      const Tensor& big = op.kind == CollectiveKind::kAllGather ? op.output : op.input;
      const Tensor& small = op.kind == CollectiveKind::kAllGather ? op.input : op.output;
      if (op.output.dtype() != op.input.dtype()) {
        return invalid(absl::StrCat("output dtype ", NameOf(op.output.dtype()),
                                    " differs from input dtype ", NameOf(op.input.dtype())));
      }
      if (op.output.device() != device) {
        return invalid(absl::StrCat("output is on ", op.output.device().ToString(),
                                    " but the communicator works on ", device.ToString()));
      }
      if (op.output.numel() > 0 && op.output.data() == nullptr) {
        return invalid("output has no memory");
      }
      if (big.numel() != small.numel() * comm_size) {
        return invalid(absl::StrCat(
            op.kind == CollectiveKind::kAllGather ? "output" : "input", " holds ", big.numel(),
            " elements but must hold ", comm_size, " x ", small.numel(), " (group size x ",
            op.kind == CollectiveKind::kAllGather ? "input" : "output", ")"));
      }
      break;
    }
    case CollectiveKind::kBroadcast:
      if (op.root < 0 || op.root >= comm_size) {
        return invalid(absl::StrCat("root ", op.root, " is not a rank of a group of ", comm_size));
      }
      break;
    default:
      break;
  }
  return absl::OkStatus();
}

OpSignature OpSignature::Of(const CollectiveOp& op, uint64_t sequence) {
  OpSignature s;
  s.sequence = sequence;
  s.kind = static_cast<int32_t>(op.kind);
  bool reduces = op.kind == CollectiveKind::kAllReduce || op.kind == CollectiveKind::kReduceScatter;
  s.reduce_op = reduces ? static_cast<int32_t>(op.reduce_op) : 0;
  s.dtype = static_cast<int32_t>(op.input.dtype());
  s.root = op.kind == CollectiveKind::kBroadcast ? op.root : 0;
  s.count = op.input.numel();
  return s;
}

std::vector<OpSignature> OpSignature::OfBatch(const CollectiveBatch& batch, uint64_t first) {
  std::vector<OpSignature> signatures;
  for (size_t i = 0; i < batch.size(); ++i) signatures.push_back(Of(batch.ops()[i], first + i));
  return signatures;
}

OpSignature OpSignature::OfBarrier(uint64_t sequence) {
  OpSignature s;
  s.sequence = sequence;
  s.kind = static_cast<int32_t>(CollectiveKind::kBarrier);
  return s;
}

std::string OpSignature::Describe() const {
  auto k = static_cast<CollectiveKind>(kind);
  std::string name(NameOf(k));
  if (k == CollectiveKind::kBarrier) return name + "()";
  std::string args = absl::StrCat(NameOf(static_cast<DType>(dtype)), " x", count);
  switch (k) {
    case CollectiveKind::kAllReduce:
    case CollectiveKind::kReduceScatter:
      absl::StrAppend(&args, ", ", NameOf(static_cast<ReduceOp>(reduce_op)));
      break;
    case CollectiveKind::kBroadcast:
      absl::StrAppend(&args, ", root ", root);
      break;
    default:
      break;
  }
  return absl::StrCat(name, "(", args, ")");
}

absl::Status CompareSignatures(const std::vector<OpSignature>& signatures,
                               absl::string_view group) {
  for (size_t r = 1; r < signatures.size(); ++r) {
    if (signatures[r] == signatures[0]) continue;
    if (signatures[r].sequence != signatures[0].sequence) {
      return absl::FailedPreconditionError(
          absl::StrCat("collective mismatch in group ", group, ": rank 0 is at collective #",
                       signatures[0].sequence, " (", signatures[0].Describe(), ") but rank ", r,
                       " is at #", signatures[r].sequence, " (", signatures[r].Describe(), ")"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "collective mismatch at #", signatures[0].sequence, " in group ", group, ": rank 0 called ",
        signatures[0].Describe(), " but rank ", r, " called ", signatures[r].Describe()));
  }
  return absl::OkStatus();
}

absl::Status CheckSignaturesAcrossRanks(const std::vector<OpSignature>& signatures, int group_size,
                                        absl::string_view group, GatherBytes gather) {
  // Round 1: the first signature and the batch length from every rank.
  struct Header {
    OpSignature first;
    int64_t batch_size;
  };
  Header mine{signatures[0], static_cast<int64_t>(signatures.size())};
  std::vector<Header> all(group_size);
  absl::Status gathered = gather(&mine, sizeof(Header), all.data());
  if (!gathered.ok()) return gathered;
  std::vector<OpSignature> firsts;
  for (const Header& h : all) firsts.push_back(h.first);
  absl::Status compared = CompareSignatures(firsts, group);
  if (!compared.ok()) return compared;
  for (int r = 1; r < group_size; ++r) {
    if (all[r].batch_size != all[0].batch_size) {
      return absl::FailedPreconditionError(
          absl::StrCat("collective mismatch at #", signatures[0].sequence, " in group ", group,
                       ": rank 0 issued a batch of ", all[0].batch_size, " collectives but rank ",
                       r, " issued ", all[r].batch_size));
    }
  }
  if (signatures.size() == 1) return absl::OkStatus();

  // Round 2: the rest of the batch, compared operation by operation.
  size_t rest = signatures.size() - 1;
  std::vector<OpSignature> others(rest * group_size);
  gathered = gather(signatures.data() + 1, rest * sizeof(OpSignature), others.data());
  if (!gathered.ok()) return gathered;
  for (size_t i = 0; i < rest; ++i) {
    std::vector<OpSignature> column;
    for (int r = 0; r < group_size; ++r) column.push_back(others[r * rest + i]);
    compared = CompareSignatures(column, group);
    if (!compared.ok()) return compared;
  }
  return absl::OkStatus();
}

}  // namespace tessera::comm
