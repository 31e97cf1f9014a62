#ifndef TESSERA_LAUNCHER_COMM_BENCH_H_
#define TESSERA_LAUNCHER_COMM_BENCH_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera comm-bench`: collective bandwidth in the manner of nccl-tests. Run under mpirun;
// returns the process exit code.
int RunCommBench(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_COMM_BENCH_H_
