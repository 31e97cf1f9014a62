#ifndef TESSERA_LAUNCHER_BENCH_MODELS_H_
#define TESSERA_LAUNCHER_BENCH_MODELS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::launcher {

struct BenchModel {
  std::string name;  // the table's first column
  std::string dir;   // a Hugging Face model directory
};

// The models a benchmark runs: the directory of --model (named by its last part), or without
// it the built-in default and the ~0.5B-parameter random Llama in bf16 (made and cached on
// first use, about 1 GB; `announce` says so on stderr first).
absl::StatusOr<std::vector<BenchModel>> BenchModels(const std::string& model_flag, bool announce);

// The one model of a benchmark too slow for the ~0.5B one on a few cores: the directory of
// --model (named as above), or without it the built-in default.
absl::StatusOr<BenchModel> BenchModelOrDefault(const std::string& model_flag);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_BENCH_MODELS_H_
