#include "comm/nccl/nccl_communicator.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/nccl/nccl_check.h"
#include "comm/topology.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/status_macros.h"

namespace tessera::comm {
namespace {

using Clock = std::chrono::steady_clock;

// A waiting thread yields the core for this long, then sleeps between polls: short waits
// stay fast, long ones leave the core to ranks that share it.
constexpr auto kYieldFor = std::chrono::milliseconds(1);
constexpr auto kSleepBetweenPolls = std::chrono::microseconds(50);
// How often the watchdog looks at the operations it tracks.
constexpr auto kWatchdogInterval = std::chrono::milliseconds(1);
// Completed events kept for reuse; the rest are destroyed.
constexpr size_t kMaxPooledEvents = 256;

Clock::duration ToClock(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

class Backoff {
 public:
  void Pause() {
    if (Clock::now() - start_ < kYieldFor) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kSleepBetweenPolls);
    }
  }

 private:
  Clock::time_point start_ = Clock::now();
};

ncclDataType_t NcclTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI8:
      return ncclInt8;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kI4:
      break;
  }
  TESSERA_CHECK(false, "int4 reached NCCL past ValidateOp");
  return ncclInt8;
}

ncclRedOp_t NcclOpOf(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

// Elements NCCL is told about: the per-rank count (the output's for ReduceScatter).
size_t CountOf(const CollectiveOp& op) {
  return static_cast<size_t>(op.kind == CollectiveKind::kReduceScatter ? op.output.numel()
                                                                       : op.input.numel());
}

// NCCL's C API takes non-const pointers for buffers it only reads.
void* Mutable(const Tensor& tensor) { return const_cast<void*>(tensor.data()); }

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

// An error NCCL reported through ncclCommGetAsyncError rather than as a call's result.
absl::Status AsyncError(ncclResult_t state, absl::string_view what) {
  return absl::Status(
      NcclCall::StatusCode(state),
      WithCallSite(absl::StrCat(what, ": NCCL reported ", NcclCall::Describe(state)), __FILE__,
                   __LINE__));
}

// Polls a communicator no other thread can reach yet (being created) until it leaves
// ncclInProgress: true when ready, false at the deadline, the NCCL error otherwise.
absl::StatusOr<bool> AwaitUnshared(ncclComm_t comm, Clock::time_point deadline,
                                   absl::string_view what) {
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclInProgress;
    TESSERA_NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
    if (state == ncclSuccess) return true;
    if (state != ncclInProgress) return AsyncError(state, what);
    if (Clock::now() >= deadline) return false;
    backoff.Pause();
  }
}

absl::Status IssueOne(const CollectiveOp& op, size_t count, ncclComm_t comm, cudaStream_t stream,
                      bool* in_progress) {
  ncclDataType_t type = NcclTypeOf(op.input.dtype());
  void* buffer = Mutable(op.input);
  switch (op.kind) {
    case CollectiveKind::kAllReduce:
      return TESSERA_NCCL_ASYNC_STATUS(
          ncclAllReduce(buffer, buffer, count, type, NcclOpOf(op.reduce_op), comm, stream),
          in_progress);
    case CollectiveKind::kAllGather:
      return TESSERA_NCCL_ASYNC_STATUS(
          ncclAllGather(buffer, Mutable(op.output), count, type, comm, stream), in_progress);
    case CollectiveKind::kReduceScatter:
      return TESSERA_NCCL_ASYNC_STATUS(ncclReduceScatter(buffer, Mutable(op.output), count, type,
                                                         NcclOpOf(op.reduce_op), comm, stream),
                                       in_progress);
    case CollectiveKind::kBroadcast:
      return TESSERA_NCCL_ASYNC_STATUS(
          ncclBroadcast(buffer, buffer, count, type, op.root, comm, stream), in_progress);
    case CollectiveKind::kSend:
      return TESSERA_NCCL_ASYNC_STATUS(ncclSend(buffer, count, type, op.root, comm, stream),
                                       in_progress);
    case CollectiveKind::kRecv:
      return TESSERA_NCCL_ASYNC_STATUS(ncclRecv(buffer, count, type, op.root, comm, stream),
                                       in_progress);
    case CollectiveKind::kBarrier:
      break;
  }
  return absl::InternalError(absl::StrCat("not an NCCL operation: ", op.Describe()));
}

}  // namespace

