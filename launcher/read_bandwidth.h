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
// of the slowest.

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"

namespace tessera::launcher {

// The last-level cache, bytes: the largest of what Linux sysfs (per cache instance) and
// sysconf (CPUID: on AMD, the package's L3) say, else 32 MiB. An upper figure: a buffer
// several times it is not served from cache, even in a virtual machine whose sysfs shows
// less cache than its cores reach.
int64_t LastLevelCacheBytes();

struct ReadBandwidth {
  double bytes_per_second = 0;        // best round: the bytes all readers read / its seconds
  int threads = 0;                    // readers reading at once (every rank's, for a node)
  int ranks = 1;                      // processes the readers are spread over
  int64_t bytes_per_thread = 0;       // each reader's buffer
  int passes = 0;                     // times each reader reads its buffer in a round
  std::vector<double> round_seconds;  // every timed round, warm-up left out
  kernels::CpuVector path = kernels::CpuVector::kPortable;  // width of the loads
};

// This process's part, independent of MPI: `threads` std::threads each read their own
// buffer; the calling thread only times them. `before_round`, when set, runs on the calling
// thread before each round (the warm-up too) while the readers wait: a barrier across
// processes that must read at the same time; `processes` of them share the node and its
// cache, and together read several times the cache. About a second.
ReadBandwidth MeasureReadBandwidth(int threads, kernels::CpuVector path,
                                   const std::function<void()>& before_round = {},
                                   int processes = 1);

// The node's figure: every rank of `node` (all on one host) runs MeasureReadBandwidth with
// kernels::CpuKernelThreads() threads on kernels::CpuVectorPath(), rounds aligned by
// MPI_Barrier; a round's figure is every rank's bytes over the slowest rank's seconds.
// Collective over `node`; every rank gets the same result.
ReadBandwidth MeasureNodeReadBandwidth(MPI_Comm node);

// How the figure was measured, one line without a newline.
std::string DescribeReadBandwidth(const ReadBandwidth& measured);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_READ_BANDWIDTH_H_
