// Every collective of the MPI backend, for every dtype and reduce op, with closed-form
// expected values (comm/collective_check.h), at awkward sizes: zero, one, odd, not a
// multiple of the rank count, and sizes on both sides of the all-reduce algorithm switch.

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "comm/collective_check.h"
#include "comm/mpi/mpi_operation.h"
#include "runtime/core/tensor_values.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::comm {
namespace {

using ::tessera::testing::World;

constexpr DType kCollectiveDTypes[] = {DType::kF32, DType::kBF16, DType::kF16,
                                       DType::kI8,  DType::kI32,  DType::kI64};
constexpr ReduceOp kReduceOps[] = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin};

// Sizes that exercise both all-reduce algorithms: below and above the ring threshold for
// every element width, and element counts that leave ring chunks uneven or empty.
std::vector<int64_t> AllReduceCounts(DType dtype) {
  int64_t threshold = HostAllReduce::kRingThresholdBytes / StorageBytes(dtype, 1);
  return {0, 1, 2, 3, 7, 1023, threshold - 1, threshold, threshold + 5, 3 * threshold + 1};
}

Tensor Make(DType dtype, int64_t count) {
  absl::StatusOr<Tensor> tensor = Tensor::Empty(dtype, {count});
  TESSERA_CHECK(tensor.ok(), tensor.status().ToString());
  return *tensor;
}

std::string Label(const CollectiveOp& op) {
  return absl::StrCat(op.Describe(), " on rank ", World().rank(), " of ", World().size());
}

TEST(Collectives, AllReduceEveryDTypeOpAndSize) {
  Stream cpu = Stream::Cpu();
  for (DType dtype : kCollectiveDTypes) {
    for (ReduceOp reduce : kReduceOps) {
      for (int64_t count : AllReduceCounts(dtype)) {
        CollectiveOp op{CollectiveKind::kAllReduce, reduce, Make(dtype, count)};
        FillPattern(op, World().rank());
        ASSERT_TRUE(World().AllReduce(op.input, reduce, cpu).ok()) << Label(op);
        EXPECT_EQ(CountWrong(op, World().rank(), World().size()), 0) << Label(op);
      }
    }
  }
}

// Tensor parallelism needs every rank to hold the very same bits after an all-reduce.
TEST(Collectives, AllReduceResultsAreBitwiseIdenticalOnEveryRank) {
  Stream cpu = Stream::Cpu();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t count : AllReduceCounts(dtype)) {
      Tensor buffer = Make(dtype, count);
      std::mt19937 rng(1234 + World().rank());
      std::normal_distribution<double> normal;
      FillWith(buffer, [&](int64_t) { return normal(rng); });
      ASSERT_TRUE(World().AllReduce(buffer, ReduceOp::kSum, cpu).ok());
      Tensor gathered = Make(dtype, count * World().size());
      ASSERT_TRUE(World().AllGather(buffer, gathered, cpu).ok());
      const char* bytes = static_cast<const char*>(gathered.data());
      for (int r = 1; r < World().size(); ++r) {
        EXPECT_EQ(std::memcmp(bytes, bytes + r * buffer.nbytes(), buffer.nbytes()), 0)
            << NameOf(dtype) << " x" << count << ": rank " << r << " differs from rank 0";
      }
    }
  }
}

TEST(Collectives, AllGatherEveryDType) {
  Stream cpu = Stream::Cpu();
  for (DType dtype : kCollectiveDTypes) {
    for (int64_t count : {0, 1, 7, 1000}) {
      CollectiveOp op{CollectiveKind::kAllGather, ReduceOp::kSum, Make(dtype, count),
                      Make(dtype, count * World().size())};
      FillPattern(op, World().rank());
      ASSERT_TRUE(World().AllGather(op.input, op.output, cpu).ok()) << Label(op);
      EXPECT_EQ(CountWrong(op, World().rank(), World().size()), 0) << Label(op);
    }
  }
}

