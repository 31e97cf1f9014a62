#include "runtime/train/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/agreement.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/json_file.h"
#include "runtime/model/safetensors.h"

namespace tessera::train {
namespace {

namespace fs = std::filesystem;

constexpr char kStatePath[] = "trainer_state.json";
// What RowStream::Fingerprint hashes: 2 since it hashes each example's hash (so that ranks
// reading shares of the data agree on it); checkpoints without the field hashed the tokens.
constexpr int kDataFingerprintVersion = 2;

std::string StepName(int64_t step) { return absl::StrFormat("step-%08d", step); }

std::string ShardFile(absl::string_view kind, int tp_rank, int tp) {
  return absl::StrCat(kind, "-tp", tp_rank, "-of-", tp, ".safetensors");
}

absl::Status IoError(const std::string& what, const std::error_code& error) {
  return absl::InternalError(absl::StrCat(what, ": ", error.message()));
}

// Writes `text` to `path` through a temporary file and a rename.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temporary));
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) return IoError(absl::StrCat("cannot rename ", temporary, " to ", path), error);
  return absl::OkStatus();
}

nlohmann::json ModelSummary(const TrainableModel& model) {
  const model::ModelConfig& config = model.config();
  const LoraOptions& lora = model.options().lora;
  nlohmann::json adapters = nullptr;
  if (lora.enabled()) {
    adapters = {{"r", lora.r}, {"alpha", lora.alpha}, {"targets", lora.targets}};
  }
  return {{"lora", adapters},
          {"architecture", std::string(model::ArchitectureName(config.architecture))},
          {"hidden_size", config.hidden_size},
          {"num_hidden_layers", config.num_hidden_layers},
          {"num_attention_heads", config.num_attention_heads},
          {"num_key_value_heads", config.num_key_value_heads},
          {"intermediate_size", config.intermediate_size},
          {"vocab_size", config.vocab_size}};
}

// Checkpoints under `root`, oldest first.
std::vector<std::string> CompleteCheckpoints(const fs::path& root) {
  std::vector<std::string> names;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, error)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step-", 0) == 0 &&
        name.find(".tmp") == std::string::npos && fs::exists(entry.path() / kStatePath)) {
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

absl::Status SaveCheckpoint(const std::string& output, Trainer& trainer, comm::Communicator& world,
                            int tp_rank, int dp_rank, uint64_t data_fingerprint, int keep,
                            const std::string& base_model) {
  TrainableModel& model = trainer.model();
  const int tp = model.plan().tp;
  const fs::path root = fs::path(output) / "checkpoints";
  const std::string name = StepName(trainer.steps_done());
  const fs::path temporary = root / (name + ".tmp");
  const fs::path final_dir = root / name;
  absl::Status prepared = absl::OkStatus();
  if (world.rank() == 0) {
    std::error_code error;
    fs::create_directories(root, error);
    if (!error) fs::remove_all(temporary, error);  // what an interrupted save left
    if (!error) fs::create_directories(temporary, error);
    if (error) prepared = IoError(absl::StrCat("cannot prepare ", temporary.string()), error);
  }
  // Every rank learns whether rank 0 could prepare the directory before writing into it.
  TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(world, prepared, "to prepare the checkpoint folder"));

  // Replica 0 writes the whole moments; with ZeRO every replica holds a share of them, which
  // this gathers (collective over DP).
  absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> moments =
      trainer.OptimizerState(/*materialize=*/dp_rank == 0);
  absl::Status written = moments.status();
  if (written.ok() && dp_rank == 0) {
    std::vector<std::pair<std::string, Tensor>> values;
    // What training changes: the whole model, or the adapters of a LoRA run (whose base is
    // read from the model directory again on resume).
    for (const Parameter& p : model.parameters().all()) {
      if (p.trainable) values.emplace_back(p.name, p.value);
    }
    written = model::WriteSafetensors((temporary / ShardFile("model", tp_rank, tp)).string(),
                                      values, {{"format", "pt"}});
    if (written.ok()) {
      written = model::WriteSafetensors((temporary / ShardFile("optimizer", tp_rank, tp)).string(),
                                        *moments, {{"steps", absl::StrCat(trainer.steps_done())}});
    }
  }
  TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(world, written, "to write its checkpoint part"));

  absl::Status published = absl::OkStatus();
  if (world.rank() == 0) {
    nlohmann::json state = {{"step", trainer.steps_done()},
                            {"epoch", trainer.position().epoch},
                            {"row", trainer.position().row},
                            {"data_fingerprint", absl::StrCat(data_fingerprint)},
                            {"data_fingerprint_version", kDataFingerprintVersion},
                            {"tp", tp},
                            {"dp", world.size() / tp},
                            {"model", ModelSummary(model)},
                            {"base_model", base_model}};
    published = WriteFileAtomically((temporary / kStatePath).string(), state.dump(2) + "\n");
    std::error_code error;
    if (published.ok()) {
      fs::remove_all(final_dir, error);
      fs::rename(temporary, final_dir, error);
      if (error) published = IoError(absl::StrCat("cannot rename ", temporary.string()), error);
    }
    if (published.ok()) published = WriteFileAtomically((root / "latest").string(), name + "\n");
    if (published.ok() && keep > 0) {
      std::vector<std::string> all = CompleteCheckpoints(root);
      for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(root / all[i], error);
    }
  }
  return comm::AgreeOnStatus(world, published, "to publish the checkpoint");
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& output) {
  const fs::path given(output);
  if (fs::exists(given / kStatePath)) return given.string();
  const fs::path root = given / "checkpoints";
  absl::StatusOr<std::string> latest = model::ReadTextFile((root / "latest").string());
  if (latest.ok()) {
    std::string name = *latest;
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    if (fs::exists(root / name / kStatePath)) return (root / name).string();
  }
  // `latest` missing or naming a removed folder: the newest complete one.
  std::vector<std::string> all = CompleteCheckpoints(root);
  if (all.empty()) {
    return absl::NotFoundError(absl::StrCat("no complete checkpoint in ", root.string(), " (nor a ",
                                            kStatePath, " in ", output, ")"));
  }
  return (root / all.back()).string();
}

