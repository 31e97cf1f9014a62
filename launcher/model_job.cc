#include "launcher/model_job.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"

namespace tessera::launcher {

absl::StatusOr<std::optional<DType>> ParseDTypeFlag(const std::string& text) {
  if (text == "auto") return std::optional<DType>();
  if (text == "f32") return std::optional<DType>(DType::kF32);
  if (text == "bf16") return std::optional<DType>(DType::kBF16);
  return absl::InvalidArgumentError(absl::StrCat("--dtype: '", text, "' is not auto, f32 or bf16"));
}

absl::StatusOr<ModelJob> StartModelJob(const ModelJobOptions& options, int* argc, char*** argv) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<DType> dtype, ParseDTypeFlag(options.dtype));
  ModelJob job;
  TESSERA_ASSIGN_OR_RETURN(job.mpi, StartMpiJob(argc, argv, options.timeout, options.validate));
  comm::MpiCommunicator& world = *job.mpi.world;
  TESSERA_ASSIGN_OR_RETURN(comm::Topology topology, comm::Topology::Discover(world));
  job.topology = std::make_unique<comm::Topology>(std::move(topology));
  comm::LayoutOptions layout_options{options.tp == 0 ? world.size() : options.tp,
                                     options.allow_cross_node_tp};
  TESSERA_ASSIGN_OR_RETURN(comm::Layout layout,
                           comm::Layout::Create(world, *job.topology, layout_options));
  job.layout = std::make_unique<comm::Layout>(std::move(layout));

  job.model_dir = options.model_dir;
  if (job.model_dir.empty()) {
    TESSERA_ASSIGN_OR_RETURN(job.model_dir, model::EnsureDefaultModel());
    if (world.rank() == 0) {
      std::fprintf(stderr,
                   "tessera: no --model given: using the built-in default %s (tiny, RANDOM "
                   "weights: the text is meaningless) at %s\n",
                   model::kDefaultModelName, job.model_dir.c_str());
    }
  }
  if (!std::filesystem::is_directory(job.model_dir)) {
    return absl::NotFoundError(absl::StrCat("--model: ", job.model_dir, " is not a directory"));
  }
  model::LoadOptions load;
  load.dtype = dtype;
  if (world.rank() == 0 && isatty(fileno(stderr))) {
    load.progress = model::TerminalProgress(stderr, "loading");
  }
  // The tokenizer first: it is quick to read and a missing one should not wait for weights.
  TESSERA_ASSIGN_OR_RETURN(job.tokenizer,
                           tokenizer::Tokenizer::FromFile(job.model_dir + "/tokenizer.json"));
  TESSERA_ASSIGN_OR_RETURN(job.model,
                           model::Transformer::Load(job.model_dir, job.layout->tp(), load));
  return job;
}

}  // namespace tessera::launcher
