#ifndef TESSERA_RUNTIME_CORE_DEVICE_H_
#define TESSERA_RUNTIME_CORE_DEVICE_H_

#include <string>

#include "absl/status/statusor.h"

namespace tessera {

enum class DeviceType { kCpu, kCuda };

// Where memory lives and work runs. The CPU is a device like any other: tensors, streams
// and communicators take a Device and do the right thing for it.
struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;  // GPU ordinal for kCuda; always 0 for kCpu.

  static constexpr Device Cpu() { return Device{DeviceType::kCpu, 0}; }
  static constexpr Device Cuda(int ordinal) { return Device{DeviceType::kCuda, ordinal}; }

  bool is_cpu() const { return type == DeviceType::kCpu; }
  bool is_cuda() const { return type == DeviceType::kCuda; }
  std::string ToString() const;  // "cpu", "cuda:1"

  friend bool operator==(const Device&, const Device&) = default;
};

// Parses "cpu", "cuda" (ordinal 0) or "cuda:N".
absl::StatusOr<Device> ParseDevice(absl::string_view text);

// Whether this build has CUDA support compiled in.
bool BuiltWithCuda();

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_DEVICE_H_
