#include "comm/mpi/mpi_communicator.h"

#include <sched.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/arrival_report.h"
#include "comm/host_name.h"
#include "comm/mpi/mpi_check.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/mpi/mpi_types.h"
#include "runtime/core/status_macros.h"

namespace tessera::comm {
namespace {

using Clock = std::chrono::steady_clock;

// Tags on the control communicator.
constexpr int kArrivalQueryTag = 1;
constexpr int kArrivalAnswerTag = 2;
// Tag of point-to-point data on the data communicator.
constexpr int kPointToPointTag = 7;

// Sent by a rank whose deadline is near: "I am waiting in collective #sequence".
struct ArrivalQuery {
  uint64_t sequence = 0;
};
// The answer: "and I am waiting in collective #sequence of kind `kind`".
struct ArrivalAnswer {
  uint64_t query_sequence = 0;
  uint64_t sequence = 0;
  int32_t kind = 0;
  int32_t padding = 0;
};

// How often a waiting rank looks for arrival queries, how long after polling starts it
// begins yielding the core (ranks often outnumber cores on small machines), and after how
// long it naps between polls: a rank that waits that long is idle (an engine peer between
// requests), and a nap of a few tens of microseconds costs such a wait nothing.
constexpr auto kAnswerInterval = std::chrono::milliseconds(1);
constexpr auto kSpinBeforeYield = std::chrono::microseconds(50);
constexpr auto kYieldBeforeNap = std::chrono::milliseconds(2);
constexpr auto kNap = std::chrono::microseconds(50);

Clock::duration ToClock(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

// The arrival check starts this long before the deadline: a tenth of the timeout, at most
// one second, so that the whole failure fits inside the deadline.
absl::Duration ArrivalCheckLead(absl::Duration timeout) {
  return std::min(timeout / 10, absl::Seconds(1));
}

absl::Status CheckCount(const CollectiveOp& op) {
  int64_t count = std::max(op.input.numel(), op.output.numel());
  if (count > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(op.Describe(), ": ", count,
                                                   " elements exceed the MPI limit of ", INT_MAX,
                                                   " per call; split the buffer"));
  }
  return absl::OkStatus();
}

}  // namespace

struct MpiCommunicator::Pending {
  std::vector<std::unique_ptr<MpiOperation>> operations;
  std::vector<char> finished;              // per operation
  OpSignature signature;                   // of the first operation; identifies the wait
  const CollectiveBatch* batch = nullptr;  // described in messages when set
  const char* purpose = "";                // prefix in messages ("validation of ")
  bool point_to_point = false;
  int peer = -1;
  Clock::time_point started;
  Clock::time_point deadline;
  Clock::time_point check_arrivals_at;
  bool queries_sent = false;
  std::vector<std::optional<PeerState>> answers;

  void Add(std::unique_ptr<MpiOperation> operation) {
    operations.push_back(std::move(operation));
    finished.push_back(0);
  }
  void AddRequest(MPI_Request request) { Add(std::make_unique<RequestOperation>(request)); }

  // Built only when a message needs it: strings are too slow for every call.
  std::string Describe() const {
    std::string what = batch != nullptr ? batch->Describe() : signature.Describe();
    if (point_to_point) {
      absl::StrAppend(&what,
                      signature.kind == static_cast<int32_t>(CollectiveKind::kSend) ? " to rank "
                                                                                    : " from rank ",
                      peer);
    }
    return absl::StrCat(purpose, what);
  }
};

class MpiWork final : public Work {
 public:
  MpiWork(MpiCommunicator* comm, CollectiveBatch batch) : comm_(comm), batch_(std::move(batch)) {}
  ~MpiWork() override {
    // MPI may still be writing into the tensors and scratch: finish first (bounded by the
    // deadline). A failed communicator keeps its scratch; its requests may never complete.
    if (!complete_) complete_ = Wait().ok();
    for (auto& scratch : scratch_) {
      if (complete_)
        comm_->ReleaseScratch(std::move(scratch));
      else
        (void)scratch.release();
    }
  }
  absl::Status Wait() override {
    absl::Status status = comm_->Progress(pending_, /*once=*/false).status();
    complete_ = status.ok();
    return status;
  }
  absl::StatusOr<bool> Poll() override {
    absl::StatusOr<bool> done = comm_->Progress(pending_, /*once=*/true);
    complete_ = done.ok() && *done;
    return done;
  }

