// The NCCL backend end to end on one GPU: a single-rank group in one process (MPI singleton),
// so every result follows in closed form (comm/collective_check.h). Inputs are filled on the
// host, copied to the GPU, reduced there, copied back and checked element by element.

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "comm/collective_check.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/nccl/nccl_communicator.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::comm {
namespace {

// The MPI world, made by main() around the tests.
MpiCommunicator* g_world = nullptr;

constexpr Device kGpu = Device::Cuda(0);

absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeComm(bool validate = false) {
  CommOptions options = g_world->options();
  options.timeout = absl::Seconds(60);
  options.validate = validate;
  return NcclCommunicator::Create(*g_world, kGpu, options, "nccl-test");
}

bool Scattered(CollectiveKind kind) {
  return kind == CollectiveKind::kAllGather || kind == CollectiveKind::kReduceScatter;
}

// Host tensors for one op: n elements per rank (shapes as in CollectiveOp).
CollectiveOp HostOp(CollectiveKind kind, DType dtype, int64_t n, int size,
                    ReduceOp reduce = ReduceOp::kSum, int root = 0) {
  CollectiveOp op{kind, reduce, Tensor(), Tensor(), root};
  int64_t in = kind == CollectiveKind::kReduceScatter ? n * size : n;
  op.input = *Tensor::Empty(dtype, {in});
  if (Scattered(kind)) {
    op.output = *Tensor::Empty(dtype, {kind == CollectiveKind::kAllGather ? n * size : n});
  }
  return op;
}

// The same op on GPU copies of its tensors, filled with the pattern.
absl::StatusOr<CollectiveOp> ToDevice(CollectiveOp& host_op, int rank, Stream& stream) {
  FillPattern(host_op, rank);
  CollectiveOp op = host_op;
  TESSERA_ASSIGN_OR_RETURN(op.input, host_op.input.To(kGpu, stream));
  if (Scattered(op.kind)) {
    TESSERA_ASSIGN_OR_RETURN(op.output, host_op.output.To(kGpu, stream));
  }
  return op;
}

// Copies the GPU results back into host_op and counts wrong elements.
absl::StatusOr<int64_t> CountWrongOnDevice(CollectiveOp& host_op, const CollectiveOp& op,
                                           const Communicator& comm, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  TESSERA_RETURN_IF_ERROR(host_op.input.CopyFrom(op.input, stream));
  if (Scattered(op.kind)) TESSERA_RETURN_IF_ERROR(host_op.output.CopyFrom(op.output, stream));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  return CountWrong(host_op, comm.rank(), comm.size());
}

// One op through Run (enqueued on the stream, host not blocked), then checked.
absl::StatusOr<int64_t> RunAndCountWrong(NcclCommunicator& comm, Stream& stream,
                                         CollectiveOp host_op) {
  TESSERA_ASSIGN_OR_RETURN(CollectiveOp op, ToDevice(host_op, comm.rank(), stream));
  CollectiveBatch batch;
  batch.mutable_ops().push_back(op);
  TESSERA_RETURN_IF_ERROR(comm.Run(std::move(batch), stream));
  return CountWrongOnDevice(host_op, op, comm, stream);
}

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
    absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = MakeComm();
    ASSERT_TRUE(comm.ok()) << comm.status();
    comm_ = *std::move(comm);
    absl::StatusOr<std::unique_ptr<Stream>> stream = Stream::Create(kGpu);
    ASSERT_TRUE(stream.ok()) << stream.status();
    stream_ = *std::move(stream);
  }

  void Check(CollectiveOp host_op) {
    absl::StatusOr<int64_t> wrong = RunAndCountWrong(*comm_, *stream_, std::move(host_op));
    ASSERT_TRUE(wrong.ok()) << wrong.status();
    EXPECT_EQ(*wrong, 0);
  }

  // Declared first so it outlives the communicator's use of it.
  std::unique_ptr<Stream> stream_;
  std::unique_ptr<NcclCommunicator> comm_;
};

constexpr DType kReduceDTypes[] = {DType::kF32, DType::kBF16, DType::kF16,
                                   DType::kI8,  DType::kI32,  DType::kI64};

