// Tests of runtime/core/tensor.h, tensor_values.h, device.h and stream.h on the host.

#include "runtime/core/tensor.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "runtime/core/device.h"
#include "runtime/core/dtype.h"
#include "runtime/core/half.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/status_test_util.h"

namespace tessera {
namespace {

using ::tessera::testing::IsError;

// Whether every byte of a host tensor is zero.
bool AllBytesZero(const Tensor& tensor) {
  const auto* bytes = static_cast<const uint8_t*>(tensor.data());
  for (size_t i = 0; i < tensor.nbytes(); ++i) {
    if (bytes[i] != 0) return false;
  }
  return true;
}

TEST(ShapeTest, NumElementsAndToString) {
  EXPECT_EQ(NumElements(Shape{}), 1);
  EXPECT_EQ(NumElements(Shape{7}), 7);
  EXPECT_EQ(NumElements(Shape{2, 3, 4}), 24);
  EXPECT_EQ(NumElements(Shape{2, 0, 4}), 0);
  EXPECT_EQ(ShapeToString(Shape{}), "[]");
  EXPECT_EQ(ShapeToString(Shape{5}), "[5]");
  EXPECT_EQ(ShapeToString(Shape{2, 3}), "[2,3]");
}

TEST(TensorTest, DefaultTensorHasNoStorage) {
  Tensor tensor;
  EXPECT_EQ(tensor.dtype(), DType::kF32);
  EXPECT_EQ(tensor.shape(), Shape{0});
  EXPECT_EQ(tensor.numel(), 0);
  EXPECT_EQ(tensor.nbytes(), 0u);
  EXPECT_EQ(tensor.data(), nullptr);
  EXPECT_TRUE(tensor.device().is_cpu());
  EXPECT_FALSE(tensor.defined());
}

TEST(TensorTest, FromValuesMakesAScalarFromAnEmptyShape) {
  const float value[] = {2.5f};
  ASSERT_OK_AND_ASSIGN(Tensor scalar, Tensor::FromValues(absl::Span<const float>(value), Shape{}));
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.span<float>()[0], 2.5f);
  EXPECT_TRUE(scalar.defined());
}

TEST(TensorTest, EmptyHasShapeSizeAndDevice) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Empty(DType::kBF16, {2, 3}));
  EXPECT_EQ(tensor.dtype(), DType::kBF16);
  EXPECT_EQ(tensor.rank(), 2);
  EXPECT_EQ(tensor.dim(0), 2);
  EXPECT_EQ(tensor.dim(1), 3);
  EXPECT_EQ(tensor.shape(), (Shape{2, 3}));
  EXPECT_EQ(tensor.numel(), 6);
  EXPECT_EQ(tensor.nbytes(), 12u);
  EXPECT_EQ(tensor.device(), Device::Cpu());
  EXPECT_NE(tensor.data(), nullptr);
  EXPECT_FALSE(tensor.is_view());
  EXPECT_TRUE(tensor.defined());
}

TEST(TensorTest, NbytesOfEveryDType) {
  const struct {
    DType dtype;
    size_t bytes_of_6;
  } cases[] = {{DType::kF32, 24}, {DType::kBF16, 12}, {DType::kF16, 12}, {DType::kI8, 6},
               {DType::kI32, 24}, {DType::kI64, 48},  {DType::kI4, 3}};
  for (const auto& c : cases) {
    ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Empty(c.dtype, {2, 3}));
    EXPECT_EQ(tensor.nbytes(), c.bytes_of_6) << NameOf(c.dtype);
  }
}

TEST(TensorTest, Int4RoundsUpToWholeBytes) {
  ASSERT_OK_AND_ASSIGN(Tensor three, Tensor::Zeros(DType::kI4, {3}));
  EXPECT_EQ(three.numel(), 3);
  EXPECT_EQ(three.nbytes(), 2u);
  ASSERT_OK_AND_ASSIGN(Tensor one, Tensor::Zeros(DType::kI4, {1, 1}));
  EXPECT_EQ(one.nbytes(), 1u);
}

