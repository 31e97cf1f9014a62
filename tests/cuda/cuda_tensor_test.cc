// Tensors and streams on a GPU: allocation, zero fill, and copies host -> device -> host on
// a CUDA stream and on the CPU stream (synchronous copies).

#include <gtest/gtest.h>

#include <memory>

#include "runtime/core/gpu_info.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"

namespace tessera {
namespace {

constexpr Device kGpu = Device::Cuda(0);

// Values every dtype under test holds exactly: small integers of both signs.
double ValueAt(int64_t i) { return static_cast<double>(i % 17) - 8; }

Tensor HostPattern(DType dtype, Shape shape) {
  absl::StatusOr<Tensor> tensor = Tensor::Empty(dtype, std::move(shape));
  EXPECT_TRUE(tensor.ok()) << tensor.status();
  FillWith(*tensor, ValueAt);
  return *std::move(tensor);
}

// Copies a host pattern to the GPU and back on `stream`; returns elements that differ.
int64_t RoundTripMismatches(DType dtype, Stream& stream) {
  Tensor host = HostPattern(dtype, {3, 341});  // 1023 elements: not a multiple of anything
  absl::StatusOr<Tensor> device = host.To(kGpu, stream);
  EXPECT_TRUE(device.ok()) << device.status();
  if (!device.ok()) return -1;
  EXPECT_EQ(device->device(), kGpu);
  EXPECT_EQ(device->shape(), host.shape());
  absl::StatusOr<Tensor> back = Tensor::Empty(dtype, host.shape());
  EXPECT_TRUE(back.ok()) << back.status();
  if (!back.ok()) return -1;
  EXPECT_TRUE(back->CopyFrom(*device, stream).ok());
  absl::Status synced = stream.Synchronize();
  EXPECT_TRUE(synced.ok()) << synced;
  int64_t wrong = 0;
  for (int64_t i = 0; i < host.numel(); ++i) {
    wrong += ElementAsDouble(*back, i) != ValueAt(i);
  }
  return wrong;
}

TEST(CudaTensorTest, EmptyAndZerosOnGpu) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<Tensor> empty = Tensor::Empty(DType::kF32, {4, 5}, kGpu);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->device(), kGpu);
  EXPECT_EQ(empty->numel(), 20);
  EXPECT_NE(empty->data(), nullptr);

  absl::StatusOr<Tensor> zeros = Tensor::Zeros(DType::kBF16, {1000}, kGpu);
  ASSERT_TRUE(zeros.ok()) << zeros.status();
  Stream cpu = Stream::Cpu();
  absl::StatusOr<Tensor> host = zeros->To(Device::Cpu(), cpu);
  ASSERT_TRUE(host.ok()) << host.status();
  for (int64_t i = 0; i < host->numel(); ++i) ASSERT_EQ(ElementAsDouble(*host, i), 0.0) << i;
}

TEST(CudaTensorTest, ZeroElementTensorOnGpu) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<Tensor> empty = Tensor::Zeros(DType::kI64, {0, 8}, kGpu);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->numel(), 0);
  Stream cpu = Stream::Cpu();
  absl::StatusOr<Tensor> host = empty->To(Device::Cpu(), cpu);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(host->numel(), 0);
}

TEST(CudaTensorTest, StreamOnGpu) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<Stream>> stream = Stream::Create(kGpu);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->device(), kGpu);
  EXPECT_NE((*stream)->native_handle(), nullptr);
  EXPECT_TRUE((*stream)->Synchronize().ok());
}

TEST(CudaTensorTest, RoundTripOnCudaStream) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<Stream>> stream = Stream::Create(kGpu);
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
    SCOPED_TRACE(NameOf(dtype));
    EXPECT_EQ(RoundTripMismatches(dtype, **stream), 0);
  }
}

TEST(CudaTensorTest, RoundTripOnCpuStream) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  Stream cpu = Stream::Cpu();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
    SCOPED_TRACE(NameOf(dtype));
    EXPECT_EQ(RoundTripMismatches(dtype, cpu), 0);
  }
}

TEST(CudaTensorTest, DeviceToDeviceCopy) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<std::unique_ptr<Stream>> stream = Stream::Create(kGpu);
  ASSERT_TRUE(stream.ok()) << stream.status();
  Tensor host = HostPattern(DType::kF32, {257});
  absl::StatusOr<Tensor> first = host.To(kGpu, **stream);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<Tensor> second = first->To(kGpu, **stream);
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<Tensor> back = second->To(Device::Cpu(), **stream);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE((*stream)->Synchronize().ok());
  for (int64_t i = 0; i < host.numel(); ++i) ASSERT_EQ(ElementAsDouble(*back, i), ValueAt(i));
}

TEST(CudaTensorTest, CopyRejectsMismatchedTensors) {
  if (tessera::ListGpus().empty()) GTEST_SKIP() << "no GPU";
  absl::StatusOr<Tensor> device = Tensor::Empty(DType::kF32, {8}, kGpu);
  ASSERT_TRUE(device.ok()) << device.status();
  Tensor host = HostPattern(DType::kI64, {8});
  Stream cpu = Stream::Cpu();
  EXPECT_EQ(device->CopyFrom(host, cpu).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera
