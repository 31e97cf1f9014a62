#include "launcher/train.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/agreement.h"
#include "comm/layout.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "launcher/flags.h"
#include "launcher/fma_peak.h"
#include "launcher/model_job.h"
#include "launcher/process.h"
#include "launcher/train_data.h"
#include "launcher/train_fault.h"
#include "mpi.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_format.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/model/resident_memory.h"
#include "runtime/model/weight_plan.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "runtime/train/batches.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/data.h"
#include "runtime/train/export.h"
#include "runtime/train/sharded_data.h"
#include "runtime/train/tensorboard.h"
#include "runtime/train/trainable_model.h"
#include "runtime/train/trainer.h"

namespace tessera::launcher {
namespace {

struct TrainConfig {
  std::string model;  // empty: the built-in default
  int tp = 1;
  std::string data;
  std::string eval_data;
  std::string output = "tessera-run";
  std::string resume;
  int seq_len = 1024;
  int micro_batch = 4;
  int grad_accum = 1;
  double lr = 2e-4;
  std::string schedule = "cosine";
  int warmup = 0;
  int steps = 0;  // 0: --epochs over the data
  double epochs = 1;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int save_every = 500;
  int keep = 3;
  int eval_every = 0;
  int eval_rows = 0;  // 0: the whole evaluation set
  int log_every = 1;
  int seed = 1;
  bool packing = true;
  std::string on_bad_line = "stop";
  std::string device = "cpu";
  int lora_r = 0;
  double lora_alpha = 16;
  std::string lora_targets = "q_proj,k_proj,v_proj,o_proj";
  bool merge = false;
  bool recompute = false;
  QuantizeFlags quantize;  // the frozen base of a LoRA fine-tune
  bool export_model = true;
  int zero = 0;
  absl::Duration timeout = absl::Minutes(5);
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
}

// How --seq-len, --packing and --seed batch the data (train_data.h).
train::BatchOptions BatchingOf(const TrainConfig& config) {
  train::BatchOptions batching;
  batching.seq_len = config.seq_len;
  batching.packing = config.packing;
  batching.seed = static_cast<uint64_t>(config.seed);
  return batching;
}

absl::Status Train(const TrainConfig& config, int* argc, char*** argv) {
  if (config.data.empty()) {
    return absl::InvalidArgumentError("--data: a JSONL file of training examples is required");
  }
  if (config.device != "cpu") {
    return absl::UnimplementedError(
        absl::StrCat("--device ", config.device, ": training runs on the CPU backend for now"));
  }
  if (config.lora_r < 0 || !(config.lora_alpha > 0)) {
    return absl::InvalidArgumentError("--lora-r must not be negative and --lora-alpha positive");
  }
  if (config.merge && config.lora_r == 0) {
    return absl::InvalidArgumentError("--merge merges LoRA adapters: give --lora-r");
  }
  train::TrainableModelOptions model_options;
  model_options.lora.r = config.lora_r;
  model_options.lora.alpha = config.lora_alpha;
  model_options.lora.seed = static_cast<uint64_t>(config.seed);
  model_options.recompute = config.recompute;
  // Packed once, not at every product; --merge needs the dense base at the end.
  model_options.pack_frozen_base = config.lora_r > 0 && !config.merge;
  // The frozen base's forward takes f32 activations unless asked otherwise: its backward
  // multiplies by the dequantized weights, and the forward should be that same product.
  QuantizeFlags quantize = config.quantize;
  if (quantize.activations == "auto") quantize.activations = "f32";
  TESSERA_ASSIGN_OR_RETURN(model_options.quantize, ParseQuantizeFlags(quantize));
  if (model_options.quantize.has_value() && config.merge) {
    return absl::InvalidArgumentError(
        "--merge with --quantize: the base is held quantized; export the adapter, then merge it "
        "with `tessera train export --merge`, which loads the base unquantized");
  }
  TESSERA_ASSIGN_OR_RETURN(model_options.lora.targets,
                           train::ParseLoraTargets(config.lora_targets));
  if (config.seq_len < 2 || config.steps < 0 || config.save_every < 0 || config.keep < 0 ||
      config.warmup < 0 || !(config.epochs > 0) || config.log_every < 1) {
    return absl::InvalidArgumentError(
        "--seq-len must be at least 2, --epochs positive, --log-every at least 1, and --steps, "
        "--save-every, --keep, --warmup not negative");
  }
  TESSERA_ASSIGN_OR_RETURN(train::Schedule schedule, train::ParseSchedule(config.schedule));
  train::TrainerOptions options;
  options.micro_batch = config.micro_batch;
  options.grad_accum = config.grad_accum;
  options.zero_stage = config.zero;
  options.lr = config.lr;
  options.max_grad_norm = config.max_grad_norm;
  options.adamw.beta1 = config.adam_beta1;
  options.adamw.beta2 = config.adam_beta2;
  options.adamw.eps = config.adam_eps;
  options.adamw.weight_decay = config.weight_decay;
  // Before MPI starts and the model loads: a bad option fails at once.
  TESSERA_RETURN_IF_ERROR(train::ValidateTrainerOptions(options));
  ModelJobOptions job_options;
  job_options.model_dir = config.model;
  job_options.tp = config.tp;
  job_options.timeout = config.timeout;
  job_options.load_model = false;
  TESSERA_ASSIGN_OR_RETURN(ModelJob job, StartModelJob(job_options, argc, argv));
  comm::MpiCommunicator& world = *job.mpi.world;
  comm::Layout& layout = *job.layout;
  const bool lead = world.rank() == 0;
  std::string resume_from;
  if (!config.resume.empty()) {
    TESSERA_ASSIGN_OR_RETURN(resume_from, train::LatestCheckpoint(config.resume));
  }

  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<train::TrainableModel> model,
                           train::TrainableModel::Load(job.model_dir, layout.tp(), model_options));
  // Every rank tokenizes a share of the data files and, as it trains, the examples of its own
  // rows (sharded_data.h); every node needs the files. The ranks fail together.
  // (Its errors are of the flags: every rank fails alike.)
  TESSERA_ASSIGN_OR_RETURN(
      const train::ExampleOptions example_options,
      ExampleOptionsFor(config.on_bad_line, model->config(), *job.tokenizer, job.tokenizer_config));
  absl::StatusOr<train::RowStream> data =
      ReadTrainRows(config.data, BatchingOf(config), example_options, *job.tokenizer, world,
                    lead ? "tessera train" : "");
  TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(world, data.status(), "to read --data"));
  std::optional<train::RowStream> eval;
  if (!config.eval_data.empty()) {
    absl::StatusOr<train::RowStream> read =
        ReadTrainRows(config.eval_data, BatchingOf(config), example_options, *job.tokenizer, world,
                      lead ? "tessera train" : "");
    TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(world, read.status(), "to read --eval-data"));
    eval = std::move(*read);
  }
  // The DP all-reduce overlaps the backward on a thread of its own, which MPI allows while
  // the TP group's collectives run on this one only at MPI_THREAD_MULTIPLE.
  int thread_level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&thread_level);
  options.buckets.overlap = thread_level == MPI_THREAD_MULTIPLE;
  const int64_t rows_per_step = int64_t{config.micro_batch} * config.grad_accum * layout.dp_size();
  int64_t steps = config.steps;
  if (steps == 0) {
    steps = std::max<int64_t>(
        1,
        static_cast<int64_t>(std::ceil(config.epochs * static_cast<double>(data->rows_per_epoch()) /
                                       static_cast<double>(rows_per_step))));
  }
  options.schedule = {schedule, config.warmup, steps};
  TESSERA_ASSIGN_OR_RETURN(train::Trainer trainer,
                           train::Trainer::Create(*model, layout.dp(), *data, options));
  if (!resume_from.empty()) {
    TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(
        world, train::LoadCheckpoint(resume_from, trainer, layout.tp_rank(), data->Fingerprint()),
        "to load its part of the checkpoint"));
    if (lead) {
      std::fprintf(stderr, "tessera train: resumed from %s at step %lld\n", resume_from.c_str(),
                   static_cast<long long>(trainer.steps_done()));
    }
  }
  // MFU's limit: the FMA peak of every rank's kernel threads, measured at once.
  const double peak = MeasureJobFmaPeak();
  // 6 N a token (forward 2 N, input and weight gradients 4 N); LoRA computes no weight
  // gradients of the frozen base: 4 N.
  const double flops_per_token =
      (config.lora_r > 0 ? 4.0 : 6.0) * static_cast<double>(model::ParameterCount(model->plan()));
  uint64_t weight_bytes = 0, grad_bytes = 0, whole_moment_bytes = 0;
  for (const train::Parameter& p : model->parameters().all()) {
    weight_bytes += p.value.nbytes();
    if (p.grad.defined()) grad_bytes += p.grad.nbytes();
    if (p.trainable) whole_moment_bytes += 2 * p.value.nbytes();
  }
  if (config.zero == 1 && layout.dp_size() == 1 && lead) {
    std::fprintf(stderr,
                 "tessera train: --zero 1 with one data-parallel replica has nothing to shard "
                 "over: the AdamW moments stay whole, as with --zero 0\n");
  }
  TESSERA_RETURN_IF_ERROR(ReportPeakMemory(
      world, {{"weights", weight_bytes},
              {"gradients", grad_bytes},
              {trainer.sharded() ? absl::StrCat("AdamW moments (ZeRO-1: 1/", layout.dp_size(),
                                                " of ", model::FormatBytes(whole_moment_bytes), ")")
                                 : "AdamW moments",
               static_cast<uint64_t>(trainer.optimizer_state_bytes())}}));
  if (lead) {
    const std::string kind = config.lora_r > 0
                                 ? absl::StrCat("LoRA (r ", config.lora_r, ", alpha ",
                                                config.lora_alpha, " on ", config.lora_targets, ")")
                                 : "full fine-tune";
    std::fprintf(stderr,
                 "tessera train: %s of %s, tp %d x dp %d%s, %d x %d rows of %d tokens a step "
                 "per replica, %lld steps, %lld trainable parameters; FMA peak of the ranks "
                 "%.1f GFLOP/s\n",
                 kind.c_str(), job.model_dir.c_str(), layout.tp_size(), layout.dp_size(),
                 trainer.sharded() ? " (ZeRO-1: AdamW moments sharded over dp)" : "",
                 config.micro_batch, config.grad_accum, config.seq_len,
                 static_cast<long long>(steps),
                 static_cast<long long>(model->parameters().TrainableElements()), peak / 1e9);
  }
  std::error_code error;
  std::filesystem::create_directories(config.output, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("--output: cannot create ", config.output, ": ", error.message()));
  }
  std::ofstream log;
  std::unique_ptr<train::TensorBoardWriter> board;
  if (lead) {
    log.open(config.output + "/log.jsonl", std::ios::app);
    TESSERA_ASSIGN_OR_RETURN(board,
                             train::TensorBoardWriter::Create(config.output + "/tensorboard"));
  }
  const bool terminal = isatty(fileno(stderr));
  auto evaluate = [&]() -> absl::Status {
    if (!eval.has_value()) return absl::OkStatus();
    const int64_t rows = config.eval_rows > 0
                             ? std::min<int64_t>(config.eval_rows, eval->rows_per_epoch())
                             : eval->rows_per_epoch();
    TESSERA_ASSIGN_OR_RETURN(double loss, trainer.Evaluate(*eval, rows));
    if (lead) {
      std::fprintf(stderr, "%stessera train: step %lld eval loss %.4f perplexity %.3f\n",
                   terminal ? "\n" : "", static_cast<long long>(trainer.steps_done()), loss,
                   std::exp(loss));
      nlohmann::json entry = {
          {"step", trainer.steps_done()}, {"eval_loss", loss}, {"eval_perplexity", std::exp(loss)}};
      log << entry.dump() << "\n" << std::flush;
      TESSERA_RETURN_IF_ERROR(board->AddScalar("eval/loss", loss, trainer.steps_done()));
      TESSERA_RETURN_IF_ERROR(
          board->AddScalar("eval/perplexity", std::exp(loss), trainer.steps_done()));
      TESSERA_RETURN_IF_ERROR(board->Flush());
    }
    return absl::OkStatus();
  };
  const double start = Now();
  const int64_t first_step = trainer.steps_done();
  while (trainer.steps_done() < steps) {
    InjectTrainFaultBefore(trainer.steps_done() + 1, world.rank());
    TESSERA_ASSIGN_OR_RETURN(train::StepReport report, trainer.Step());
    if (lead) {
      const double tokens_per_s = static_cast<double>(report.tokens) / report.seconds;
      nlohmann::json entry = {{"step", report.step},
                              {"loss", report.loss},
                              {"lr", report.lr},
                              {"grad_norm", report.grad_norm},
                              {"targets", report.targets},
                              {"tokens", report.tokens},
                              {"tokens_per_s", tokens_per_s},
                              {"mfu", peak > 0 ? flops_per_token * tokens_per_s / peak : 0.0},
                              {"step_s", report.seconds},
                              {"dp_allreduce_s", report.comm_seconds},
                              {"exposed_comm_s", report.exposed_comm_seconds}};
      if (trainer.sharded()) entry["dp_allgather_s"] = report.gather_seconds;
      log << entry.dump() << "\n" << std::flush;
      for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "exposed_comm_s"}) {
        TESSERA_RETURN_IF_ERROR(
            board->AddScalar(absl::StrCat("train/", key), entry[key].get<double>(), report.step));
      }
      if (report.step % config.log_every == 0 || report.step == steps) {
        TESSERA_RETURN_IF_ERROR(board->Flush());
        const double elapsed = Now() - start;
        const double eta = elapsed / static_cast<double>(report.step - first_step) *
                           static_cast<double>(steps - report.step);
        std::fprintf(stderr,
                     "%sstep %lld/%lld  loss %.4f  lr %.3g  grad norm %.3g  %.0f tokens/s  "
                     "ETA %s%s",
                     terminal ? "\r" : "", static_cast<long long>(report.step),
                     static_cast<long long>(steps), report.loss, report.lr, report.grad_norm,
                     tokens_per_s, FormatDuration(eta).c_str(), terminal ? "" : "\n");
      }
    }
    if (config.eval_every > 0 && trainer.steps_done() % config.eval_every == 0) {
      TESSERA_RETURN_IF_ERROR(evaluate());
    }
    if ((config.save_every > 0 && trainer.steps_done() % config.save_every == 0) ||
        trainer.steps_done() == steps) {
      TESSERA_RETURN_IF_ERROR(train::SaveCheckpoint(config.output, trainer, world, layout.tp_rank(),
                                                    layout.dp_rank(), data->Fingerprint(),
                                                    config.keep, job.model_dir));
    }
  }
  if (lead && terminal) std::fprintf(stderr, "\n");
  if (config.eval_every == 0 || steps % config.eval_every != 0) TESSERA_RETURN_IF_ERROR(evaluate());
  if (config.export_model && layout.dp_rank() == 0) {
    const std::string out = config.output + "/export";
    if (config.lora_r > 0 && !config.merge) {
      TESSERA_RETURN_IF_ERROR(train::ExportPeftAdapter(*model, job.model_dir, out));
    } else {
      TESSERA_RETURN_IF_ERROR(train::ExportHuggingFace(*model, job.model_dir, out));
    }
    if (lead) std::fprintf(stderr, "tessera train: exported the model to %s\n", out.c_str());
  }
  return world.Barrier();
}

