#include "launcher/serving_finetune.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/agreement.h"
#include "launcher/train_data.h"
#include "launcher/train_fault.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/serve/log.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/export.h"
#include "runtime/train/lora.h"
#include "runtime/train/optimizer.h"

namespace tessera::launcher {
namespace {

constexpr char kComponent[] = "finetune";
constexpr int kCheckpointsKept = 2;

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
  std::stringstream text;
  text << file.rdbuf();
  return ParseServingFineTuneConfig(text.str(), path);
}

absl::StatusOr<ServingFineTuneConfig> ParseServingFineTuneConfig(const std::string& text,
                                                                 const std::string& path) {
  nlohmann::json object = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  static const char* const kKeys[] = {
      "data",    "adapter",     "output",       "steps", "publish_every", "checkpoint_every",
      "seq_len", "micro_batch", "grad_accum",   "lr",    "warmup",        "schedule",
      "lora_r",  "lora_alpha",  "lora_targets", "seed"};
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
  TESSERA_RETURN_IF_ERROR(Read(object, "checkpoint_every", path, &config.checkpoint_every));
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
  if (config.steps < 1 || config.publish_every < 0 || config.checkpoint_every < 0 ||
      config.seq_len < 2 || config.lora_r < 1 || !(config.lora_alpha > 0) || !(config.lr > 0) ||
      config.warmup < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        ": \"steps\", \"lora_r\", \"lora_alpha\" and \"lr\" must be positive, \"seq_len\" at "
        "least 2, \"publish_every\", \"checkpoint_every\" and \"warmup\" not negative"));
  }
  TESSERA_RETURN_IF_ERROR(train::ParseSchedule(config.schedule).status());
  TESSERA_RETURN_IF_ERROR(train::ParseLoraTargets(config.lora_targets).status());
  return config;
}

ServingFineTune::ServingFineTune(ServingFineTuneConfig config, ModelJob& job,
                                 std::unique_ptr<train::TrainableModel> model,
                                 train::RowStream data)
    : config_(std::move(config)), job_(job), model_(std::move(model)), data_(std::move(data)) {
  Update([&](FineTuneProgress& progress) {
    progress.adapter = config_.adapter;
    progress.steps = config_.steps;
  });
}

void ServingFineTune::Update(const std::function<void(FineTuneProgress&)>& change) {
  absl::MutexLock lock(&board_->mutex);
  change(board_->progress);
}

void ServingFineTune::Stop() {
  if (job_.layout->dp_size() > 1) {
    stop_requested_ = true;  // said at the next meeting, which stops every group
    return;
  }
  Update([](FineTuneProgress& progress) {
    if (progress.state == "running") progress.state = "stopped";
  });
}

ServingFineTune::~ServingFineTune() {
  if (job_.layout->dp_size() == 1 || job_.layout->tp_rank() != 0 || !trainer_.has_value() ||
      meetings_over_ || met_ || trainer_->steps_done() >= config_.steps) {
    return;
  }
  stop_requested_ = true;
  if (meeting_ == nullptr && !StartMeeting().ok()) return;
  (void)meeting_->Wait();
}

absl::Status ServingFineTune::StartMeeting() {
  meeting_sum_ = stop_requested_ ? 1 : 0;
  Tensor sum = Tensor::Wrap(&meeting_sum_, DType::kI64, {1});
  Stream cpu = Stream::Cpu();
  comm::CollectiveBatch batch;
  batch.AllReduce(sum, comm::ReduceOp::kSum);
  TESSERA_ASSIGN_OR_RETURN(meeting_, job_.layout->dp().Start(std::move(batch), cpu));
  return absl::OkStatus();
}

