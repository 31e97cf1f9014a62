#include "launcher/bench_models.h"

#include <cstdio>
#include <filesystem>

#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"
#include "runtime/model/gguf_model.h"

namespace tessera::launcher {

absl::StatusOr<BenchModel> BenchModelOrDefault(const std::string& model_flag) {
  if (!model_flag.empty()) {
    TESSERA_ASSIGN_OR_RETURN(std::string dir, model::ResolveModelPath(model_flag));
    return BenchModel{model::ModelName(model_flag), dir};
  }
  TESSERA_ASSIGN_OR_RETURN(std::string tiny, model::EnsureDefaultModel());
  return BenchModel{"default (random, f32)", tiny};
}

absl::StatusOr<std::vector<BenchModel>> BenchModels(const std::string& model_flag, bool announce) {
  TESSERA_ASSIGN_OR_RETURN(BenchModel first, BenchModelOrDefault(model_flag));
  std::vector<BenchModel> models = {first};
  if (!model_flag.empty()) return models;
  if (announce) std::fprintf(stderr, "preparing the ~0.5B random Llama (bf16)...\n");
  TESSERA_ASSIGN_OR_RETURN(
      std::string big,
      model::EnsureCachedModel("tessera-llama-0.5b-random-v1", [](const std::string& dir) {
        return model::WriteRandomLlama(dir, model::BenchModelShape());
      }));
  models.push_back({"llama-0.5b (random, bf16)", big});
  return models;
}

}  // namespace tessera::launcher
