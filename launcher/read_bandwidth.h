#ifndef TESSERA_LAUNCHER_READ_BANDWIDTH_H_
#define TESSERA_LAUNCHER_READ_BANDWIDTH_H_

// The limit the CPU benchmarks hold memory-bound work against: how fast this machine's
// memory delivers bytes to a reader like the kernels, measured as STREAM and likwid-bench
// measure it. Every reader thread streams through its own buffer, first-touched by that
// thread (so its pages sit on that thread's NUMA node; huge pages where the kernel grants
// them), the buffers together several times the last-level cache, with the widest vector
// loads of the kernels' path (kernels/cpu/cpu_features.h) and software prefetch ahead (a
// limit must not be beaten, so the probe reads as well as a reader can). After one warm-up
// round, the best of several rounds, each timed from the release of all readers to the end
// of the slowest. On a host of several NUMA nodes the readers sit on the nodes where the
// kernel threads run, each pinned to its node; every such node is measured alone, and the
// limit is all of them at once: the figure of the nodes the ranks run on.

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "launcher/numa_nodes.h"

namespace tessera::launcher {

// The last-level cache, bytes: the largest of what Linux sysfs (per cache instance) and
// sysconf (CPUID: on AMD, the package's L3) say, else 32 MiB. An upper figure: a buffer
// several times it is not served from cache, even in a virtual machine whose sysfs shows
// less cache than its cores reach.
int64_t LastLevelCacheBytes();

// Whether `bytes` read by `ranks` processes fit in their last-level caches (ranks x
// LastLevelCacheBytes()): read again and again, they come from there once warm, and no memory
// limit holds them. The one rule of every bench.
bool FitsInLastLevelCaches(double bytes, int ranks);

// One NUMA node's figure on a host of several.
struct NumaReadBandwidth {
  int node = 0;                 // sysfs's node id
  int threads = 0;              // readers on the node, every rank's
  double bytes_per_second = 0;  // best round, with only this node's readers reading
};

struct ReadBandwidth {
  double bytes_per_second = 0;        // best round: the bytes all readers read / its seconds
  int threads = 0;                    // readers reading at once (every rank's, for a node)
  int ranks = 1;                      // processes the readers are spread over
  int64_t bytes_per_thread = 0;       // each reader's buffer
  int passes = 0;                     // times each reader reads its buffer in a round
  std::vector<double> round_seconds;  // every timed round, warm-up left out
  kernels::CpuVector path = kernels::CpuVector::kPortable;  // width of the loads
  // On a host of several NUMA nodes (launcher/numa_nodes.h): each node the readers run on,
  // ascending by id, its readers pinned to its CPUs and reading buffers first-touched there;
  // bytes_per_second is then all of these nodes' readers at once, the limit of ranks that
  // run on these nodes (one node: its own figure). Empty where the host has one node.
  std::vector<NumaReadBandwidth> numa_nodes;
  int host_numa_nodes = 1;  // the host's NUMA nodes with CPUs (of every rank's host, the most)
};

// One measurement by one process, independent of MPI.
struct ReadProbe {
  // This process's readers, each a std::thread reading its own buffer; the calling thread
  // only times them. 0: none, the process only meets the rounds (before_round).
  int threads = 1;
  kernels::CpuVector path = kernels::CpuVector::kPortable;  // the width of the loads
  // Per reader, the CPUs it runs on (it is pinned to them before it first touches its
  // buffer, which places its pages on their NUMA node); empty: wherever the process's mask
  // lets the readers run. Otherwise one entry per reader.
  std::vector<std::vector<int>> reader_cpus;
  // Runs on the calling thread before each round (the warm-up too) while the readers wait:
  // a barrier across the processes that read at the same time.
  std::function<void()> before_round;
  // The readers of every process that reads at the same time, which together read several
  // times the cache; 0: `threads`.
  int group_threads = 0;
};

// About a second. The figure is this process's bytes over its own round times.
ReadBandwidth MeasureReadBandwidth(const ReadProbe& probe);

// The figure of this process alone (no MPI): `threads` readers on `path`, placed on the
// NUMA nodes where the process's kernel threads run (kernels::CurrentCpuSetup()); on a host
// of several nodes each such node alone, then all of them at once.
ReadBandwidth MeasureProcessReadBandwidth(int threads, kernels::CpuVector path);
// The same over the given nodes, as if the host had them (ReadNumaNodes() for the host's):
// a test lays several nodes over a host of one.
ReadBandwidth MeasureProcessReadBandwidth(int threads, kernels::CpuVector path,
                                          const std::vector<NumaNode>& numa_nodes);

// The node's figure: every rank of `node` (all on one host) reads at once with
// kernels::CpuKernelThreads() readers on kernels::CpuVectorPath(), rounds aligned by
// MPI_Barrier; a round's figure is every rank's bytes over the slowest rank's seconds. On a
// host of several NUMA nodes, each rank's readers are placed on the nodes where its kernel
// threads run, and each of those nodes is measured alone (its readers of every rank), then
// all of them at once. Collective over `node`; every rank gets the same result.
ReadBandwidth MeasureNodeReadBandwidth(MPI_Comm node);
// The same over the given nodes (the same on every rank), as if the host had them.
ReadBandwidth MeasureNodeReadBandwidth(MPI_Comm node, const std::vector<NumaNode>& numa_nodes);

// The better of two measurements of the same probe, which other work on the machine can
// only pull down: the faster one, with the other's timed rounds added to its own (a bench
// measures before and after its models, so that load in one window does not make a limit
// that the models beat).
ReadBandwidth BetterReadBandwidth(ReadBandwidth a, const ReadBandwidth& b);

// How the figure was measured, one line without a newline; per NUMA node where there are
// several.
std::string DescribeReadBandwidth(const ReadBandwidth& measured);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_READ_BANDWIDTH_H_
