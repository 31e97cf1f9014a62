#ifndef TESSERA_RUNTIME_CORE_STREAM_H_
#define TESSERA_RUNTIME_CORE_STREAM_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/device.h"

namespace tessera {

// An ordered queue of work on a device. On the CPU, work completes before the call that
// issues it returns, so Synchronize() has nothing to wait for. On CUDA a Stream owns a
// cudaStream_t; work is asynchronous until Synchronize() or an event says otherwise.
// A Stream is used by one thread at a time.
class Stream {
 public:
  // The CPU stream.
  static Stream Cpu() { return Stream(Device::Cpu(), nullptr); }
  // A new stream on `device` (a fresh non-blocking cudaStream_t for CUDA).
  static absl::StatusOr<std::unique_ptr<Stream>> Create(Device device);

  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  Device device() const { return device_; }
  // The cudaStream_t for CUDA streams; nullptr on the CPU.
  void* native_handle() const { return handle_; }
  // Blocks until all work issued on this stream has finished.
  absl::Status Synchronize();

 private:
  Stream(Device device, void* handle) : device_(device), handle_(handle) {}

  Device device_;
  void* handle_;
};

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_STREAM_H_