TEST(TensorTest, ZeroSizeAndScalarShapes) {
  ASSERT_OK_AND_ASSIGN(Tensor empty_rows, Tensor::Zeros(DType::kF32, {0, 4}));
  EXPECT_EQ(empty_rows.numel(), 0);
  EXPECT_EQ(empty_rows.nbytes(), 0u);
  EXPECT_EQ(empty_rows.rank(), 2);
  ASSERT_OK_AND_ASSIGN(Tensor empty_cols, Tensor::Empty(DType::kI64, {4, 0}));
  EXPECT_EQ(empty_cols.numel(), 0);
  EXPECT_EQ(empty_cols.nbytes(), 0u);

  ASSERT_OK_AND_ASSIGN(Tensor scalar, Tensor::Zeros(DType::kF32, {}));
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.nbytes(), 4u);
  EXPECT_EQ(scalar.span<float>().size(), 1u);
  EXPECT_EQ(scalar.span<float>()[0], 0.0f);
}

TEST(TensorTest, ZerosIsZeroForEveryDType) {
  for (DType dtype : kAllDTypes) {
    // Dirty the allocator first so that zeroed memory is not zero by luck.
    {
      ASSERT_OK_AND_ASSIGN(Tensor dirty, Tensor::Empty(dtype, {33}));
      std::memset(dirty.data(), 0xAB, dirty.nbytes());
    }
    ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(dtype, {33}));
    EXPECT_EQ(tensor.numel(), 33);
    EXPECT_TRUE(AllBytesZero(tensor)) << NameOf(dtype);
  }
}

TEST(TensorTest, NegativeDimensionRejected) {
  EXPECT_TRUE(IsError(Tensor::Empty(DType::kF32, {2, -1}), absl::StatusCode::kInvalidArgument,
                      {"negative dimension", "[2,-1]"}));
  EXPECT_TRUE(IsError(Tensor::Zeros(DType::kI8, {-3}), absl::StatusCode::kInvalidArgument,
                      {"negative dimension"}));
}

TEST(TensorTest, FromValuesCopiesValues) {
  std::vector<float> values = {1.5f, -2.0f, 3.25f};
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::FromValues(absl::Span<const float>(values)));
  EXPECT_EQ(tensor.dtype(), DType::kF32);
  EXPECT_EQ(tensor.shape(), Shape{3});
  EXPECT_FALSE(tensor.is_view());
  EXPECT_NE(tensor.data(), values.data());
  values[0] = 100.0f;  // the tensor holds a copy
  absl::Span<const float> span = std::as_const(tensor).span<float>();
  ASSERT_EQ(span.size(), 3u);
  EXPECT_EQ(span[0], 1.5f);
  EXPECT_EQ(span[1], -2.0f);
  EXPECT_EQ(span[2], 3.25f);
}

TEST(TensorTest, FromValuesWithShape) {
  const int32_t values[] = {1, 2, 3, 4, 5, 6};
  ASSERT_OK_AND_ASSIGN(Tensor tensor,
                       Tensor::FromValues(absl::Span<const int32_t>(values), Shape{2, 3}));
  EXPECT_EQ(tensor.dtype(), DType::kI32);
  EXPECT_EQ(tensor.shape(), (Shape{2, 3}));
  EXPECT_EQ(tensor.data<int32_t>()[5], 6);

  const BFloat16 halves[] = {BFloat16::FromFloat(1.0f), BFloat16::FromFloat(-2.0f)};
  ASSERT_OK_AND_ASSIGN(Tensor bf16, Tensor::FromValues(absl::Span<const BFloat16>(halves)));
  EXPECT_EQ(bf16.dtype(), DType::kBF16);
  EXPECT_EQ(bf16.span<BFloat16>()[1].bits, 0xC000);
}

