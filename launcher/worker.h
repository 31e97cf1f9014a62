#ifndef TESSERA_LAUNCHER_WORKER_H_
#define TESSERA_LAUNCHER_WORKER_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera worker`: one process per rank under mpirun. Every TP group runs a serving engine;
// its leader serves the Worker gRPC API, exposes metrics and registers with the coordinator.
// Returns the process exit code.
int RunWorker(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_WORKER_H_
