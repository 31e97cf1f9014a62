// Tests of the rank-free logic under comm/: collective validation and signatures, options,
// timeout reports, closed-form result checks, topology from hand-built reports and the
// TP x DP placement. No MPI process is started.

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "comm/arrival_report.h"
#include "comm/collective.h"
#include "comm/collective_check.h"
#include "comm/comm_options.h"
#include "comm/layout.h"
#include "comm/node_share.h"
#include "comm/topology.h"
#include "gtest/gtest.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"
#include "tessera/v1/topology.pb.h"
#include "tests/unit/status_test_util.h"

namespace tessera::comm {
namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

// A host tensor of `dtype` with `numel` zero elements (fatal test failure otherwise).
Tensor HostTensor(DType dtype, int64_t numel) {
  absl::StatusOr<Tensor> tensor = Tensor::Zeros(dtype, {numel});
  EXPECT_TRUE(tensor.ok()) << tensor.status();
  return tensor.ok() ? *std::move(tensor) : Tensor();
}

// A host tensor holding `values` as `dtype`.
Tensor TensorOf(DType dtype, const std::vector<double>& values) {
  Tensor tensor = HostTensor(dtype, static_cast<int64_t>(values.size()));
  for (size_t i = 0; i < values.size(); ++i) SetElement(tensor, static_cast<int64_t>(i), values[i]);
  return tensor;
}

std::vector<double> ValuesOf(const Tensor& tensor) {
  std::vector<double> values;
  for (int64_t i = 0; i < tensor.numel(); ++i) values.push_back(ElementAsDouble(tensor, i));
  return values;
}

CollectiveOp AllReduceOp(Tensor buffer, ReduceOp op = ReduceOp::kSum) {
  CollectiveBatch batch;
  batch.AllReduce(std::move(buffer), op);
  return batch.ops()[0];
}
CollectiveOp AllGatherOp(Tensor input, Tensor output) {
  CollectiveBatch batch;
  batch.AllGather(std::move(input), std::move(output));
  return batch.ops()[0];
}
CollectiveOp ReduceScatterOp(Tensor input, Tensor output, ReduceOp op = ReduceOp::kSum) {
  CollectiveBatch batch;
  batch.ReduceScatter(std::move(input), std::move(output), op);
  return batch.ops()[0];
}
CollectiveOp BroadcastOp(Tensor buffer, int root) {
  CollectiveBatch batch;
  batch.Broadcast(std::move(buffer), root);
  return batch.ops()[0];
}

// ---- collective.h ---------------------------------------------------------------------

TEST(CollectiveTest, NamesAndParseReduceOp) {
  EXPECT_EQ(NameOf(ReduceOp::kSum), "sum");
  EXPECT_EQ(NameOf(ReduceOp::kMax), "max");
  EXPECT_EQ(NameOf(ReduceOp::kMin), "min");
  EXPECT_EQ(NameOf(CollectiveKind::kAllReduce), "AllReduce");
  EXPECT_EQ(NameOf(CollectiveKind::kReduceScatter), "ReduceScatter");
  EXPECT_EQ(NameOf(CollectiveKind::kRecv), "Recv");
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    ASSERT_OK_AND_ASSIGN(ReduceOp parsed, ParseReduceOp(NameOf(op)));
    EXPECT_EQ(parsed, op);
  }
  EXPECT_TRUE(IsError(ParseReduceOp("avg"), absl::StatusCode::kInvalidArgument, {"'avg'"}));
}

TEST(CollectiveTest, BatchRecordsOperations) {
  CollectiveBatch batch;
  EXPECT_TRUE(batch.empty());
  batch.AllReduce(HostTensor(DType::kF32, 4), ReduceOp::kMax)
      .AllGather(HostTensor(DType::kF32, 2), HostTensor(DType::kF32, 4))
      .ReduceScatter(HostTensor(DType::kI32, 4), HostTensor(DType::kI32, 2), ReduceOp::kMin)
      .Broadcast(HostTensor(DType::kI8, 3), 1);
  ASSERT_EQ(batch.size(), 4u);
  EXPECT_EQ(batch.ops()[0].kind, CollectiveKind::kAllReduce);
  EXPECT_EQ(batch.ops()[0].reduce_op, ReduceOp::kMax);
  EXPECT_EQ(batch.ops()[1].kind, CollectiveKind::kAllGather);
  EXPECT_EQ(batch.ops()[1].output.numel(), 4);
  EXPECT_EQ(batch.ops()[2].kind, CollectiveKind::kReduceScatter);
  EXPECT_EQ(batch.ops()[2].reduce_op, ReduceOp::kMin);
  EXPECT_EQ(batch.ops()[3].kind, CollectiveKind::kBroadcast);
  EXPECT_EQ(batch.ops()[3].root, 1);
}

TEST(ValidateOpTest, AcceptsWellFormedOps) {
  EXPECT_OK(ValidateOp(AllReduceOp(HostTensor(DType::kF32, 16)), 4, Device::Cpu()));
  EXPECT_OK(ValidateOp(AllGatherOp(HostTensor(DType::kBF16, 8), HostTensor(DType::kBF16, 32)), 4,
                       Device::Cpu()));
  EXPECT_OK(ValidateOp(ReduceScatterOp(HostTensor(DType::kI64, 12), HostTensor(DType::kI64, 4)), 3,
                       Device::Cpu()));
  EXPECT_OK(ValidateOp(BroadcastOp(HostTensor(DType::kI8, 3), 3), 4, Device::Cpu()));
  EXPECT_OK(ValidateOp(BroadcastOp(HostTensor(DType::kI8, 3), 0), 1, Device::Cpu()));
}

