// Tests of kernels/cpu/row_ops.h (the bias add, column fill and row gather of the forward
// pass) and of kernels/ops dispatch: host tensors on the CPU stream run the CPU kernels, the
// same results as calling them directly; a tensor and a stream on different devices are
// refused with the op named. No GPU is needed: GPU tensors here are views that are never
// read.

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/row_ops.h"
#include "kernels/ops/linear.h"
#include "kernels/ops/norm_activation.h"
#include "kernels/ops/row_ops.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/random_tensor.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::IsError;

constexpr float kInf = std::numeric_limits<float>::infinity();

Tensor Random(DType dtype, Shape shape, uint32_t seed) {
  return ::tessera::testing::RandomTensor(dtype, std::move(shape), seed);
}

Tensor Copy(const Tensor& t) {
  absl::StatusOr<Tensor> copy = Tensor::Empty(t.dtype(), t.shape());
  TESSERA_CHECK(copy.ok(), "allocation");
  Stream cpu = Stream::Cpu();
  TESSERA_CHECK(copy->CopyFrom(t, cpu).ok(), "copy");
  return *copy;
}

Tensor I32(std::vector<int32_t> values) {
  absl::StatusOr<Tensor> t = Tensor::FromValues(absl::Span<const int32_t>(values));
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

float At(const Tensor& t, int64_t i) { return static_cast<float>(ElementAsDouble(t, i)); }

TEST(AddBias, AddsTheBiasToEveryRowInF32ForBothTypes) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor x = Random(DType::kF32, {3, 5}, 1);
    Tensor before = Copy(x);
    Tensor bias = Random(dtype, {5}, 2);
    ASSERT_OK(AddBias(x, bias));
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t c = 0; c < 5; ++c) {
        EXPECT_EQ(At(x, r * 5 + c), At(before, r * 5 + c) + At(bias, c)) << NameOf(dtype);
      }
    }
  }
}

TEST(AddBias, RefusesABiasOfTheWrongWidthOrType) {
  Tensor x = Random(DType::kF32, {2, 4}, 1);
  EXPECT_TRUE(IsError(AddBias(x, Random(DType::kF32, {5}, 2)), absl::StatusCode::kInvalidArgument,
                      {"AddBias: bias", "[4]"}));
  EXPECT_TRUE(IsError(AddBias(x, Random(DType::kI32, {4}, 2)), absl::StatusCode::kInvalidArgument,
                      {"AddBias: bias", "f32 or bf16"}));
}

TEST(FillColumns, SetsOnlyTheBand) {
  Tensor x = Random(DType::kF32, {2, 6}, 3);
  Tensor before = Copy(x);
  ASSERT_OK(FillColumns(x, 4, 6, -kInf));
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t c = 0; c < 6; ++c) {
      float expected = c >= 4 ? -kInf : At(before, r * 6 + c);
      EXPECT_EQ(At(x, r * 6 + c), expected) << r << "," << c;
    }
  }
  ASSERT_OK(FillColumns(x, 6, 6, 1.0f));  // an empty band changes nothing
  EXPECT_EQ(At(x, 0), At(before, 0));
  EXPECT_TRUE(IsError(FillColumns(x, 3, 7, 0.0f), absl::StatusCode::kInvalidArgument,
                      {"FillColumns: columns [3, 7)", "6"}));
  EXPECT_TRUE(
      IsError(FillColumns(x, 4, 3, 0.0f), absl::StatusCode::kInvalidArgument, {"FillColumns"}));
}

