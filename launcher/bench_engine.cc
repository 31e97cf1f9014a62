// `tessera bench engine`: offline throughput of the serving engine with many requests at
// once, against the same requests run one at a time.

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "kernels/cpu/parallel.h"
#include "launcher/bench.h"
#include "launcher/bench_models.h"
#include "launcher/engine_flags.h"
#include "launcher/flags.h"
#include "launcher/fma_peak.h"
#include "launcher/process.h"
#include "runtime/core/status_macros.h"
#include "runtime/engine/engine.h"
#include "runtime/model/transformer.h"

namespace tessera::launcher {
namespace {

struct BenchEngineConfig {
  std::string model;  // empty: the built-in default and the ~0.5B random Llama
  int tp = 0;
  int requests = 32;
  int prompt_tokens = 128;
  int output_tokens = 128;
  int baseline_requests = 4;  // run one at a time for the baseline
  absl::Duration timeout = absl::Minutes(5);
  engine::EngineOptions engine;
};

struct RunFigures {
  int requests = 0;
  double seconds = 0;
  int64_t output_tokens = 0;
  double mean_batch = 0;
  double kv_bytes_per_token = 0;  // this rank's cache tensors over the tokens they hold
};

// Runs `count` requests of random prompts through a fresh engine with at most `concurrency`
// sequences per step. Collective over `tp`; the leader's figures are returned.
absl::StatusOr<RunFigures> RunRequests(model::Transformer& model, comm::Communicator& tp,
                                       const BenchEngineConfig& config, int count,
                                       int concurrency) {
  engine::EngineOptions options = config.engine;
  options.max_running = concurrency;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> engine,
                           engine::Engine::Create(model, tp, nullptr, options));
  std::vector<std::shared_ptr<engine::RequestStream>> streams;
  if (engine->is_leader()) {
    std::mt19937 random(1234);
    for (int i = 0; i < count; ++i) {
      engine::GenerationRequest request;
      for (int t = 0; t < config.prompt_tokens; ++t) {
        request.prompt_tokens.push_back(static_cast<int32_t>(random() % model.config().vocab_size));
      }
      request.sampling.max_tokens = config.output_tokens;
      request.sampling.ignore_eos = true;
      TESSERA_ASSIGN_OR_RETURN(std::shared_ptr<engine::RequestStream> stream,
                               engine->Submit(std::move(request)));
      streams.push_back(std::move(stream));
    }
    engine->StopWhenIdle();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  absl::Time start = absl::Now();
  TESSERA_RETURN_IF_ERROR(engine->Run());
  RunFigures figures;
  figures.requests = count;
  figures.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (auto& stream : streams) {
    engine::TokenEvent event;
    while (stream->Next(&event)) {
      if (!event.final) continue;
      if (!event.status.ok()) return event.status;
      figures.output_tokens += event.usage.completion_tokens;
    }
  }
  figures.kv_bytes_per_token =
      static_cast<double>(engine->kv_cache_bytes()) / engine->capacity_tokens();
  engine::EngineStats stats = engine->Stats();
  figures.mean_batch =
      stats.steps > 0 ? static_cast<double>(stats.step_sequences) / stats.steps : 0.0;
  return figures;
}

// Multiply-adds x 2 of the projections (attention's and the MLP's, every layer) for one
// token through the whole model, and of the LM head for one sampled row.
struct ProjectionFlops {
  double per_token = 0;
  double per_sampled_row = 0;
};

ProjectionFlops FlopsOf(const model::ModelConfig& mc) {
  const double hidden = static_cast<double>(mc.hidden_size);
  const double attention = hidden * (2.0 * mc.q_size() + 2.0 * mc.kv_size());  // q, k, v, o
  const double mlp = 3.0 * hidden * static_cast<double>(mc.intermediate_size);
  return {2.0 * mc.num_hidden_layers * (attention + mlp), 2.0 * hidden * mc.vocab_size};
}

absl::Status BenchOneModel(const std::string& name, const std::string& dir,
                           const BenchEngineConfig& config, comm::Communicator& tp, double peak,
                           bool print) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Transformer> model,
                           model::Transformer::Load(dir, tp));
  const model::ModelConfig& mc = model->config();
  TESSERA_ASSIGN_OR_RETURN(RunFigures batched,
                           RunRequests(*model, tp, config, config.requests, config.requests));
  const int alone_count = std::min(config.baseline_requests, config.requests);
  TESSERA_ASSIGN_OR_RETURN(RunFigures alone, RunRequests(*model, tp, config, alone_count, 1));
  if (!print) return absl::OkStatus();
  const double batched_tps = batched.output_tokens / batched.seconds;
  // Every prompt token and every output token but the last goes through the model once.
  const ProjectionFlops flops = FlopsOf(mc);
  const double batched_flops =
      (batched.requests * (config.prompt_tokens + config.output_tokens - 1.0) * flops.per_token +
       batched.output_tokens * flops.per_sampled_row) /
      batched.seconds;
  const double alone_tps = alone.output_tokens / alone.seconds;
  // What the cache must cost: 2 (K and V) x layers x KV heads x head dim x bytes (of the
  // cache's dtype), over tp.
  const double formula = 2.0 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim *
                         StorageBytes(model->kv_cache_dtype(), 1) / tp.size();
  std::printf("%-26s %5d %9.2f %11.1f %10.1f %8.1f %7.2f %11.0f %10.0f %11.1f %7.2f\n",
              name.c_str(), batched.requests, batched.requests / batched.seconds, batched_tps,
              batched.mean_batch, batched_flops / 1e9, peak > 0 ? batched_flops / peak : 0.0,
              batched.kv_bytes_per_token, formula, alone_tps, batched_tps / alone_tps);
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status BenchEngine(const BenchEngineConfig& config, int* argc, char*** argv) {
  if (config.requests < 1 || config.prompt_tokens < 1 || config.output_tokens < 1 ||
      config.baseline_requests < 1) {
    return absl::InvalidArgumentError(
        "--requests, --prompt-tokens, --output-tokens and --baseline-requests must be >= 1");
  }
  TESSERA_ASSIGN_OR_RETURN(MpiJob job, StartMpiJob(argc, argv, config.timeout, false));
  comm::MpiCommunicator& world = *job.world;
  TESSERA_ASSIGN_OR_RETURN(comm::Topology topology, comm::Topology::Discover(world));
  TESSERA_ASSIGN_OR_RETURN(
      comm::Layout layout,
      comm::Layout::Create(world, topology, {config.tp == 0 ? world.size() : config.tp, false}));
  if (layout.dp_size() != 1) {
    return absl::InvalidArgumentError("bench engine runs one replica: give --tp the rank count");
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<BenchModel> models, BenchModels(config.model, false));
  // The node's FMA peak: every rank's kernel threads at once, summed.
  const double peak = MeasureJobFmaPeak();
  const bool print = world.rank() == 0;
  if (print) {
    std::printf(
        "# tessera bench engine: tp %d, %d requests of %d prompt + %d output tokens at once "
        "(ignore_eos), greedy; baseline: %d of them one at a time\n",
        layout.tp_size(), config.requests, config.prompt_tokens, config.output_tokens,
        std::min(config.baseline_requests, config.requests));
    std::printf(
        "# GFLOP/s: the batched run's projections (every layer's and the LM head's "
        "multiply-adds x 2, attention left out); of peak: against the FMA peak of these "
        "ranks' kernel threads, measured here: %.1f GFLOP/s\n",
        peak / 1e9);
    std::printf(
        "# KV B/tok: this rank's cache tensors' bytes over the tokens they hold; formula: 2 x "
        "layers x kv_heads x head_dim x bytes (f32 4, bf16 2: the weights' dtype when bf16) / "
        "tp\n");
    std::printf("%-26s %5s %9s %11s %10s %8s %7s %11s %10s %11s %7s\n", "model", "reqs", "req/s",
                "output t/s", "mean batch", "GFLOP/s", "of peak", "KV B/tok", "formula",
                "alone t/s", "ratio");
  }
  for (const BenchModel& m : models) {
    TESSERA_RETURN_IF_ERROR(BenchOneModel(m.name, m.dir, config, layout.tp(), peak, print));
  }
  return absl::OkStatus();
}

}  // namespace

int RunBenchEngine(const std::vector<std::string>& args, int* argc, char*** argv) {
  BenchEngineConfig config;
  FlagSet flags("tessera bench engine",
                "Offline throughput of the serving engine: N requests at once against the same "
                "requests one at a time.\nWithout --model: the built-in default and a "
                "~0.5B-parameter random Llama in bf16 (made and cached on first use).");
  flags.String("model", &config.model, "a Hugging Face model directory");
  flags.Int("tp", &config.tp, "tensor-parallel degree (0: all ranks)");
  flags.Int("requests", &config.requests, "requests submitted at once (and the batch limit)");
  flags.Int("prompt-tokens", &config.prompt_tokens, "prompt length of every request");
  flags.Int("output-tokens", &config.output_tokens, "tokens generated by every request");
  flags.Int("baseline-requests", &config.baseline_requests,
            "how many of the requests run one at a time for the baseline");
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  // Room for 32 requests of 256 tokens of the ~0.5B model (96 KiB a token) without waiting.
  config.engine.kv_cache_bytes = int64_t{2} << 30;
  AddEngineFlags(flags, &config.engine);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(BenchEngine(config, argc, argv));
}

}  // namespace tessera::launcher
