#ifndef TESSERA_LAUNCHER_SERVING_FINETUNE_H_
#define TESSERA_LAUNCHER_SERVING_FINETUNE_H_

// A LoRA fine-tune inside a serving group (`tessera worker --train-config FILE`, or the
// coordinator's StartTraining): the group's ranks, on its tensor-parallel communicator, run
// the trainer's optimizer steps a piece at a time between their serving steps (the engine
// interleaves them: engine/interleaved_work.h), and every `publish_every` steps the adapter
// is exported and served under its name as a new version (requests already running finish
// on the version they started with).
//
// In a worker job of several groups (`tessera worker --np 4 --tp 2 --train-config FILE`, or
// the coordinator's StartTraining, which it sends to every group of the job at once) the
// fine-tune is data-parallel over them, as `tessera train` is over its replicas: each group
// takes its share of a step's rows and the adapter's gradients are summed over the job's DP
// communicator in the step's update. The groups' step loops run apart, so before the update
// each group's leader waits (without holding up its serving: the engine plans no piece
// meanwhile) until every group has reached it; the update, checkpoints and the export of a
// published version then run as one collective step over the job, and every group serves
// the version. Stopping one group stops them all, at that meeting point.
//
// The frozen base is the serving model's own projections (TrainableModelOptions::frozen_base:
// shared, not copied, as quantized as they are served); the trainer keeps its own f32 copy of
// the rest (the embedding, the LM head, the norms).
//
// The configuration file is JSON:
//   {"data": "pairs.jsonl", "adapter": "tuned", "output": "runs/tuned", "steps": 60,
//    "publish_every": 20, "checkpoint_every": 0, "seq_len": 64, "micro_batch": 4,
//    "grad_accum": 1, "lr": 1e-2, "warmup": 0, "schedule": "cosine", "lora_r": 8,
//    "lora_alpha": 16, "lora_targets": "q_proj,v_proj", "seed": 1}
// `data` (a JSONL file as `tessera train --data` reads), `adapter` and `output` are required;
// the rest default as `tessera train`'s flags do (publish_every 0: at the end only). Published
// versions are OUTPUT/step-N, PEFT adapter directories.
//
// Checkpoints (runtime/train/checkpoint.h, the newest two kept) go to OUTPUT/checkpoints
// before every published version, at the end, and every `checkpoint_every` steps when it is
// above 0. A fine-tune whose output already holds one continues from it: when the group
// failed (a rank lost) and its job was started again with the same --train-config, it
// serves the checkpoint's adapter again at once and takes the same steps from there that it
// would have taken (the data order is a function of the seed and the position).

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "launcher/model_job.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/interleaved_work.h"
#include "runtime/serve/training_control.h"
#include "runtime/train/batches.h"
#include "runtime/train/trainable_model.h"
#include "runtime/train/trainer.h"

namespace tessera::launcher {

struct ServingFineTuneConfig {
  std::string data;
  std::string adapter;
  std::string output;
  int64_t steps = 100;
  int64_t publish_every = 0;
  int64_t checkpoint_every = 0;
  int seq_len = 1024;
  int micro_batch = 4;
  int grad_accum = 1;
  double lr = 2e-4;
  int64_t warmup = 0;
  std::string schedule = "cosine";
  int lora_r = 8;
  double lora_alpha = 16;
  std::string lora_targets = "q_proj,k_proj,v_proj,o_proj";
  int seed = 1;
};

// The JSON `text`; INVALID_ARGUMENT naming `where` (the file, or the call's field) and the key
// for text that is not a JSON object, an unknown key, a value of the wrong type or out of
// range, or a required key missing.
absl::StatusOr<ServingFineTuneConfig> ParseServingFineTuneConfig(const std::string& text,
                                                                 const std::string& where);
// The file at `path`, as ParseServingFineTuneConfig; NOT_FOUND when it cannot be read.
absl::StatusOr<ServingFineTuneConfig> ReadServingFineTuneConfig(const std::string& path);

// Where a fine-tune stands, for logs and status calls.
struct FineTuneProgress {
  std::string adapter;
  std::string state = "running";  // "running", "finished", "failed" or "stopped"
  int64_t steps_done = 0;
  int64_t steps = 0;
  double loss = 0;             // of the last step
  int64_t published_step = 0;  // the step of the version served now; 0: none yet
  std::string published_dir;
  int64_t resumed_step = 0;  // the checkpoint's step it continued from; 0: from the start
  std::string error;         // what ended it early
  int64_t tokens = 0;        // through its steps so far
  double step_seconds = 0;   // ... and their time
};
// Shared by the fine-tune, which writes it, and whoever asks; outlives the fine-tune.
struct FineTuneBoard {
  mutable absl::Mutex mutex;
  FineTuneProgress progress ABSL_GUARDED_BY(mutex);
};

class ServingFineTune final : public engine::InterleavedWork {
 public:
  // Collective over the job (every group): loads the trainable copy of the model and reads
  // the data.
  static absl::StatusOr<std::unique_ptr<ServingFineTune>> Create(
      const ServingFineTuneConfig& config, ModelJob& job);

