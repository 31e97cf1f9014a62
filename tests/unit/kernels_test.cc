// Tests of kernels/cpu/elementwise_reduce.h: ReduceInto for every supported dtype and
// reduction against closed-form results, with the rounding and wrap-around of each dtype.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cpu/elementwise_reduce.h"
#include "runtime/core/dtype.h"
#include "runtime/core/half.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::IsError;

constexpr DType kReducibleDTypes[] = {DType::kF32, DType::kI32, DType::kBF16,
                                      DType::kF16, DType::kI8,  DType::kI64};
constexpr Reduction kReductions[] = {Reduction::kSum, Reduction::kMax, Reduction::kMin};

const char* NameOfReduction(Reduction reduction) {
  switch (reduction) {
    case Reduction::kSum:
      return "sum";
    case Reduction::kMax:
      return "max";
    case Reduction::kMin:
      return "min";
  }
  return "?";
}

// Accumulator and input patterns in [-12, 12]: their sums are exact in every dtype.
double AccumulatorValue(int64_t i) { return static_cast<double>(i % 17) - 8; }
double InputValue(int64_t i) { return 2.0 * static_cast<double>((i * 5) % 13) - 12; }

double Expected(Reduction reduction, double a, double b) {
  switch (reduction) {
    case Reduction::kSum:
      return a + b;
    case Reduction::kMax:
      return std::max(a, b);
    case Reduction::kMin:
      return std::min(a, b);
  }
  return 0;
}

class ReduceIntoTest : public ::testing::TestWithParam<int64_t> {};

