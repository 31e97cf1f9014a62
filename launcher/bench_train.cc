// `tessera bench train`: fine-tuning throughput (tokens/s), its model FLOP/s against the FMA
// peak measured on these ranks (MFU), the data-parallel all-reduce's share of a step, and,
// with --torch, PyTorch eager (transformers) on the same model, batch and sequence length in
// the same run.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/layout.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/topology.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "launcher/bench.h"
#include "launcher/bench_models.h"
#include "launcher/flags.h"
#include "launcher/fma_peak.h"
#include "launcher/process.h"
#include "mpi.h"
#include "runtime/core/status_macros.h"
#include "runtime/train/batches.h"
#include "runtime/train/trainable_model.h"
#include "runtime/train/trainer.h"

namespace tessera::launcher {
namespace {

struct BenchTrainConfig {
  std::string model;  // empty: the built-in default and the ~0.5B random Llama
  int tp = 1;
  int seq_len = 256;
  int micro_batch = 4;
  int steps = 3;             // timed, after one warm-up step
  int lora_r = 0;            // > 0: LoRA on the attention projections instead of a full fine-tune
  int zero = 0;              // ZeRO stage of the optimizer (trainer.h)
  std::string torch_python;  // set: also run PyTorch with this Python
  absl::Duration timeout = absl::Minutes(10);
};

// Rows of random tokens, every token trained.
absl::StatusOr<train::RowStream> RandomRows(int64_t rows, int seq_len, int64_t vocab) {
  std::vector<train::Example> examples;
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int64_t r = 0; r < rows; ++r) {
    train::Example example;
    for (int t = 0; t < seq_len; ++t) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      example.tokens.push_back(static_cast<int32_t>((state >> 33) % vocab));
    }
    example.labels = example.tokens;
    examples.push_back(std::move(example));
  }
  train::BatchOptions options;
  options.seq_len = seq_len;
  options.packing = false;
  return train::RowStream::Create(std::move(examples), options);
}

