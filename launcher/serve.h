#ifndef TESSERA_LAUNCHER_SERVE_H_
#define TESSERA_LAUNCHER_SERVE_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera coordinator`: the coordinator alone (workers register with it). Exit code.
int RunCoordinator(const std::vector<std::string>& args, int* argc, char*** argv);

// `tessera serve`: one machine: the coordinator in this process and `mpirun ... tessera
// worker` as a child; waits until every group is healthy, prints the endpoint, and shuts
// everything down on Ctrl-C. Exit code.
int RunServe(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SERVE_H_