int ServingFineTune::PiecesReady() {
  if (job_.layout->dp_size() == 1 || meetings_over_ || trainer_->steps_done() >= config_.steps) {
    return std::numeric_limits<int>::max();
  }
  if (publish_resumed_) return 1;  // the publish, with the step's first piece
  const int before = trainer_->PiecesBeforeUpdate();
  if (before > 0) return before;
  // The update alone: the pieces after it lead to the next update, which waits for the next
  // meeting (a budget that fits a whole step must not run past it).
  if (met_) return 1;
  if (meeting_ == nullptr) {
    if (absl::Status started = StartMeeting(); !started.ok()) {
      meetings_over_ = true;
      Fail(started);
      return 0;
    }
  }
  absl::StatusOr<bool> done = meeting_->Poll();
  if (!done.ok()) {
    // Another group never came (its deadline): this fine-tune ends here.
    meeting_.reset();
    meetings_over_ = true;
    Fail(absl::Status(
        done.status().code(),
        absl::StrCat("waiting for the other groups before step ", trainer_->steps_done() + 1,
                     "'s update: ", done.status().message())));
    return 0;
  }
  if (!*done) return 0;
  meeting_.reset();
  if (meeting_sum_ > 0) {
    meetings_over_ = true;
    Update([](FineTuneProgress& progress) {
      if (progress.state == "running") progress.state = "stopped";
    });
    return 0;
  }
  met_ = true;
  return 1;
}

int ServingFineTune::PiecesBeforeLeaving() {
  // met_ is set only when the update is the next piece (PiecesReady).
  return job_.layout->dp_size() > 1 && met_ && !meetings_over_ ? 1 : 0;
}

void ServingFineTune::Fail(const absl::Status& status) {
  serve::LogEvent(kComponent, {{"event", "fine-tune failed"},
                               {"adapter", config_.adapter},
                               {"error", std::string(status.message())}});
  Update([&](FineTuneProgress& progress) {
    progress.state = "failed";
    progress.error = std::string(status.message());
  });
}

absl::StatusOr<std::unique_ptr<ServingFineTune>> ServingFineTune::Create(
    const ServingFineTuneConfig& config, ModelJob& job) {
  if (job.device_tp != nullptr) {
    return absl::UnimplementedError("--train-config: fine-tuning runs on the CPU backend for now");
  }
  absl::StatusOr<std::unique_ptr<ServingFineTune>> tune = Prepare(config, job);
  // Before the job's first collective: a rank that failed (its data unreadable, say) fails
  // every rank of every group now, rather than leaving them to wait out a deadline.
  TESSERA_RETURN_IF_ERROR(
      comm::AgreeOnStatus(*job.mpi.world, tune.status(), "to prepare the fine-tune"));
  TESSERA_RETURN_IF_ERROR((*tune)->ResumeIfCheckpointed());
  return tune;
}

absl::StatusOr<std::unique_ptr<ServingFineTune>> ServingFineTune::Prepare(
    const ServingFineTuneConfig& config, ModelJob& job) {
  comm::Layout& layout = *job.layout;
  train::TrainableModelOptions model_options;
  model_options.lora.r = config.lora_r;
  model_options.lora.alpha = config.lora_alpha;
  model_options.lora.seed = static_cast<uint64_t>(config.seed);
  // The serving model's projections are the frozen base (as quantized as it serves them).
  model_options.frozen_base = job.model.get();
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
  // The DP all-reduce runs in the update, on the engine's loop (no thread of its own).
  options.buckets.overlap = false;
  TESSERA_RETURN_IF_ERROR(train::ValidateTrainerOptions(options));
  TESSERA_ASSIGN_OR_RETURN(
      train::Trainer trainer,
      train::Trainer::Create(*tune->model_, layout.dp(), tune->data_, options));
  tune->trainer_.emplace(std::move(trainer));
  return tune;
}