struct ExportConfig {
  std::string checkpoint;  // a run directory (its latest checkpoint) or a checkpoint
  std::string output;
  std::string model;  // empty: the base model the checkpoint records
  bool merge = false;
};

// `tessera train export`: a checkpoint as a Hugging Face directory or a PEFT adapter.
absl::Status ExportCheckpoint(const ExportConfig& config, int* argc, char*** argv) {
  if (config.output.empty()) return absl::InvalidArgumentError("--output: where to export");
  TESSERA_ASSIGN_OR_RETURN(std::string checkpoint, train::LatestCheckpoint(config.checkpoint));
  TESSERA_ASSIGN_OR_RETURN(train::CheckpointSummary summary,
                           train::ReadCheckpointSummary(checkpoint));
  if (config.merge && !summary.lora.enabled()) {
    return absl::InvalidArgumentError("--merge: the checkpoint is of a full fine-tune, not LoRA");
  }
  ModelJobOptions job_options;
  job_options.model_dir = config.model.empty() ? summary.base_model : config.model;
  job_options.tp = 0;  // every rank in one group: checked against the checkpoint's below
  job_options.load_model = false;
  TESSERA_ASSIGN_OR_RETURN(ModelJob job, StartModelJob(job_options, argc, argv));
  comm::MpiCommunicator& world = *job.mpi.world;
  comm::Layout& layout = *job.layout;
  if (layout.tp_size() != summary.tp) {
    return absl::InvalidArgumentError(
        absl::StrCat("the checkpoint holds TP ", summary.tp, " shards: run the export on ",
                     summary.tp, " ranks (mpirun -np ", summary.tp, "), not ", world.size()));
  }
  train::TrainableModelOptions options;
  options.lora = summary.lora;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<train::TrainableModel> model,
                           train::TrainableModel::Load(job.model_dir, layout.tp(), options));
  TESSERA_RETURN_IF_ERROR(
      comm::AgreeOnStatus(world, train::LoadCheckpointWeights(checkpoint, *model, layout.tp_rank()),
                          "to load its part of the checkpoint"));
  if (summary.lora.enabled() && !config.merge) {
    TESSERA_RETURN_IF_ERROR(train::ExportPeftAdapter(*model, job.model_dir, config.output));
  } else {
    TESSERA_RETURN_IF_ERROR(train::ExportHuggingFace(*model, job.model_dir, config.output));
  }
  if (world.rank() == 0) {
    std::fprintf(stderr, "tessera train export: step %lld of %s exported to %s\n",
                 static_cast<long long>(summary.step), checkpoint.c_str(), config.output.c_str());
  }
  return world.Barrier();
}

