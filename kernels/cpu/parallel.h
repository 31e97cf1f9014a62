#ifndef TESSERA_KERNELS_CPU_PARALLEL_H_
#define TESSERA_KERNELS_CPU_PARALLEL_H_

// A small pool of threads for CPU kernels whose work splits into independent items
// (attention over sequences and heads). Every item is computed by exactly one thread with
// the same code, so results do not depend on how many threads there are.
//
// Threads per process: TESSERA_CPU_THREADS when set, else the cores of the process's
// affinity mask divided among the local ranks that share them, at least one; pinned one a
// core when the mask is the rank's alone (kernels/cpu/cpu_affinity.h has the rule).

#include <cstdint>
#include <functional>

namespace tessera::kernels {

int CpuKernelThreads();

// Calls fn(begin, end) on contiguous chunks of `grain` items (the last may be shorter)
// covering [0, items), from the pool and the calling thread, each chunk taken by whichever
// thread is free first; returns when all are done. grain <= 0 picks about four chunks a
// thread. Runs inline, as one call, when there are fewer than 2 * min_items_per_thread
// items (waking threads costs more than small work).
void ParallelFor(int64_t items, int64_t min_items_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn, int64_t grain = 0);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_PARALLEL_H_