absl::Status ServingFineTune::ResumeIfCheckpointed() {
  comm::Communicator& world = *job_.mpi.world;
  absl::StatusOr<std::string> latest = train::LatestCheckpoint(config_.output);
  if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
  // Every rank must see the same output (one host, or a shared file system): count the ranks
  // that found a checkpoint.
  int64_t found = latest.ok() ? 1 : 0;
  Tensor count = Tensor::Wrap(&found, DType::kI64, {1});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(world.AllReduce(count, comm::ReduceOp::kSum, cpu));
  if (found == 0) return absl::OkStatus();
  if (found != world.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "\"output\" ", config_.output, ": ", found, " of the job's ", world.size(),
        " ranks find a checkpoint there; it must be on a file system that every rank sees"));
  }
  TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(
      world, train::LoadCheckpoint(*latest, *trainer_, job_.layout->tp_rank(), data_.Fingerprint()),
      "to load its part of the fine-tune's checkpoint"));
  const int64_t step = trainer_->steps_done();
  Update([&](FineTuneProgress& progress) {
    progress.steps_done = step;
    progress.resumed_step = step;
  });
  publish_resumed_ = true;
  if (world.rank() == 0) {
    serve::LogEvent(kComponent, {{"event", "resumed"},
                                 {"adapter", config_.adapter},
                                 {"step", absl::StrCat(step, "/", config_.steps)},
                                 {"checkpoint", *latest}});
  }
  return absl::OkStatus();
}

void ServingFineTune::FinishIfDone() {
  if (trainer_->steps_done() < config_.steps) return;
  Update([](FineTuneProgress& progress) {
    if (progress.state == "running") progress.state = "finished";
  });
}

bool ServingFineTune::finished() const {
  absl::MutexLock lock(&board_->mutex);
  return board_->progress.state != "running";
}

absl::Status ServingFineTune::RunPiece() {
  absl::Status status;
  if (publish_resumed_) {
    // The first piece after a resume serves the checkpoint's adapter again (this group's
    // earlier run served it, and the group forgot it when it failed).
    publish_resumed_ = false;
    status = Publish(trainer_->steps_done());
    FinishIfDone();
  }
  if (status.ok() && trainer_->steps_done() < config_.steps) {  // the same on every rank
    if (!trainer_->step_under_way()) {
      InjectTrainFaultBefore(trainer_->steps_done() + 1, job_.mpi.world->rank());
    }
    absl::StatusOr<std::optional<train::StepReport>> piece = trainer_->StepPiece();
    status = piece.status();
    if (status.ok() && piece->has_value()) {
      met_ = false;  // the next update waits for the other groups again
      status = StepDone(**piece);
    }
  }
  if (!status.ok()) Fail(status);
  return status;
}

std::optional<double> ServingFineTune::ExpectedPieceSeconds(int ahead) const {
  return trainer_->ExpectedPieceSeconds(ahead);
}

absl::Status ServingFineTune::StepDone(const train::StepReport& report) {
  Update([&](FineTuneProgress& progress) {
    progress.steps_done = report.step;
    progress.loss = report.loss;
    progress.tokens += report.tokens;
    progress.step_seconds += report.seconds;
  });
  if (job_.mpi.world->rank() == 0) {  // one line a step, whatever the groups
    serve::LogEvent(kComponent, {{"event", "step"},
                                 {"adapter", config_.adapter},
                                 {"step", absl::StrCat(report.step, "/", config_.steps)},
                                 {"loss", absl::StrCat(report.loss)},
                                 {"seconds", absl::StrCat(report.seconds)}});
  }
  const bool last = report.step >= config_.steps;
  const bool publish =
      last || (config_.publish_every > 0 && report.step % config_.publish_every == 0);
  // Before the version it publishes: a resume never serves a version older than one served.
  if (publish || (config_.checkpoint_every > 0 && report.step % config_.checkpoint_every == 0)) {
    TESSERA_RETURN_IF_ERROR(train::SaveCheckpoint(
        config_.output, *trainer_, *job_.mpi.world, job_.layout->tp_rank(), job_.layout->dp_rank(),
        data_.Fingerprint(), kCheckpointsKept, job_.model_dir));
  }
  if (publish) TESSERA_RETURN_IF_ERROR(Publish(report.step));
  FinishIfDone();
  return absl::OkStatus();
}

