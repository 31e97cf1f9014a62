#ifndef TESSERA_LAUNCHER_FMA_PEAK_H_
#define TESSERA_LAUNCHER_FMA_PEAK_H_

// The limit the CPU benchmarks hold compute against: the fused multiply-add rate of this
// machine on the vector path the kernels take (kernels/cpu/cpu_features.h).

#include "kernels/cpu/cpu_features.h"

namespace tessera::launcher {

// FLOP/s (an FMA counts two) of `threads` threads running independent FMA chains at once
// on `path`; 0 for the portable path (no peak to hold it against). Best of five rounds of
// about 0.1 s each.
double MeasureFmaPeak(int threads, kernels::CpuVector path);

// The peak of every rank of the MPI job at once, each with its kernel threads on its vector
// path, summed: the limit of the job's compute. Collective over MPI_COMM_WORLD.
double MeasureJobFmaPeak();

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_FMA_PEAK_H_
