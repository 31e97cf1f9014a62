#include "runtime/core/stream.h"

#include "absl/strings/str_cat.h"
#include "runtime/core/device_memory.h"

namespace tessera {

absl::StatusOr<std::unique_ptr<Stream>> Stream::Create(Device device) {
  if (device.is_cpu()) return std::unique_ptr<Stream>(new Stream(device, nullptr));
#if TESSERA_HAVE_CUDA
  absl::StatusOr<void*> handle = internal::CudaCreateStream(device.index);
  if (!handle.ok()) return handle.status();
  return std::unique_ptr<Stream>(new Stream(device, *handle));
#else
  return absl::FailedPreconditionError(absl::StrCat("cannot create a stream on ", device.ToString(),
                                                    ": this build has no CUDA support"));
#endif
}

Stream::Stream(Stream&& other) noexcept : device_(other.device_), handle_(other.handle_) {
  other.handle_ = nullptr;
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    this->~Stream();
    device_ = other.device_;
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

Stream::~Stream() {
#if TESSERA_HAVE_CUDA
  if (handle_ != nullptr) internal::CudaDestroyStream(device_.index, handle_);
#endif
}

absl::Status Stream::Synchronize() {
#if TESSERA_HAVE_CUDA
  if (device_.is_cuda()) return internal::CudaSynchronizeStream(device_.index, handle_);
#endif
  return absl::OkStatus();
}

}  // namespace tessera
