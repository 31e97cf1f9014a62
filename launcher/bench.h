#ifndef TESSERA_LAUNCHER_BENCH_H_
#define TESSERA_LAUNCHER_BENCH_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera bench <what>`: throughput benchmarks that print the figure, the limit it is
// measured against and the ratio. Today: `generate` (prefill and decode at batch 1).
int RunBench(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_BENCH_H_