int RunTrainExport(const std::vector<std::string>& args, int* argc, char*** argv) {
  ExportConfig config;
  FlagSet flags("tessera train export",
                "Exports a training checkpoint: tessera train export CKPT --output DIR, where "
                "CKPT is a run directory (its latest checkpoint) or one checkpoint; run on as "
                "many ranks as the checkpoint's --tp (mpirun -np TP). A full fine-tune becomes "
                "a Hugging Face model directory, a LoRA run a PEFT adapter directory (or merged "
                "weights with --merge).");
  flags.String("output", &config.output, "the directory to write");
  flags.String("model", &config.model,
               "the base model directory or GGUF file (default: as recorded)");
  flags.Bool("merge", &config.merge, "a LoRA checkpoint as merged full weights");
  std::vector<std::string> rest = args;
  if (!rest.empty() && rest[0].rfind("-", 0) != 0) {
    config.checkpoint = rest[0];
    rest.erase(rest.begin());
  }
  if (std::optional<int> done = ParseOrExit(flags, rest)) return *done;
  if (config.checkpoint.empty()) {
    std::fprintf(stderr,
                 "tessera train export: give the checkpoint: tessera train export CKPT "
                 "--output DIR\n");
    return kExitUsage;
  }
  return ReportExit(ExportCheckpoint(config, argc, argv));
}

}  // namespace