  MpiCommunicator::Pending& pending() { return pending_; }
  const CollectiveBatch& batch() const { return batch_; }
  ScratchBuffer* AddScratch(std::unique_ptr<ScratchBuffer> scratch) {
    scratch_.push_back(std::move(scratch));
    return scratch_.back().get();
  }

 private:
  MpiCommunicator* comm_;
  CollectiveBatch batch_;  // keeps the tensors' memory alive while MPI uses it
  MpiCommunicator::Pending pending_;
  std::vector<std::unique_ptr<ScratchBuffer>> scratch_;
  bool complete_ = false;
};

namespace {
// Tags of the collective algorithms' messages on the data communicator: one per sequence
// number (modulo the span), so that concurrent collectives of a batch never match each
// other's messages.
constexpr int kCollectiveTagBase = 1024;
constexpr int kCollectiveTagSpan = 16384;
}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, MPI_Comm control, std::string name,
                                 CommOptions options)
    : comm_(comm), control_(control), name_(std::move(name)), options_(options) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(control_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Group group, world_group;
  MPI_Comm_group(comm_, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  std::vector<int> ranks(size_);
  for (int r = 0; r < size_; ++r) ranks[r] = r;
  world_ranks_.resize(size_);
  MPI_Group_translate_ranks(group, size_, ranks.data(), world_group, world_ranks_.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
}

MpiCommunicator::~MpiCommunicator() {
  // A failed communicator may have requests that will never complete; freeing it could
  // block on them, so it is left to process exit.
  if (!failure_.ok()) return;
  MPI_Comm_free(&control_);
  MPI_Comm_free(&comm_);
}

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::CreateWorld(CommOptions options) {
  MPI_Comm comm = MPI_COMM_NULL, control = MPI_COMM_NULL;
  TESSERA_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  TESSERA_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &control));
  std::unique_ptr<MpiCommunicator> world(new MpiCommunicator(comm, control, "world", options));

  // Learn every rank's host (for messages) with the deadline already in force.
  constexpr int kHostBytes = 64;
  std::string host = LocalHostName();
  std::vector<char> mine(kHostBytes, '\0');
  std::memcpy(mine.data(), host.data(), std::min<size_t>(host.size(), kHostBytes - 1));
  TESSERA_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty(DType::kI8, {world->size() * kHostBytes}));
  Tensor local = Tensor::Wrap(mine.data(), DType::kI8, {kHostBytes});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(world->AllGather(local, all, cpu));
  auto hosts = std::make_shared<std::vector<std::string>>();
  const char* names = static_cast<const char*>(all.data());
  for (int r = 0; r < world->size(); ++r) hosts->emplace_back(names + r * kHostBytes);
  world->world_hosts_ = std::move(hosts);
  return world;
}

