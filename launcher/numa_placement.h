#ifndef TESSERA_LAUNCHER_NUMA_PLACEMENT_H_
#define TESSERA_LAUNCHER_NUMA_PLACEMENT_H_

// Where a rank's threads and memory go on a host of several NUMA nodes: which cores it keeps
// and which node's memory it prefers. The decisions are pure functions over the nodes sysfs
// lists (launcher/numa_nodes.h) and the rank's affinity mask, so that a host of two nodes is
// tested on a host of one; the few system calls that apply them are below, apart.
//
// At start (launcher/process.cc), before the kernel threads are sized and before any weight
// is read, a rank
//   1. takes its share of the node when `tessera launch` runs several jobs on it
//      (kNodeBindVariable, SlotCpus),
//   2. on the CUDA backend, keeps only the cores of its GPU's NUMA node (PlaceNearGpu),
//   3. prefers the memory of the node its cores are on (PreferredMemoryNode,
//      PreferMemoryNode), so that weights, KV cache and activations sit beside the threads
//      that read them.
//
// Environment:
//   TESSERA_NUMA_POLICY=0    leave the memory policy as the process found it
//   TESSERA_NODE_BIND        set by `tessera launch` on the jobs that share a node: "numa" or
//                            "core:K" (launcher/launch.h); unset, step 1 is skipped

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "launcher/numa_nodes.h"

namespace tessera::launcher {

inline constexpr char kNumaPolicyVariable[] = "TESSERA_NUMA_POLICY";
inline constexpr char kNodeBindVariable[] = "TESSERA_NODE_BIND";

// The node whose memory a rank running on `cpus` should prefer: the one node that holds all
// of them, when the host has two or more nodes. -1 when there is nothing to choose (one node,
// or none known) or no right choice (the cores span nodes: NumaSpanProblem says so, and the
// kernel's default, first touch, is left to place each page by the thread that writes it).
int PreferredMemoryNode(const std::vector<NumaNode>& nodes, const std::vector<int>& cpus);

// The host side of a rank that drives a GPU on NUMA node `gpu_node`. Its memory follows its
// cores (PreferredMemoryNode of the restricted mask): the GPU's node too.
struct GpuHostPlacement {
  // The cores to restrict the process to: the mask's cores on the GPU's node; empty to leave
  // the mask as it is.
  std::vector<int> cpus;
  // Set when the mask holds no core of the GPU's node: what is wrong and the fix.
  std::string problem;
};

// `mask`: the cores the rank may run on, ascending. Nothing changes on a host of one node,
// when the GPU's node is unknown (-1) or not among `nodes`, or when the mask lies on the
// GPU's node alone already. `gpu` names the GPU in `problem`.
GpuHostPlacement PlaceNearGpu(const std::vector<NumaNode>& nodes, const std::vector<int>& mask,
                              int gpu_node, int gpu);

// How the jobs that share a node divide it (kNodeBindVariable).
struct NodeBinding {
  enum class Kind {
    kNone,   // each rank keeps the mask it was given
    kNuma,   // node slots are NUMA domains: slot s takes its domain (or its part of one)
    kCores,  // slot s takes cores [s*K, s*K+K) of the node, in NUMA-node order
  };
  Kind kind = Kind::kNone;
  int cores_per_slot = 0;  // K, with kCores
};

// "numa", "core:K" (K >= 1), or "" / "none" for kNone; INVALID_ARGUMENT naming
// TESSERA_NODE_BIND otherwise.
absl::StatusOr<NodeBinding> ParseNodeBinding(std::string_view text);
// The text ParseNodeBinding reads back.
std::string FormatNodeBinding(const NodeBinding& binding);

// The cores of slot `slot` of the `slots` slots of a node (the slot of local rank k of a job
// is its TESSERA_NODE_FIRST_SLOT + k, comm/node_share.h), among the node's cores that are in
// `mask`. Distinct slots get disjoint cores. kNuma: with as many slots as nodes, slot s gets
// node s; with fewer, consecutive nodes each; with more, each node's slots divide its cores
// in equal consecutive parts. A host of one node (or none known) counts as one node of the
// whole mask. Empty (keep the mask) for kNone, a slot outside [0, slots), or kCores past the
// node's last core.
std::vector<int> SlotCpus(const std::vector<NumaNode>& nodes, const std::vector<int>& mask,
                          const NodeBinding& binding, int slot, int slots);

// --- Applying the decisions (Linux; FAILED_PRECONDITION elsewhere) ---

// Sets the calling thread's memory policy to MPOL_PREFERRED for `node`; threads it starts
// later inherit it. INVALID_ARGUMENT for a negative node; otherwise the system's error
// (EPERM in a container whose seccomp profile withholds set_mempolicy without CAP_SYS_NICE).
absl::Status PreferMemoryNode(int node);

// The calling thread's memory policy (get_mempolicy).
struct MemoryPolicy {
  // "default" (each page on the node of the thread that first touches it), "preferred",
  // "bind", "interleave", "local", or "mode N" for one this code does not name.
  std::string mode = "default";
  int node = -1;  // "preferred" or "bind": its (lowest) node; else -1
};
absl::StatusOr<MemoryPolicy> CurrentMemoryPolicy();

// The node of the page that holds `address` (which must be touched: an untouched page has
// none yet).
absl::StatusOr<int> NodeOfPage(const void* address);

// Restricts every thread of this process, and those it starts later, to `cpus`. Threads that
// end meanwhile are skipped. INVALID_ARGUMENT for no CPU.
absl::Status RestrictProcessCpus(const std::vector<int>& cpus);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_NUMA_PLACEMENT_H_