TEST(Collectives, ReduceScatterEveryDTypeAndOp) {
  Stream cpu = Stream::Cpu();
  for (DType dtype : kCollectiveDTypes) {
    for (ReduceOp reduce : kReduceOps) {
      for (int64_t count : {0, 1, 7, 1000}) {
        CollectiveOp op{CollectiveKind::kReduceScatter, reduce, Make(dtype, count * World().size()),
                        Make(dtype, count)};
        FillPattern(op, World().rank());
        ASSERT_TRUE(World().ReduceScatter(op.input, op.output, reduce, cpu).ok()) << Label(op);
        EXPECT_EQ(CountWrong(op, World().rank(), World().size()), 0) << Label(op);
      }
    }
  }
}

TEST(Collectives, BroadcastFromEveryRoot) {
  Stream cpu = Stream::Cpu();
  for (DType dtype : kCollectiveDTypes) {
    for (int root = 0; root < World().size(); ++root) {
      for (int64_t count : {0, 1, 7, 100000}) {
        CollectiveOp op{CollectiveKind::kBroadcast, ReduceOp::kSum, Make(dtype, count), Tensor(),
                        root};
        FillPattern(op, World().rank());
        ASSERT_TRUE(World().Broadcast(op.input, root, cpu).ok()) << Label(op);
        EXPECT_EQ(CountWrong(op, World().rank(), World().size()), 0) << Label(op);
      }
    }
  }
}

TEST(Collectives, SendAndReceiveAroundARing) {
  int n = World().size();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  Stream cpu = Stream::Cpu();
  int right = (World().rank() + 1) % n;
  int left = (World().rank() + n - 1) % n;
  Tensor out = Make(DType::kI64, 513);
  Tensor in = Make(DType::kI64, 513);
  FillWith(out, [&](int64_t i) { return World().rank() * 1000 + i; });
  // Even ranks send first, odd ranks receive first: no cycle of blocked senders.
  if (World().rank() % 2 == 0) {
    ASSERT_TRUE(World().Send(out, right, cpu).ok());
    ASSERT_TRUE(World().Recv(in, left, cpu).ok());
  } else {
    ASSERT_TRUE(World().Recv(in, left, cpu).ok());
    ASSERT_TRUE(World().Send(out, right, cpu).ok());
  }
  for (int64_t i = 0; i < in.numel(); ++i) {
    ASSERT_EQ(in.span<int64_t>()[i], left * 1000 + i) << "element " << i;
  }
}

TEST(Collectives, BatchCompletesAsynchronouslyWhileTheCallerComputes) {
  Stream cpu = Stream::Cpu();
  int n = World().size();
  std::vector<CollectiveOp> ops = {
      {CollectiveKind::kAllReduce, ReduceOp::kSum, Make(DType::kF32, 200000)},
      {CollectiveKind::kAllReduce, ReduceOp::kMax, Make(DType::kBF16, 33)},
      {CollectiveKind::kAllGather, ReduceOp::kSum, Make(DType::kI32, 50),
       Make(DType::kI32, 50 * n)},
      {CollectiveKind::kReduceScatter, ReduceOp::kMin, Make(DType::kF16, 9 * n),
       Make(DType::kF16, 9)},
      {CollectiveKind::kBroadcast, ReduceOp::kSum, Make(DType::kI64, 17), Tensor(), n - 1},
  };
  CollectiveBatch batch;
  for (CollectiveOp& op : ops) {
    FillPattern(op, World().rank());
    batch.mutable_ops().push_back(op);
  }
  absl::StatusOr<std::unique_ptr<Work>> work = World().Start(std::move(batch), cpu);
  ASSERT_TRUE(work.ok()) << work.status();
  // "Compute" between polls, as a trainer overlapping gradient reduction would.
  volatile double sink = 0;
  int polls = 0;
  while (true) {
    absl::StatusOr<bool> done = (*work)->Poll();
    ASSERT_TRUE(done.ok()) << done.status();
    if (*done) break;
    for (int i = 0; i < 1000; ++i) sink = sink + i;
    ++polls;
  }
  EXPECT_TRUE((*work)->Wait().ok());
  for (const CollectiveOp& op : ops) {
    EXPECT_EQ(CountWrong(op, World().rank(), n), 0) << Label(op);
  }
}