// Completion of operations launched on a stream: an event recorded after them.
class NcclWork final : public Work {
 public:
  enum class Kind { kCollectives, kBarrier, kSend, kRecv };

  NcclWork(NcclCommunicator* comm, Kind kind, CollectiveBatch batch, uint64_t sequence)
      : comm_(comm), kind_(kind), batch_(std::move(batch)), sequence_(sequence) {}

  ~NcclWork() override {
    if (event_ == nullptr) return;  // never launched
    // The stream may still be using the tensors: finish first (bounded by the deadline),
    // unless the communicator failed, which aborted the operations.
    if (!complete_ && comm_->CheckUsable().ok()) complete_ = Wait().ok();
    comm_->ReleaseEvent(event_, complete_);
  }

  absl::Status Wait() override {
    Backoff backoff;
    while (true) {
      absl::StatusOr<bool> done = comm_->Progress(*this);
      if (!done.ok()) return done.status();
      if (*done) return absl::OkStatus();
      backoff.Pause();
    }
  }

  absl::StatusOr<bool> Poll() override { return comm_->Progress(*this); }

  bool point_to_point() const { return kind_ == Kind::kSend || kind_ == Kind::kRecv; }
  int peer() const { return batch_.ops()[0].root; }

  // "AllReduce(f32 x16, sum) #7", "Barrier() #9", "Send(f32 x16) to rank 1".
  std::string Describe() const {
    switch (kind_) {
      case Kind::kBarrier:
        return absl::StrCat(OpSignature::OfBarrier(sequence_).Describe(), " #", sequence_);
      case Kind::kSend:
        return absl::StrCat(batch_.ops()[0].Describe(), " to rank ", peer());
      case Kind::kRecv:
        return absl::StrCat(batch_.ops()[0].Describe(), " from rank ", peer());
      case Kind::kCollectives:
        break;
    }
    return absl::StrCat(batch_.Describe(), " #", sequence_);
  }

 private:
  friend class NcclCommunicator;

  NcclCommunicator* comm_;
  Kind kind_;
  CollectiveBatch batch_;  // keeps the tensors' memory alive while the stream uses it
  uint64_t sequence_;      // of the first operation
  cudaEvent_t event_ = nullptr;
  Clock::time_point deadline_;
  bool complete_ = false;
};

NcclCommunicator::NcclCommunicator(ncclComm_t comm, std::unique_ptr<Communicator> host,
                                   Device device, std::string name, CommOptions options)
    : comm_(comm),
      host_(std::move(host)),
      device_(device),
      name_(std::move(name)),
      options_(options),
      rank_(host_->rank()),
      size_(host_->size()) {}