absl::Status ServingFineTune::Publish(int64_t step) {
  const std::string dir = absl::StrCat(config_.output, "/step-", step);
  // Collective over the job: the first group's TP rank 0 writes the whole adapter (the groups
  // hold the same one) before any step loop goes on, so the plans that load it reach every
  // rank after it is complete.
  absl::Status exported = job_.layout->dp_rank() == 0
                              ? train::ExportPeftAdapter(*model_, job_.model_dir, dir)
                              : absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(
      comm::AgreeOnStatus(*job_.mpi.world, exported, "to export the fine-tune's adapter"));
  if (!publish_) return absl::OkStatus();  // not the leader
  // Served from the next step on; this runs on the engine's loop, which cannot wait for it.
  // The answer may come after the engine dropped this fine-tune: it goes to the board.
  publish_({config_.adapter, dir},
           [board = board_, adapter = config_.adapter, step, dir](absl::Status loaded) {
             serve::LogEvent(kComponent, {{"event", loaded.ok() ? "published" : "publish failed"},
                                          {"adapter", adapter},
                                          {"step", absl::StrCat(step)},
                                          {"dir", dir},
                                          {"error", std::string(loaded.message())}});
             if (!loaded.ok()) return;
             absl::MutexLock lock(&board->mutex);
             board->progress.published_step = step;
             board->progress.published_dir = dir;
           });
  return absl::OkStatus();
}

engine::InterleavedWorkFactory FineTuneControl::Factory() {
  return
      [this](const std::string& spec) -> absl::StatusOr<std::shared_ptr<engine::InterleavedWork>> {
        TESSERA_ASSIGN_OR_RETURN(ServingFineTuneConfig config,
                                 ParseServingFineTuneConfig(spec, "the fine-tune's configuration"));
        TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<ServingFineTune> made,
                                 ServingFineTune::Create(config, job_));
        std::shared_ptr<ServingFineTune> tune = std::move(made);
        if (job_.layout->tp_rank() == 0) {
          tune->set_publisher(
              [this](engine::AdapterSpec adapter, std::function<void(absl::Status)> done) {
                engine_->LoadAdapterAsync(std::move(adapter), std::move(done));
              });
        }
        absl::MutexLock lock(&mutex_);
        board_ = tune->board();
        running_ = tune;
        return std::shared_ptr<engine::InterleavedWork>(tune);
      };
}

absl::Status FineTuneControl::Start(const std::string& config_json, bool job_wide) {
  // Refused here before every rank parses it.
  TESSERA_RETURN_IF_ERROR(ParseServingFineTuneConfig(config_json, "config_json").status());
  if (engine_ == nullptr) return absl::FailedPreconditionError("the group is not serving yet");
  if (job_.layout->dp_size() > 1 && !job_wide) {
    // Every group of the job must start it at once (it is created collectively over the job).
    return absl::FailedPreconditionError(absl::StrCat(
        "this group's job runs ", job_.layout->dp_size(),
        " groups, over which a fine-tune is data-parallel: start it on all of them at once "
        "(the coordinator's StartTraining does), or with the job (tessera worker "
        "--train-config)"));
  }
  return engine_->StartInterleaved(config_json);
}

std::optional<v1::TrainingState> FineTuneControl::State() const {
  std::shared_ptr<FineTuneBoard> board;
  {
    absl::MutexLock lock(&mutex_);
    board = board_;
  }
  if (board == nullptr) return std::nullopt;
  absl::MutexLock lock(&board->mutex);
  const FineTuneProgress& p = board->progress;
  v1::TrainingState state;
  state.set_adapter(p.adapter);
  state.set_state(p.state);
  state.set_steps_done(p.steps_done);
  state.set_steps(p.steps);
  state.set_loss(p.loss);
  state.set_published_step(p.published_step);
  state.set_published_dir(p.published_dir);
  state.set_error(p.error);
  state.set_train_tokens_per_second(p.step_seconds > 0 ? p.tokens / p.step_seconds : 0);
  state.set_resumed_step(p.resumed_step);
  return state;
}

absl::Status FineTuneControl::Stop() {
  std::shared_ptr<ServingFineTune> running;
  {
    absl::MutexLock lock(&mutex_);
    running = running_.lock();
  }
  if (running == nullptr || running->finished()) {
    return absl::NotFoundError("no fine-tune is running in this group");
  }
  running->Stop();
  return absl::OkStatus();
}

}  // namespace tessera::launcher
