#ifndef TESSERA_LAUNCHER_PERPLEXITY_H_
#define TESSERA_LAUNCHER_PERPLEXITY_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera perplexity`: a model's perplexity on a text file, tensor-parallel across the ranks
// mpirun starts, with the weight and KV-cache formats `generate` takes (--quantize,
// --kv-cache-dtype), to measure what each costs in quality. Returns the process exit code.
int RunPerplexity(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_PERPLEXITY_H_