  // Data-parallel over several groups, a leader that leaves with the fine-tune unfinished
  // (it failed, or the job shuts down) meets the other groups' leaders once more, asking them
  // to stop, rather than leave them waiting out their deadline.
  ~ServingFineTune() override;

  // How the leader serves a version (Engine::LoadAdapterAsync); unset on the other ranks.
  using Publisher =
      std::function<void(engine::AdapterSpec adapter, std::function<void(absl::Status)> done)>;
  void set_publisher(Publisher publisher) { publish_ = std::move(publisher); }
  // Stops at once (a step under way is dropped): finished() from then on, state "stopped".
  // Data-parallel over several groups: at the next update, on every group.
  void Stop();
  const std::shared_ptr<FineTuneBoard>& board() const { return board_; }

  // A piece of the trainer's optimizer step (Trainer::StepPiece); the step's last one logs
  // it, and publishes the adapter when it is due.
  absl::Status RunPiece() override;
  std::optional<double> ExpectedPieceSeconds(int ahead) const override;
  // Data-parallel over several groups: the pieces before the next update; then 0 until every
  // group's leader has reached it, and then 1 (the update alone).
  int PiecesReady() override;
  // Data-parallel over several groups, once the leaders have met before an update: that update
  // (the other groups wait for this one's gradients in it).
  int PiecesBeforeLeaving() override;
  bool finished() const override;

 private:
  ServingFineTune(ServingFineTuneConfig config, ModelJob& job,
                  std::unique_ptr<train::TrainableModel> model, train::RowStream data);
  // Create's part on this rank alone: the trainable model, the data, the trainer.
  static absl::StatusOr<std::unique_ptr<ServingFineTune>> Prepare(
      const ServingFineTuneConfig& config, ModelJob& job);
  void Update(const std::function<void(FineTuneProgress&)>& change);
  absl::Status StepDone(const train::StepReport& report);
  // Exports the adapter as it stands and has the engine serve it (the leader).
  absl::Status Publish(int64_t step);
  // The leader's meeting with the other groups' leaders (meeting_), saying stop_requested_.
  absl::Status StartMeeting();
  // Logs `status` and marks the fine-tune failed.
  void Fail(const absl::Status& status);
  // Continues from the newest checkpoint under the output, when there is one; collective.
  absl::Status ResumeIfCheckpointed();
  // Marks the fine-tune finished once its last step is done.
  void FinishIfDone();

  const ServingFineTuneConfig config_;
  ModelJob& job_;
  std::unique_ptr<train::TrainableModel> model_;
  train::RowStream data_;
  std::optional<train::Trainer> trainer_;
  Publisher publish_;
  bool publish_resumed_ = false;  // the resumed step's adapter is served at the first piece
  // Data-parallel over several groups, the leader's meeting before an update: the sum over
  // the DP group of the groups' stop requests, under way or done.
  std::atomic<bool> stop_requested_{false};
  int64_t meeting_sum_ = 0;
  std::unique_ptr<comm::Work> meeting_;
  bool met_ = false;            // the meeting before the next update is done
  bool meetings_over_ = false;  // a meeting stopped the fine-tune, or failed
  const std::shared_ptr<FineTuneBoard> board_ = std::make_shared<FineTuneBoard>();
};

// A worker group's fine-tunes: the engine's factory of them (every rank) and the Worker
// service's handle (the leader). One runs at a time.
class FineTuneControl final : public serve::TrainingControl {
 public:
  explicit FineTuneControl(ModelJob& job) : job_(job) {}

  // Makes a fine-tune from a JSON configuration on this rank (EngineOptions).
  engine::InterleavedWorkFactory Factory();
  // The leader's engine, once made (a fine-tune may be made with it, before this); before
  // it runs.
  void set_engine(engine::Engine* engine) { engine_ = engine; }

  absl::Status Start(const std::string& config_json, bool job_wide) override;
  std::optional<v1::TrainingState> State() const override;
  absl::Status Stop() override;

 private:
  ModelJob& job_;
  engine::Engine* engine_ = nullptr;
  mutable absl::Mutex mutex_;
  std::shared_ptr<FineTuneBoard> board_ ABSL_GUARDED_BY(mutex_);  // the last one's
  std::weak_ptr<ServingFineTune> running_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SERVING_FINETUNE_H_
