#include "runtime/core/device_memory.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/core/stream.h"

namespace tessera {
namespace {

[[maybe_unused]] absl::Status NoCuda(Device device) {
  return absl::FailedPreconditionError(
      absl::StrCat("device ", device.ToString(),
                   " requested, but this build of Tessera has no CUDA support "
                   "(configure with TESSERA_CUDA=ON on a machine with the CUDA toolkit and NCCL)"));
}

}  // namespace

absl::StatusOr<void*> AllocateBytes(Device device, size_t bytes) {
  if (device.is_cpu()) {
    size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    if (rounded == 0) rounded = kHostAlignment;
    void* ptr = std::aligned_alloc(kHostAlignment, rounded);
    if (ptr == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("out of host memory allocating ", bytes, " bytes"));
    }
    return ptr;
  }
#if TESSERA_HAVE_CUDA
  return internal::CudaAllocate(device.index, bytes);
#else
  return NoCuda(device);
#endif
}

void FreeBytes(Device device, void* ptr) {
  if (ptr == nullptr) return;
  if (device.is_cpu()) {
    std::free(ptr);
    return;
  }
#if TESSERA_HAVE_CUDA
  internal::CudaFree(device.index, ptr);
#endif
}

absl::Status CopyBytes(void* dst, Device dst_device, const void* src, Device src_device,
                       size_t bytes, Stream& stream) {
  if (bytes == 0) return absl::OkStatus();
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
#if TESSERA_HAVE_CUDA
  return internal::CudaCopy(dst, dst_device, src, src_device, bytes, stream.native_handle());
#else
  (void)stream;
  return NoCuda(dst_device.is_cpu() ? src_device : dst_device);
#endif
}

absl::Status ZeroBytes(void* ptr, Device device, size_t bytes, Stream& stream) {
  if (bytes == 0) return absl::OkStatus();
  if (device.is_cpu()) {
    std::memset(ptr, 0, bytes);
    return absl::OkStatus();
  }
#if TESSERA_HAVE_CUDA
  return internal::CudaZero(ptr, device.index, bytes, stream.native_handle());
#else
  (void)stream;
  return NoCuda(device);
#endif
}

}  // namespace tessera