TEST(TensorTest, FromValuesRejectsWrongShape) {
  const int64_t values[] = {1, 2, 3, 4};
  EXPECT_TRUE(IsError(Tensor::FromValues(absl::Span<const int64_t>(values), Shape{3}),
                      absl::StatusCode::kInvalidArgument, {"[3]", "given 4"}));
}

TEST(TensorTest, TypedSpanReadsAndWrites) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kI32, {2, 2}));
  absl::Span<int32_t> span = tensor.span<int32_t>();
  ASSERT_EQ(span.size(), 4u);
  EXPECT_EQ(span.data(), tensor.data());
  for (int i = 0; i < 4; ++i) span[i] = 10 * i;
  EXPECT_EQ(tensor.data<int32_t>()[3], 30);
  EXPECT_EQ(static_cast<const int32_t*>(tensor.data())[2], 20);
}

TEST(TensorDeathTest, TypedAccessWithWrongTypeAborts) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kF32, {4}));
  EXPECT_DEATH(tensor.data<int32_t>(), "typed access as i32 to f32\\[4\\] on cpu");
}

TEST(TensorDeathTest, HostSpanOfDeviceTensorAborts) {
  float buffer[4] = {};
  Tensor on_gpu = Tensor::Wrap(buffer, DType::kF32, {4}, Device::Cuda(0));
  EXPECT_DEATH(on_gpu.span<float>(), "host access to f32\\[4\\] on cuda:0");
}

TEST(TensorTest, ReshapeIsViewSharingMemory) {
  const float values[] = {0, 1, 2, 3, 4, 5};
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::FromValues(absl::Span<const float>(values)));
  ASSERT_OK_AND_ASSIGN(Tensor matrix, tensor.Reshape({2, 3}));
  EXPECT_EQ(matrix.shape(), (Shape{2, 3}));
  EXPECT_EQ(matrix.data(), tensor.data());
  EXPECT_TRUE(matrix.is_view());
  matrix.span<float>()[4] = 40.0f;
  EXPECT_EQ(tensor.span<float>()[4], 40.0f);

  ASSERT_OK_AND_ASSIGN(Tensor cube, matrix.Reshape({1, 6, 1}));
  EXPECT_EQ(cube.numel(), 6);
  EXPECT_EQ(cube.data(), tensor.data());
}

TEST(TensorTest, ReshapeToScalar) {
  const int8_t value[] = {9};
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::FromValues(absl::Span<const int8_t>(value)));
  ASSERT_OK_AND_ASSIGN(Tensor scalar, tensor.Reshape({}));
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.span<int8_t>()[0], 9);
}

TEST(TensorTest, ReshapeRejectsWrongElementCount) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kF16, {2, 3}));
  EXPECT_TRUE(IsError(tensor.Reshape({4, 2}), absl::StatusCode::kInvalidArgument,
                      {"f16[2,3]", "[4,2]", "element counts differ"}));
  // Two negative dimensions multiply to the right count but are still refused.
  EXPECT_TRUE(IsError(tensor.Reshape({-2, -3}), absl::StatusCode::kInvalidArgument,
                      {"negative dimension"}));
}

TEST(TensorTest, SliceIsViewOfRows) {
  std::vector<float> values(12);
  for (int i = 0; i < 12; ++i) values[i] = static_cast<float>(i);
  ASSERT_OK_AND_ASSIGN(Tensor tensor,
                       Tensor::FromValues(absl::Span<const float>(values), Shape{4, 3}));
  ASSERT_OK_AND_ASSIGN(Tensor rows, tensor.Slice(1, 3));
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_TRUE(rows.is_view());
  EXPECT_EQ(rows.data(), static_cast<float*>(tensor.data()) + 3);
  absl::Span<float> span = rows.span<float>();
  ASSERT_EQ(span.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(span[i], static_cast<float>(i + 3));
  span[0] = -1.0f;
  EXPECT_EQ(tensor.span<float>()[3], -1.0f);

  ASSERT_OK_AND_ASSIGN(Tensor none, tensor.Slice(4, 4));
  EXPECT_EQ(none.shape(), (Shape{0, 3}));
  EXPECT_EQ(none.numel(), 0);
  ASSERT_OK_AND_ASSIGN(Tensor all, tensor.Slice(0, 4));
  EXPECT_EQ(all.shape(), (Shape{4, 3}));
  EXPECT_EQ(all.data(), tensor.data());
}

TEST(TensorTest, SliceOutOfRange) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kI32, {4, 2}));
  EXPECT_TRUE(
      IsError(tensor.Slice(0, 5), absl::StatusCode::kOutOfRange, {"slice [0, 5)", "i32[4,2]"}));
  EXPECT_TRUE(IsError(tensor.Slice(-1, 2), absl::StatusCode::kOutOfRange));
  EXPECT_TRUE(IsError(tensor.Slice(3, 2), absl::StatusCode::kOutOfRange));
  EXPECT_TRUE(IsError(tensor.Slice(5, 5), absl::StatusCode::kOutOfRange));
}