absl::Status MpiCommunicator::CheckUsable() const {
  if (!failure_.ok()) {
    return absl::Status(failure_.code(), absl::StrCat("communicator ", name_,
                                                      " failed earlier: ", failure_.message()));
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Fail(absl::Status status) {
  failure_ = status;
  MarkCommunicatorFailed();
  return status;
}

absl::StatusOr<std::unique_ptr<Work>> MpiCommunicator::Start(CollectiveBatch batch,
                                                             Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  if (!stream.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the MPI communicator runs on the CPU stream, not on ", stream.device().ToString()));
  }
  if (batch.empty()) return absl::InvalidArgumentError("empty collective batch");
  for (const CollectiveOp& op : batch.ops()) {
    TESSERA_RETURN_IF_ERROR(ValidateOp(op, size_, Device::Cpu()));
    TESSERA_RETURN_IF_ERROR(CheckCount(op));
  }
  uint64_t first = next_sequence_;
  next_sequence_ += batch.size();
  if (options_.validate) {
    TESSERA_RETURN_IF_ERROR(ExchangeSignatures(OpSignature::OfBatch(batch, first)));
  }

  auto work = std::make_unique<MpiWork>(this, std::move(batch));
  Pending& pending = work->pending();
  pending.signature = OpSignature::Of(work->batch().ops()[0], first);
  pending.batch = &work->batch();
  pending.started = Clock::now();
  for (size_t i = 0; i < work->batch().size(); ++i) {
    absl::StatusOr<std::unique_ptr<MpiOperation>> posted =
        Post(work->batch().ops()[i], first + i, *work);
    if (!posted.ok()) return Fail(posted.status());
    pending.Add(std::move(posted).value());
  }
  return std::unique_ptr<Work>(std::move(work));
}

std::unique_ptr<ScratchBuffer> MpiCommunicator::AcquireScratch() {
  if (free_scratch_.empty()) return std::make_unique<ScratchBuffer>();
  std::unique_ptr<ScratchBuffer> scratch = std::move(free_scratch_.back());
  free_scratch_.pop_back();
  return scratch;
}

void MpiCommunicator::ReleaseScratch(std::unique_ptr<ScratchBuffer> scratch) {
  free_scratch_.push_back(std::move(scratch));
}

absl::StatusOr<std::unique_ptr<MpiOperation>> MpiCommunicator::Post(const CollectiveOp& op,
                                                                    uint64_t sequence,
                                                                    MpiWork& work) {
  DType dtype = op.input.dtype();
  MPI_Datatype type = MpiDatatypeOf(dtype);
  int count = static_cast<int>(op.input.numel());
  // MPI reads const input through non-const pointers in its C API.
  void* input = const_cast<void*>(op.input.data());
  MPI_Request request = MPI_REQUEST_NULL;
  int tag = kCollectiveTagBase + static_cast<int>(sequence % kCollectiveTagSpan);
  std::unique_ptr<SteppedOperation> stepped;
  switch (op.kind) {
    case CollectiveKind::kAllReduce: {
      auto algorithm = HostAllReduce::Choose(op.input.nbytes(), size_);
      ScratchBuffer* scratch = work.AddScratch(AcquireScratch());
      TESSERA_RETURN_IF_ERROR(
          scratch->Reserve(HostAllReduce::ScratchBytes(algorithm, count, dtype, size_)));
      stepped = std::make_unique<HostAllReduce>(algorithm, input, count, dtype, op.reduce_op, comm_,
                                                tag, scratch);
      break;
    }
    case CollectiveKind::kAllGather:
      stepped = std::make_unique<HostAllGather>(input, const_cast<void*>(op.output.data()), count,
                                                dtype, comm_, tag);
      break;
    case CollectiveKind::kReduceScatter: {
      int64_t slice = op.output.numel();
      ScratchBuffer* scratch = work.AddScratch(AcquireScratch());
      TESSERA_RETURN_IF_ERROR(scratch->Reserve(HostReduceScatter::ScratchBytes(slice, dtype)));
      stepped =
          std::make_unique<HostReduceScatter>(input, const_cast<void*>(op.output.data()), slice,
                                              dtype, op.reduce_op, comm_, tag, scratch);
      break;
    }
    case CollectiveKind::kBroadcast:
      TESSERA_MPI_CHECK(MPI_Ibcast(input, count, type, op.root, comm_, &request));
      return std::unique_ptr<MpiOperation>(std::make_unique<RequestOperation>(request));
    default:
      return absl::InternalError(absl::StrCat("not a batch collective: ", op.Describe()));
  }
  TESSERA_RETURN_IF_ERROR(stepped->Begin());
  return std::unique_ptr<MpiOperation>(std::move(stepped));
}

absl::Status MpiCommunicator::ExchangeSignatures(const std::vector<OpSignature>& signatures) {
  auto gather = [&](const void* mine, size_t bytes, void* all) -> absl::Status {
    Pending pending;
    pending.signature = signatures[0];
    pending.purpose = "validation of ";
    pending.started = Clock::now();
    MPI_Request request = MPI_REQUEST_NULL;
    int count = static_cast<int>(bytes);
    TESSERA_MPI_CHECK(
        MPI_Iallgather(mine, count, MPI_BYTE, all, count, MPI_BYTE, control_, &request));
    pending.AddRequest(request);
    return Progress(pending, /*once=*/false).status();
  };
  absl::Status checked = CheckSignaturesAcrossRanks(signatures, size_, name_, gather);
  // A gather that failed has failed the communicator already; a mismatch fails it now.
  if (!checked.ok() && CheckUsable().ok()) return Fail(checked);
  return checked;
}

absl::StatusOr<bool> MpiCommunicator::Progress(Pending& pending, bool once) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  if (pending.deadline == Clock::time_point()) {
    pending.deadline = pending.started + ToClock(options_.timeout);
    pending.check_arrivals_at = pending.deadline - ToClock(ArrivalCheckLead(options_.timeout));
  }
  const Pending* outer = waiting_;
  waiting_ = &pending;
  absl::StatusOr<bool> result = false;
  while (true) {
    bool done = true;
    absl::Status failed;
    for (size_t i = 0; i < pending.operations.size(); ++i) {
      if (pending.finished[i]) continue;
      absl::StatusOr<bool> advanced = pending.operations[i]->Advance();
      if (!advanced.ok()) {
        failed = advanced.status();
        break;
      }
      pending.finished[i] = *advanced;
      done = done && *advanced;
    }
    if (!failed.ok()) {
      result = Fail(absl::Status(failed.code(), absl::StrCat(pending.Describe(), " in group ",
                                                             name_, ": ", failed.message())));
      break;
    }
    if (done) {
      result = true;
      break;
    }
    Clock::time_point now = Clock::now();
    if (now >= next_answer_) {
      AnswerArrivalQueries();
      next_answer_ = now + kAnswerInterval;
    }
    if (now >= pending.check_arrivals_at || now >= pending.deadline) {
      absl::Status timed_out = TimeOut(pending);
      if (!timed_out.ok()) {
        result = timed_out;
        break;
      }
    }
    if (once) break;
    const Clock::duration waited = now - pending.started;
    if (waited > kYieldBeforeNap) {
      std::this_thread::sleep_for(kNap);
    } else if (waited > kSpinBeforeYield) {
      sched_yield();
    }
  }
  waiting_ = outer;
  return result;
}

void MpiCommunicator::AnswerArrivalQueries() {
  while (true) {
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kArrivalQueryTag, control_, &flag, &status) != MPI_SUCCESS ||
        !flag) {
      return;
    }
    ArrivalQuery query;
    MPI_Recv(&query, sizeof(query), MPI_BYTE, status.MPI_SOURCE, kArrivalQueryTag, control_,
             MPI_STATUS_IGNORE);
    ArrivalAnswer answer;
    answer.query_sequence = query.sequence;
    answer.sequence = waiting_ ? waiting_->signature.sequence : next_sequence_;
    answer.kind = waiting_ ? waiting_->signature.kind : 0;
    // Small enough to go eagerly: returns without waiting for the asker to receive it.
    MPI_Send(&answer, sizeof(answer), MPI_BYTE, status.MPI_SOURCE, kArrivalAnswerTag, control_);
  }
}