int RunTrain(const std::vector<std::string>& args, int* argc, char*** argv) {
  if (!args.empty() && args[0] == "export") {
    return RunTrainExport(std::vector<std::string>(args.begin() + 1, args.end()), argc, argv);
  }
  TrainConfig config;
  FlagSet flags(
      "tessera train",
      "Fine-tunes a Hugging Face model on a JSONL file, tensor-parallel within groups of --tp "
      "ranks and data-parallel across them (DP = ranks / TP):\n"
      "  mpirun -np 4 tessera train --model DIR --tp 2 --data train.jsonl --output runs/a\n"
      "Lines are {\"text\": ...} (every token trained), {\"prompt\": ..., \"completion\": ...} "
      "(loss on the completion) or {\"input_ids\": [...], \"labels\": [...]} (-100 masks). "
      "The loss is the mean over every target token of a step. Checkpoints go to "
      "OUTPUT/checkpoints, the fine-tuned model to OUTPUT/export (a Hugging Face directory; "
      "with --lora-r a PEFT adapter directory, or merged weights with --merge). "
      "'tessera train export CKPT --output DIR' exports a checkpoint.");
  flags.String("model", &config.model,
               "Hugging Face model directory or GGUF file (default: built-in)");
  flags.Int("tp", &config.tp, "tensor-parallel degree; the data-parallel degree is ranks / tp");
  flags.String("data", &config.data, "training examples, JSON Lines (required)");
  flags.String("eval-data", &config.eval_data, "evaluation examples, JSON Lines");
  flags.String("output", &config.output, "run directory: log.jsonl, checkpoints/, export/");
  flags.String("resume", &config.resume,
               "continue the run in this directory (its latest checkpoint) or from a checkpoint");
  flags.Int("seq-len", &config.seq_len, "tokens a row; longer examples are truncated");
  flags.Int("micro-batch", &config.micro_batch, "rows a forward/backward on each replica");
  flags.Int("grad-accum", &config.grad_accum, "micro-batches a step on each replica");
  flags.Double("lr", &config.lr, "peak learning rate");
  flags.String("schedule", &config.schedule, "learning rate schedule: constant, linear, cosine");
  flags.Int("warmup", &config.warmup, "steps of linear warm-up from 0");
  flags.Int("steps", &config.steps, "optimizer steps (0: as many as --epochs take)");
  flags.Double("epochs", &config.epochs, "passes over the data when --steps is 0");
  flags.Double("weight-decay", &config.weight_decay,
               "AdamW's decoupled weight decay (not on biases and norms)");
  flags.Double("max-grad-norm", &config.max_grad_norm,
               "clip gradients to this global norm (0: off)");
  flags.Double("adam-beta1", &config.adam_beta1, "AdamW beta1");
  flags.Double("adam-beta2", &config.adam_beta2, "AdamW beta2");
  flags.Double("adam-eps", &config.adam_eps, "AdamW epsilon");
  flags.Int("save-every", &config.save_every, "checkpoint every N steps (and at the end)");
  flags.Int("keep", &config.keep, "checkpoints kept (0: all)");
  flags.Int("eval-every", &config.eval_every, "evaluate every N steps (0: at the end)");
  flags.Int("eval-rows", &config.eval_rows, "rows of --eval-data evaluated (0: all)");
  flags.Int("log-every", &config.log_every, "print progress every N steps (log.jsonl has all)");
  flags.Int("seed", &config.seed, "data order and the LoRA adapters' initialization");
  flags.Bool("packing", &config.packing,
             "pack several examples into a row (attention stays inside each); --no-packing: "
             "one example a row");
  flags.String("on-bad-line", &config.on_bad_line, "a bad data line: stop, or skip it");
  flags.Bool("export", &config.export_model, "write OUTPUT/export at the end");
  flags.Bool("recompute", &config.recompute,
             "keep one layer's activations: recompute each layer in the backward (a third "
             "more compute, the same gradients)");
  flags.Int("lora-r", &config.lora_r, "LoRA rank (0: full fine-tune); the base is frozen");
  AddQuantizeFlags(flags, &config.quantize);
  flags.Double("lora-alpha", &config.lora_alpha, "LoRA alpha: adapters scale by alpha / r");
  flags.String("lora-targets", &config.lora_targets,
               "Linears that get adapters: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
               "down_proj (gate_up_proj where the checkpoint fuses them)");
  flags.Bool("merge", &config.merge,
             "export a LoRA run as merged full weights instead of a PEFT adapter directory");
  flags.Int("zero", &config.zero,
            "ZeRO stage: 0 keeps AdamW's moments whole on every data-parallel replica; 1 shards "
            "them over the replicas (each keeps 1/DP; the same steps and checkpoints)");
  AddDeviceFlag(flags, &config.device);
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(Train(config, argc, argv));
}

}  // namespace tessera::launcher