TEST(TensorTest, SliceOfScalarRejected) {
  ASSERT_OK_AND_ASSIGN(Tensor scalar, Tensor::Zeros(DType::kF32, {}));
  EXPECT_TRUE(IsError(scalar.Slice(0, 1), absl::StatusCode::kInvalidArgument, {"scalar"}));
}

TEST(TensorTest, Int4SliceMustStartOnByte) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kI4, {4, 3}));
  FillWith(tensor, [](int64_t i) { return static_cast<double>(i % 16 - 8); });
  // Row 1 starts at element 3, the high nibble of byte 1.
  EXPECT_TRUE(IsError(tensor.Slice(1, 2), absl::StatusCode::kInvalidArgument, {"byte boundary"}));
  EXPECT_TRUE(IsError(tensor.Slice(3, 4), absl::StatusCode::kInvalidArgument));
  // Row 2 starts at element 6, byte 3.
  ASSERT_OK_AND_ASSIGN(Tensor rows, tensor.Slice(2, 4));
  EXPECT_EQ(rows.data(), static_cast<uint8_t*>(tensor.data()) + 3);
  EXPECT_EQ(rows.nbytes(), 3u);
  for (int64_t i = 0; i < rows.numel(); ++i) {
    EXPECT_EQ(ElementAsDouble(rows, i), static_cast<double>((i + 6) % 16 - 8)) << i;
  }
  ASSERT_OK_AND_ASSIGN(Tensor vector, Tensor::Zeros(DType::kI4, {6}));
  EXPECT_TRUE(IsError(vector.Slice(1, 3), absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(Tensor even, vector.Slice(2, 6));
  EXPECT_EQ(even.data(), static_cast<uint8_t*>(vector.data()) + 1);
}

TEST(TensorTest, FlattenIsOneDimensionalView) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kI64, {2, 3, 2}));
  Tensor flat = tensor.Flatten();
  EXPECT_EQ(flat.shape(), Shape{12});
  EXPECT_EQ(flat.data(), tensor.data());
  EXPECT_TRUE(flat.is_view());
  flat.span<int64_t>()[11] = 77;
  EXPECT_EQ(tensor.data<int64_t>()[11], 77);
}

TEST(TensorTest, WrapIsViewOfCallerMemory) {
  int32_t buffer[6] = {1, 2, 3, 4, 5, 6};
  Tensor tensor = Tensor::Wrap(buffer, DType::kI32, {3, 2});
  EXPECT_TRUE(tensor.is_view());
  EXPECT_EQ(tensor.data(), buffer);
  EXPECT_EQ(tensor.shape(), (Shape{3, 2}));
  EXPECT_EQ(tensor.span<int32_t>()[4], 5);
  tensor.span<int32_t>()[0] = 100;
  EXPECT_EQ(buffer[0], 100);
  buffer[5] = -6;
  EXPECT_EQ(tensor.span<int32_t>()[5], -6);
  ASSERT_OK_AND_ASSIGN(Tensor row, tensor.Slice(2, 3));
  EXPECT_EQ(row.data(), buffer + 4);
}

