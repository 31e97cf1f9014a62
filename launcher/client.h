#ifndef TESSERA_LAUNCHER_CLIENT_H_
#define TESSERA_LAUNCHER_CLIENT_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera client health|generate|chat|batch|adapters`: the client API from the command line.
// Exit code.
int RunClient(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_CLIENT_H_