absl::Status MpiCommunicator::TimeOut(Pending& pending) {
  if (pending.point_to_point) {
    if (Clock::now() < pending.deadline) return absl::OkStatus();
    return Fail(absl::DeadlineExceededError(
        absl::StrCat(pending.Describe(), " in group ", name_, " timed out after ",
                     absl::FormatDuration(options_.timeout), ": ", RankLabel(pending.peer),
                     " did not post the matching call")));
  }
  // Phase 1, before the deadline: ask every peer where it is.
  if (!pending.queries_sent) {
    pending.queries_sent = true;
    pending.answers.assign(size_, std::nullopt);
    // Deliberately leaked: the sends to dead peers are never waited for, so the buffer must
    // outlive this communicator. One small allocation per failing collective.
    auto* query = new ArrivalQuery{pending.signature.sequence};
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request request;
      if (MPI_Isend(query, sizeof(*query), MPI_BYTE, r, kArrivalQueryTag, control_, &request) ==
          MPI_SUCCESS) {
        MPI_Request_free(&request);
      }
    }
  }
  // Collect answers as they come.
  while (true) {
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kArrivalAnswerTag, control_, &flag, &status) != MPI_SUCCESS ||
        !flag) {
      break;
    }
    ArrivalAnswer answer;
    MPI_Recv(&answer, sizeof(answer), MPI_BYTE, status.MPI_SOURCE, kArrivalAnswerTag, control_,
             MPI_STATUS_IGNORE);
    if (answer.query_sequence == pending.signature.sequence) {
      pending.answers[status.MPI_SOURCE] =
          PeerState{answer.sequence, static_cast<CollectiveKind>(answer.kind)};
    }
  }
  if (Clock::now() < pending.deadline) return absl::OkStatus();

  // Phase 2, at the deadline: report.
  std::vector<std::string> labels;
  for (int r = 0; r < size_; ++r) labels.push_back(RankLabel(r));
  TimedOutCall call{pending.Describe(), pending.signature.sequence, name_, options_.timeout, rank_};
  std::vector<int> missing;
  return Fail(
      absl::DeadlineExceededError(DescribeTimeout(call, pending.answers, labels, &missing)));
}