TEST(TensorTest, ViewsKeepOwnedMemoryAlive) {
  constexpr int kCount = 1024;
  Tensor reshaped;
  Tensor sliced;
  Tensor flat;
  {
    ASSERT_OK_AND_ASSIGN(Tensor original, Tensor::Empty(DType::kI32, {4, kCount / 4}));
    FillWith(original, [](int64_t i) { return static_cast<double>(i); });
    ASSERT_OK_AND_ASSIGN(reshaped, original.Reshape({kCount}));
    ASSERT_OK_AND_ASSIGN(sliced, original.Slice(1, 2));
    flat = original.Flatten();
  }
  // Were the memory freed with `original`, these allocations would likely reuse it.
  std::vector<Tensor> scribbles;
  for (int k = 0; k < 8; ++k) {
    ASSERT_OK_AND_ASSIGN(Tensor scribble, Tensor::Empty(DType::kI32, {4, kCount / 4}));
    std::memset(scribble.data(), 0xEE, scribble.nbytes());
    scribbles.push_back(scribble);
  }
  for (int i = 0; i < kCount; ++i) {
    ASSERT_EQ(reshaped.span<int32_t>()[i], i);
    ASSERT_EQ(flat.span<int32_t>()[i], i);
  }
  for (int i = 0; i < kCount / 4; ++i) ASSERT_EQ(sliced.span<int32_t>()[i], kCount / 4 + i);
}

TEST(TensorTest, CopyingAHandleSharesData) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kF32, {3}));
  Tensor handle = tensor;
  EXPECT_EQ(handle.data(), tensor.data());
  handle.span<float>()[1] = 2.5f;
  EXPECT_EQ(tensor.span<float>()[1], 2.5f);
}

TEST(TensorTest, CopyFromHostToHost) {
  const float values[] = {1, 2, 3, 4, 5, 6};
  ASSERT_OK_AND_ASSIGN(Tensor src, Tensor::FromValues(absl::Span<const float>(values)));
  ASSERT_OK_AND_ASSIGN(Tensor dst, Tensor::Zeros(DType::kF32, {2, 3}));  // same count
  Stream stream = Stream::Cpu();
  ASSERT_OK(dst.CopyFrom(src, stream));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(dst.span<float>()[i], values[i]);
  EXPECT_NE(dst.data(), src.data());

  ASSERT_OK_AND_ASSIGN(Tensor src4, Tensor::Zeros(DType::kI4, {5}));
  FillWith(src4, [](int64_t i) { return static_cast<double>(i - 2); });
  ASSERT_OK_AND_ASSIGN(Tensor dst4, Tensor::Zeros(DType::kI4, {5}));
  ASSERT_OK(dst4.CopyFrom(src4, stream));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(ElementAsDouble(dst4, i), i - 2);
}

TEST(TensorTest, CopyFromRejectsMismatch) {
  Stream stream = Stream::Cpu();
  ASSERT_OK_AND_ASSIGN(Tensor f32, Tensor::Zeros(DType::kF32, {4}));
  ASSERT_OK_AND_ASSIGN(Tensor i32, Tensor::Zeros(DType::kI32, {4}));
  ASSERT_OK_AND_ASSIGN(Tensor f32_five, Tensor::Zeros(DType::kF32, {5}));
  EXPECT_TRUE(IsError(f32.CopyFrom(i32, stream), absl::StatusCode::kInvalidArgument,
                      {"i32[4] on cpu", "f32[4] on cpu"}));
  EXPECT_TRUE(IsError(f32.CopyFrom(f32_five, stream), absl::StatusCode::kInvalidArgument,
                      {"f32[5]", "f32[4]"}));
}