NcclCommunicator::~NcclCommunicator() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
  (void)cudaSetDevice(device_.index);
  bool failed = !CheckUsable().ok();
  {
    absl::MutexLock lock(&nccl_mu_);
    if (!aborted_) {
      // Finalize flushes what was issued; it is bounded here like everything else, and a
      // communicator that cannot finish in time is aborted instead of destroyed.
      bool finalized = false;
      if (!failed) {
        bool in_progress = false;
        absl::Status started = TESSERA_NCCL_ASYNC_STATUS(ncclCommFinalize(comm_), &in_progress);
        if (started.ok()) {
          absl::StatusOr<bool> ready =
              AwaitUnshared(comm_, Clock::now() + ToClock(options_.timeout), "finalize");
          finalized = ready.ok() && *ready;
        }
      }
      if (finalized) {
        (void)ncclCommDestroy(comm_);
      } else {
        (void)ncclCommAbort(comm_);
      }
      aborted_ = true;
    }
  }
  absl::MutexLock lock(&mu_);
  for (cudaEvent_t event : free_events_) (void)cudaEventDestroy(event);
  free_events_.clear();
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(Communicator& bootstrap,
                                                                           Device device,
                                                                           CommOptions options,
                                                                           std::string name) {
  std::string what = absl::StrCat("creating the NCCL communicator of group ", name);
  if (!device.is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": it needs a CUDA device, not ", device.ToString()));
  }
  if (!bootstrap.device().is_cpu()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the bootstrap must be a host communicator, not one on ",
                     bootstrap.device().ToString()));
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host,
                           bootstrap.Split(0, bootstrap.rank(), name));
  if (host == nullptr) return absl::InternalError(absl::StrCat(what, ": host split gave nothing"));

  // Every rank readies its GPU and rank 0 makes the unique id. One all-gather hands out the
  // id and tells every rank whether all are ready, so that one rank's failure stops the
  // others now instead of at the deadline of NCCL's initialization.
  struct InitRecord {
    ncclUniqueId id;
    int32_t ready;
    int32_t padding;
  };
  InitRecord mine{};
  absl::Status local = TESSERA_CALL_STATUS(CudaCall, cudaSetDevice(device.index));
  if (local.ok() && host->rank() == 0) {
    local = TESSERA_CALL_STATUS(NcclCall, ncclGetUniqueId(&mine.id));
  }
  mine.ready = local.ok() ? 1 : 0;
  std::vector<InitRecord> all(host->size());
  constexpr int64_t kRecordBytes = sizeof(InitRecord);
  Tensor mine_bytes = Tensor::Wrap(&mine, DType::kI8, {kRecordBytes});
  Tensor all_bytes = Tensor::Wrap(all.data(), DType::kI8, {kRecordBytes * host->size()});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(host->AllGather(mine_bytes, all_bytes, cpu));
  if (!local.ok()) {
    return WithContext(local, absl::StrCat(what, " on ", device.ToString()));
  }
  std::vector<std::string> unready;
  for (int r = 0; r < host->size(); ++r) {
    if (all[r].ready == 0) {
      unready.push_back(absl::StrCat("rank ", r, " (world ", host->world_ranks()[r], ")"));
    }
  }
  if (!unready.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", absl::StrJoin(unready, ", "), " could not prepare its GPU (see its error)"));
  }

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  bool in_progress = false;
  Clock::time_point deadline = Clock::now() + ToClock(options.timeout);
  absl::Status started = TESSERA_NCCL_ASYNC_STATUS(
      ncclCommInitRankConfig(&comm, host->size(), all[0].id, host->rank(), &config), &in_progress);
  absl::StatusOr<bool> ready = started.ok()
                                   ? AwaitUnshared(comm, deadline, "ncclCommInitRankConfig")
                                   : absl::StatusOr<bool>(started);
  if (!ready.ok() || !*ready) {
    if (comm != nullptr) (void)ncclCommAbort(comm);
    if (!ready.ok()) return WithContext(ready.status(), what);
    return absl::DeadlineExceededError(absl::StrCat(
        what, " (", host->size(), " ranks) timed out after ", absl::FormatDuration(options.timeout),
        ": not every rank finished ncclCommInitRankConfig, and NCCL does not report which rank "
        "is missing"));
  }
  return std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(comm, std::move(host), device, std::move(name), options));
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::CreateForLocalGpu(
    MpiCommunicator& world) {
  TESSERA_ASSIGN_OR_RETURN(Topology topology, Topology::Discover(world));
  // Every rank sees the same table, so every rank refuses alike instead of some of them
  // waiting in NCCL's initialization for a rank that gave up.
  std::vector<std::string> problems;
  std::map<std::pair<int, std::string>, int> users;  // (node, GPU uuid) -> first world rank
  for (const RankPlacement& placement : topology.ranks()) {
    if (placement.gpu < 0) {
      problems.push_back(
          absl::StrCat("rank ", placement.world_rank, " on ", placement.host, " sees no GPU"));
      continue;
    }
    if (placement.gpu_uuid.empty()) continue;
    auto [it, first] =
        users.emplace(std::make_pair(placement.node, placement.gpu_uuid), placement.world_rank);
    if (!first) {
      problems.push_back(absl::StrCat("ranks ", it->second, " and ", placement.world_rank, " on ",
                                      placement.host, " would share GPU ", placement.gpu, " (",
                                      placement.gpu_uuid, ")"));
    }
  }
  if (!problems.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the NCCL backend needs one GPU per rank: ", absl::StrJoin(problems, "; "),
                     " (start at most as many ranks on a host as it has GPUs, and check "
                     "CUDA_VISIBLE_DEVICES)"));
  }
  int gpu = topology.rank(world.rank()).gpu;
  return Create(world, Device::Cuda(gpu), world.options(), "world");
}