TEST(NcclCreateTest, ForLocalGpu) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::CreateForLocalGpu(*g_world);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->rank(), 0);
  EXPECT_EQ((*comm)->size(), 1);
  EXPECT_EQ((*comm)->name(), "world");
  EXPECT_EQ((*comm)->device(), kGpu);
  EXPECT_EQ((*comm)->world_ranks(), std::vector<int>{0});
}

TEST(NcclCreateTest, RefusesCpuDevice) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Create(*g_world, Device::Cpu(), g_world->options(), "cpu");
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NcclTest, AllReduceEveryDTypeAndOp) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  for (DType dtype : kReduceDTypes) {
    for (ReduceOp reduce : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      SCOPED_TRACE(absl::StrCat(NameOf(dtype), " ", NameOf(reduce)));
      Check(HostOp(CollectiveKind::kAllReduce, dtype, 4096, comm_->size(), reduce));
    }
  }
}

TEST_F(NcclTest, AllGather) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
    SCOPED_TRACE(NameOf(dtype));
    Check(HostOp(CollectiveKind::kAllGather, dtype, 1000, comm_->size()));
  }
}

TEST_F(NcclTest, ReduceScatter) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  for (DType dtype : {DType::kF32, DType::kF16, DType::kI32}) {
    for (ReduceOp reduce : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      SCOPED_TRACE(absl::StrCat(NameOf(dtype), " ", NameOf(reduce)));
      Check(HostOp(CollectiveKind::kReduceScatter, dtype, 1000, comm_->size(), reduce));
    }
  }
}

TEST_F(NcclTest, Broadcast) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI8, DType::kI64}) {
    SCOPED_TRACE(NameOf(dtype));
    Check(HostOp(CollectiveKind::kBroadcast, dtype, 777, comm_->size(), ReduceOp::kSum,
                 /*root=*/0));
  }
}

TEST_F(NcclTest, SingleCollectiveHelpers) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  CollectiveOp host_op = HostOp(CollectiveKind::kAllReduce, DType::kF32, 64, comm_->size());
  absl::StatusOr<CollectiveOp> op = ToDevice(host_op, comm_->rank(), *stream_);
  ASSERT_TRUE(op.ok()) << op.status();
  ASSERT_TRUE(comm_->AllReduce(op->input, ReduceOp::kSum, *stream_).ok());
  absl::StatusOr<int64_t> wrong = CountWrongOnDevice(host_op, *op, *comm_, *stream_);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(*wrong, 0);
}

TEST_F(NcclTest, BatchOfSeveralAllReduces) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  std::vector<CollectiveOp> host_ops = {
      HostOp(CollectiveKind::kAllReduce, DType::kF32, 1 << 16, comm_->size(), ReduceOp::kSum),
      HostOp(CollectiveKind::kAllReduce, DType::kBF16, 333, comm_->size(), ReduceOp::kMax),
      HostOp(CollectiveKind::kAllReduce, DType::kI32, 5, comm_->size(), ReduceOp::kMin),
      HostOp(CollectiveKind::kAllReduce, DType::kI64, 1, comm_->size(), ReduceOp::kSum)};
  CollectiveBatch batch;
  std::vector<CollectiveOp> ops;
  for (CollectiveOp& host_op : host_ops) {
    absl::StatusOr<CollectiveOp> op = ToDevice(host_op, comm_->rank(), *stream_);
    ASSERT_TRUE(op.ok()) << op.status();
    ops.push_back(*op);
    batch.mutable_ops().push_back(*op);
  }
  ASSERT_TRUE(comm_->Run(std::move(batch), *stream_).ok());
  for (size_t i = 0; i < ops.size(); ++i) {
    SCOPED_TRACE(ops[i].Describe());
    absl::StatusOr<int64_t> wrong = CountWrongOnDevice(host_ops[i], ops[i], *comm_, *stream_);
    ASSERT_TRUE(wrong.ok()) << wrong.status();
    EXPECT_EQ(*wrong, 0);
  }
}