TEST(GatherRows, CopiesTheChosenRowsAndNamesOneOutside) {
  Tensor x = Random(DType::kF32, {4, 3}, 4);
  Tensor out = Random(DType::kF32, {3, 3}, 5);
  ASSERT_OK(GatherRows(x, I32({3, 0, 3}), out));
  const int32_t picked[] = {3, 0, 3};
  for (int64_t s = 0; s < 3; ++s) {
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(At(out, s * 3 + c), At(x, picked[s] * 3 + c));
  }
  EXPECT_TRUE(IsError(GatherRows(x, I32({1, 4, 0}), out), absl::StatusCode::kInvalidArgument,
                      {"GatherRows: rows[1] = 4", "4 rows"}));
  EXPECT_TRUE(IsError(GatherRows(x, I32({-1, 0, 0}), out), absl::StatusCode::kInvalidArgument,
                      {"rows[0] = -1"}));
  EXPECT_TRUE(IsError(GatherRows(x, I32({0, 1}), out), absl::StatusCode::kInvalidArgument,
                      {"GatherRows: out"}));
}

TEST(OpsDispatch, HostTensorsOnTheCpuStreamRunTheCpuKernelsBitForBit) {
  Stream cpu = Stream::Cpu();
  Tensor x = Random(DType::kF32, {3, 16}, 6);
  Tensor w = Random(DType::kBF16, {8, 16}, 7);
  Tensor bias = Random(DType::kF32, {8}, 8);
  Tensor expected = Random(DType::kF32, {3, 8}, 9);
  Tensor out = Random(DType::kF32, {3, 8}, 10);
  ASSERT_OK(Linear(x, w, bias, expected));
  ASSERT_OK(ops::Linear(x, w, bias, out, cpu));
  ASSERT_OK(AddBias(expected, bias));
  ASSERT_OK(ops::AddBias(out, bias, cpu));
  ASSERT_OK(FillColumns(expected, 6, 8, -kInf));
  ASSERT_OK(ops::FillColumns(out, 6, 8, -kInf, cpu));
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_EQ(At(out, i), At(expected, i)) << i;

  Tensor normed = Random(DType::kF32, {3, 16}, 11), normed_expected = Copy(normed);
  Tensor weight = Random(DType::kF32, {16}, 12);
  ASSERT_OK(RmsNorm(x, weight, 1e-6f, normed_expected));
  ASSERT_OK(ops::RmsNorm(x, weight, 1e-6f, normed, cpu));
  for (int64_t i = 0; i < normed.numel(); ++i) EXPECT_EQ(At(normed, i), At(normed_expected, i));
}

TEST(OpsDispatch, CpuKernelErrorsComeThroughUnchanged) {
  Stream cpu = Stream::Cpu();
  Tensor x = Random(DType::kF32, {2, 4}, 1);
  EXPECT_TRUE(IsError(ops::AddBias(x, Random(DType::kF32, {5}, 2), cpu),
                      absl::StatusCode::kInvalidArgument, {"AddBias: bias"}));
  Tensor ids = I32({0, 7});
  Tensor table = Random(DType::kF32, {4, 4}, 3);
  EXPECT_TRUE(IsError(ops::EmbeddingLookup(ids, table, 0, 4, x, cpu),
                      absl::StatusCode::kInvalidArgument, {"token id 7 at position 1"}));
}

TEST(OpsDispatch, RefusesAGpuTensorOnTheCpuStream) {
  // A view that claims to be on cuda:0; the op must refuse it before any kernel reads it.
  float storage[8] = {};
  Tensor on_gpu = Tensor::Wrap(storage, DType::kF32, {2, 4}, Device::Cuda(0));
  Tensor bias = Tensor::Wrap(storage, DType::kF32, {4}, Device::Cuda(0));
  Stream cpu = Stream::Cpu();
  EXPECT_TRUE(IsError(ops::AddBias(on_gpu, bias, cpu), absl::StatusCode::kInvalidArgument,
                      {"AddBias", "f32[2,4] on cuda:0", "stream of cpu"}));
  EXPECT_TRUE(IsError(ops::GatherRows(on_gpu, I32({0}), on_gpu, cpu),
                      absl::StatusCode::kInvalidArgument, {"GatherRows", "stream of cpu"}));
  for (float v : storage) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace tessera::kernels