std::string MpiCommunicator::RankLabel(int rank) const {
  int world = world_ranks_[rank];
  bool known = world_hosts_ != nullptr && world < static_cast<int>(world_hosts_->size());
  return absl::StrCat("rank ", rank, " (world ", world, ", ",
                      known ? (*world_hosts_)[world] : "unknown host", ")");
}

absl::Status MpiCommunicator::Send(const Tensor& buffer, int peer, Stream& stream) {
  return PointToPoint(CollectiveKind::kSend, buffer, peer, stream);
}

absl::Status MpiCommunicator::Recv(Tensor& buffer, int peer, Stream& stream) {
  return PointToPoint(CollectiveKind::kRecv, buffer, peer, stream);
}

absl::Status MpiCommunicator::PointToPoint(CollectiveKind kind, const Tensor& buffer, int peer,
                                           Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  CollectiveOp op{kind, ReduceOp::kSum, buffer, Tensor(), peer};
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return absl::InvalidArgumentError(
        absl::StrCat(kind == CollectiveKind::kSend ? "Send to rank " : "Recv from rank ", peer,
                     " in group ", name_, " of ", size_, " ranks (self is ", rank_, ")"));
  }
  if (!stream.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(NameOf(kind), ": not a CPU stream"));
  }
  TESSERA_RETURN_IF_ERROR(ValidateOp(op, size_, Device::Cpu()));
  TESSERA_RETURN_IF_ERROR(CheckCount(op));
  Pending pending;
  pending.point_to_point = true;
  pending.peer = peer;
  pending.signature = OpSignature::Of(op, 0);
  pending.started = Clock::now();
  MPI_Request request = MPI_REQUEST_NULL;
  int count = static_cast<int>(buffer.numel());
  MPI_Datatype type = MpiDatatypeOf(buffer.dtype());
  // MPI's C API takes a non-const receive buffer; a Recv's tensor is the caller's to write.
  void* data = const_cast<void*>(buffer.data());
  if (kind == CollectiveKind::kSend) {
    TESSERA_MPI_CHECK(MPI_Isend(data, count, type, peer, kPointToPointTag, comm_, &request));
  } else {
    TESSERA_MPI_CHECK(MPI_Irecv(data, count, type, peer, kPointToPointTag, comm_, &request));
  }
  pending.AddRequest(request);
  return Progress(pending, /*once=*/false).status();
}

absl::Status MpiCommunicator::Barrier() {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  uint64_t sequence = next_sequence_++;
  if (options_.validate) {
    TESSERA_RETURN_IF_ERROR(ExchangeSignatures({OpSignature::OfBarrier(sequence)}));
  }
  Pending pending;
  pending.signature = OpSignature::OfBarrier(sequence);
  pending.started = Clock::now();
  MPI_Request request = MPI_REQUEST_NULL;
  TESSERA_MPI_CHECK(MPI_Ibarrier(comm_, &request));
  pending.AddRequest(request);
  return Progress(pending, /*once=*/false).status();
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::Split(int color, int key,
                                                                     std::string name) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  if (color < 0 && color != kNoColor) {
    return absl::InvalidArgumentError(absl::StrCat("Split of group ", name_, ": color ", color,
                                                   " is negative (use kNoColor to opt out)"));
  }
  // Every rank must arrive before MPI_Comm_split, which has no deadline of its own.
  int32_t mine[2] = {color, key};
  TESSERA_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty(DType::kI32, {2 * size_}));
  Tensor local = Tensor::Wrap(mine, DType::kI32, {2});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(AllGather(local, all, cpu));

  MPI_Comm comm = MPI_COMM_NULL;
  TESSERA_MPI_CHECK(MPI_Comm_split(comm_, color == kNoColor ? MPI_UNDEFINED : color, key, &comm));
  if (comm == MPI_COMM_NULL) return std::unique_ptr<Communicator>();
  MPI_Comm control = MPI_COMM_NULL;
  TESSERA_MPI_CHECK(MPI_Comm_dup(comm, &control));
  auto child = std::unique_ptr<MpiCommunicator>(
      new MpiCommunicator(comm, control, std::move(name), options_));
  child->world_hosts_ = world_hosts_;
  return std::unique_ptr<Communicator>(std::move(child));
}

}  // namespace tessera::comm