absl::Status NcclCommunicator::CheckUsable() const {
  absl::MutexLock lock(&mu_);
  if (failure_.ok()) return absl::OkStatus();
  return absl::Status(failure_.code(), absl::StrCat("communicator ", name_,
                                                    " failed earlier: ", failure_.message()));
}

absl::Status NcclCommunicator::AbortedStatus() const {
  absl::Status status = CheckUsable();
  if (!status.ok()) return status;
  return absl::FailedPreconditionError(absl::StrCat("communicator ", name_, " was aborted"));
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (failure_.ok()) failure_ = status;
  }
  MarkCommunicatorFailed();
  // After the failure is recorded, so that a thread that finds the handle gone finds why.
  Abort();
  return status;
}

void NcclCommunicator::Abort() {
  absl::MutexLock lock(&nccl_mu_);
  if (aborted_) return;
  // Stops kernels spinning on peers that will never come and frees the communicator.
  (void)ncclCommAbort(comm_);
  aborted_ = true;
}

absl::Status NcclCommunicator::CheckStream(const Stream& stream, const char* what) const {
  if (stream.device() != device_ || stream.native_handle() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " in group ", name_, ": the NCCL communicator runs on CUDA streams of ",
                     device_.ToString(), ", not on a stream of ", stream.device().ToString()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Work>> NcclCommunicator::Start(CollectiveBatch batch,
                                                              Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<NcclWork> work, Enqueue(std::move(batch), stream));
  return std::unique_ptr<Work>(std::move(work));
}

absl::Status NcclCommunicator::Run(CollectiveBatch batch, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<NcclWork> work, Enqueue(std::move(batch), stream));
  Track(std::move(work));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Send(const Tensor& buffer, int peer, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(
      std::unique_ptr<NcclWork> work,
      EnqueuePointToPoint({CollectiveKind::kSend, ReduceOp::kSum, buffer, Tensor(), peer}, stream));
  Track(std::move(work));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Recv(Tensor& buffer, int peer, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(
      std::unique_ptr<NcclWork> work,
      EnqueuePointToPoint({CollectiveKind::kRecv, ReduceOp::kSum, buffer, Tensor(), peer}, stream));
  Track(std::move(work));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<NcclWork>> NcclCommunicator::Enqueue(CollectiveBatch batch,
                                                                    Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  TESSERA_RETURN_IF_ERROR(CheckStream(stream, "collective"));
  if (batch.empty()) return absl::InvalidArgumentError("empty collective batch");
  for (const CollectiveOp& op : batch.ops()) {
    switch (op.kind) {
      case CollectiveKind::kAllReduce:
      case CollectiveKind::kAllGather:
      case CollectiveKind::kReduceScatter:
      case CollectiveKind::kBroadcast:
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(op.Describe(), ": not a collective a batch can hold"));
    }
    TESSERA_RETURN_IF_ERROR(ValidateOp(op, size_, device_));
  }
  uint64_t first = next_sequence_;
  next_sequence_ += batch.size();
  if (options_.validate) {
    TESSERA_RETURN_IF_ERROR(ExchangeSignatures(OpSignature::OfBatch(batch, first)));
  }
  auto work =
      std::make_unique<NcclWork>(this, NcclWork::Kind::kCollectives, std::move(batch), first);
  TESSERA_RETURN_IF_ERROR(Launch(*work, stream));
  return work;
}

absl::StatusOr<std::unique_ptr<NcclWork>> NcclCommunicator::EnqueuePointToPoint(CollectiveOp op,
                                                                                Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  bool send = op.kind == CollectiveKind::kSend;
  int peer = op.root;
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return absl::InvalidArgumentError(absl::StrCat(send ? "Send to rank " : "Recv from rank ", peer,
                                                   " in group ", name_, " of ", size_,
                                                   " ranks (self is ", rank_, ")"));
  }
  TESSERA_RETURN_IF_ERROR(CheckStream(stream, send ? "Send" : "Recv"));
  TESSERA_RETURN_IF_ERROR(ValidateOp(op, size_, device_));
  CollectiveBatch batch;
  batch.mutable_ops().push_back(std::move(op));
  auto work = std::make_unique<NcclWork>(this, send ? NcclWork::Kind::kSend : NcclWork::Kind::kRecv,
                                         std::move(batch), 0);
  TESSERA_RETURN_IF_ERROR(Launch(*work, stream));
  return work;
}

absl::Status NcclCommunicator::Launch(NcclWork& work, Stream& stream) {
  // From here on the ranks count this operation as issued: any failure fails the group.
  absl::Status status = TESSERA_CALL_STATUS(CudaCall, cudaSetDevice(device_.index));
  if (status.ok()) {
    absl::StatusOr<cudaEvent_t> event = AcquireEvent();
    if (event.ok()) {
      work.event_ = *event;
    } else {
      status = event.status();
    }
  }
  std::string where = absl::StrCat(work.Describe(), " in group ", name_);
  if (!status.ok()) return Fail(WithContext(status, where));
  work.deadline_ = Clock::now() + ToClock(options_.timeout);
  auto cuda_stream = static_cast<cudaStream_t>(stream.native_handle());
  bool in_progress = false;
  bool aborted = false;
  {
    absl::MutexLock lock(&nccl_mu_);
    if (aborted_) {
      aborted = true;
    } else {
      status = IssueGroup(work, cuda_stream, &in_progress);
    }
  }
  if (aborted) return AbortedStatus();
  if (!status.ok()) return Fail(WithContext(status, where));
  if (in_progress) {
    // Non-blocking NCCL may still be connecting to peers: nothing may be added to the stream
    // until the communicator reports ncclSuccess.
    absl::StatusOr<bool> ready = AwaitReady(work.deadline_);
    if (!ready.ok()) return Fail(WithContext(ready.status(), where));
    if (!*ready) {
      return Fail(absl::DeadlineExceededError(TimeoutMessage(work, /*launching=*/true)));
    }
  }
  status = TESSERA_CALL_STATUS(CudaCall, cudaEventRecord(work.event_, cuda_stream));
  if (!status.ok()) return Fail(WithContext(status, where));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::IssueGroup(const NcclWork& work, cudaStream_t stream,
                                          bool* in_progress) {
  TESSERA_RETURN_IF_ERROR(TESSERA_NCCL_ASYNC_STATUS(ncclGroupStart(), in_progress));
  absl::Status issued;
  for (const CollectiveOp& op : work.batch_.ops()) {
    size_t count = CountOf(op);
    if (count == 0) continue;  // nothing to move; every rank skips it alike
    issued = IssueOne(op, count, comm_, stream, in_progress);
    if (!issued.ok()) break;
  }
  // The group must be closed even when a call in it failed.
  absl::Status ended = TESSERA_NCCL_ASYNC_STATUS(ncclGroupEnd(), in_progress);
  return issued.ok() ? ended : issued;
}

absl::StatusOr<ncclResult_t> NcclCommunicator::QueryAsyncState() {
  ncclResult_t state = ncclInProgress;
  {
    absl::MutexLock lock(&nccl_mu_);
    if (!aborted_) {
      TESSERA_NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
      return state;
    }
  }
  return AbortedStatus();
}

absl::StatusOr<bool> NcclCommunicator::AwaitReady(Clock::time_point deadline) {
  Backoff backoff;
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(ncclResult_t state, QueryAsyncState());
    if (state == ncclSuccess) return true;
    if (state != ncclInProgress) return AsyncError(state, absl::StrCat("group ", name_));
    if (Clock::now() >= deadline) return false;
    backoff.Pause();
  }
}

absl::Status NcclCommunicator::GatherBytes(const void* mine, size_t bytes, void* all,
                                           const OpSignature& what) {
  auto count = static_cast<int64_t>(bytes);
  Tensor local = Tensor::Wrap(const_cast<void*>(mine), DType::kI8, {count});
  Tensor gathered = Tensor::Wrap(all, DType::kI8, {count * size_});
  Stream cpu = Stream::Cpu();
  absl::Status status = host_->AllGather(local, gathered, cpu);
  if (!status.ok()) {
    return Fail(WithContext(status, absl::StrCat("validation of ", what.Describe(), " #",
                                                 what.sequence, " in group ", name_)));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::ExchangeSignatures(const std::vector<OpSignature>& signatures) {
  auto gather = [&](const void* mine, size_t bytes, void* all) {
    return GatherBytes(mine, bytes, all, signatures[0]);
  };
  absl::Status checked = CheckSignaturesAcrossRanks(signatures, size_, name_, gather);
  if (!checked.ok() && CheckUsable().ok()) return Fail(checked);
  return checked;
}

absl::StatusOr<bool> NcclCommunicator::Progress(NcclWork& work) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  if (work.complete_) return true;
  TESSERA_RETURN_IF_ERROR(CheckAsyncError(work));
  TESSERA_ASSIGN_OR_RETURN(bool done, QueryEvent(work));
  if (done) return true;
  if (Clock::now() >= work.deadline_) {
    return Fail(absl::DeadlineExceededError(TimeoutMessage(work, /*launching=*/false)));
  }
  return false;
}

absl::Status NcclCommunicator::CheckAsyncError(const NcclWork& work) {
  absl::StatusOr<ncclResult_t> queried = QueryAsyncState();
  std::string where = absl::StrCat(work.Describe(), " in group ", name_);
  if (!queried.ok()) {
    // An aborted communicator has recorded its failure already.
    if (!CheckUsable().ok()) return queried.status();
    return Fail(WithContext(queried.status(), where));
  }
  ncclResult_t state = *queried;
  // ncclInProgress: another launch on this communicator is still being set up.
  if (state == ncclSuccess || state == ncclInProgress) return absl::OkStatus();
  return Fail(AsyncError(state, absl::StrCat(where, " failed; the communicator was aborted")));
}

absl::StatusOr<bool> NcclCommunicator::QueryEvent(NcclWork& work) {
  cudaError_t result = cudaEventQuery(work.event_);
  if (result == cudaSuccess) {
    work.complete_ = true;
    return true;
  }
  if (result == cudaErrorNotReady) return false;
  (void)cudaGetLastError();  // clear it unless sticky
  return Fail(
      WithContext(CheckCall<CudaCall>(result, "cudaEventQuery(work.event_)", __FILE__, __LINE__),
                  absl::StrCat("waiting for ", work.Describe(), " in group ", name_)));
}

std::string NcclCommunicator::TimeoutMessage(const NcclWork& work, bool launching) const {
  std::string message = absl::StrCat(work.Describe(), " in group ", name_, " timed out after ",
                                     absl::FormatDuration(options_.timeout));
  if (launching) absl::StrAppend(&message, " while NCCL was still setting it up");
  if (work.point_to_point()) {
    int peer = work.peer();
    absl::StrAppend(&message, ": rank ", peer, " (world ", world_ranks()[peer],
                    ") did not post the matching ",
                    work.kind_ == NcclWork::Kind::kSend ? "Recv" : "Send",
                    ", or its stream has not reached it");
  } else {
    absl::StrAppend(&message, ": not every one of the ", size_,
                    " ranks joined it, and NCCL does not report which rank is missing (one "
                    "died, stalled, or issued a different collective: TESSERA_COMM_VALIDATE=1 "
                    "catches the last)");
  }
  absl::StrAppend(&message, "; the communicator was aborted");
  return message;
}

absl::StatusOr<cudaEvent_t> NcclCommunicator::AcquireEvent() {
  {
    absl::MutexLock lock(&mu_);
    if (!free_events_.empty()) {
      cudaEvent_t event = free_events_.back();
      free_events_.pop_back();
      return event;
    }
  }
  cudaEvent_t event = nullptr;
  TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  return event;
}

void NcclCommunicator::ReleaseEvent(cudaEvent_t event, bool reusable) {
  if (reusable) {
    absl::MutexLock lock(&mu_);
    if (free_events_.size() < kMaxPooledEvents) {
      free_events_.push_back(event);
      return;
    }
  }
  // An event still pending is released by CUDA once the device reaches it.
  (void)cudaEventDestroy(event);
}

absl::Status NcclCommunicator::Barrier() {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  // "All prior work complete": first what Run, Send and Recv left on their streams.
  TESSERA_RETURN_IF_ERROR(DrainTracked());
  if (barrier_stream_ == nullptr) {
    TESSERA_ASSIGN_OR_RETURN(barrier_buffer_, Tensor::Zeros(DType::kI32, {1}, device_));
    TESSERA_ASSIGN_OR_RETURN(barrier_stream_, Stream::Create(device_));
  }
  uint64_t sequence = next_sequence_++;
  if (options_.validate) {
    TESSERA_RETURN_IF_ERROR(ExchangeSignatures({OpSignature::OfBarrier(sequence)}));
  }
  CollectiveBatch batch;
  batch.AllReduce(barrier_buffer_, ReduceOp::kMax);  // max keeps the value fixed
  NcclWork work(this, NcclWork::Kind::kBarrier, std::move(batch), sequence);
  TESSERA_RETURN_IF_ERROR(Launch(work, *barrier_stream_));
  return work.Wait();
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Split(int color, int key,
                                                                      std::string name) {
  TESSERA_RETURN_IF_ERROR(CheckUsable());
  if (color < 0 && color != kNoColor) {
    return absl::InvalidArgumentError(absl::StrCat("Split of group ", name_, ": color ", color,
                                                   " is negative (use kNoColor to opt out)"));
  }
  std::string what = absl::StrCat("Split of group ", name_, " into ", name);
  // The host split first: it has a deadline and returns once every rank has arrived, so
  // NCCL's split starts with everyone present.
  absl::StatusOr<std::unique_ptr<Communicator>> host_child = host_->Split(color, key, name);
  if (!host_child.ok()) return Fail(WithContext(host_child.status(), what));

  (void)cudaSetDevice(device_.index);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  // NCCL stores the child's handle from its own thread once the child exists; the slot
  // outlives this call if it gives up first.
  auto slot = std::make_unique<ncclComm_t>(nullptr);
  Clock::time_point deadline = Clock::now() + ToClock(options_.timeout);
  bool in_progress = false;
  bool aborted = false;
  absl::Status status;
  {
    absl::MutexLock lock(&nccl_mu_);
    if (aborted_) {
      aborted = true;
    } else {
      status = TESSERA_NCCL_ASYNC_STATUS(
          ncclCommSplit(comm_, color == kNoColor ? NCCL_SPLIT_NOCOLOR : color, key, slot.get(),
                        &config),
          &in_progress);
    }
  }
  if (aborted) return AbortedStatus();
  auto give_up = [&](absl::Status failure) {
    ncclComm_t* abandoned = slot.release();  // NCCL may still write it
    (void)abandoned;
    return Fail(WithContext(failure, what));
  };
  if (!status.ok()) return give_up(status);
  // The parent reports ncclInProgress until its part of the split is done.
  absl::StatusOr<bool> ready = AwaitReady(deadline);
  if (!ready.ok()) return give_up(ready.status());
  std::string late = absl::StrCat("timed out after ", absl::FormatDuration(options_.timeout),
                                  ": not every rank finished ncclCommSplit, and NCCL does not "
                                  "report which rank is missing");
  if (!*ready) return give_up(absl::DeadlineExceededError(late));
  if (color == kNoColor) return std::unique_ptr<Communicator>();

  // The child's handle may appear a little after the parent is ready (NCCL writes it from
  // its initialization thread).
  ncclComm_t child = nullptr;
  Backoff backoff;
  while ((child = std::atomic_ref<ncclComm_t>(*slot).load(std::memory_order_acquire)) == nullptr) {
    if (Clock::now() >= deadline) return give_up(absl::DeadlineExceededError(late));
    backoff.Pause();
  }
  // A failure of the child leaves the parent usable: only the new group is given up.
  auto drop_child = [&](absl::Status failure) {
    (void)ncclCommAbort(child);
    return WithContext(failure, what);
  };
  ready = AwaitUnshared(child, deadline, "new communicator");
  if (!ready.ok()) return drop_child(ready.status());
  if (!*ready) return drop_child(absl::DeadlineExceededError(late));
  int child_rank = -1;
  int child_size = -1;
  status = TESSERA_CALL_STATUS(NcclCall, ncclCommUserRank(child, &child_rank));
  if (status.ok()) status = TESSERA_CALL_STATUS(NcclCall, ncclCommCount(child, &child_size));
  if (!status.ok()) return drop_child(status);
  std::unique_ptr<Communicator> host = *std::move(host_child);
  if (host == nullptr || child_rank != host->rank() || child_size != host->size()) {
    return drop_child(absl::InternalError(absl::StrCat(
        "NCCL placed this rank at ", child_rank, " of ", child_size, " but the host split at ",
        host ? host->rank() : -1, " of ", host ? host->size() : 0)));
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(child, std::move(host), device_, std::move(name), options_));
}

void NcclCommunicator::Track(std::unique_ptr<NcclWork> work) {
  absl::MutexLock lock(&mu_);
  submitted_.push_back(std::move(work));
  if (!watchdog_.joinable()) watchdog_ = std::thread([this] { WatchdogLoop(); });
}

absl::Status NcclCommunicator::DrainTracked() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &NcclCommunicator::Drained));
  }
  return CheckUsable();
}

