// `tessera bench engine`: offline throughput of the serving engine with many requests at
// once, against the same requests run one at a time; the batched run beside the FMA peak
// and the memory read bandwidth measured here, and which of the two limits binds.

#include <mpi.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "kernels/cpu/parallel.h"
#include "launcher/bench.h"
#include "launcher/bench_engine_run.h"
#include "launcher/bench_limit.h"
#include "launcher/bench_models.h"
#include "launcher/engine_flags.h"
#include "launcher/flags.h"
#include "launcher/fma_peak.h"
#include "launcher/process.h"
#include "launcher/read_bandwidth.h"
#include "runtime/core/status_macros.h"
#include "runtime/engine/engine.h"
#include "runtime/model/transformer.h"

namespace tessera::launcher {
namespace {

struct BenchEngineConfig {
  OfflineBenchBasics basics;  // model: the built-in default and the ~0.5B random Llama
  int baseline_requests = 4;  // run one at a time for the baseline
  engine::EngineOptions engine;
};

// Runs `count` requests of random prompts through a fresh engine with at most `concurrency`
// sequences per step. Collective over `tp`; the leader's figures are returned.
absl::StatusOr<EngineRunFigures> RunRequests(model::Transformer& model, comm::Communicator& tp,
                                             const BenchEngineConfig& config, int count,
                                             int concurrency) {
  engine::EngineOptions options = config.engine;
  options.max_running = concurrency;
  return RunRandomRequests(model, tp, options,
                           {.count = count,
                            .prompt_tokens = config.basics.prompt_tokens,
                            .output_tokens = config.basics.output_tokens});
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

// The limit a run is nearer to, of the FMA peak (FLOP/s) and the memory read bandwidth: the
// one that leaves it the least time, that is with the larger ratio. A limit not measured (0),
// or a memory limit whose bytes fit in the caches, takes no part; "-" where neither is left
// or either is broken (a measurement above it).
const char* BindingLimit(double flops, double peak, double read, double bandwidth, bool in_cache) {
  if (HoldAgainstLimit(flops, peak).error || HoldAgainstLimit(read, bandwidth, in_cache).error) {
    return "-";
  }
  const bool compute = peak > 0;
  const bool memory = bandwidth > 0 && !in_cache;
  if (compute && memory) return flops / peak >= read / bandwidth ? "FLOP/s" : "bandwidth";
  if (compute) return "FLOP/s";
  return memory ? "bandwidth" : "-";
}

absl::Status BenchOneModel(const std::string& name, const std::string& dir,
                           const BenchEngineConfig& config, comm::Communicator& tp, double peak,
                           const ReadBandwidth& read_limit, bool print) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Transformer> model,
                           model::Transformer::Load(dir, tp));
  const model::ModelConfig& mc = model->config();
  TESSERA_ASSIGN_OR_RETURN(
      EngineRunFigures batched,
      RunRequests(*model, tp, config, config.basics.requests, config.basics.requests));
  const int alone_count = std::min(config.baseline_requests, config.basics.requests);
  TESSERA_ASSIGN_OR_RETURN(EngineRunFigures alone, RunRequests(*model, tp, config, alone_count, 1));
  // Every rank's weights and bytes of cache per token (the group is the world: one replica).
  double rank_bytes[2] = {static_cast<double>(model->weight_bytes()),
                          static_cast<double>(model->KvBytesPerToken())};
  double all_bytes[2] = {0, 0};
  MPI_Allreduce(rank_bytes, all_bytes, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  if (!print) return absl::OkStatus();
  const double batched_tps = batched.output_tokens / batched.seconds;
  // Every prompt token and every output token but the last goes through the model once.
  const ProjectionFlops flops = FlopsOf(mc);
  const double batched_flops =
      (batched.requests * (config.basics.prompt_tokens + config.basics.output_tokens - 1.0) *
           flops.per_token +
       batched.output_tokens * flops.per_sampled_row) /
      batched.seconds;
  // What the steps read, counted as bench generate counts a decode step: every step every
  // weight once, every decode step of a sequence its context's keys and values. Prefill's
  // reads of the cache are left out.
  const double steps = static_cast<double>(std::max<int64_t>(1, batched.steps));
  const double run_bytes = steps * all_bytes[0] + batched.decode_context_tokens * all_bytes[1];
  const double read = run_bytes / batched.seconds;
  const HeldAgainstLimit of_peak = HoldAgainstLimit(batched_flops, peak);
  const bool in_cache = FitsInLastLevelCaches(run_bytes / steps, tp.size());
  const HeldAgainstLimit of_bw = HoldAgainstLimit(read, read_limit.bytes_per_second, in_cache);
  const double alone_tps = alone.output_tokens / alone.seconds;
  // What the cache must cost: 2 (K and V) x layers x KV heads x head dim x bytes (of the
  // cache's dtype), over tp.
  const double formula = 2.0 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim *
                         StorageBytes(model->kv_cache_dtype(), 1) / tp.size();
  std::printf(
      "%-26s %5d %9.2f %11.1f %10.1f %8.2f %8.1f %7s %9.1f %9.2f %6s %9s %9.0f %8.0f %10.1f "
      "%6.2f\n",
      name.c_str(), batched.requests, batched.requests / batched.seconds, batched_tps,
      batched.mean_batch, steps / batched.seconds, batched_flops / 1e9, of_peak.cell.c_str(),
      run_bytes / steps / 1e6, read / 1e9, of_bw.cell.c_str(),
      BindingLimit(batched_flops, peak, read, read_limit.bytes_per_second, in_cache),
      batched.kv_bytes_per_token, formula, alone_tps, batched_tps / alone_tps);
  if (of_peak.error) {
    std::printf("%s", LimitErrorNote(absl::StrCat(name, " batched run's projections compute"),
                                     batched_flops, peak, 1e9, "GFLOP/s")
                          .c_str());
  }
  if (of_bw.error) {
    std::printf("%s", LimitErrorNote(absl::StrCat(name, " batched run reads"), read,
                                     read_limit.bytes_per_second, 1e9, "GB/s")
                          .c_str());
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status BenchEngine(const BenchEngineConfig& config, int* argc, char*** argv) {
  if (config.basics.requests < 1 || config.basics.prompt_tokens < 1 ||
      config.basics.output_tokens < 1 || config.baseline_requests < 1) {
    return absl::InvalidArgumentError(
        "--requests, --prompt-tokens, --output-tokens and --baseline-requests must be >= 1");
  }
  TESSERA_ASSIGN_OR_RETURN(MpiJob job, StartMpiJob(argc, argv, config.basics.timeout, false));
  comm::MpiCommunicator& world = *job.world;
  TESSERA_ASSIGN_OR_RETURN(comm::Topology topology, comm::Topology::Discover(world));
  TESSERA_ASSIGN_OR_RETURN(
      comm::Layout layout,
      comm::Layout::Create(world, topology,
                           {config.basics.tp == 0 ? world.size() : config.basics.tp, false}));
  if (layout.dp_size() != 1) {
    return absl::InvalidArgumentError("bench engine runs one replica: give --tp the rank count");
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<BenchModel> models, BenchModels(config.basics.model, false));
  // The node's limits: the FMA peak of every rank's kernel threads at once, summed, and the
  // memory read bandwidth of all of them reading at once (the world is one node: one replica
  // whose group does not span nodes).
  const double peak = MeasureJobFmaPeak();
  const ReadBandwidth read_limit = MeasureNodeReadBandwidth(MPI_COMM_WORLD);
  const bool print = world.rank() == 0;
  if (print) {
    std::printf(
        "# tessera bench engine: tp %d, %d requests of %d prompt + %d output tokens at once "
        "(ignore_eos), greedy; baseline: %d of them one at a time\n",
        layout.tp_size(), config.basics.requests, config.basics.prompt_tokens,
        config.basics.output_tokens, std::min(config.baseline_requests, config.basics.requests));
    std::printf(
        "# GFLOP/s: the batched run's projections (every layer's and the LM head's "
        "multiply-adds x 2, attention left out); of peak: against the FMA peak of these "
        "ranks' kernel threads, measured here: %.1f GFLOP/s\n",
        peak / 1e9);
    std::printf(
        "# MB/step: what a step of the batched run reads on average, every rank's: every "
        "weight once, and for each sequence it decodes its context's cached keys and values "
        "(prefill's reads of the cache left out); read GB/s: steps/s x MB/step; of bw: "
        "against the memory read bandwidth %.2f GB/s, measured here: %s\n",
        read_limit.bytes_per_second / 1e9, DescribeReadBandwidth(read_limit).c_str());
    std::printf(
        "# \"cache\": a step's bytes fit in the last-level caches, no memory limit applies; "
        "\"error\": faster than the limit, a measurement error (said below the row); binds: "
        "the limit nearer to the run (the larger of of peak and of bw)\n");
    std::printf(
        "# KV B/tok: this rank's cache tensors' bytes over the tokens they hold; formula: 2 x "
        "layers x kv_heads x head_dim x bytes (f32 4, bf16 2: the weights' dtype when bf16) / "
        "tp\n");
    std::printf("%-26s %5s %9s %11s %10s %8s %8s %7s %9s %9s %6s %9s %9s %8s %10s %6s\n", "model",
                "reqs", "req/s", "output t/s", "mean batch", "steps/s", "GFLOP/s", "of peak",
                "MB/step", "read GB/s", "of bw", "binds", "KV B/tok", "formula", "alone t/s",
                "ratio");
  }
  for (const BenchModel& m : models) {
    TESSERA_RETURN_IF_ERROR(
        BenchOneModel(m.name, m.dir, config, layout.tp(), peak, read_limit, print));
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
  AddOfflineBenchFlags(flags, &config.basics);
  flags.Int("baseline-requests", &config.baseline_requests,
            "how many of the requests run one at a time for the baseline");
  // Room for 32 requests of 256 tokens of the ~0.5B model (96 KiB a token) without waiting.
  config.engine.kv_cache_bytes = int64_t{2} << 30;
  AddEngineFlags(flags, &config.engine);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(BenchEngine(config, argc, argv));
}

}  // namespace tessera::launcher
