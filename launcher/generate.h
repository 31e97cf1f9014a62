#ifndef TESSERA_LAUNCHER_GENERATE_H_
#define TESSERA_LAUNCHER_GENERATE_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera generate`: text from a Hugging Face model directory (or the built-in default),
// tensor-parallel across the ranks mpirun starts. Returns the process exit code.
int RunGenerate(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_GENERATE_H_