void NcclCommunicator::WatchdogLoop() {
  (void)cudaSetDevice(device_.index);
  std::vector<std::unique_ptr<NcclWork>> works;  // in launch order: earliest deadline first
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      watched_ = works.size();
      if (works.empty()) mu_.Await(absl::Condition(this, &NcclCommunicator::HasSubmissionsOrStop));
      while (!submitted_.empty()) {
        works.push_back(std::move(submitted_.front()));
        submitted_.pop_front();
      }
      watched_ = works.size();
      if (works.empty()) return;  // stop requested and nothing left
    }
    PollTracked(works);
    if (!works.empty()) std::this_thread::sleep_for(kWatchdogInterval);
  }
}

void NcclCommunicator::PollTracked(std::vector<std::unique_ptr<NcclWork>>& works) {
  // A failure (recorded by the calls below or by the user thread) ends all of them: the
  // communicator was aborted, and their events complete or never matter again.
  if (!CheckUsable().ok() || !CheckAsyncError(*works.front()).ok()) {
    works.clear();
    return;
  }
  std::vector<std::unique_ptr<NcclWork>> running;
  running.reserve(works.size());
  for (std::unique_ptr<NcclWork>& work : works) {
    absl::StatusOr<bool> done = QueryEvent(*work);
    if (!done.ok()) {
      works.clear();
      return;
    }
    if (!*done) running.push_back(std::move(work));
  }
  works.swap(running);  // finished works are destroyed with `running`
  running.clear();
  if (!works.empty() && Clock::now() >= works.front()->deadline_) {
    (void)Fail(absl::DeadlineExceededError(TimeoutMessage(*works.front(), /*launching=*/false)));
    works.clear();
  }
}

}  // namespace tessera::comm