TEST(TensorTest, ToCpuMakesIndependentCopy) {
  const int8_t values[] = {-1, 2, -3, 4};
  ASSERT_OK_AND_ASSIGN(Tensor src,
                       Tensor::FromValues(absl::Span<const int8_t>(values), Shape{2, 2}));
  Stream stream = Stream::Cpu();
  ASSERT_OK_AND_ASSIGN(Tensor copy, src.To(Device::Cpu(), stream));
  EXPECT_EQ(copy.shape(), (Shape{2, 2}));
  EXPECT_EQ(copy.dtype(), DType::kI8);
  EXPECT_TRUE(copy.device().is_cpu());
  EXPECT_FALSE(copy.is_view());
  EXPECT_NE(copy.data(), src.data());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(copy.span<int8_t>()[i], values[i]);
  copy.span<int8_t>()[0] = 50;
  EXPECT_EQ(src.span<int8_t>()[0], -1);
}

TEST(TensorTest, DebugString) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Empty(DType::kBF16, {2, 3}));
  EXPECT_EQ(tensor.DebugString(), "bf16[2,3] on cpu");
  ASSERT_OK_AND_ASSIGN(Tensor scalar, Tensor::Empty(DType::kI4, {}));
  EXPECT_EQ(scalar.DebugString(), "i4[] on cpu");
  int8_t buffer[4];
  EXPECT_EQ(Tensor::Wrap(buffer, DType::kI8, {4}, Device::Cuda(1)).DebugString(),
            "i8[4] on cuda:1");
}

TEST(DeviceTest, ToStringAndEquality) {
  EXPECT_EQ(Device::Cpu().ToString(), "cpu");
  EXPECT_EQ(Device::Cuda(0).ToString(), "cuda:0");
  EXPECT_EQ(Device::Cuda(3).ToString(), "cuda:3");
  EXPECT_TRUE(Device::Cpu().is_cpu());
  EXPECT_FALSE(Device::Cpu().is_cuda());
  EXPECT_TRUE(Device::Cuda(2).is_cuda());
  EXPECT_EQ(Device::Cuda(1), Device::Cuda(1));
  EXPECT_NE(Device::Cuda(1), Device::Cuda(2));
  EXPECT_NE(Device::Cpu(), Device::Cuda(0));
}

TEST(DeviceTest, ParseDevice) {
  ASSERT_OK_AND_ASSIGN(Device cpu, ParseDevice("cpu"));
  EXPECT_EQ(cpu, Device::Cpu());
  ASSERT_OK_AND_ASSIGN(Device cuda, ParseDevice("cuda"));
  EXPECT_EQ(cuda, Device::Cuda(0));
  ASSERT_OK_AND_ASSIGN(Device cuda3, ParseDevice("cuda:3"));
  EXPECT_EQ(cuda3, Device::Cuda(3));
  for (const char* bad : {"gpu", "", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda3", "cpu:0"}) {
    EXPECT_TRUE(IsError(ParseDevice(bad), absl::StatusCode::kInvalidArgument,
                        {absl::StrCat("'", bad, "'"), "cpu, cuda or cuda:N"}))
        << bad;
  }
}

TEST(StreamTest, CpuStream) {
  Stream stream = Stream::Cpu();
  EXPECT_EQ(stream.device(), Device::Cpu());
  EXPECT_EQ(stream.native_handle(), nullptr);
  EXPECT_OK(stream.Synchronize());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Stream> created, Stream::Create(Device::Cpu()));
  EXPECT_EQ(created->device(), Device::Cpu());
  EXPECT_OK(created->Synchronize());
  Stream moved = std::move(*created);
  EXPECT_EQ(moved.device(), Device::Cpu());
}