TEST(ValidateOpTest, RejectsInt4) {
  EXPECT_TRUE(IsError(ValidateOp(AllReduceOp(HostTensor(DType::kI4, 16)), 2, Device::Cpu()),
                      absl::StatusCode::kInvalidArgument, {"AllReduce(i4 x16, sum)", "int4"}));
  EXPECT_TRUE(IsError(ValidateOp(AllGatherOp(HostTensor(DType::kI4, 4), HostTensor(DType::kI4, 8)),
                                 2, Device::Cpu()),
                      absl::StatusCode::kInvalidArgument, {"int4"}));
}

TEST(ValidateOpTest, AllGatherOutputSizeNamesSizes) {
  absl::Status status = ValidateOp(
      AllGatherOp(HostTensor(DType::kF32, 8), HostTensor(DType::kF32, 24)), 4, Device::Cpu());
  EXPECT_TRUE(IsError(status, absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(status.message(),
            "AllGather(f32 x8): output holds 24 elements but must hold 4 x 8 (group size x "
            "input)");
}

TEST(ValidateOpTest, ReduceScatterInputSizeNamesSizes) {
  absl::Status status = ValidateOp(
      ReduceScatterOp(HostTensor(DType::kF32, 30), HostTensor(DType::kF32, 8)), 4, Device::Cpu());
  EXPECT_TRUE(IsError(status, absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(status.message(),
            "ReduceScatter(f32 x30, sum): input holds 30 elements but must hold 4 x 8 (group "
            "size x output)");
}

TEST(ValidateOpTest, RejectsDTypeMismatch) {
  EXPECT_TRUE(IsError(
      ValidateOp(AllGatherOp(HostTensor(DType::kF32, 2), HostTensor(DType::kBF16, 4)), 2,
                 Device::Cpu()),
      absl::StatusCode::kInvalidArgument, {"output dtype bf16 differs from input dtype f32"}));
  EXPECT_TRUE(IsError(
      ValidateOp(ReduceScatterOp(HostTensor(DType::kI32, 4), HostTensor(DType::kI64, 2)), 2,
                 Device::Cpu()),
      absl::StatusCode::kInvalidArgument, {"output dtype i64 differs from input dtype i32"}));
}

TEST(ValidateOpTest, RejectsBadBroadcastRoot) {
  EXPECT_TRUE(IsError(ValidateOp(BroadcastOp(HostTensor(DType::kF32, 3), 4), 4, Device::Cpu()),
                      absl::StatusCode::kInvalidArgument,
                      {"Broadcast(f32 x3, root 4)", "root 4 is not a rank of a group of 4"}));
  EXPECT_TRUE(IsError(ValidateOp(BroadcastOp(HostTensor(DType::kF32, 3), -1), 4, Device::Cpu()),
                      absl::StatusCode::kInvalidArgument, {"root -1"}));
}

TEST(ValidateOpTest, RejectsWrongDeviceAndMissingMemory) {
  EXPECT_TRUE(IsError(ValidateOp(AllReduceOp(HostTensor(DType::kF32, 4)), 2, Device::Cuda(0)),
                      absl::StatusCode::kInvalidArgument,
                      {"input is on cpu but the communicator works on cuda:0"}));
  EXPECT_TRUE(
      IsError(ValidateOp(AllReduceOp(Tensor::Wrap(nullptr, DType::kF32, {4})), 2, Device::Cpu()),
              absl::StatusCode::kInvalidArgument, {"input has no memory"}));
  float device_memory[8];
  Tensor on_gpu = Tensor::Wrap(device_memory, DType::kF32, {8}, Device::Cuda(0));
  EXPECT_TRUE(IsError(ValidateOp(AllGatherOp(HostTensor(DType::kF32, 4), on_gpu), 2, Device::Cpu()),
                      absl::StatusCode::kInvalidArgument,
                      {"output is on cuda:0 but the communicator works on cpu"}));
}

TEST(OpSignatureTest, DescribeStrings) {
  EXPECT_EQ(OpSignature::Of(AllReduceOp(HostTensor(DType::kF32, 1024)), 0).Describe(),
            "AllReduce(f32 x1024, sum)");
  EXPECT_EQ(
      OpSignature::Of(AllGatherOp(HostTensor(DType::kBF16, 8), HostTensor(DType::kBF16, 32)), 0)
          .Describe(),
      "AllGather(bf16 x8)");
  EXPECT_EQ(OpSignature::Of(ReduceScatterOp(HostTensor(DType::kF16, 32), HostTensor(DType::kF16, 8),
                                            ReduceOp::kMax),
                            0)
                .Describe(),
            "ReduceScatter(f16 x32, max)");
  EXPECT_EQ(OpSignature::Of(BroadcastOp(HostTensor(DType::kI32, 3), 1), 0).Describe(),
            "Broadcast(i32 x3, root 1)");
  EXPECT_EQ(OpSignature::OfBarrier(4).Describe(), "Barrier()");
  EXPECT_EQ(AllReduceOp(HostTensor(DType::kI64, 5), ReduceOp::kMin).Describe(),
            "AllReduce(i64 x5, min)");
  EXPECT_EQ(BroadcastOp(HostTensor(DType::kI8, 2), 3).Describe(), "Broadcast(i8 x2, root 3)");
}

TEST(OpSignatureTest, FieldsOnlyWhereTheyApply) {
  CollectiveOp gather = AllGatherOp(HostTensor(DType::kBF16, 8), HostTensor(DType::kBF16, 16));
  gather.reduce_op = ReduceOp::kMax;  // meaningless for AllGather
  gather.root = 3;
  OpSignature s = OpSignature::Of(gather, 17);
  EXPECT_EQ(s.sequence, 17u);
  EXPECT_EQ(s.kind, static_cast<int32_t>(CollectiveKind::kAllGather));
  EXPECT_EQ(s.reduce_op, 0);
  EXPECT_EQ(s.root, 0);
  EXPECT_EQ(s.dtype, static_cast<int32_t>(DType::kBF16));
  EXPECT_EQ(s.count, 8);

  CollectiveOp reduce = AllReduceOp(HostTensor(DType::kF32, 4), ReduceOp::kMin);
  reduce.root = 2;
  EXPECT_EQ(OpSignature::Of(reduce, 0).reduce_op, static_cast<int32_t>(ReduceOp::kMin));
  EXPECT_EQ(OpSignature::Of(reduce, 0).root, 0);

  OpSignature barrier = OpSignature::OfBarrier(9);
  EXPECT_EQ(barrier.sequence, 9u);
  EXPECT_EQ(barrier.kind, static_cast<int32_t>(CollectiveKind::kBarrier));
  EXPECT_EQ(barrier.count, 0);
}

TEST(CompareSignaturesTest, MatchingSignaturesAreOk) {
  OpSignature s = OpSignature::Of(AllReduceOp(HostTensor(DType::kF32, 16)), 12);
  EXPECT_OK(CompareSignatures({s, s, s, s}, "world"));
  EXPECT_OK(CompareSignatures({s}, "world"));
  EXPECT_OK(CompareSignatures({}, "world"));
}

TEST(CompareSignaturesTest, DifferentCallAtSameSequence) {
  OpSignature reduce = OpSignature::Of(AllReduceOp(HostTensor(DType::kF32, 16)), 12);
  OpSignature gather =
      OpSignature::Of(AllGatherOp(HostTensor(DType::kF32, 8), HostTensor(DType::kF32, 16)), 12);
  absl::Status status = CompareSignatures({reduce, gather}, "tp0");
  EXPECT_TRUE(IsError(status, absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(status.message(),
            "collective mismatch at #12 in group tp0: rank 0 called AllReduce(f32 x16, sum) but "
            "rank 1 called AllGather(f32 x8)");
}

TEST(CompareSignaturesTest, DifferentSequenceNamesBothRanks) {
  OpSignature reduce = OpSignature::Of(AllReduceOp(HostTensor(DType::kF32, 16)), 5);
  absl::Status status = CompareSignatures({reduce, reduce, OpSignature::OfBarrier(6)}, "dp1");
  EXPECT_TRUE(IsError(status, absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(status.message(),
            "collective mismatch in group dp1: rank 0 is at collective #5 (AllReduce(f32 x16, "
            "sum)) but rank 2 is at #6 (Barrier())");
}

TEST(CompareSignaturesTest, CountMismatchNamesFirstDifferingRank) {
  OpSignature a = OpSignature::Of(AllReduceOp(HostTensor(DType::kF32, 16)), 3);
  OpSignature b = OpSignature::Of(AllReduceOp(HostTensor(DType::kF32, 15)), 3);
  EXPECT_TRUE(IsError(CompareSignatures({a, a, b, b}, "world"),
                      absl::StatusCode::kFailedPrecondition,
                      {"rank 0 called AllReduce(f32 x16, sum)",
                       "rank 2 called AllReduce(f32 x15, "
                       "sum)"}));
}

// ---- comm_options.h -------------------------------------------------------------------

TEST(ParseTimeoutTest, AcceptsSecondsAndDurations) {
  const struct {
    const char* text;
    absl::Duration expected;
  } cases[] = {{"30", absl::Seconds(30)},          {"1.5", absl::Milliseconds(1500)},
               {"0.5", absl::Milliseconds(500)},   {"250ms", absl::Milliseconds(250)},
               {"5m", absl::Minutes(5)},           {"30s", absl::Seconds(30)},
               {"1.5s", absl::Milliseconds(1500)}, {"1h", absl::Hours(1)}};
  for (const auto& c : cases) {
    ASSERT_OK_AND_ASSIGN(absl::Duration parsed, ParseTimeout(c.text));
    EXPECT_EQ(parsed, c.expected) << c.text;
  }
}

TEST(ParseTimeoutTest, RejectsMalformed) {
  for (const char* bad : {"abc", "", "5 m", "5x", "ms", "--1"}) {
    EXPECT_TRUE(IsError(ParseTimeout(bad), absl::StatusCode::kInvalidArgument,
                        {absl::StrCat("'", bad, "'"), "is not a duration"}))
        << bad;
  }
}

TEST(ParseTimeoutTest, RejectsZeroAndNegative) {
  for (const char* bad : {"0", "0s", "-1", "-2m", "-0.5"}) {
    EXPECT_TRUE(IsError(ParseTimeout(bad), absl::StatusCode::kInvalidArgument,
                        {absl::StrCat("'", bad, "'"), "must be positive"}))
        << bad;
  }
}

TEST(ParseTimeoutTest, RejectsInfiniteAndNotANumber) {
  for (const char* bad : {"nan", "inf", "1e400", "inf s"}) {
    EXPECT_FALSE(ParseTimeout(bad).ok()) << bad;
  }
}

// Sets an environment variable for one scope and restores its previous state after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value == nullptr) {
      unsetenv(name);
    } else {
      setenv(name, value, /*overwrite=*/1);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(CommOptionsTest, DefaultsWithoutEnvironment) {
  ScopedEnv timeout("TESSERA_COMM_TIMEOUT", nullptr);
  ScopedEnv validate("TESSERA_COMM_VALIDATE", nullptr);
  ASSERT_OK_AND_ASSIGN(CommOptions options, CommOptions::FromEnvironment());
  EXPECT_EQ(options.timeout, absl::Minutes(5));
  EXPECT_FALSE(options.validate);
}

TEST(CommOptionsTest, EmptyVariablesMeanDefaults) {
  ScopedEnv timeout("TESSERA_COMM_TIMEOUT", "");
  ScopedEnv validate("TESSERA_COMM_VALIDATE", "");
  ASSERT_OK_AND_ASSIGN(CommOptions options, CommOptions::FromEnvironment());
  EXPECT_EQ(options.timeout, absl::Minutes(5));
  EXPECT_FALSE(options.validate);
}

TEST(CommOptionsTest, ReadsEnvironment) {
  ScopedEnv timeout("TESSERA_COMM_TIMEOUT", "45");
  ScopedEnv validate("TESSERA_COMM_VALIDATE", "1");
  ASSERT_OK_AND_ASSIGN(CommOptions options, CommOptions::FromEnvironment());
  EXPECT_EQ(options.timeout, absl::Seconds(45));
  EXPECT_TRUE(options.validate);
  for (const char* on : {"true", "on"}) {
    ScopedEnv v("TESSERA_COMM_VALIDATE", on);
    ASSERT_OK_AND_ASSIGN(CommOptions o, CommOptions::FromEnvironment());
    EXPECT_TRUE(o.validate) << on;
  }
  for (const char* off : {"0", "false", "off"}) {
    ScopedEnv v("TESSERA_COMM_VALIDATE", off);
    ASSERT_OK_AND_ASSIGN(CommOptions o, CommOptions::FromEnvironment());
    EXPECT_FALSE(o.validate) << off;
  }
  ScopedEnv minutes("TESSERA_COMM_TIMEOUT", "2m");
  ASSERT_OK_AND_ASSIGN(CommOptions o, CommOptions::FromEnvironment());
  EXPECT_EQ(o.timeout, absl::Minutes(2));
}

TEST(CommOptionsTest, BadTimeoutNamesVariable) {
  ScopedEnv timeout("TESSERA_COMM_TIMEOUT", "soon");
  ScopedEnv validate("TESSERA_COMM_VALIDATE", nullptr);
  EXPECT_TRUE(IsError(CommOptions::FromEnvironment(), absl::StatusCode::kInvalidArgument,
                      {"TESSERA_COMM_TIMEOUT", "'soon'"}));
  ScopedEnv zero("TESSERA_COMM_TIMEOUT", "0");
  EXPECT_TRUE(IsError(CommOptions::FromEnvironment(), absl::StatusCode::kInvalidArgument,
                      {"TESSERA_COMM_TIMEOUT", "must be positive"}));
}

TEST(CommOptionsTest, BadValidateNamesVariable) {
  ScopedEnv timeout("TESSERA_COMM_TIMEOUT", nullptr);
  ScopedEnv validate("TESSERA_COMM_VALIDATE", "maybe");
  EXPECT_TRUE(IsError(CommOptions::FromEnvironment(), absl::StatusCode::kInvalidArgument,
                      {"TESSERA_COMM_VALIDATE", "'maybe'"}));
}

// ---- arrival_report.h -----------------------------------------------------------------

TimedOutCall AllReduceCall(int self) {
  TimedOutCall call;
  call.description = "AllReduce(f32 x16, sum)";
  call.sequence = 7;
  call.group = "tp0";
  call.timeout = absl::Seconds(2);
  call.self = self;
  return call;
}

TEST(DescribeTimeoutTest, NamesEachKindOfAbsentRank) {
  std::vector<std::optional<PeerState>> peers = {
      PeerState{7, CollectiveKind::kAllReduce},  // self
      std::nullopt,                              // no answer
      PeerState{5, CollectiveKind::kAllGather},  // still in an earlier collective
      PeerState{9, CollectiveKind::kBroadcast},  // already in a later one
      PeerState{7, CollectiveKind::kAllReduce},  // arrived
  };
  std::vector<std::string> labels = {"rank 0 (world 0, node-a)", "rank 1 (world 1, node-b)",
                                     "rank 2 (world 2, node-a)", "rank 3 (world 3, node-b)",
                                     "rank 4 (world 4, node-c)"};
  std::vector<int> missing = {99};  // replaced, not appended to
  std::string text = DescribeTimeout(AllReduceCall(0), peers, labels, &missing);
  EXPECT_EQ(text,
            "AllReduce(f32 x16, sum) #7 in group tp0 timed out after 2s: "
            "rank 1 (world 1, node-b) did not arrive (no answer: dead, or stalled outside a "
            "collective); "
            "rank 2 (world 2, node-a) did not arrive: it is still waiting in AllGather #5; "
            "rank 3 (world 3, node-b) did not arrive: it is already in Broadcast #9 (the ranks "
            "issued different collectives); "
            "arrived: rank 0 (world 0, node-a), rank 4 (world 4, node-c)");
  EXPECT_EQ(missing, (std::vector<int>{1, 2, 3}));
}

TEST(DescribeTimeoutTest, SelfCountsAsArrivedWithoutAnswer) {
  std::vector<std::optional<PeerState>> peers = {std::nullopt, std::nullopt};
  std::vector<int> missing;
  std::string text = DescribeTimeout(AllReduceCall(1), peers, {"rank 0", "rank 1"}, &missing);
  EXPECT_EQ(missing, std::vector<int>{0});
  EXPECT_TRUE(Contains(text, "rank 0 did not arrive (no answer"));
  EXPECT_TRUE(Contains(text, "; arrived: rank 1"));
}

TEST(DescribeTimeoutTest, AllArrived) {
  std::vector<std::optional<PeerState>> peers = {PeerState{7, CollectiveKind::kAllReduce},
                                                 PeerState{7, CollectiveKind::kAllReduce}};
  std::vector<int> missing = {1};
  std::string text = DescribeTimeout(AllReduceCall(0), peers, {"rank 0", "rank 1"}, &missing);
  EXPECT_TRUE(missing.empty());
  EXPECT_EQ(text,
            "AllReduce(f32 x16, sum) #7 in group tp0 timed out after 2s: every rank arrived but "
            "the data did not finish moving; arrived: rank 0, rank 1");
}

// ---- collective_check.h ---------------------------------------------------------------

TEST(CollectiveCheckTest, PatternValue) {
  EXPECT_EQ(PatternValue(0, 0), 1);
  EXPECT_EQ(PatternValue(0, 2), 3);
  EXPECT_EQ(PatternValue(0, 3), 1);
  EXPECT_EQ(PatternValue(2, 4), 6);  // 3 * (4 mod 3 + 1)
  EXPECT_EQ(PatternValue(3, 5), 12);
  EXPECT_EQ(PatternValue(1, 1000), 4);  // 2 * (1000 mod 3 + 1)
}

TEST(CollectiveCheckTest, FillPatternFillsInputsAndPoisonsOutputs) {
  CollectiveOp reduce = AllReduceOp(HostTensor(DType::kF32, 6));
  FillPattern(reduce, 2);
  EXPECT_EQ(ValuesOf(reduce.input), (std::vector<double>{3, 6, 9, 3, 6, 9}));

  CollectiveOp gather = AllGatherOp(HostTensor(DType::kI32, 2), HostTensor(DType::kI32, 6));
  FillPattern(gather, 1);
  EXPECT_EQ(ValuesOf(gather.input), (std::vector<double>{2, 4}));
  EXPECT_EQ(ValuesOf(gather.output), (std::vector<double>(6, -1)));

  CollectiveOp scatter = ReduceScatterOp(HostTensor(DType::kBF16, 4), HostTensor(DType::kBF16, 2));
  FillPattern(scatter, 0);
  EXPECT_EQ(ValuesOf(scatter.input), (std::vector<double>{1, 2, 3, 1}));
  EXPECT_EQ(ValuesOf(scatter.output), (std::vector<double>{-1, -1}));

  CollectiveOp root = BroadcastOp(HostTensor(DType::kI8, 4), 1);
  FillPattern(root, 1);
  EXPECT_EQ(ValuesOf(root.input), (std::vector<double>{2, 4, 6, 2}));
  CollectiveOp other = BroadcastOp(HostTensor(DType::kI8, 4), 1);
  FillPattern(other, 0);
  EXPECT_EQ(ValuesOf(other.input), (std::vector<double>(4, -1)));
}

TEST(CollectiveCheckTest, AllReduceSumOfFourRanks) {
  // S = 4 * 5 / 2 = 10: element i is 10 * (i mod 3 + 1).
  CollectiveOp op = AllReduceOp(TensorOf(DType::kF32, {10, 20, 30, 10, 20, 30, 10}));
  for (int rank = 0; rank < 4; ++rank) EXPECT_EQ(CountWrong(op, rank, 4), 0) << rank;
  SetElement(op.input, 4, 21);
  EXPECT_EQ(CountWrong(op, 0, 4), 1);
  // For a group of 3 (S = 6) every element is wrong.
  SetElement(op.input, 4, 20);
  EXPECT_EQ(CountWrong(op, 0, 3), 7);
}

TEST(CollectiveCheckTest, AllReduceMaxAndMin) {
  CollectiveOp max = AllReduceOp(TensorOf(DType::kI32, {4, 8, 12, 4}), ReduceOp::kMax);
  EXPECT_EQ(CountWrong(max, 0, 4), 0);
  CollectiveOp min = AllReduceOp(TensorOf(DType::kI32, {1, 2, 3, 1}), ReduceOp::kMin);
  EXPECT_EQ(CountWrong(min, 0, 4), 0);
  SetElement(min.input, 0, 4);
  SetElement(min.input, 3, 0);
  EXPECT_EQ(CountWrong(min, 0, 4), 2);
}

TEST(CollectiveCheckTest, IntegerResultsWrap) {
  // 16 ranks: S = 136; i8 holds 136 -> -120, 272 -> 16, 408 -> -104.
  CollectiveOp op = AllReduceOp(TensorOf(DType::kI8, {-120, 16, -104, -120}));
  EXPECT_EQ(CountWrong(op, 0, 16), 0);
  SetElement(op.input, 0, 127);
  EXPECT_EQ(CountWrong(op, 0, 16), 1);
}

TEST(CollectiveCheckTest, FloatToleranceFollowsRounding) {
  // bf16, 4 ranks: element 0 should be 10; the tolerance is 10 * 2^-8 * 3 = 0.117.
  CollectiveOp op = AllReduceOp(TensorOf(DType::kBF16, {10.0625, 20, 30}));
  EXPECT_EQ(CountWrong(op, 0, 4), 0);
  SetElement(op.input, 0, 10.5);
  EXPECT_EQ(CountWrong(op, 0, 4), 1);
  // f32 has no such slack.
  CollectiveOp exact = AllReduceOp(TensorOf(DType::kF32, {10.0625, 20, 30}));
  EXPECT_EQ(CountWrong(exact, 0, 4), 1);
}

TEST(CollectiveCheckTest, AllGatherReduceScatterBroadcast) {
  // 3 ranks of 2 elements: output[k*2 + i] = (k + 1) * (i + 1).
  CollectiveOp gather =
      AllGatherOp(HostTensor(DType::kF32, 2), TensorOf(DType::kF32, {1, 2, 2, 4, 3, 6}));
  EXPECT_EQ(CountWrong(gather, 1, 3), 0);
  SetElement(gather.output, 5, -1);
  EXPECT_EQ(CountWrong(gather, 1, 3), 1);

  // 2 ranks, rank 1 gets elements 3..5 of the sum: S = 3, so 3 * ((3 + i) mod 3 + 1).
  CollectiveOp scatter =
      ReduceScatterOp(HostTensor(DType::kI64, 6), TensorOf(DType::kI64, {3, 6, 9}));
  EXPECT_EQ(CountWrong(scatter, 1, 2), 0);
  EXPECT_EQ(CountWrong(scatter, 0, 2), 0);  // rank 0's slice has the same values here
  SetElement(scatter.output, 1, 7);
  EXPECT_EQ(CountWrong(scatter, 1, 2), 1);

  CollectiveOp broadcast = BroadcastOp(TensorOf(DType::kF16, {3, 6, 9, 3}), 2);
  EXPECT_EQ(CountWrong(broadcast, 0, 4), 0);
  SetElement(broadcast.input, 2, -1);
  EXPECT_EQ(CountWrong(broadcast, 0, 4), 1);
}

TEST(CollectiveCheckTest, PatternThroughHandComputedAllReduce) {
  // Simulates a correct all-reduce: sum every rank's filled input into one buffer.
  constexpr int kSize = 4;
  std::vector<double> sum(9, 0);
  for (int rank = 0; rank < kSize; ++rank) {
    CollectiveOp op = AllReduceOp(HostTensor(DType::kF32, 9));
    FillPattern(op, rank);
    std::vector<double> values = ValuesOf(op.input);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += values[i];
  }
  CollectiveOp result = AllReduceOp(TensorOf(DType::kF32, sum));
  EXPECT_EQ(CountWrong(result, 0, kSize), 0);
  EXPECT_EQ(ValuesOf(result.input), (std::vector<double>{10, 20, 30, 10, 20, 30, 10, 20, 30}));
}

// ---- topology.h -----------------------------------------------------------------------

// A report from `rank` on `host` seeing `gpus` GPUs, all peers reachable.
v1::RankTopology Report(int rank, const std::string& host, int gpus = 0, int cpu_numa = 0) {
  v1::RankTopology report;
  report.set_world_rank(rank);
  report.set_host(host);
  report.set_pid(1000 + rank);
  report.set_cpu_numa_node(cpu_numa);
  for (int g = 0; g < gpus; ++g) {
    v1::GpuDevice* gpu = report.add_visible_gpus();
    gpu->set_ordinal(g);
    gpu->set_name("Test GPU");
    gpu->set_uuid(absl::StrCat("GPU-", host, "-", g));
    gpu->set_pci_bus_id(absl::StrFormat("0000:%02x:00.0", 0x10 + g));
    gpu->set_numa_node(g / 2);
  }
  for (int i = 0; i < gpus * gpus; ++i) report.add_peer_access(1);
  return report;
}

Topology MakeTopology(const std::vector<std::string>& hosts, int gpus = 0) {
  std::vector<v1::RankTopology> reports;
  for (size_t r = 0; r < hosts.size(); ++r) {
    reports.push_back(Report(static_cast<int>(r), hosts[r], gpus));
  }
  absl::StatusOr<Topology> topology = Topology::FromReports(std::move(reports));
  EXPECT_TRUE(topology.ok()) << topology.status();
  return topology.ok() ? *std::move(topology) : Topology();
}

TEST(TopologyTest, TwoNodesOfTwoRanks) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  ASSERT_EQ(topology.world_size(), 4);
  EXPECT_EQ(topology.hosts(), (std::vector<std::string>{"a", "b"}));
  const int node[] = {0, 0, 1, 1};
  const int local_rank[] = {0, 1, 0, 1};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(topology.rank(r).world_rank, r);
    EXPECT_EQ(topology.rank(r).host, r < 2 ? "a" : "b");
    EXPECT_EQ(topology.rank(r).node, node[r]) << r;
    EXPECT_EQ(topology.rank(r).local_rank, local_rank[r]) << r;
    EXPECT_EQ(topology.rank(r).local_size, 2) << r;
    EXPECT_EQ(topology.rank(r).gpu, -1);
    EXPECT_EQ(topology.report(r).pid(), 1000 + r);
  }
  EXPECT_EQ(topology.RanksOnNode(0), (std::vector<int>{0, 1}));
  EXPECT_EQ(topology.RanksOnNode(1), (std::vector<int>{2, 3}));
  EXPECT_TRUE(topology.RanksOnNode(2).empty());
}

TEST(TopologyTest, InterleavedPlacement) {
  Topology topology = MakeTopology({"a", "b", "a", "b"});
  EXPECT_EQ(topology.hosts(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(topology.RanksOnNode(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(topology.RanksOnNode(1), (std::vector<int>{1, 3}));
  EXPECT_EQ(topology.rank(1).node, 1);
  EXPECT_EQ(topology.rank(1).local_rank, 0);
  EXPECT_EQ(topology.rank(2).node, 0);
  EXPECT_EQ(topology.rank(2).local_rank, 1);
  EXPECT_EQ(topology.rank(3).local_rank, 1);
}

TEST(TopologyTest, UnevenNodes) {
  Topology topology = MakeTopology({"x", "y", "y", "y"});
  EXPECT_EQ(topology.rank(0).local_size, 1);
  EXPECT_EQ(topology.rank(3).local_size, 3);
  EXPECT_EQ(topology.rank(3).local_rank, 2);
}

TEST(TopologyTest, GpuIsLocalRankModuloVisibleGpus) {
  // Three ranks on a host with two GPUs: GPUs 0, 1, 0.
  std::vector<v1::RankTopology> reports = {Report(0, "a", 2, /*cpu_numa=*/1), Report(1, "a", 2, 1),
                                           Report(2, "a", 2, 1), Report(3, "b", 4, 5)};
  reports[3].mutable_visible_gpus(0)->set_numa_node(-1);  // unknown: falls back to the CPU's
  ASSERT_OK_AND_ASSIGN(Topology topology, Topology::FromReports(reports));
  EXPECT_EQ(topology.rank(0).gpu, 0);
  EXPECT_EQ(topology.rank(1).gpu, 1);
  EXPECT_EQ(topology.rank(2).gpu, 0);
  EXPECT_EQ(topology.rank(3).gpu, 0);
  EXPECT_EQ(topology.rank(1).gpu_uuid, "GPU-a-1");
  EXPECT_EQ(topology.rank(1).gpu_pci_bus_id, "0000:11:00.0");
  EXPECT_EQ(topology.rank(2).gpu_uuid, "GPU-a-0");
  EXPECT_EQ(topology.rank(2).gpu_pci_bus_id, "0000:10:00.0");
  // NUMA node of the GPU (g / 2 here), else of the CPU.
  EXPECT_EQ(topology.rank(0).numa_node, 0);
  EXPECT_EQ(topology.rank(3).numa_node, 5);
  EXPECT_EQ(topology.rank(3).gpu_uuid, "GPU-b-0");

  std::vector<v1::RankTopology> no_gpus = {Report(0, "a", 0, 3)};
  ASSERT_OK_AND_ASSIGN(Topology cpu_only, Topology::FromReports(no_gpus));
  EXPECT_EQ(cpu_only.rank(0).gpu, -1);
  EXPECT_EQ(cpu_only.rank(0).numa_node, 3);
  EXPECT_TRUE(cpu_only.rank(0).gpu_uuid.empty());
}

TEST(TopologyTest, PeerAccessFromMatrix) {
  // Host a: 3 ranks on 2 GPUs. GPU 0 reaches GPU 1, but not the other way round.
  std::vector<v1::RankTopology> reports;
  for (int r = 0; r < 3; ++r) {
    v1::RankTopology report = Report(r, "a", 2);
    report.clear_peer_access();
    for (int entry : {1, 1, 0, 1}) report.add_peer_access(entry);  // (from, to) row-major
    reports.push_back(report);
  }
  reports.push_back(Report(3, "b", 2));
  ASSERT_OK_AND_ASSIGN(Topology topology, Topology::FromReports(reports));
  EXPECT_TRUE(topology.PeerAccess(0, 1));   // GPU 0 -> GPU 1
  EXPECT_FALSE(topology.PeerAccess(1, 0));  // GPU 1 -> GPU 0
  EXPECT_FALSE(topology.PeerAccess(1, 2));  // GPU 1 -> GPU 0
  EXPECT_TRUE(topology.PeerAccess(0, 2));   // both on GPU 0
  EXPECT_FALSE(topology.PeerAccess(0, 3));  // different nodes
  EXPECT_FALSE(topology.PeerAccess(3, 0));

  Topology cpu_only = MakeTopology({"a", "a"});
  EXPECT_FALSE(cpu_only.PeerAccess(0, 1));
}

// Two jobs of two ranks on one 4-GPU node (one per replica, worker_groups.h): the second
// job's ranks start at the slot the first job's ended, so no GPU is used twice.
TEST(TopologyTest, AJobSharingItsNodeStartsAtItsFirstSlot) {
  for (int first_slot : {0, 2}) {
    std::vector<v1::RankTopology> reports = {Report(0, "a", 4), Report(1, "a", 4)};
    for (v1::RankTopology& report : reports) report.set_node_first_slot(first_slot);
    ASSERT_OK_AND_ASSIGN(Topology topology, Topology::FromReports(reports));
    EXPECT_EQ(topology.rank(0).local_rank, 0);
    EXPECT_EQ(topology.rank(0).gpu, first_slot);
    EXPECT_EQ(topology.rank(1).gpu, first_slot + 1);
    EXPECT_EQ(topology.rank(1).gpu_uuid, absl::StrCat("GPU-a-", first_slot + 1));
  }
  // More slots than GPUs wrap around, as local ranks beyond the GPU count do.
  std::vector<v1::RankTopology> wrapped = {Report(0, "a", 2)};
  wrapped[0].set_node_first_slot(3);
  ASSERT_OK_AND_ASSIGN(Topology topology, Topology::FromReports(wrapped));
  EXPECT_EQ(topology.rank(0).gpu, 1);

  setenv(kNodeFirstSlotVariable, "2", 1);
  setenv(kNodeRanksVariable, "4", 1);
  ASSERT_OK_AND_ASSIGN(NodeShare share, NodeShare::FromEnvironment());
  EXPECT_EQ(share.first_slot, 2);
  EXPECT_EQ(share.node_ranks, 4);
  setenv(kNodeFirstSlotVariable, "two", 1);
  EXPECT_TRUE(IsError(NodeShare::FromEnvironment(), absl::StatusCode::kInvalidArgument,
                      {"TESSERA_NODE_FIRST_SLOT='two'", "non-negative integer"}));
  setenv(kNodeFirstSlotVariable, "0", 1);
  setenv(kNodeRanksVariable, "-1", 1);
  EXPECT_TRUE(IsError(NodeShare::FromEnvironment(), absl::StatusCode::kInvalidArgument,
                      {"TESSERA_NODE_RANKS='-1'"}));
  unsetenv(kNodeFirstSlotVariable);
  unsetenv(kNodeRanksVariable);
  ASSERT_OK_AND_ASSIGN(share, NodeShare::FromEnvironment());
  EXPECT_EQ(share.first_slot, 0);
  EXPECT_EQ(share.node_ranks, 0);
}

TEST(TopologyTest, RejectsBadReports) {
  std::vector<v1::RankTopology> misplaced = {Report(0, "a"), Report(2, "a"), Report(1, "b")};
  EXPECT_TRUE(IsError(Topology::FromReports(misplaced), absl::StatusCode::kInvalidArgument,
                      {"position 1", "world rank 2"}));

  std::vector<v1::RankTopology> no_host = {Report(0, "a"), Report(1, "")};
  EXPECT_TRUE(IsError(Topology::FromReports(no_host), absl::StatusCode::kInvalidArgument,
                      {"rank 1", "no host name"}));

  std::vector<v1::RankTopology> bad_matrix = {Report(0, "a", 2)};
  bad_matrix[0].add_peer_access(1);  // 5 entries for 2 GPUs
  EXPECT_TRUE(IsError(Topology::FromReports(bad_matrix), absl::StatusCode::kInvalidArgument,
                      {"rank 0", "5 peer-access entries for 2 GPUs"}));
  std::vector<v1::RankTopology> negative_slot = {Report(0, "a", 2)};
  negative_slot[0].set_node_first_slot(-1);
  EXPECT_TRUE(IsError(Topology::FromReports(negative_slot), absl::StatusCode::kInvalidArgument,
                      {"rank 0", "node_first_slot -1"}));
  std::vector<v1::RankTopology> no_matrix = {Report(0, "a", 2)};
  no_matrix[0].clear_peer_access();
  EXPECT_TRUE(IsError(Topology::FromReports(no_matrix), absl::StatusCode::kInvalidArgument,
                      {"0 peer-access entries for 2 GPUs"}));
}

TEST(TopologyTest, ToStringListsRanks) {
  Topology topology = MakeTopology({"node-a", "node-b"}, /*gpus=*/1);
  std::string table = topology.ToString();
  EXPECT_TRUE(Contains(table, "node-a"));
  EXPECT_TRUE(Contains(table, "node-b"));
  EXPECT_TRUE(Contains(table, "0000:10:00.0"));
}

// ---- layout.h -------------------------------------------------------------------------

std::vector<int> Replicas(const std::vector<GridPosition>& grid) {
  std::vector<int> replicas;
  for (const GridPosition& p : grid) replicas.push_back(p.replica);
  return replicas;
}
std::vector<int> TpRanks(const std::vector<GridPosition>& grid) {
  std::vector<int> tp_ranks;
  for (const GridPosition& p : grid) tp_ranks.push_back(p.tp_rank);
  return tp_ranks;
}

TEST(PlaceRanksTest, TwoNodesTpTwo) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  ASSERT_OK_AND_ASSIGN(std::vector<GridPosition> grid, PlaceRanks(topology, {.tp = 2}));
  EXPECT_EQ(Replicas(grid), (std::vector<int>{0, 0, 1, 1}));
  EXPECT_EQ(TpRanks(grid), (std::vector<int>{0, 1, 0, 1}));
}

TEST(PlaceRanksTest, TpOneIsPureDataParallel) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  ASSERT_OK_AND_ASSIGN(std::vector<GridPosition> grid, PlaceRanks(topology, {.tp = 1}));
  EXPECT_EQ(Replicas(grid), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(TpRanks(grid), (std::vector<int>{0, 0, 0, 0}));
}

TEST(PlaceRanksTest, TpSpanningNodesRefused) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  absl::StatusOr<std::vector<GridPosition>> grid = PlaceRanks(topology, {.tp = 4});
  EXPECT_TRUE(IsError(grid, absl::StatusCode::kInvalidArgument,
                      {"span nodes", "node a", "world ranks 0,1", "--tp 4"}));
}

TEST(PlaceRanksTest, TpSpanningNodesAllowed) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  ASSERT_OK_AND_ASSIGN(std::vector<GridPosition> grid,
                       PlaceRanks(topology, {.tp = 4, .allow_cross_node_tp = true}));
  EXPECT_EQ(Replicas(grid), (std::vector<int>{0, 0, 0, 0}));
  EXPECT_EQ(TpRanks(grid), (std::vector<int>{0, 1, 2, 3}));
}

TEST(PlaceRanksTest, TpMustDivideWorld) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  EXPECT_TRUE(IsError(PlaceRanks(topology, {.tp = 3}), absl::StatusCode::kInvalidArgument,
                      {"--tp 3", "does not divide", "world size 4"}));
  EXPECT_TRUE(IsError(PlaceRanks(topology, {.tp = 3, .allow_cross_node_tp = true}),
                      absl::StatusCode::kInvalidArgument, {"does not divide"}));
}

TEST(PlaceRanksTest, TpMustBePositive) {
  Topology topology = MakeTopology({"a", "a", "b", "b"});
  EXPECT_TRUE(
      IsError(PlaceRanks(topology, {.tp = 0}), absl::StatusCode::kInvalidArgument, {"at least 1"}));
  EXPECT_TRUE(IsError(PlaceRanks(topology, {.tp = -2}), absl::StatusCode::kInvalidArgument,
                      {"at least 1"}));
}

TEST(PlaceRanksTest, InterleavedHostsGroupRanksOfOneNode) {
  Topology topology = MakeTopology({"a", "b", "a", "b"});
  ASSERT_OK_AND_ASSIGN(std::vector<GridPosition> grid, PlaceRanks(topology, {.tp = 2}));
  // TP groups {0, 2} on a and {1, 3} on b.
  EXPECT_EQ(Replicas(grid), (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(TpRanks(grid), (std::vector<int>{0, 0, 1, 1}));
}

TEST(PlaceRanksTest, SingleNodeTpFour) {
  Topology topology = MakeTopology({"a", "a", "a", "a"});
  ASSERT_OK_AND_ASSIGN(std::vector<GridPosition> grid, PlaceRanks(topology, {.tp = 4}));
  EXPECT_EQ(Replicas(grid), (std::vector<int>{0, 0, 0, 0}));
  EXPECT_EQ(TpRanks(grid), (std::vector<int>{0, 1, 2, 3}));
}

}  // namespace
}  // namespace tessera::comm
