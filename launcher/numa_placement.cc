#include "launcher/numa_placement.h"

#ifdef __linux__
#include <linux/mempolicy.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/cpu_affinity.h"

namespace tessera::launcher {
namespace {

// `node`'s cores that are in `mask` (both ascending).
std::vector<int> CoresInMask(const NumaNode& node, const std::vector<int>& mask) {
  std::vector<int> cores;
  std::set_intersection(node.cpus.begin(), node.cpus.end(), mask.begin(), mask.end(),
                        std::back_inserter(cores));
  return cores;
}

// Part `part` of `parts` equal consecutive parts of `cpus` (the earlier parts one smaller
// when they do not divide evenly).
std::vector<int> Part(const std::vector<int>& cpus, int part, int parts) {
  const int64_t n = static_cast<int64_t>(cpus.size());
  const int64_t begin = n * part / parts, end = n * (part + 1) / parts;
  return std::vector<int>(cpus.begin() + begin, cpus.begin() + end);
}

#ifdef __linux__
absl::Status SystemError(const std::string& what) {
  const int error = errno;
  std::string message = absl::StrCat(what, ": ", std::strerror(error));
  if (error == EPERM) {
    absl::StrAppend(&message,
                    " (a container's seccomp profile allows NUMA calls only with CAP_SYS_NICE)");
  }
  if (error == ENOSYS || error == EPERM) return absl::FailedPreconditionError(message);
  return error == EINVAL ? absl::InvalidArgumentError(message) : absl::InternalError(message);
}
#endif

}  // namespace

int PreferredMemoryNode(const std::vector<NumaNode>& nodes, const std::vector<int>& cpus) {
  if (nodes.size() < 2) return -1;
  const std::vector<int> spanned = NumaNodesOf(nodes, cpus);
  return spanned.size() == 1 ? spanned[0] : -1;
}

GpuHostPlacement PlaceNearGpu(const std::vector<NumaNode>& nodes, const std::vector<int>& mask,
                              int gpu_node, int gpu) {
  GpuHostPlacement placement;
  if (nodes.size() < 2 || gpu_node < 0) return placement;
  auto node = std::find_if(nodes.begin(), nodes.end(),
                           [gpu_node](const NumaNode& n) { return n.id == gpu_node; });
  if (node == nodes.end()) return placement;
  std::vector<int> near = CoresInMask(*node, mask);
  if (near.empty()) {
    placement.problem = absl::StrCat(
        "GPU ", gpu, " is on NUMA node ", gpu_node, " but this rank may run only on cores ",
        kernels::FormatCpuList(mask),
        ", none of them on that node: its host threads and pinned buffers are a socket away "
        "from the GPU; start it with mpirun --bind-to none (Tessera then binds each rank to "
        "its GPU's node) or srun --cpu-bind=none");
    return placement;
  }
  if (near.size() < mask.size()) placement.cpus = std::move(near);
  return placement;
}

absl::StatusOr<NodeBinding> ParseNodeBinding(std::string_view text) {
  NodeBinding binding;
  if (text.empty() || text == "none") return binding;
  if (text == "numa") {
    binding.kind = NodeBinding::Kind::kNuma;
    return binding;
  }
  int cores = 0;
  if (text.substr(0, 5) == "core:" &&
      absl::SimpleAtoi(absl::string_view(text.data() + 5, text.size() - 5), &cores) && cores >= 1) {
    binding.kind = NodeBinding::Kind::kCores;
    binding.cores_per_slot = cores;
    return binding;
  }
  return absl::InvalidArgumentError(absl::StrCat(kNodeBindVariable, "='", std::string(text),
                                                 "': expected numa, core:K (K >= 1) or none"));
}

std::string FormatNodeBinding(const NodeBinding& binding) {
  switch (binding.kind) {
    case NodeBinding::Kind::kNuma:
      return "numa";
    case NodeBinding::Kind::kCores:
      return absl::StrCat("core:", binding.cores_per_slot);
    case NodeBinding::Kind::kNone:
      break;
  }
  return "none";
}

std::vector<int> SlotCpus(const std::vector<NumaNode>& nodes, const std::vector<int>& mask,
                          const NodeBinding& binding, int slot, int slots) {
  if (binding.kind == NodeBinding::Kind::kNone || slot < 0 || slot >= slots) return {};
  std::vector<int> ascending = mask;
  std::sort(ascending.begin(), ascending.end());
  // The node's cores in the mask, by NUMA node; a host without NUMA nodes is one node.
  std::vector<std::vector<int>> domains;
  for (const NumaNode& node : nodes) {
    std::vector<int> cores = CoresInMask(node, ascending);
    if (!cores.empty()) domains.push_back(std::move(cores));
  }
  if (nodes.size() < 2 || domains.empty()) domains = {ascending};

  if (binding.kind == NodeBinding::Kind::kCores) {
    std::vector<int> all;
    for (const std::vector<int>& cores : domains) all.insert(all.end(), cores.begin(), cores.end());
    const int64_t first = int64_t{slot} * binding.cores_per_slot;
    if (first + binding.cores_per_slot > static_cast<int64_t>(all.size())) return {};
    return std::vector<int>(all.begin() + first, all.begin() + first + binding.cores_per_slot);
  }
  const int count = static_cast<int>(domains.size());
  if (slots <= count) {
    // Slot s takes domains [s*count/slots, (s+1)*count/slots): every domain has one owner.
    std::vector<int> cores;
    for (int d = slot * count / slots; d < (slot + 1) * count / slots; ++d) {
      cores.insert(cores.end(), domains[d].begin(), domains[d].end());
    }
    return cores;
  }
  // More slots than domains: slot s is on domain s*count/slots, and the slots of one domain
  // divide its cores.
  const int domain = static_cast<int>(int64_t{slot} * count / slots);
  int first = slot, last = slot;  // the slots on `domain`
  while (first > 0 && int64_t{first - 1} * count / slots == domain) --first;
  while (last + 1 < slots && int64_t{last + 1} * count / slots == domain) ++last;
  return Part(domains[domain], slot - first, last - first + 1);
}

// MPOL_PREFERRED rather than MPOL_BIND: a rank's pages go to its node while that node has
// free memory and then spill to the others, where MPOL_BIND would fail allocations (or wake
// the OOM killer) once the node is full even though the host has memory left: a model whose
// weights and KV cache outgrow one socket's memory still loads, a little slower. It is
// numactl --preferred and srun --mem-bind=prefer. Page-cache pages of a mapped checkpoint
// follow the policy of the first process that reads them.
absl::Status PreferMemoryNode(int node) {
  if (node < 0) {
    return absl::InvalidArgumentError(absl::StrCat("NUMA node ", node, " is not a node"));
  }
#ifdef __linux__
  const size_t words = static_cast<size_t>(node) / 64 + 1;
  std::vector<unsigned long> mask(words, 0);
  mask[node / 64] |= 1UL << (node % 64);
  // The kernel reads maxnode - 1 bits (an off-by-one kept for compatibility).
  if (syscall(SYS_set_mempolicy, MPOL_PREFERRED, mask.data(), words * 64 + 1) != 0) {
    return SystemError(absl::StrCat("set_mempolicy(MPOL_PREFERRED, node ", node, ")"));
  }
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("NUMA memory policies need Linux");
#endif
}

absl::StatusOr<MemoryPolicy> CurrentMemoryPolicy() {
#ifdef __linux__
  // As many nodes as the kernel can number (MAX_NUMNODES is at most 1024); fewer is EINVAL.
  constexpr size_t kWords = 1024 / 64;
  std::vector<unsigned long> mask(kWords, 0);
  int mode = MPOL_DEFAULT;
  if (syscall(SYS_get_mempolicy, &mode, mask.data(), kWords * 64, nullptr, 0) != 0) {
    return SystemError("get_mempolicy");
  }
  MemoryPolicy policy;
  // The mode flags (MPOL_F_STATIC_NODES, ...) ride in the high bits.
  switch (mode & 0xff) {
    case MPOL_DEFAULT:
      return policy;
    case MPOL_PREFERRED:
      policy.mode = "preferred";
      break;
    case MPOL_BIND:
      policy.mode = "bind";
      break;
    case MPOL_INTERLEAVE:
      policy.mode = "interleave";
      return policy;
    case MPOL_LOCAL:
      policy.mode = "local";
      return policy;
    default:
      policy.mode = absl::StrCat("mode ", mode & 0xff);
      return policy;
  }
  for (size_t w = 0; w < kWords; ++w) {
    if (mask[w] != 0) {
      policy.node = static_cast<int>(w * 64) + __builtin_ctzl(mask[w]);
      break;
    }
  }
  return policy;
#else
  return absl::FailedPreconditionError("NUMA memory policies need Linux");
#endif
}

absl::StatusOr<int> NodeOfPage(const void* address) {
#ifdef __linux__
  // move_pages with no target nodes only reports where each page is.
  void* pages[1] = {const_cast<void*>(address)};
  int status[1] = {-1};
  if (syscall(SYS_move_pages, 0, 1UL, pages, nullptr, status, 0) != 0) {
    return SystemError("move_pages");
  }
  if (status[0] < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the page at 0x", absl::Hex(reinterpret_cast<uintptr_t>(address)),
                     " has no node: ", std::strerror(-status[0])));
  }
  return status[0];
