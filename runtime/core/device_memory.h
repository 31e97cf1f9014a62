#ifndef TESSERA_RUNTIME_CORE_DEVICE_MEMORY_H_
#define TESSERA_RUNTIME_CORE_DEVICE_MEMORY_H_

// Raw memory on a Device: the one place that knows how each device allocates, copies and
// fills. Tensor and Stream build on it; nothing else should call cudaMalloc.

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/device.h"

namespace tessera {

class Stream;

// Alignment of host allocations (a cache line; enough for any SIMD load).
inline constexpr size_t kHostAlignment = 64;

absl::StatusOr<void*> AllocateBytes(Device device, size_t bytes);
void FreeBytes(Device device, void* ptr);

// Copies `bytes` from src (on src_device) to dst (on dst_device), ordered on `stream`.
// Host-to-host copies complete on return; copies that touch a GPU are asynchronous on a
// CUDA stream (use pinned host memory for overlap) and synchronous on the CPU stream.
absl::Status CopyBytes(void* dst, Device dst_device, const void* src, Device src_device,
                       size_t bytes, Stream& stream);

// Sets `bytes` bytes at ptr to zero, ordered on `stream`.
absl::Status ZeroBytes(void* ptr, Device device, size_t bytes, Stream& stream);

namespace internal {
// CUDA implementations (runtime/core/cuda/cuda_memory.cc), present when built with CUDA.
absl::StatusOr<void*> CudaAllocate(int ordinal, size_t bytes);
void CudaFree(int ordinal, void* ptr);
absl::Status CudaCopy(void* dst, Device dst_device, const void* src, Device src_device,
                      size_t bytes, void* cuda_stream);
absl::Status CudaZero(void* ptr, int ordinal, size_t bytes, void* cuda_stream);
absl::StatusOr<void*> CudaCreateStream(int ordinal);
void CudaDestroyStream(int ordinal, void* cuda_stream);
absl::Status CudaSynchronizeStream(int ordinal, void* cuda_stream);
}  // namespace internal

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_DEVICE_MEMORY_H_