TEST(Collectives, SeveralBatchesInFlightCompleteInAnyWaitOrder) {
  Stream cpu = Stream::Cpu();
  std::vector<CollectiveOp> ops;
  std::vector<std::unique_ptr<Work>> works;
  for (int i = 0; i < 4; ++i) {
    ops.push_back({CollectiveKind::kAllReduce, ReduceOp::kSum, Make(DType::kF32, 5000 * (i + 1))});
    FillPattern(ops.back(), World().rank());
    absl::StatusOr<std::unique_ptr<Work>> work = World().Start(
        std::move(CollectiveBatch().AllReduce(ops.back().input, ReduceOp::kSum)), cpu);
    ASSERT_TRUE(work.ok()) << work.status();
    works.push_back(std::move(*work));
  }
  for (int i = 3; i >= 0; --i) ASSERT_TRUE(works[i]->Wait().ok());
  for (const CollectiveOp& op : ops) EXPECT_EQ(CountWrong(op, World().rank(), World().size()), 0);
}

TEST(Collectives, BarrierReturnsOnEveryRank) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(World().Barrier().ok());
}

TEST(Collectives, InvalidCallsFailWithoutBreakingTheCommunicator) {
  Stream cpu = Stream::Cpu();
  Tensor input = Make(DType::kF32, 4);
  Tensor wrong_output = Make(DType::kF32, 4 * World().size() + 1);
  absl::Status status = World().AllGather(input, wrong_output, cpu);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("AllGather"), absl::string_view::npos) << status;

  Tensor int4 = Make(DType::kI4, 8);
  EXPECT_EQ(World().AllReduce(int4, ReduceOp::kSum, cpu).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(World().Broadcast(input, World().size(), cpu).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(World().Send(input, World().rank(), cpu).code(), absl::StatusCode::kInvalidArgument);

  // Nothing was issued, so the ranks are still in step.
  CollectiveOp op{CollectiveKind::kAllReduce, ReduceOp::kSum, Make(DType::kI32, 10)};
  FillPattern(op, World().rank());
  ASSERT_TRUE(World().AllReduce(op.input, ReduceOp::kSum, cpu).ok());
  EXPECT_EQ(CountWrong(op, World().rank(), World().size()), 0);
}

TEST(Split, EvenAndOddRanksFormGroupsOrderedByKey) {
  Stream cpu = Stream::Cpu();
  int rank = World().rank();
  // Key reverses the order: the highest world rank of a color becomes its rank 0.
  absl::StatusOr<std::unique_ptr<Communicator>> half =
      World().Split(rank % 2, -rank, absl::StrCat("parity", rank % 2));
  ASSERT_TRUE(half.ok()) << half.status();
  ASSERT_NE(*half, nullptr);
  Communicator& group = **half;
  std::vector<int> members;
  for (int r = World().size() - 1; r >= 0; --r) {
    if (r % 2 == rank % 2) members.push_back(r);
  }
  ASSERT_EQ(group.size(), static_cast<int>(members.size()));
  EXPECT_EQ(group.world_ranks(), members);
  EXPECT_EQ(group.world_ranks()[group.rank()], rank);
  EXPECT_EQ(group.name(), absl::StrCat("parity", rank % 2));

  // Sum of world ranks in the group, closed form.
  Tensor value = Make(DType::kI64, 1);
  value.span<int64_t>()[0] = rank;
  ASSERT_TRUE(group.AllReduce(value, ReduceOp::kSum, cpu).ok());
  int64_t expected = 0;
  for (int r : members) expected += r;
  EXPECT_EQ(value.span<int64_t>()[0], expected);

  // The parent still works after the split.
  ASSERT_TRUE(World().Barrier().ok());
}

TEST(Split, NoColorJoinsNoGroup) {
  int rank = World().rank();
  absl::StatusOr<std::unique_ptr<Communicator>> group =
      World().Split(rank == 0 ? Communicator::kNoColor : 1, rank, "all-but-0");
  ASSERT_TRUE(group.ok()) << group.status();
  if (rank == 0) {
    EXPECT_EQ(*group, nullptr);
  } else {
    ASSERT_NE(*group, nullptr);
    EXPECT_EQ((*group)->size(), World().size() - 1);
    EXPECT_TRUE((*group)->Barrier().ok());
  }
  EXPECT_EQ(World().Split(-5, 0, "bad").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera::comm