TEST_F(NcclTest, StartThenWait) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  CollectiveOp host_op = HostOp(CollectiveKind::kAllReduce, DType::kF32, 1 << 20, comm_->size());
  absl::StatusOr<CollectiveOp> op = ToDevice(host_op, comm_->rank(), *stream_);
  ASSERT_TRUE(op.ok()) << op.status();
  CollectiveBatch batch;
  batch.mutable_ops().push_back(*op);
  absl::StatusOr<std::unique_ptr<Work>> work = comm_->Start(std::move(batch), *stream_);
  ASSERT_TRUE(work.ok()) << work.status();
  absl::Status waited = (*work)->Wait();
  ASSERT_TRUE(waited.ok()) << waited;
  absl::StatusOr<bool> done = (*work)->Poll();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(*done);
  absl::StatusOr<int64_t> wrong = CountWrongOnDevice(host_op, *op, *comm_, *stream_);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(*wrong, 0);
}

TEST_F(NcclTest, PollUntilDone) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  CollectiveOp host_op = HostOp(CollectiveKind::kAllReduce, DType::kBF16, 4096, comm_->size());
  absl::StatusOr<CollectiveOp> op = ToDevice(host_op, comm_->rank(), *stream_);
  ASSERT_TRUE(op.ok()) << op.status();
  CollectiveBatch batch;
  batch.mutable_ops().push_back(*op);
  absl::StatusOr<std::unique_ptr<Work>> work = comm_->Start(std::move(batch), *stream_);
  ASSERT_TRUE(work.ok()) << work.status();
  bool done = false;
  absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (!done && absl::Now() < give_up) {
    absl::StatusOr<bool> polled = (*work)->Poll();
    ASSERT_TRUE(polled.ok()) << polled.status();
    done = *polled;
  }
  EXPECT_TRUE(done);
}

TEST_F(NcclTest, ZeroSizeBuffer) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  Check(HostOp(CollectiveKind::kAllReduce, DType::kF32, 0, comm_->size()));
  Check(HostOp(CollectiveKind::kAllGather, DType::kF32, 0, comm_->size()));
  absl::StatusOr<Tensor> empty = Tensor::Empty(DType::kF32, {0}, kGpu);
  ASSERT_TRUE(empty.ok()) << empty.status();
  absl::StatusOr<std::unique_ptr<Work>> work =
      comm_->Start(std::move(CollectiveBatch().AllReduce(*empty, ReduceOp::kSum)), *stream_);
  ASSERT_TRUE(work.ok()) << work.status();
  EXPECT_TRUE((*work)->Wait().ok());
}

TEST_F(NcclTest, OddSize) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI8}) {
    SCOPED_TRACE(NameOf(dtype));
    Check(HostOp(CollectiveKind::kAllReduce, dtype, 1023, comm_->size()));
    Check(HostOp(CollectiveKind::kAllGather, dtype, 1023, comm_->size()));
    Check(HostOp(CollectiveKind::kReduceScatter, dtype, 1023, comm_->size()));
    Check(HostOp(CollectiveKind::kBroadcast, dtype, 1023, comm_->size()));
  }
}

TEST_F(NcclTest, Barrier) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  Check(HostOp(CollectiveKind::kAllReduce, DType::kF32, 1 << 16, comm_->size()));
  for (int i = 0; i < 3; ++i) {
    absl::Status barrier = comm_->Barrier();
    ASSERT_TRUE(barrier.ok()) << barrier;
  }
}

