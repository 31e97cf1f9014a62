#ifndef TESSERA_RUNTIME_CORE_GPU_INFO_H_
#define TESSERA_RUNTIME_CORE_GPU_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

// What topology discovery needs to know about one local GPU.
struct GpuInfo {
  int ordinal = 0;
  std::string name;        // "NVIDIA H100 80GB HBM3"
  std::string uuid;        // "GPU-8c1f..."
  std::string pci_bus_id;  // "0000:1b:00.0"
  int numa_node = -1;      // from sysfs; -1 when the platform does not say
};

// GPUs visible to this process. Empty in a CPU-only build or on a machine without GPUs;
// never an error, since having no GPU is a normal state for the CPU backend.
std::vector<GpuInfo> ListGpus();

// Memory of one GPU as the CUDA driver reports it (cudaMemGetInfo) at the time of the call.
struct GpuMemory {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};
// FAILED_PRECONDITION in a build without CUDA; the CUDA error naming the GPU otherwise.
absl::StatusOr<GpuMemory> QueryGpuMemory(int ordinal);

// Whether GPU `from` can access the memory of GPU `to` directly (NVLink or PCIe P2P).
bool CanAccessPeer(int from, int to);

// NUMA node of a PCI device by bus id ("0000:1b:00.0"), read from sysfs; -1 if unknown.
int NumaNodeOfPciDevice(const std::string& pci_bus_id);

namespace internal {
std::vector<GpuInfo> CudaListGpus();
bool CudaCanAccessPeer(int from, int to);
absl::StatusOr<GpuMemory> CudaQueryGpuMemory(int ordinal);
}  // namespace internal

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_GPU_INFO_H_