#else
  (void)address;
  return absl::FailedPreconditionError("NUMA page queries need Linux");
#endif
}

absl::Status RestrictProcessCpus(const std::vector<int>& cpus) {
  if (cpus.empty()) return absl::InvalidArgumentError("no CPU to restrict the process to");
#ifdef __linux__
  const int top = *std::max_element(cpus.begin(), cpus.end());
  if (top < 0) return absl::InvalidArgumentError(absl::StrCat("CPU ", top, " is not a CPU"));
  cpu_set_t* set = CPU_ALLOC(top + 1);
  if (set == nullptr) return absl::ResourceExhaustedError("cannot allocate a CPU set");
  const size_t bytes = CPU_ALLOC_SIZE(top + 1);
  CPU_ZERO_S(bytes, set);
  for (int cpu : cpus) CPU_SET_S(cpu, bytes, set);
  // sched_setaffinity sets one thread's mask: the calling thread first (its later threads
  // inherit it), then each other one (MPI's progress threads, say) that runs already.
  absl::Status status;
  if (sched_setaffinity(0, bytes, set) != 0) {
    status = SystemError(absl::StrCat("sched_setaffinity(", absl::StrJoin(cpus, ","), ")"));
  }
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task", error)) {
    if (!status.ok()) break;
    int tid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &tid)) continue;
    if (sched_setaffinity(tid, bytes, set) != 0 && errno != ESRCH) {
      status = SystemError(absl::StrCat("sched_setaffinity(thread ", tid, ")"));
    }
  }
  CPU_FREE(set);
  return status;
#else
  return absl::FailedPreconditionError("CPU affinity needs Linux");
#endif
}

}  // namespace tessera::launcher
