#ifndef TESSERA_LAUNCHER_NUMA_NODES_H_
#define TESSERA_LAUNCHER_NUMA_NODES_H_

// The host's NUMA nodes as Linux sysfs lists them, and where the memory probe
// (launcher/read_bandwidth.h) puts a process's readers on them: pure functions over what
// sysfs says, so that the logic of a host of several nodes is tested on a host of one.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::launcher {

// A CPU list as sysfs and taskset write it: "0-3,8-11", "5", "0-1,4\n"; "" (or a lone
// newline) is no CPU. Returned ascending, each CPU once; nullopt when the text is not such a
// list (a range that runs backwards, an empty item, a character other than digits, ',' and
// '-').
std::optional<std::vector<int>> ParseCpuList(std::string_view text);

struct NumaNode {
  int id = 0;             // N of sysfs's nodeN
  std::vector<int> cpus;  // ascending
};

// The NUMA nodes with CPUs under `sysfs_nodes` (Linux: /sys/devices/system/node, a nodeN
// directory with a cpulist file for each node), ascending by id. A node without CPUs (memory
// only: CXL, HBM) is left out, as no thread runs on it; so is one whose cpulist does not
// parse. Empty when none can be read (not Linux): the host then counts as one node.
std::vector<NumaNode> ReadNumaNodes(const std::string& sysfs_nodes = "/sys/devices/system/node");

// The ids of the nodes that hold some of `cpus`, ascending.
std::vector<int> NumaNodesOf(const std::vector<NumaNode>& nodes, const std::vector<int>& cpus);

// What is wrong with a rank whose cores lie on the NUMA nodes `spanned`, and the flags that
// fix it ("" for one node or none): its memory, first touched by whichever thread, lands on
// one node and the threads of the others read it across the interconnect. `slurm`: name srun's
// flags instead of mpirun's.
std::string NumaSpanProblem(const std::vector<int>& spanned, bool slurm);

// A process's readers on one NUMA node.
struct NodeReaders {
  int node = 0;           // NumaNode::id
  std::vector<int> cpus;  // the process's CPUs on the node: where these readers run
  int readers = 0;        // at least 1
};

// Places `readers` readers of a process over the NUMA nodes of its `cpus` (the CPUs its
// kernel threads run on): each node gets readers in proportion to how many of `cpus` it
// holds (largest remainder), so that the readers sit where the kernel threads do. Equal
// remainders go first to the `rotation`-th node holding some of `cpus` (modulo their count),
// then to those after it: the local rank, so that ranks sharing one mask spread their odd
// readers over the nodes instead of all on the first. Only nodes given a reader are listed,
// ascending by id. Empty (the readers run wherever the process's mask lets them, as on a host
// of one node) when `nodes` has fewer than two entries, when `readers` < 1, or when none of
// `cpus` is on a node; CPUs on no node are ignored.
std::vector<NodeReaders> PlaceReadersOnNodes(const std::vector<NumaNode>& nodes,
                                             const std::vector<int>& cpus, int readers,
                                             int rotation = 0);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_NUMA_NODES_H_