absl::Status BenchOne(const std::string& name, const std::string& dir,
                      const BenchTrainConfig& config, comm::Layout& layout,
                      comm::MpiCommunicator& world, double peak) {
  train::TrainableModelOptions model_options;
  model_options.lora.r = config.lora_r;
  model_options.lora.alpha = 2.0 * config.lora_r;
  model_options.pack_frozen_base = config.lora_r > 0;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<train::TrainableModel> model,
                           train::TrainableModel::Load(dir, layout.tp(), model_options));
  const model::ModelConfig& mc = model->config();
  const int64_t rows_per_step = int64_t{config.micro_batch} * layout.dp_size();
  TESSERA_ASSIGN_OR_RETURN(train::RowStream data, RandomRows(rows_per_step * (config.steps + 1),
                                                             config.seq_len, mc.vocab_size));
  train::TrainerOptions options;
  options.micro_batch = config.micro_batch;
  options.zero_stage = config.zero;
  options.lr = 1e-5;
  options.schedule = {train::Schedule::kConstant, 0, config.steps + 1};
  int thread_level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&thread_level);
  options.buckets.overlap = thread_level == MPI_THREAD_MULTIPLE;
  TESSERA_ASSIGN_OR_RETURN(train::Trainer trainer,
                           train::Trainer::Create(*model, layout.dp(), data, options));
  TESSERA_RETURN_IF_ERROR(trainer.Step().status());  // warm-up
  std::vector<train::StepReport> reports;
  for (int s = 0; s < config.steps; ++s) {
    TESSERA_ASSIGN_OR_RETURN(train::StepReport report, trainer.Step());
    reports.push_back(report);
  }
  if (world.rank() != 0) return absl::OkStatus();
  // The median step: a virtual machine's stolen cores make single steps slow now and then.
  std::sort(
      reports.begin(), reports.end(),
      [](const train::StepReport& a, const train::StepReport& b) { return a.seconds < b.seconds; });
  const train::StepReport& median = reports[reports.size() / 2];
  const double seconds = median.seconds;
  const double hidden =
      median.comm_seconds > 0 ? 1.0 - median.exposed_comm_seconds / median.comm_seconds : 0.0;
  const double tokens_per_s = static_cast<double>(median.tokens) / seconds;
  // 6 N a token: the forward (2 N) and the backward's input and weight gradients (4 N). A
  // LoRA run computes no weight gradients of the frozen base: 4 N (the adapters' own work,
  // r / hidden of that, is left out).
  const int64_t parameters = model::ParameterCount(model->plan());
  const double flops_per_token = (config.lora_r > 0 ? 4.0 : 6.0) * static_cast<double>(parameters);
  const double model_flops = flops_per_token * tokens_per_s;
  std::string dp_column = "-";
  if (layout.dp_size() > 1) {
    dp_column =
        absl::StrFormat("%.0f ms, %.0f%% hidden", 1e3 * median.comm_seconds, 100.0 * hidden);
  }
  std::printf("%-26s %4d %4d %6d %5d %10.3f %11.1f %9.1f %7.3f  %s\n", name.c_str(),
              layout.tp_size(), layout.dp_size(), config.micro_batch, config.seq_len,
              static_cast<double>(parameters) / 1e9, tokens_per_s, model_flops / 1e9,
              peak > 0 ? model_flops / peak : 0.0, dp_column.c_str());
  std::fflush(stdout);
  if (config.torch_python.empty()) return absl::OkStatus();
  // PyTorch eager on the same model, batch (every replica's rows) and sequence length, f32,
  // all cores; it prints its tokens/s on its last line.
  const std::string script =
      (std::filesystem::path(TESSERA_SOURCE_DIR) / "deploy" / "bench-train-torch.py").string();
  const std::string command = absl::StrCat(
      config.torch_python, " ", script, " --model ", dir, " --batch ", rows_per_step, " --seq-len ",
      config.seq_len, " --steps ", config.steps, " --lora-r ", config.lora_r);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("cannot run ", command));
  std::string output;
  char chunk[4096];
  for (size_t n; (n = fread(chunk, 1, sizeof(chunk), pipe)) > 0;) output.append(chunk, n);
  const int status = pclose(pipe);
  const size_t last = output.find_last_of('\n', output.size() >= 2 ? output.size() - 2 : 0);
  const std::string tail = last == std::string::npos ? output : output.substr(last + 1);
  const double torch_tps = std::atof(tail.c_str());
  if (status != 0 || !(torch_tps > 0)) {
    return absl::InternalError(absl::StrCat("the PyTorch run failed (", command, "):\n", output));
  }
  std::printf("%-26s %4s %4s %6d %5d %10.3f %11.1f %9s %7s %11s  tessera / pytorch = %.2f\n",
              "  pytorch eager (f32)", "-", "-", static_cast<int>(rows_per_step), config.seq_len,
              static_cast<double>(parameters) / 1e9, torch_tps, "", "", "",
              tokens_per_s / torch_tps);
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status BenchTrain(const BenchTrainConfig& config, int* argc, char*** argv) {
  if (config.seq_len < 2 || config.micro_batch < 1 || config.steps < 1) {
    return absl::InvalidArgumentError(
        "--seq-len must be at least 2, --micro-batch and --steps at least 1");
  }
  TESSERA_ASSIGN_OR_RETURN(MpiJob job, StartMpiJob(argc, argv, config.timeout, false));
  comm::MpiCommunicator& world = *job.world;
  TESSERA_ASSIGN_OR_RETURN(comm::Topology topology, comm::Topology::Discover(world));
  TESSERA_ASSIGN_OR_RETURN(comm::Layout layout,
                           comm::Layout::Create(world, topology, {config.tp, false}));
  TESSERA_ASSIGN_OR_RETURN(std::vector<BenchModel> models,
                           BenchModels(config.model, world.rank() == 0));
  const double peak = MeasureJobFmaPeak();
  if (world.rank() == 0) {
    std::printf(
        "# tessera bench train: %s, f32 master weights and compute, AdamW%s; the median of %d "
        "timed steps after one warm-up, random tokens, every token trained\n",
        config.lora_r > 0
            ? absl::StrCat("LoRA r ", config.lora_r, " on q_proj,k_proj,v_proj,o_proj").c_str()
            : "full fine-tune",
        config.zero == 1 ? " with ZeRO-1 (moments sharded over DP)" : "", config.steps);
    std::printf(
        "# GFLOP/s: 6 x parameters x tokens/s (4 x for LoRA: no weight gradients of the base); "
        "MFU: against the FMA peak of these ranks' kernel "
        "threads, measured here: %.1f GFLOP/s; DP all-reduce: its time in a step and the share "
        "of it hidden behind the backward\n",
        peak / 1e9);
    std::printf("%-26s %4s %4s %6s %5s %10s %11s %9s %7s %11s\n", "model", "tp", "dp", "rows",
                "seq", "params (B)", "tokens/s", "GFLOP/s", "MFU", "DP all-reduce");
  }
  for (const BenchModel& m : models) {
    TESSERA_RETURN_IF_ERROR(BenchOne(m.name, m.dir, config, layout, world, peak));
  }
  return world.Barrier();
}

}  // namespace

int RunBenchTrain(const std::vector<std::string>& args, int* argc, char*** argv) {
  BenchTrainConfig config;
  FlagSet flags("tessera bench train",
                "Fine-tuning tokens/s and MFU. Without --model: the built-in default and a "
                "~0.5B-parameter random Llama (made and cached on first use; trained in f32, "
                "about 8 GB a replica at TP 1).\n  mpirun -np 2 tessera bench train --tp 2\n"
                "With --torch PYTHON (a Python with torch and transformers), rank 0 also runs "
                "PyTorch eager on the same model and batch and prints the ratio.");
  flags.String("model", &config.model, "a Hugging Face model directory or GGUF file");
  flags.Int("tp", &config.tp, "tensor-parallel degree; data-parallel over the rest");
  flags.Int("seq-len", &config.seq_len, "tokens a row");
  flags.Int("micro-batch", &config.micro_batch, "rows a step on each replica");
  flags.Int("steps", &config.steps, "timed steps (after one warm-up)");
  flags.Int("lora-r", &config.lora_r,
            "LoRA rank on the attention projections (alpha 2r); 0: full fine-tune");
  flags.String("torch", &config.torch_python, "a Python to run the PyTorch comparison with");
  flags.Int("zero", &config.zero, "ZeRO stage: 0, or 1 to shard AdamW's moments over DP");
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(BenchTrain(config, argc, argv));
}

}  // namespace tessera::launcher