TEST(NoCudaTest, CudaRequestsFailWithFailedPrecondition) {
  if (BuiltWithCuda()) GTEST_SKIP() << "this build has CUDA";
  EXPECT_TRUE(IsError(Tensor::Empty(DType::kF32, {4}, Device::Cuda(0)),
                      absl::StatusCode::kFailedPrecondition, {"cuda:0", "no CUDA support"}));
  EXPECT_TRUE(IsError(Tensor::Zeros(DType::kBF16, {2, 2}, Device::Cuda(1)),
                      absl::StatusCode::kFailedPrecondition, {"cuda:1"}));
  EXPECT_TRUE(
      IsError(Stream::Create(Device::Cuda(0)), absl::StatusCode::kFailedPrecondition, {"cuda:0"}));
  ASSERT_OK_AND_ASSIGN(Tensor host, Tensor::Zeros(DType::kF32, {4}));
  Stream stream = Stream::Cpu();
  EXPECT_TRUE(IsError(host.To(Device::Cuda(0), stream), absl::StatusCode::kFailedPrecondition));
  float device_buffer[4] = {};
  Tensor on_gpu = Tensor::Wrap(device_buffer, DType::kF32, {4}, Device::Cuda(2));
  EXPECT_TRUE(
      IsError(on_gpu.CopyFrom(host, stream), absl::StatusCode::kFailedPrecondition, {"cuda:2"}));
  EXPECT_TRUE(
      IsError(host.CopyFrom(on_gpu, stream), absl::StatusCode::kFailedPrecondition, {"cuda:2"}));
}

// ---- tensor_values.h ------------------------------------------------------------------

TEST(TensorValuesTest, FillWithAndReadBackEveryDType) {
  for (DType dtype : kAllDTypes) {
    ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(dtype, {7}));
    // -3 .. 3 is exact in every dtype, int4 included.
    FillWith(tensor, [](int64_t i) { return static_cast<double>(i - 3); });
    for (int64_t i = 0; i < 7; ++i) {
      EXPECT_EQ(ElementAsDouble(tensor, i), static_cast<double>(i - 3))
          << NameOf(dtype) << " index " << i;
    }
  }
}

TEST(TensorValuesTest, StoresInTheDTypeLayout) {
  ASSERT_OK_AND_ASSIGN(Tensor f32, Tensor::Zeros(DType::kF32, {2}));
  SetElement(f32, 1, 0.1);
  EXPECT_EQ(f32.span<float>()[1], 0.1f);
  EXPECT_EQ(ElementAsDouble(f32, 1), static_cast<double>(0.1f));

  ASSERT_OK_AND_ASSIGN(Tensor bf16, Tensor::Zeros(DType::kBF16, {2}));
  SetElement(bf16, 0, -2.0);
  EXPECT_EQ(bf16.span<BFloat16>()[0].bits, 0xC000);

  ASSERT_OK_AND_ASSIGN(Tensor f16, Tensor::Zeros(DType::kF16, {2}));
  SetElement(f16, 1, 65504.0);
  EXPECT_EQ(f16.span<Half>()[1].bits, 0x7BFF);
  EXPECT_EQ(f16.span<Half>()[0].bits, 0x0000);

  ASSERT_OK_AND_ASSIGN(Tensor i64, Tensor::Zeros(DType::kI64, {1}));
  SetElement(i64, 0, 1099511627776.0);  // 2^40
  EXPECT_EQ(i64.span<int64_t>()[0], int64_t{1} << 40);
  EXPECT_EQ(ElementAsDouble(i64, 0), 1099511627776.0);

  ASSERT_OK_AND_ASSIGN(Tensor i4, Tensor::Zeros(DType::kI4, {3}));
  SetElement(i4, 1, -8);
  SetElement(i4, 2, 7);
  const auto* bytes = static_cast<const uint8_t*>(i4.data());
  EXPECT_EQ(bytes[0], 0x80);
  EXPECT_EQ(bytes[1], 0x07);
}

TEST(TensorValuesTest, SixteenBitFloatsRoundToNearestEven) {
  ASSERT_OK_AND_ASSIGN(Tensor bf16, Tensor::Zeros(DType::kBF16, {2}));
  SetElement(bf16, 0, 1.0 + 0x1p-8);      // tie: stays on 1
  SetElement(bf16, 1, 1.0 + 3 * 0x1p-8);  // tie: up to 1 + 2^-6
  EXPECT_EQ(ElementAsDouble(bf16, 0), 1.0);
  EXPECT_EQ(ElementAsDouble(bf16, 1), 1.015625);

  ASSERT_OK_AND_ASSIGN(Tensor f16, Tensor::Zeros(DType::kF16, {3}));
  SetElement(f16, 0, 1.0 + 0x1p-11);
  SetElement(f16, 1, 2049.0);   // between 2048 and 2050: tie to 2048
  SetElement(f16, 2, 65520.0);  // overflows to infinity
  EXPECT_EQ(ElementAsDouble(f16, 0), 1.0);
  EXPECT_EQ(ElementAsDouble(f16, 1), 2048.0);
  EXPECT_EQ(ElementAsDouble(f16, 2), std::numeric_limits<double>::infinity());
}