absl::StatusOr<CheckpointSummary> ReadCheckpointSummary(const std::string& checkpoint) {
  const std::string where = (fs::path(checkpoint) / kStatePath).string();
  TESSERA_ASSIGN_OR_RETURN(std::string text, model::ReadTextFile(where));
  TESSERA_ASSIGN_OR_RETURN(nlohmann::json state, model::ParseJson(text, where));
  CheckpointSummary summary;
  try {
    summary.step = state.at("step").get<int64_t>();
    summary.tp = state.at("tp").get<int>();
    summary.base_model = state.value("base_model", "");
    const nlohmann::json& lora = state.at("model").at("lora");
    if (!lora.is_null()) {
      summary.lora.r = lora.at("r").get<int>();
      summary.lora.alpha = lora.at("alpha").get<double>();
      summary.lora.targets = lora.at("targets").get<std::vector<std::string>>();
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(where, ": ", e.what()));
  }
  return summary;
}

absl::Status LoadCheckpointWeights(const std::string& checkpoint, TrainableModel& model,
                                   int tp_rank) {
  const int tp = model.plan().tp;
  const fs::path dir(checkpoint);
  const std::string where = (dir / kStatePath).string();
  TESSERA_ASSIGN_OR_RETURN(std::string text, model::ReadTextFile(where));
  TESSERA_ASSIGN_OR_RETURN(nlohmann::json state, model::ParseJson(text, where));
  try {
    const nlohmann::json expected = ModelSummary(model);
    if (state.at("model") != expected) {
      return absl::FailedPreconditionError(absl::StrCat(where, ": the checkpoint is of the model ",
                                                        state.at("model").dump(),
                                                        ", this run's is ", expected.dump()));
    }
    if (state.at("tp").get<int>() != tp) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": the checkpoint holds shards for tensor parallelism ",
                       state.at("tp").get<int>(), "; this run has --tp ", tp,
                       " (resume at the same --tp; the data-parallel degree may change)"));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(where, ": ", e.what()));
  }
  const std::string model_file = (dir / ShardFile("model", tp_rank, tp)).string();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::SafetensorsFile> values,
                           model::SafetensorsFile::Open(model_file));
  Stream cpu = Stream::Cpu();
  for (Parameter& p : model.parameters().all()) {
    if (!p.trainable) continue;
    TESSERA_ASSIGN_OR_RETURN(Tensor saved, values->Read(p.name));
    if (saved.shape() != p.value.shape() || saved.dtype() != DType::kF32) {
      return absl::FailedPreconditionError(absl::StrCat(model_file, ": ", p.name, " is ",
                                                        saved.DebugString(), ", this model's ",
                                                        p.value.DebugString()));
    }
    TESSERA_RETURN_IF_ERROR(p.value.CopyFrom(saved, cpu));
  }
  return absl::OkStatus();
}

absl::Status LoadCheckpoint(const std::string& checkpoint, Trainer& trainer, int tp_rank,
                            uint64_t data_fingerprint) {
  TESSERA_RETURN_IF_ERROR(LoadCheckpointWeights(checkpoint, trainer.model(), tp_rank));
  const int tp = trainer.model().plan().tp;
  const fs::path dir(checkpoint);
  const std::string where = (dir / kStatePath).string();
  TESSERA_ASSIGN_OR_RETURN(std::string text, model::ReadTextFile(where));
  TESSERA_ASSIGN_OR_RETURN(nlohmann::json state, model::ParseJson(text, where));
  try {
    const int fingerprint_version = state.value("data_fingerprint_version", 1);
    if (fingerprint_version != kDataFingerprintVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          where, ": the checkpoint's data fingerprint is version ", fingerprint_version,
          ", this Tessera's is version ", kDataFingerprintVersion,
          " (they hash the data differently), so it cannot check that --data and the batching "
          "options are those the checkpoint was trained on. Resume it with the Tessera version "
          "that wrote it, or export its weights (tessera train export CHECKPOINT --output DIR, "
          "with --merge for LoRA) and start a new run from them with --model DIR (the optimizer "
          "state and the data position start afresh)"));
    }
    if (state.at("data_fingerprint").get<std::string>() != absl::StrCat(data_fingerprint)) {
      return absl::FailedPreconditionError(absl::StrCat(
          where,
          ": the checkpoint was trained on other data or batching options (--data, "
          "--seq-len, --seed, --no-packing differ): resuming would not continue the run"));
    }
    const std::string optimizer_file = (dir / ShardFile("optimizer", tp_rank, tp)).string();
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::SafetensorsFile> moments,
                             model::SafetensorsFile::Open(optimizer_file));
    std::vector<std::pair<std::string, Tensor>> saved_state;
    for (const model::TensorInfo& info : moments->tensors()) {
      TESSERA_ASSIGN_OR_RETURN(Tensor t, moments->Read(info.name));
      saved_state.emplace_back(info.name, std::move(t));
    }
    absl::Status restored = trainer.RestoreOptimizer(saved_state, state.at("step").get<int64_t>());
    if (!restored.ok()) {
      return absl::Status(restored.code(), absl::StrCat(optimizer_file, ": ", restored.message()));
    }
    trainer.SetPosition({state.at("epoch").get<int64_t>(), state.at("row").get<int64_t>()});
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(where, ": ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace tessera::train