// Odd counts exercise the scalar tail after any vectorized body; the element past `count`
// is a sentinel that must not change.
TEST_P(ReduceIntoTest, EveryDTypeAndReductionMatchesClosedForm) {
  const int64_t count = GetParam();
  constexpr double kSentinel = 5;
  for (DType dtype : kReducibleDTypes) {
    for (Reduction reduction : kReductions) {
      ASSERT_OK_AND_ASSIGN(Tensor accumulator, Tensor::Zeros(dtype, {count + 1}));
      ASSERT_OK_AND_ASSIGN(Tensor input, Tensor::Zeros(dtype, {count + 1}));
      FillWith(accumulator, AccumulatorValue);
      FillWith(input, InputValue);
      SetElement(accumulator, count, kSentinel);
      SetElement(input, count, -kSentinel);
      ASSERT_OK(ReduceInto(accumulator.data(), input.data(), count, dtype, reduction));
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(ElementAsDouble(accumulator, i),
                  Expected(reduction, AccumulatorValue(i), InputValue(i)))
            << NameOf(dtype) << " " << NameOfReduction(reduction) << " count " << count << " index "
            << i;
        ASSERT_EQ(ElementAsDouble(input, i), InputValue(i)) << "input modified";
      }
      EXPECT_EQ(ElementAsDouble(accumulator, count), kSentinel)
          << NameOf(dtype) << " " << NameOfReduction(reduction) << " wrote past count";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OddCounts, ReduceIntoTest, ::testing::Values(1, 7, 1023),
                         [](const ::testing::TestParamInfo<int64_t>& param_info) {
                           return "Count" + std::to_string(param_info.param);
                         });

TEST(ReduceIntoF32Test, KnownValues) {
  float acc[] = {1.0f, -2.0f, 3.5f, 16777216.0f};
  const float in[] = {0.5f, 4.0f, -1.0f, 1.0f};
  float max_acc[4], min_acc[4];
  std::memcpy(max_acc, acc, sizeof(acc));
  std::memcpy(min_acc, acc, sizeof(acc));
  ASSERT_OK(ReduceInto(acc, in, 4, DType::kF32, Reduction::kSum));
  EXPECT_EQ(acc[0], 1.5f);
  EXPECT_EQ(acc[1], 2.0f);
  EXPECT_EQ(acc[2], 2.5f);
  EXPECT_EQ(acc[3], 16777216.0f);  // 2^24 + 1 ties to even in f32
  ASSERT_OK(ReduceInto(max_acc, in, 4, DType::kF32, Reduction::kMax));
  EXPECT_EQ(max_acc[0], 1.0f);
  EXPECT_EQ(max_acc[1], 4.0f);
  EXPECT_EQ(max_acc[2], 3.5f);
  ASSERT_OK(ReduceInto(min_acc, in, 4, DType::kF32, Reduction::kMin));
  EXPECT_EQ(min_acc[0], 0.5f);
  EXPECT_EQ(min_acc[1], -2.0f);
  EXPECT_EQ(min_acc[2], -1.0f);
}

TEST(ReduceIntoBFloat16Test, SumRoundsToNearestEven) {
  BFloat16 acc[] = {BFloat16::FromFloat(1.0f), BFloat16::FromFloat(1.0f),
                    BFloat16::FromFloat(-3.0f)};
  const BFloat16 in[] = {BFloat16::FromFloat(0x1p-8f), BFloat16::FromFloat(3 * 0x1p-8f),
                         BFloat16::FromFloat(0.5f)};
  ASSERT_OK(ReduceInto(acc, in, 3, DType::kBF16, Reduction::kSum));
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: stays on 1.
  EXPECT_EQ(acc[0].bits, 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes to 1 + 2^-6.
  EXPECT_EQ(acc[1].bits, 0x3F82);
  EXPECT_EQ(acc[2].ToFloat(), -2.5f);
}

TEST(ReduceIntoBFloat16Test, MaxAndMin) {
  BFloat16 max_acc[] = {BFloat16::FromFloat(-1.0f), BFloat16::FromFloat(2.0f)};
  BFloat16 min_acc[] = {BFloat16::FromFloat(-1.0f), BFloat16::FromFloat(2.0f)};
  const BFloat16 in[] = {BFloat16::FromFloat(-0.5f), BFloat16::FromFloat(-3.0f)};
  ASSERT_OK(ReduceInto(max_acc, in, 2, DType::kBF16, Reduction::kMax));
  ASSERT_OK(ReduceInto(min_acc, in, 2, DType::kBF16, Reduction::kMin));
  EXPECT_EQ(max_acc[0].ToFloat(), -0.5f);
  EXPECT_EQ(max_acc[1].ToFloat(), 2.0f);
  EXPECT_EQ(min_acc[0].ToFloat(), -1.0f);
  EXPECT_EQ(min_acc[1].ToFloat(), -3.0f);
}

TEST(ReduceIntoHalfTest, SumRoundsToNearestEvenAndOverflows) {
  Half acc[] = {Half::FromFloat(2048.0f), Half::FromFloat(2050.0f), Half::FromFloat(65504.0f),
                Half::FromFloat(-65504.0f), Half::FromFloat(0.1f)};
  const Half in[] = {Half::FromFloat(1.0f), Half::FromFloat(1.0f), Half::FromFloat(16.0f),
                     Half::FromFloat(-16.0f), Half::FromFloat(0.2f)};
  ASSERT_OK(ReduceInto(acc, in, 5, DType::kF16, Reduction::kSum));
  // Halves are 2 apart above 2048: 2049 ties to 2048 (even), 2051 ties to 2052 (even).
  EXPECT_EQ(acc[0].ToFloat(), 2048.0f);
  EXPECT_EQ(acc[1].ToFloat(), 2052.0f);
  // 65520 ties to even beyond the largest finite half: infinity.
  EXPECT_EQ(acc[2].bits, 0x7C00);
  EXPECT_EQ(acc[3].bits, 0xFC00);
  // f16(0.1) + f16(0.2) = 0.0999755859375 + 0.199951171875 = 1228.5 * 2^-12, halfway
  // between 0x34CC (even) and 0x34CD: ties to 0x34CC.
  EXPECT_EQ(acc[4].bits, 0x34CC);
}

TEST(ReduceIntoHalfTest, MaxAndMin) {
  Half max_acc[] = {Half::FromFloat(-1.0f), Half::FromFloat(65504.0f)};
  Half min_acc[] = {Half::FromFloat(-1.0f), Half::FromFloat(65504.0f)};
  const Half in[] = {Half::FromFloat(-0.25f), Half::FromBits(0xFC00)};  // -inf
  ASSERT_OK(ReduceInto(max_acc, in, 2, DType::kF16, Reduction::kMax));
  ASSERT_OK(ReduceInto(min_acc, in, 2, DType::kF16, Reduction::kMin));
  EXPECT_EQ(max_acc[0].ToFloat(), -0.25f);
  EXPECT_EQ(max_acc[1].ToFloat(), 65504.0f);
  EXPECT_EQ(min_acc[0].ToFloat(), -1.0f);
  EXPECT_EQ(min_acc[1].bits, 0xFC00);
}

TEST(ReduceIntoInt8Test, SumWrapsAround) {
  int8_t acc[] = {100, -100, 127, -128, 5, 0, -1};
  const int8_t in[] = {100, -100, 1, -1, -7, 0, -127};
  ASSERT_OK(ReduceInto(acc, in, 7, DType::kI8, Reduction::kSum));
  EXPECT_EQ(acc[0], -56);  // 200 - 256
  EXPECT_EQ(acc[1], 56);   // -200 + 256
  EXPECT_EQ(acc[2], -128);
  EXPECT_EQ(acc[3], 127);
  EXPECT_EQ(acc[4], -2);
  EXPECT_EQ(acc[5], 0);
  EXPECT_EQ(acc[6], -128);
}

TEST(ReduceIntoIntegerTest, WideSumsWrapAroundLikeTwosComplement) {
  int32_t acc32[] = {std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
  const int32_t in32[] = {1, -1};
  ASSERT_OK(ReduceInto(acc32, in32, 2, DType::kI32, Reduction::kSum));
  EXPECT_EQ(acc32[0], std::numeric_limits<int32_t>::min());
  EXPECT_EQ(acc32[1], std::numeric_limits<int32_t>::max());
  int64_t acc64[] = {std::numeric_limits<int64_t>::max()};
  const int64_t in64[] = {2};
  ASSERT_OK(ReduceInto(acc64, in64, 1, DType::kI64, Reduction::kSum));
  EXPECT_EQ(acc64[0], std::numeric_limits<int64_t>::min() + 1);
}

TEST(ReduceIntoInt8Test, MaxAndMinAreSigned) {
  int8_t max_acc[] = {-128, 127, -5, 3};
  int8_t min_acc[] = {-128, 127, -5, 3};
  const int8_t in[] = {127, -128, -6, 3};
  ASSERT_OK(ReduceInto(max_acc, in, 4, DType::kI8, Reduction::kMax));
  ASSERT_OK(ReduceInto(min_acc, in, 4, DType::kI8, Reduction::kMin));
  EXPECT_EQ(max_acc[0], 127);
  EXPECT_EQ(max_acc[1], 127);
  EXPECT_EQ(max_acc[2], -5);
  EXPECT_EQ(max_acc[3], 3);
  EXPECT_EQ(min_acc[0], -128);
  EXPECT_EQ(min_acc[1], -128);
  EXPECT_EQ(min_acc[2], -6);
  EXPECT_EQ(min_acc[3], 3);
}

TEST(ReduceIntoInt32Test, KnownValues) {
  constexpr int32_t kMin = std::numeric_limits<int32_t>::min();
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
  int32_t sum_acc[] = {1 << 30, -(1 << 30), 123456, -7};
  const int32_t sum_in[] = {(1 << 30) - 1, -(1 << 30), -123457, 7};
  ASSERT_OK(ReduceInto(sum_acc, sum_in, 4, DType::kI32, Reduction::kSum));
  EXPECT_EQ(sum_acc[0], kMax);
  EXPECT_EQ(sum_acc[1], kMin);
  EXPECT_EQ(sum_acc[2], -1);
  EXPECT_EQ(sum_acc[3], 0);

  int32_t max_acc[] = {kMin, kMax, -3};
  int32_t min_acc[] = {kMin, kMax, -3};
  const int32_t in[] = {kMax, kMin, -4};
  ASSERT_OK(ReduceInto(max_acc, in, 3, DType::kI32, Reduction::kMax));
  ASSERT_OK(ReduceInto(min_acc, in, 3, DType::kI32, Reduction::kMin));
  EXPECT_EQ(max_acc[0], kMax);
  EXPECT_EQ(max_acc[1], kMax);
  EXPECT_EQ(max_acc[2], -3);
  EXPECT_EQ(min_acc[0], kMin);
  EXPECT_EQ(min_acc[1], kMin);
  EXPECT_EQ(min_acc[2], -4);
}

TEST(ReduceIntoInt64Test, KeepsFullWidth) {
  // Values beyond 2^53 catch a reduction done through double.
  const int64_t big = (int64_t{1} << 62) + 5;
  int64_t sum_acc[] = {big, -big, int64_t{1} << 40};
  const int64_t sum_in[] = {3, -3, -(int64_t{1} << 41)};
  ASSERT_OK(ReduceInto(sum_acc, sum_in, 3, DType::kI64, Reduction::kSum));
  EXPECT_EQ(sum_acc[0], big + 3);
  EXPECT_EQ(sum_acc[1], -big - 3);
  EXPECT_EQ(sum_acc[2], -(int64_t{1} << 40));

  int64_t max_acc[] = {big, -big};
  int64_t min_acc[] = {big, -big};
  const int64_t in[] = {big + 1, -big - 1};
  ASSERT_OK(ReduceInto(max_acc, in, 2, DType::kI64, Reduction::kMax));
  ASSERT_OK(ReduceInto(min_acc, in, 2, DType::kI64, Reduction::kMin));
  EXPECT_EQ(max_acc[0], big + 1);
  EXPECT_EQ(max_acc[1], -big);
  EXPECT_EQ(min_acc[0], big);
  EXPECT_EQ(min_acc[1], -big - 1);
}

TEST(ReduceIntoEdgeTest, ZeroCountIsNoOp) {
  float acc[] = {1.0f};
  const float in[] = {2.0f};
  for (DType dtype : kReducibleDTypes) {
    EXPECT_OK(ReduceInto(acc, in, 0, dtype, Reduction::kSum)) << NameOf(dtype);
  }
  EXPECT_EQ(acc[0], 1.0f);
}

TEST(ReduceIntoEdgeTest, Int4Refused) {
  uint8_t acc[] = {0x12, 0x34};
  const uint8_t in[] = {0x11, 0x11};
  for (Reduction reduction : kReductions) {
    EXPECT_TRUE(IsError(ReduceInto(acc, in, 4, DType::kI4, reduction),
                        absl::StatusCode::kInvalidArgument, {"i4"}))
        << NameOfReduction(reduction);
  }
  EXPECT_EQ(acc[0], 0x12);
  EXPECT_EQ(acc[1], 0x34);
}

}  // namespace
}  // namespace tessera::kernels
