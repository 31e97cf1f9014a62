#ifndef TESSERA_KERNELS_CUDA_LAUNCH_H_
#define TESSERA_KERNELS_CUDA_LAUNCH_H_

// Host-side helpers shared by the CUDA kernels: the argument checks of
// kernels/cpu/check_shapes.h for device tensors, the stream a kernel launches on, and the
// check that turns a failed launch into a Status naming the kernel.
//
// Every CUDA kernel runs on the device of its `stream`, which must be a CUDA stream (not
// Stream::Cpu()); every tensor argument must live on that same device. The checks read only
// shapes, dtypes and devices: values held in device memory (token ids, slots, block tables)
// cannot be read without waiting for the stream, so each kernel documents what it does with
// bad values instead.

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/check_shapes.h"
#include "runtime/core/check.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda::internal {

using kernels::internal::ExpectRank;
using kernels::internal::ExpectShape;

// The cudaStream_t behind `stream`, with its device made current for the launch.
// INVALID_ARGUMENT naming the kernel for the CPU stream.
inline absl::StatusOr<cudaStream_t> LaunchStream(absl::string_view kernel, const Stream& stream) {
  if (!stream.device().is_cuda() || stream.native_handle() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        kernel, ": stream is on ", stream.device().ToString(), ", expected a CUDA stream"));
  }
  TESSERA_CUDA_CHECK(cudaSetDevice(stream.device().index));
  return static_cast<cudaStream_t>(stream.native_handle());
}

// t lives on `device` (and has memory, unless it is empty).
inline absl::Status ExpectOn(absl::string_view kernel, absl::string_view name, const Tensor& t,
                             Device device) {
  if (t.device() != device || (t.numel() > 0 && t.data() == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": ", name, " is ", t.DebugString(),
                                                   ", expected memory on ", device.ToString()));
  }
  return absl::OkStatus();
}

// t has one of the `allowed` dtypes and lives on `device`.
inline absl::Status ExpectDType(absl::string_view kernel, absl::string_view name, const Tensor& t,
                                std::initializer_list<DType> allowed, Device device) {
  for (DType d : allowed) {
    if (t.dtype() == d) return ExpectOn(kernel, name, t, device);
  }
  std::string names;
  for (DType d : allowed) absl::StrAppend(&names, names.empty() ? "" : " or ", NameOf(d));
  return absl::InvalidArgumentError(
      absl::StrCat(kernel, ": ", name, " is ", t.DebugString(), ", expected ", names));
}

// At most `limit` of something: grid dimensions (one block per row), cuBLAS's int sizes.
inline absl::Status ExpectAtMost(absl::string_view kernel, absl::string_view what, int64_t count,
                                 int64_t limit = INT32_MAX) {
  if (count > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": ", count, " ", what, " exceed the limit of ", limit));
  }
  return absl::OkStatus();
}

// Blocks of `threads` covering `count` elements in a grid-stride loop: enough to fill the
// GPU several times over, no more.
inline unsigned int GridStrideBlocks(int64_t count, int threads) {
  constexpr int64_t kMaxBlocks = 65536;
  int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// bias is undefined (none), or (n) f32, bf16 or f16 on `device`.
inline absl::Status ExpectBias(absl::string_view kernel, const Tensor& bias, int64_t n,
                               Device device) {
  if (!bias.defined()) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kernel, "bias", bias, {DType::kF32, DType::kBF16, DType::kF16}, device));
  return ExpectShape(kernel, "bias", bias, {n});
}

// Whether `p` may be read as float4 / written as 16-byte vectors.
inline bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace tessera::kernels::cuda::internal

// After a <<<...>>> launch: returns the launch's failure (a bad configuration, or an earlier
// asynchronous error that left the context unusable) as a Status naming the kernel.
#define TESSERA_RETURN_IF_LAUNCH_FAILED(kernel_name)                                             \
  do {                                                                                           \
    cudaError_t tessera_launch_error_ = cudaGetLastError();                                      \
    if (tessera_launch_error_ != cudaSuccess) {                                                  \
      return ::tessera::LibraryCallError(::tessera::CudaCall::StatusCode(tessera_launch_error_), \
                                         ::absl::StrCat(kernel_name, " kernel launch"),          \
                                         ::tessera::CudaCall::Describe(tessera_launch_error_),   \
                                         __FILE__, __LINE__);                                    \
    }                                                                                            \
  } while (0)

#endif  // TESSERA_KERNELS_CUDA_LAUNCH_H_
