// CUDA side of runtime/core/device_memory.h.

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/device_memory.h"

namespace tessera::internal {
namespace {

cudaMemcpyKind KindOf(Device dst, Device src) {
  if (src.is_cpu()) return dst.is_cpu() ? cudaMemcpyHostToHost : cudaMemcpyHostToDevice;
  return dst.is_cpu() ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
}

}  // namespace

absl::StatusOr<void*> CudaAllocate(int ordinal, size_t bytes) {
  TESSERA_CUDA_CHECK(cudaSetDevice(ordinal));
  void* ptr = nullptr;
  absl::Status status = TESSERA_CALL_STATUS(CudaCall, cudaMalloc(&ptr, bytes == 0 ? 1 : bytes));
  if (!status.ok()) {
    return absl::Status(
        status.code(),
        absl::StrCat("allocating ", bytes, " bytes on cuda:", ordinal, ": ", status.message()));
  }
  return ptr;
}

void CudaFree(int ordinal, void* ptr) {
  // Errors while freeing (a context already torn down at exit) leave nothing to recover.
  if (cudaSetDevice(ordinal) == cudaSuccess) (void)cudaFree(ptr);
}

absl::Status CudaCopy(void* dst, Device dst_device, const void* src, Device src_device,
                      size_t bytes, void* cuda_stream) {
  int ordinal = dst_device.is_cuda() ? dst_device.index : src_device.index;
  TESSERA_CUDA_CHECK(cudaSetDevice(ordinal));
  cudaMemcpyKind kind = KindOf(dst_device, src_device);
  if (cuda_stream == nullptr) {  // the CPU stream: complete on return
    TESSERA_CUDA_CHECK(cudaMemcpy(dst, src, bytes, kind));
    return absl::OkStatus();
  }
  TESSERA_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, bytes, kind, static_cast<cudaStream_t>(cuda_stream)));
  return absl::OkStatus();
}

absl::Status CudaZero(void* ptr, int ordinal, size_t bytes, void* cuda_stream) {
  TESSERA_CUDA_CHECK(cudaSetDevice(ordinal));
  if (cuda_stream == nullptr) {
    TESSERA_CUDA_CHECK(cudaMemset(ptr, 0, bytes));
    return absl::OkStatus();
  }
  TESSERA_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, static_cast<cudaStream_t>(cuda_stream)));
  return absl::OkStatus();
}

absl::StatusOr<void*> CudaCreateStream(int ordinal) {
  TESSERA_CUDA_CHECK(cudaSetDevice(ordinal));
  cudaStream_t stream = nullptr;
  TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return static_cast<void*>(stream);
}

void CudaDestroyStream(int ordinal, void* cuda_stream) {
  if (cudaSetDevice(ordinal) == cudaSuccess) {
    (void)cudaStreamDestroy(static_cast<cudaStream_t>(cuda_stream));
  }
}

absl::Status CudaSynchronizeStream(int ordinal, void* cuda_stream) {
  TESSERA_CUDA_CHECK(cudaSetDevice(ordinal));
  TESSERA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(cuda_stream)));
  return absl::OkStatus();
}

}  // namespace tessera::internal
