#include "launcher/serving_finetune.h"

#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "launcher/train_data.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/serve/log.h"
#include "runtime/train/export.h"
#include "runtime/train/lora.h"
#include "runtime/train/optimizer.h"

namespace tessera::launcher {
namespace {

constexpr char kComponent[] = "finetune";

// Reads `key` of `object` into `*value` when present; INVALID_ARGUMENT naming the file and
// key when it has another type.
template <typename T>
absl::Status Read(const nlohmann::json& object, const char* key, const std::string& path,
                  T* value) {
  auto it = object.find(key);
  if (it == object.end()) return absl::OkStatus();
  try {
    *value = it->get<T>();
  } catch (const nlohmann::json::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"", key, "\" has the wrong type (", it->dump(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ServingFineTuneConfig> ReadServingFineTuneConfig(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("--train-config: cannot read ", path));
  nlohmann::json object = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  static const char* const kKeys[] = {
      "data",     "adapter",     "output",     "steps",        "publish_every",
      "seq_len",  "micro_batch", "grad_accum", "lr",           "warmup",
      "schedule", "lora_r",      "lora_alpha", "lora_targets", "seed"};
  for (const auto& [key, value] : object.items()) {
    if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key \"", key, "\""));
    }
  }
  ServingFineTuneConfig config;
  TESSERA_RETURN_IF_ERROR(Read(object, "data", path, &config.data));
  TESSERA_RETURN_IF_ERROR(Read(object, "adapter", path, &config.adapter));
  TESSERA_RETURN_IF_ERROR(Read(object, "output", path, &config.output));
  TESSERA_RETURN_IF_ERROR(Read(object, "steps", path, &config.steps));
  TESSERA_RETURN_IF_ERROR(Read(object, "publish_every", path, &config.publish_every));
  TESSERA_RETURN_IF_ERROR(Read(object, "seq_len", path, &config.seq_len));
  TESSERA_RETURN_IF_ERROR(Read(object, "micro_batch", path, &config.micro_batch));
  TESSERA_RETURN_IF_ERROR(Read(object, "grad_accum", path, &config.grad_accum));
  TESSERA_RETURN_IF_ERROR(Read(object, "lr", path, &config.lr));
  TESSERA_RETURN_IF_ERROR(Read(object, "warmup", path, &config.warmup));
  TESSERA_RETURN_IF_ERROR(Read(object, "schedule", path, &config.schedule));
  TESSERA_RETURN_IF_ERROR(Read(object, "lora_r", path, &config.lora_r));
  TESSERA_RETURN_IF_ERROR(Read(object, "lora_alpha", path, &config.lora_alpha));
  TESSERA_RETURN_IF_ERROR(Read(object, "lora_targets", path, &config.lora_targets));
  TESSERA_RETURN_IF_ERROR(Read(object, "seed", path, &config.seed));
  for (const auto& [key, value] : {std::pair<const char*, const std::string*>{"data", &config.data},
                                   {"adapter", &config.adapter},
                                   {"output", &config.output}}) {
    if (value->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is required"));
    }
  }
  TESSERA_RETURN_IF_ERROR(engine::CheckAdapterName(config.adapter, path + ": \"adapter\""));
  if (config.steps < 1 || config.publish_every < 0 || config.seq_len < 2 || config.lora_r < 1 ||
      !(config.lora_alpha > 0) || !(config.lr > 0) || config.warmup < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path,
                     ": \"steps\", \"lora_r\", \"lora_alpha\" and \"lr\" must be positive, "
                     "\"seq_len\" at least 2, \"publish_every\" and \"warmup\" not negative"));
  }
  TESSERA_RETURN_IF_ERROR(train::ParseSchedule(config.schedule).status());
  TESSERA_RETURN_IF_ERROR(train::ParseLoraTargets(config.lora_targets).status());
  return config;
}

ServingFineTune::ServingFineTune(ServingFineTuneConfig config, ModelJob& job,
                                 std::unique_ptr<train::TrainableModel> model,
                                 train::RowStream data)
    : config_(std::move(config)), job_(job), model_(std::move(model)), data_(std::move(data)) {
  progress_.steps = config_.steps;
}

