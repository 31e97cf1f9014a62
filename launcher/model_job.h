#ifndef TESSERA_LAUNCHER_MODEL_JOB_H_
#define TESSERA_LAUNCHER_MODEL_JOB_H_

// What every subcommand that runs a model does first: MPI, topology and the TP x DP layout,
// then the model directory (or the built-in default), its tokenizer and this rank's shard.

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "launcher/process.h"
#include "runtime/core/dtype.h"
#include "runtime/model/transformer.h"
#include "runtime/tokenizer/tokenizer.h"

namespace tessera::launcher {

// "auto" -> nullopt (as stored), "f32", "bf16". INVALID_ARGUMENT naming --dtype otherwise.
absl::StatusOr<std::optional<DType>> ParseDTypeFlag(const std::string& text);

struct ModelJobOptions {
  std::string model_dir;  // empty: the built-in default
  std::string dtype = "auto";
  int tp = 0;             // 0: every rank in one group
  bool allow_cross_node_tp = false;
  absl::Duration timeout = absl::Minutes(5);
  bool validate = false;
};

struct ModelJob {
  MpiJob mpi;
  std::unique_ptr<comm::Topology> topology;
  std::unique_ptr<comm::Layout> layout;
  std::string model_dir;  // the directory loaded
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<model::Transformer> model;
};

// Starts MPI and loads the model on every rank (collective). World rank 0 says which model
// it uses and shows loading progress on a terminal.
absl::StatusOr<ModelJob> StartModelJob(const ModelJobOptions& options, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_MODEL_JOB_H_