TEST(TensorValuesTest, IntegersTruncateAndWrap) {
  ASSERT_OK_AND_ASSIGN(Tensor i8, Tensor::Zeros(DType::kI8, {5}));
  SetElement(i8, 0, 200);
  SetElement(i8, 1, -129);
  SetElement(i8, 2, 3.7);
  SetElement(i8, 3, -3.7);
  SetElement(i8, 4, 256);
  EXPECT_EQ(ElementAsDouble(i8, 0), -56);
  EXPECT_EQ(ElementAsDouble(i8, 1), 127);
  EXPECT_EQ(ElementAsDouble(i8, 2), 3);
  EXPECT_EQ(ElementAsDouble(i8, 3), -3);
  EXPECT_EQ(ElementAsDouble(i8, 4), 0);

  ASSERT_OK_AND_ASSIGN(Tensor i32, Tensor::Zeros(DType::kI32, {2}));
  SetElement(i32, 0, 2147483648.0);  // 2^31
  SetElement(i32, 1, -7.9);
  EXPECT_EQ(ElementAsDouble(i32, 0), -2147483648.0);
  EXPECT_EQ(ElementAsDouble(i32, 1), -7);

  ASSERT_OK_AND_ASSIGN(Tensor i4, Tensor::Zeros(DType::kI4, {4}));
  SetElement(i4, 0, 8);   // wraps to -8
  SetElement(i4, 1, -9);  // wraps to 7
  SetElement(i4, 2, 16);  // wraps to 0
  SetElement(i4, 3, 5.9);
  EXPECT_EQ(ElementAsDouble(i4, 0), -8);
  EXPECT_EQ(ElementAsDouble(i4, 1), 7);
  EXPECT_EQ(ElementAsDouble(i4, 2), 0);
  EXPECT_EQ(ElementAsDouble(i4, 3), 5);
}

TEST(TensorValuesTest, SetElementLeavesNeighboursAlone) {
  for (DType dtype : kAllDTypes) {
    ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(dtype, {5}));
    SetElement(tensor, 2, 3);
    for (int64_t i = 0; i < 5; ++i) {
      EXPECT_EQ(ElementAsDouble(tensor, i), i == 2 ? 3.0 : 0.0) << NameOf(dtype) << " " << i;
    }
  }
}

TEST(TensorValuesDeathTest, IndexOutOfRangeAborts) {
  ASSERT_OK_AND_ASSIGN(Tensor tensor, Tensor::Zeros(DType::kF32, {3}));
  EXPECT_DEATH(ElementAsDouble(tensor, 3), "element index out of range");
  EXPECT_DEATH(SetElement(tensor, -1, 0.0), "element index out of range");
}

TEST(TensorValuesTest, RoundingUnit) {
  EXPECT_EQ(RoundingUnit(DType::kF32), 0x1p-24);
  EXPECT_EQ(RoundingUnit(DType::kBF16), 0x1p-8);
  EXPECT_EQ(RoundingUnit(DType::kF16), 0x1p-11);
  EXPECT_EQ(RoundingUnit(DType::kI8), 0.0);
  EXPECT_EQ(RoundingUnit(DType::kI32), 0.0);
  EXPECT_EQ(RoundingUnit(DType::kI64), 0.0);
  EXPECT_EQ(RoundingUnit(DType::kI4), 0.0);
}

}  // namespace
}  // namespace tessera
