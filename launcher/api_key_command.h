#ifndef TESSERA_LAUNCHER_API_KEY_COMMAND_H_
#define TESSERA_LAUNCHER_API_KEY_COMMAND_H_

// `tessera api-key --tenant NAME --file KEYS`: makes a random API key for a tenant, appends its
// hash to the key file a coordinator reads (--api-keys; it notices the change), and prints the
// key, which is stored nowhere else.

#include <string>
#include <vector>

namespace tessera::launcher {

int RunApiKey(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_API_KEY_COMMAND_H_
