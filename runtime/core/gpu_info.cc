#include "runtime/core/gpu_info.h"

#include <algorithm>
#include <cctype>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera {

std::vector<GpuInfo> ListGpus() {
#if TESSERA_HAVE_CUDA
  return internal::CudaListGpus();
#else
  return {};
#endif
}

bool CanAccessPeer(int from, int to) {
#if TESSERA_HAVE_CUDA
  return internal::CudaCanAccessPeer(from, to);
#else
  (void)from;
  (void)to;
  return false;
#endif
}

absl::StatusOr<GpuMemory> QueryGpuMemory(int ordinal) {
#if TESSERA_HAVE_CUDA
  return internal::CudaQueryGpuMemory(ordinal);
#else
  return absl::FailedPreconditionError(
      absl::StrCat("cannot query cuda:", ordinal, ": this build has no CUDA support"));
#endif
}

int NumaNodeOfPciDevice(const std::string& pci_bus_id) {
  std::string id = pci_bus_id;
  std::transform(id.begin(), id.end(), id.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::ifstream file("/sys/bus/pci/devices/" + id + "/numa_node");
  int node = -1;
  if (!(file >> node)) return -1;
  return node;
}

}  // namespace tessera
