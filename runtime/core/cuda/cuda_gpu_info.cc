// CUDA side of runtime/core/gpu_info.h.

#include <cuda_runtime.h>

#include <cstdio>

#include "runtime/core/cuda/cuda_check.h"
#include "runtime/core/gpu_info.h"

namespace tessera::internal {

std::vector<GpuInfo> CudaListGpus() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // "no device" is sticky otherwise
    return {};
  }
  std::vector<GpuInfo> gpus;
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, ordinal) != cudaSuccess) continue;
    GpuInfo info;
    info.ordinal = ordinal;
    info.name = prop.name;
    char uuid[64];
    const auto* b = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
    std::snprintf(uuid, sizeof(uuid),
                  "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                  b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                  b[14], b[15]);
    info.uuid = uuid;
    char bus_id[32] = {};
    if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), ordinal) == cudaSuccess) {
      info.pci_bus_id = bus_id;
      info.numa_node = NumaNodeOfPciDevice(info.pci_bus_id);
    }
    gpus.push_back(std::move(info));
  }
  return gpus;
}

bool CudaCanAccessPeer(int from, int to) {
  if (from == to) return true;
  int can = 0;
  if (cudaDeviceCanAccessPeer(&can, from, to) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return can != 0;
}

absl::StatusOr<GpuMemory> CudaQueryGpuMemory(int ordinal) {
  TESSERA_CUDA_CHECK(cudaSetDevice(ordinal));
  size_t free_bytes = 0, total_bytes = 0;
  TESSERA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return GpuMemory{free_bytes, total_bytes};
}

}  // namespace tessera::internal