TEST_F(NcclTest, SplitIntoOneRankSubgroup) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<Communicator>> sub = comm_->Split(0, 0, "sub");
  ASSERT_TRUE(sub.ok()) << sub.status();
  ASSERT_NE(*sub, nullptr);
  EXPECT_EQ((*sub)->rank(), 0);
  EXPECT_EQ((*sub)->size(), 1);
  EXPECT_EQ((*sub)->name(), "sub");
  EXPECT_EQ((*sub)->device(), kGpu);
  auto* nccl_sub = dynamic_cast<NcclCommunicator*>(sub->get());
  ASSERT_NE(nccl_sub, nullptr);
  for (ReduceOp reduce : {ReduceOp::kSum, ReduceOp::kMax}) {
    absl::StatusOr<int64_t> wrong = RunAndCountWrong(
        *nccl_sub, *stream_, HostOp(CollectiveKind::kAllReduce, DType::kF32, 999, 1, reduce));
    ASSERT_TRUE(wrong.ok()) << wrong.status();
    EXPECT_EQ(*wrong, 0);
  }
  EXPECT_TRUE((*sub)->Barrier().ok());
  // The parent still works.
  Check(HostOp(CollectiveKind::kAllReduce, DType::kI32, 100, comm_->size()));

  absl::StatusOr<std::unique_ptr<Communicator>> none =
      comm_->Split(Communicator::kNoColor, 0, "none");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);
  EXPECT_EQ(comm_->Split(-5, 0, "bad").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclValidateTest, ValidationModeRunsMatchingCalls) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm = MakeComm(/*validate=*/true);
  ASSERT_TRUE(comm.ok()) << comm.status();
  ASSERT_TRUE((*comm)->options().validate);
  absl::StatusOr<std::unique_ptr<Stream>> stream = Stream::Create(kGpu);
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (CollectiveKind kind : {CollectiveKind::kAllReduce, CollectiveKind::kAllGather,
                              CollectiveKind::kReduceScatter, CollectiveKind::kBroadcast}) {
    SCOPED_TRACE(NameOf(kind));
    absl::StatusOr<int64_t> wrong =
        RunAndCountWrong(**comm, **stream, HostOp(kind, DType::kF32, 257, (*comm)->size()));
    ASSERT_TRUE(wrong.ok()) << wrong.status();
    EXPECT_EQ(*wrong, 0);
  }
  // A batch exchanges its signatures in two rounds.
  CollectiveOp first = HostOp(CollectiveKind::kAllReduce, DType::kF32, 10, 1);
  CollectiveOp second = HostOp(CollectiveKind::kAllReduce, DType::kI64, 20, 1, ReduceOp::kMax);
  absl::StatusOr<CollectiveOp> a = ToDevice(first, 0, **stream);
  absl::StatusOr<CollectiveOp> b = ToDevice(second, 0, **stream);
  ASSERT_TRUE(a.ok() && b.ok());
  CollectiveBatch batch;
  batch.mutable_ops().push_back(*a);
  batch.mutable_ops().push_back(*b);
  ASSERT_TRUE((*comm)->Run(std::move(batch), **stream).ok());
  absl::StatusOr<int64_t> wrong = CountWrongOnDevice(second, *b, **comm, **stream);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(*wrong, 0);
  EXPECT_TRUE((*comm)->Barrier().ok());
}

TEST_F(NcclTest, HostTensorIsInvalidArgument) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<Tensor> host = Tensor::Zeros(DType::kF32, {16});
  ASSERT_TRUE(host.ok()) << host.status();
  absl::Status status = comm_->AllReduce(*host, ReduceOp::kSum, *stream_);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("cpu"), absl::string_view::npos) << status;

  // A GPU tensor on the CPU stream is refused too.
  absl::StatusOr<Tensor> device = Tensor::Zeros(DType::kF32, {16}, kGpu);
  ASSERT_TRUE(device.ok()) << device.status();
  Stream cpu = Stream::Cpu();
  EXPECT_EQ(comm_->AllReduce(*device, ReduceOp::kSum, cpu).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->Run(CollectiveBatch(), *stream_).code(), absl::StatusCode::kInvalidArgument);
  // No peer to send to in a group of one.
  EXPECT_EQ(comm_->Send(*device, 0, *stream_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->Recv(*device, 1, *stream_).code(), absl::StatusCode::kInvalidArgument);

  // Refused calls leave the communicator usable.
  Check(HostOp(CollectiveKind::kAllReduce, DType::kF32, 16, comm_->size()));
}

}  // namespace
}  // namespace tessera::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  absl::StatusOr<std::unique_ptr<tessera::comm::MpiRuntime>> runtime =
      tessera::comm::MpiRuntime::Initialize(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "MPI: %s\n", runtime.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<tessera::comm::MpiCommunicator>> world =
      tessera::comm::MpiCommunicator::CreateWorld(tessera::comm::CommOptions());
  if (!world.ok()) {
    std::fprintf(stderr, "MPI world: %s\n", world.status().ToString().c_str());
    return 1;
  }
  tessera::comm::g_world = world->get();
  int result = RUN_ALL_TESTS();
  tessera::comm::g_world = nullptr;
  world->reset();    // before MPI goes away
  runtime->reset();  // MPI_Finalize
  return result;
}