absl::StatusOr<std::unique_ptr<ServingFineTune>> ServingFineTune::Create(
    const ServingFineTuneConfig& config, ModelJob& job,
    const std::optional<model::WeightQuantization>& quantize) {
  comm::Layout& layout = *job.layout;
  if (layout.dp_size() != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "--train-config: the job has ", layout.dp_size(),
        " serving groups; a fine-tune runs inside one (give each group a job of its own, as "
        "tessera serve does, and the config to one of them)"));
  }
  if (job.device_tp != nullptr) {
    return absl::UnimplementedError("--train-config: fine-tuning runs on the CPU backend for now");
  }
  train::TrainableModelOptions model_options;
  model_options.lora.r = config.lora_r;
  model_options.lora.alpha = config.lora_alpha;
  model_options.lora.seed = static_cast<uint64_t>(config.seed);
  model_options.quantize = quantize;
  TESSERA_ASSIGN_OR_RETURN(model_options.lora.targets,
                           train::ParseLoraTargets(config.lora_targets));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<train::TrainableModel> model,
                           train::TrainableModel::Load(job.model_dir, layout.tp(), model_options));
  TESSERA_ASSIGN_OR_RETURN(
      const train::ExampleOptions examples,
      ExampleOptionsFor("stop", model->config(), *job.tokenizer, job.tokenizer_config));
  train::BatchOptions batching;
  batching.seq_len = config.seq_len;
  batching.seed = static_cast<uint64_t>(config.seed);
  TESSERA_ASSIGN_OR_RETURN(
      train::RowStream data,
      ReadTrainRows(config.data, batching, examples, *job.tokenizer, layout.tp(),
                    layout.tp_rank() == 0 ? "tessera worker: fine-tune" : ""));
  auto tune = std::unique_ptr<ServingFineTune>(
      new ServingFineTune(config, job, std::move(model), std::move(data)));
  train::TrainerOptions options;
  options.micro_batch = config.micro_batch;
  options.grad_accum = config.grad_accum;
  options.lr = config.lr;
  TESSERA_ASSIGN_OR_RETURN(train::Schedule schedule, train::ParseSchedule(config.schedule));
  options.schedule = {schedule, config.warmup, config.steps};
  TESSERA_RETURN_IF_ERROR(train::ValidateTrainerOptions(options));
  TESSERA_ASSIGN_OR_RETURN(
      train::Trainer trainer,
      train::Trainer::Create(*tune->model_, layout.dp(), tune->data_, options));
  tune->trainer_.emplace(std::move(trainer));
  return tune;
}

bool ServingFineTune::finished() const {
  absl::MutexLock lock(&mutex_);
  return !progress_.error.ok() || progress_.steps_done >= progress_.steps;
}

FineTuneProgress ServingFineTune::progress() const {
  absl::MutexLock lock(&mutex_);
  return progress_;
}

absl::Status ServingFineTune::RunUnit() {
  absl::Status stepped = Step();
  if (!stepped.ok()) {
    serve::LogEvent(kComponent, {{"event", "fine-tune failed"},
                                 {"adapter", config_.adapter},
                                 {"error", std::string(stepped.message())}});
    absl::MutexLock lock(&mutex_);
    progress_.error = stepped;
  }
  return stepped;
}

absl::Status ServingFineTune::Step() {
  TESSERA_ASSIGN_OR_RETURN(train::StepReport report, trainer_->Step());
  {
    absl::MutexLock lock(&mutex_);
    progress_.steps_done = report.step;
    progress_.loss = report.loss;
  }
  if (job_.layout->tp_rank() == 0) {
    serve::LogEvent(kComponent, {{"event", "step"},
                                 {"adapter", config_.adapter},
                                 {"step", absl::StrCat(report.step, "/", config_.steps)},
                                 {"loss", absl::StrCat(report.loss)},
                                 {"seconds", absl::StrCat(report.seconds)}});
  }
  const bool last = report.step >= config_.steps;
  if (last || (config_.publish_every > 0 && report.step % config_.publish_every == 0)) {
    TESSERA_RETURN_IF_ERROR(Publish(report.step));
  }
  return absl::OkStatus();
}

absl::Status ServingFineTune::Publish(int64_t step) {
  const std::string dir = absl::StrCat(config_.output, "/step-", step);
  // Collective: TP rank 0 writes the whole adapter before its step loop goes on, so the plan
  // that loads it reaches every rank after it is complete.
  TESSERA_RETURN_IF_ERROR(train::ExportPeftAdapter(*model_, job_.model_dir, dir));
  if (engine_ == nullptr) return absl::OkStatus();  // not the leader
  // Served from the next step on; this runs on the engine's loop, which cannot wait for it.
  engine_->LoadAdapterAsync({config_.adapter, dir}, [this, step, dir](absl::Status loaded) {
    serve::LogEvent(kComponent, {{"event", loaded.ok() ? "published" : "publish failed"},
                                 {"adapter", config_.adapter},
                                 {"step", absl::StrCat(step)},
                                 {"dir", dir},
                                 {"error", std::string(loaded.message())}});
    if (!loaded.ok()) return;
    absl::MutexLock lock(&mutex_);
    progress_.published_step = step;
    progress_.published_dir = dir;
  });
  return absl::OkStatus();
}

}  // namespace tessera::launcher
