// `tessera bench generate`: prefill and decode tokens/s at batch 1, beside the memory-
// bandwidth limit of decode (the bytes every token must read, every weight and the cached
// keys and values of its context, over the bandwidth measured on this machine), for each model
// as stored and weight-only quantized to int8 and int4 (each against its own limit).

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "launcher/bench.h"
#include "launcher/bench_limit.h"
#include "launcher/bench_models.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/process.h"
#include "launcher/read_bandwidth.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_plan.h"
#include "runtime/model/weight_quantization.h"

namespace tessera::launcher {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchGenerateConfig {
  std::string model;  // empty: the built-in default and the ~0.5B random Llama
  // Each model is run once per entry: none (as stored), int8, int4 (--quantize's values, with
  // its default activations: f32 for int8, int8 for int4), or one of them with -a8 (int8
  // activations) or -f32 (f32 activations).
  std::string quantize = "none,int8,int8-a8,int4-f32,int4";
  int tp = 0;
  int prompt_tokens = 128;
  int decode_tokens = 32;
  std::string device = "cpu";
  absl::Duration timeout = absl::Minutes(5);
  // Let the group span nodes, to measure what that costs.
  bool allow_cross_node_tp = false;
};

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Bandwidth of this rank's GPU memory, bytes/s: a device-to-device copy of 1 GiB moves 2 GiB
// (read and write), on every rank at once; the node's figure is the sum over its ranks. Best
// of three.
absl::StatusOr<double> MeasureDeviceBandwidth(Device device) {
  constexpr int64_t kBytes = int64_t{1} << 30;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, Stream::Create(device));
  TESSERA_ASSIGN_OR_RETURN(Tensor from, Tensor::Empty(DType::kI8, {kBytes}, device));
  TESSERA_ASSIGN_OR_RETURN(Tensor to, Tensor::Empty(DType::kI8, {kBytes}, device));
  TESSERA_RETURN_IF_ERROR(to.CopyFrom(from, *stream));  // warm-up
  TESSERA_RETURN_IF_ERROR(stream->Synchronize());
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    MPI_Barrier(MPI_COMM_WORLD);
    auto start = Clock::now();
    TESSERA_RETURN_IF_ERROR(to.CopyFrom(from, *stream));
    TESSERA_RETURN_IF_ERROR(stream->Synchronize());
    double mine = 2.0 * static_cast<double>(kBytes) / Since(start);
    double node = 0;
    MPI_Allreduce(&mine, &node, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    best = std::max(best, node);
  }
  return best;
}

struct Row {
  std::string name;
  std::string quantize;  // an entry of --quantize: "none", "int8", "int4-f32", ...
  double parameters_billion = 0;
  double weight_bytes = 0;  // all ranks
  // Bytes a decode step reads, all ranks: the weights (quantized: codes, scales and offsets;
  // of the embedding, one row), and the KV cache of the mean context of the decoded tokens.
  double decode_bytes = 0;
  double prefill_tps = 0;
  double decode_tps = 0;
  std::string not_run;  // why the variant cannot run on this model at this TP degree
};

absl::StatusOr<Row> BenchOne(const std::string& name, const std::string& dir,
                             const std::string& quantize, const BenchGenerateConfig& config,
                             comm::Communicator& tp) {
  model::LoadOptions load;
  // "int8-a8": int8 weights with int8 activations; "int4-f32": int4 weights with f32 ones.
  std::string weights = quantize, activations = "auto";
  for (const char* suffix : {"-a8", "-f32"}) {
    if (absl::EndsWith(quantize, suffix)) {
      weights = quantize.substr(0, quantize.size() - std::strlen(suffix));
      activations = std::string(suffix) == "-a8" ? "int8" : "f32";
    }
  }
  TESSERA_ASSIGN_OR_RETURN(load.quantize, model::ParseWeightQuantization(weights, "", activations));
  if (load.quantize.has_value()) {
    // A layout whose TP split would cut a quantization group is refused: say so, and go on
    // with the other variants.
    TESSERA_ASSIGN_OR_RETURN(model::ModelConfig mc, model::LoadModelConfig(dir));
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> checkpoint,
                             model::Checkpoint::Open(dir));
    TESSERA_ASSIGN_OR_RETURN(
        model::WeightPlan plan,
        model::PlanWeights(mc, tp.size(), tp.rank(), model::DetectWeightPlanOptions(*checkpoint)));
    if (absl::Status fits = model::CheckQuantizationFits(mc, plan, *load.quantize); !fits.ok()) {
      Row row;
      row.name = absl::StrCat(name, " ", quantize);
      row.quantize = quantize;
      row.not_run = std::string(fits.message());
      return row;
    }
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Transformer> model,
                           model::Transformer::Load(dir, tp, load));
  const model::ModelConfig& mc = model->config();
  int total = config.prompt_tokens + config.decode_tokens;
  constexpr int kBlock = 16;
  int blocks = (total + kBlock - 1) / kBlock;
  TESSERA_ASSIGN_OR_RETURN(model::KvCache cache, model->AllocateKvCache(blocks, kBlock));
  std::vector<int32_t> tokens;
  for (int i = 0; i < config.prompt_tokens; ++i) {
    tokens.push_back(static_cast<int32_t>((i * 7919 + 13) % mc.vocab_size));
  }
  auto step = [&](int begin, int end) {
    return model->Forward(model::ForwardBatch::SingleSequence(tokens, begin, end, blocks), cache,
                          /*all_positions=*/false);
  };
  MPI_Barrier(MPI_COMM_WORLD);
  auto start = Clock::now();
  TESSERA_ASSIGN_OR_RETURN(Tensor logits, step(0, config.prompt_tokens));
  double prefill = Since(start);
  start = Clock::now();
  for (int i = 0; i < config.decode_tokens; ++i) {
    TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> next, model->NextTokens(logits, {}, {0}));
    tokens.push_back(static_cast<int32_t>(next[0]));
    int length = static_cast<int>(tokens.size());
    TESSERA_ASSIGN_OR_RETURN(logits, step(length - 1, length));
  }
  double decode = Since(start);
  double mine[2] = {static_cast<double>(model->weight_bytes()),
                    static_cast<double>(model->decode_weight_bytes())};
  double sums[2] = {0, 0};
  MPI_Allreduce(mine, sums, 2, MPI_DOUBLE, MPI_SUM,
                tp.size() == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD);
  const double all = sums[0];
  Row row;
  row.name = load.quantize.has_value() ? absl::StrCat(name, " ", quantize) : name;
  row.quantize = quantize;
  row.parameters_billion = static_cast<double>(model::ParameterCount(model->plan())) / 1e9;
  row.weight_bytes = all;
  double kv_mine = static_cast<double>(model->KvBytesPerToken()), kv_all = 0;
  MPI_Allreduce(&kv_mine, &kv_all, 1, MPI_DOUBLE, MPI_SUM,
                tp.size() == 1 ? MPI_COMM_SELF : MPI_COMM_WORLD);
  // Decode step i (0-based) reads the keys and values of prompt_tokens + i + 1 positions.
  const double mean_context = config.prompt_tokens + (config.decode_tokens + 1) / 2.0;
  row.decode_bytes = sums[1] + mean_context * kv_all;
  row.prefill_tps = config.prompt_tokens / prefill;
  row.decode_tps = config.decode_tokens / decode;
  return row;
}

absl::Status BenchGenerate(const BenchGenerateConfig& config, int* argc, char*** argv) {
  if (config.prompt_tokens < 1 || config.decode_tokens < 1) {
    return absl::InvalidArgumentError("--prompt-tokens and --decode-tokens must be >= 1");
  }
  TESSERA_ASSIGN_OR_RETURN(DeviceType device, ParseDeviceFlag(config.device));
  TESSERA_ASSIGN_OR_RETURN(
      MpiJob job,
      StartMpiJob(argc, argv, config.timeout, false,
                  device == DeviceType::kCuda ? HostPlacement::kNearGpu : HostPlacement::kCpuMask));
  comm::MpiCommunicator& world = *job.world;
  TESSERA_ASSIGN_OR_RETURN(comm::Topology topology, comm::Topology::Discover(world));
  if (topology.hosts().size() != 1 && !config.allow_cross_node_tp) {
    return absl::FailedPreconditionError(
        "bench generate measures one node; run it on one host (or, to measure a group that "
        "spans nodes, give --allow-cross-node-tp)");
  }
  TESSERA_ASSIGN_OR_RETURN(comm::Layout layout,
                           comm::Layout::Create(world, topology,
                                                {config.tp == 0 ? world.size() : config.tp,
                                                 config.allow_cross_node_tp}));
  if (layout.dp_size() != 1) {
    return absl::InvalidArgumentError("bench generate runs one replica: give --tp the rank count");
  }
  // On a GPU the model runs over the group's NCCL communicator; layout.tp() bootstraps it.
  std::unique_ptr<comm::Communicator> device_tp;
  if (device == DeviceType::kCuda) {
    TESSERA_ASSIGN_OR_RETURN(device_tp,
                             CreateDeviceTpCommunicator(topology, layout, world.options()));
  }
  comm::Communicator& model_tp = device_tp != nullptr ? *device_tp : layout.tp();
  TESSERA_ASSIGN_OR_RETURN(std::vector<BenchModel> models,
                           BenchModels(config.model, world.rank() == 0));
  double bandwidth = 0;
  ReadBandwidth host_read;
  if (device_tp != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(bandwidth, MeasureDeviceBandwidth(device_tp->device()));
  } else {
    // The world is one node (checked above), or with --allow-cross-node-tp the nodes of one
    // group: every rank reads its shard from its own node's memory, all at once.
    host_read = MeasureNodeReadBandwidth(MPI_COMM_WORLD);
    bandwidth = host_read.bytes_per_second;
  }
  // Every model first, then the probe again: the limit is the better of the two readings.
  std::vector<std::string> variants = absl::StrSplit(config.quantize, ',', absl::SkipEmpty());
  if (device_tp != nullptr) {
    // A GPU takes f32 activations whatever the variant says: the weight formats once each.
    std::vector<std::string> formats;
    for (const std::string& variant : variants) {
      const std::string weights = variant.substr(0, variant.find('-'));
      if (std::find(formats.begin(), formats.end(), weights) == formats.end()) {
        formats.push_back(weights);
      }
    }
    variants = formats;
  }
  std::vector<Row> rows;
  std::vector<size_t> baseline;  // per row: the row of the same model as stored
  for (const BenchModel& m : models) {
    const size_t first = rows.size();
    for (const std::string& variant : variants) {
      TESSERA_ASSIGN_OR_RETURN(Row row, BenchOne(m.name, m.dir, variant, config, model_tp));
      rows.push_back(std::move(row));
      baseline.push_back(first);
    }
  }
  if (device_tp == nullptr) {
    host_read = BetterReadBandwidth(host_read, MeasureNodeReadBandwidth(MPI_COMM_WORLD));
    bandwidth = host_read.bytes_per_second;
  }
  if (world.rank() == 0) {
    std::printf(
        "# tessera bench generate: batch 1, tp %d, %d prompt tokens, %d decoded, on %s, %zu "
        "node(s): %s\n",
        layout.tp_size(), config.prompt_tokens, config.decode_tokens, config.device.c_str(),
        topology.hosts().size(), absl::StrJoin(topology.hosts(), ", ").c_str());
    if (device_tp != nullptr) {
      std::printf(
          "# limit: a decode step reads every weight and its context's cached keys and values "
          "(read MB/tok); GPU memory bandwidth %.2f GB/s "
          "(device-to-device copy, read + write, %d GPUs)\n",
          bandwidth / 1e9, world.size());
    } else {
      std::printf(
          "# limit: a decode step reads every weight and its context's cached keys and values "
          "(read MB/tok); memory read bandwidth %.2f GB/s, measured here before and after the "
          "models (the better of the two): %s\n",
          bandwidth / 1e9, DescribeReadBandwidth(host_read).c_str());
    }
    std::printf(
        "# read GB/s: decode t/s x read MB/tok; ratio: decode t/s over limit t/s (\"cache\": "
        "read MB/tok fits in the last-level caches, no memory limit applies; \"error\": faster "
        "than the limit, a measurement error); x stored: prefill and decode t/s over the same "
        "model's as stored, in this run\n");
    std::printf("%-37s %8s %10s %12s %12s %12s %10s %12s %8s %10s %10s\n", "model", "params",
                "weights", "prefill t/s", "decode t/s", "read MB/tok", "read GB/s", "limit t/s",
                "ratio", "prefill x", "decode x");
  }
  std::vector<std::string> errors;
  if (world.rank() == 0) {
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& row = rows[i];
      const Row& stored = rows[baseline[i]];
      if (!row.not_run.empty()) {
        std::printf("%-37s not run: %s\n", row.name.c_str(), row.not_run.c_str());
        continue;
      }
      const double limit = bandwidth / row.decode_bytes;
      const double read = row.decode_tps * row.decode_bytes;
      // Decode cannot read from memory faster than memory delivers, but bytes that fit in the
      // ranks' last-level caches come from there once warm.
      const HeldAgainstLimit ratio = HoldAgainstLimit(
          read, bandwidth,
          device_tp == nullptr && FitsInLastLevelCaches(row.decode_bytes, world.size()));
      std::printf("%-37s %7.3fB %8.1fMB %12.1f %12.2f %12.2f %10.2f %12.2f %8s %9.2fx %9.2fx\n",
                  row.name.c_str(), row.parameters_billion, row.weight_bytes / 1e6, row.prefill_tps,
                  row.decode_tps, row.decode_bytes / 1e6, read / 1e9, limit, ratio.cell.c_str(),
                  row.prefill_tps / stored.prefill_tps, row.decode_tps / stored.decode_tps);
      if (ratio.error) {
        errors.push_back(
            LimitErrorNote(absl::StrCat(row.name, " decode reads"), read, bandwidth, 1e9, "GB/s"));
      }
      std::fflush(stdout);
    }
  }
  for (const std::string& error : errors) std::printf("%s", error.c_str());
  return absl::OkStatus();
}

}  // namespace

int RunBench(const std::vector<std::string>& args, int* argc, char*** argv) {
  if (!args.empty() && args[0] == "engine") {
    return RunBenchEngine(std::vector<std::string>(args.begin() + 1, args.end()), argc, argv);
  }
  if (!args.empty() && args[0] == "adapters") {
    return RunBenchAdapters(std::vector<std::string>(args.begin() + 1, args.end()), argc, argv);
  }
  if (!args.empty() && args[0] == "kernels") {
    return RunBenchKernels(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  if (!args.empty() && args[0] == "train") {
    return RunBenchTrain(std::vector<std::string>(args.begin() + 1, args.end()), argc, argv);
  }
  if (!args.empty() && args[0] == "serve") {
    return RunBenchServe(std::vector<std::string>(args.begin() + 1, args.end()), argc, argv);
  }
  if (!args.empty() && args[0] == "soak") {
    return RunBenchSoak(std::vector<std::string>(args.begin() + 1, args.end()), argc, argv);
  }
  if (args.empty() || args[0] != "generate") {
    std::fprintf(
        stderr,
        "usage: tessera bench generate|engine|adapters|kernels|serve|soak|train [flags]   (tessera "
        "bench engine --help)\n");
    return args.size() == 1 && (args[0] == "--help" || args[0] == "-h") ? kExitOk : kExitUsage;
  }
  BenchGenerateConfig config;
  FlagSet flags("tessera bench generate",
                "Prefill and decode tokens/s at batch 1, beside the memory-bandwidth limit of "
                "decode.\nWithout --model: the built-in default and a ~0.5B-parameter random "
                "Llama in bf16 (made and cached on first use, about 1 GB).");
  flags.String("model", &config.model, "a Hugging Face model directory or GGUF file");
  flags.String("quantize", &config.quantize,
               "comma-separated weight formats to run each model in: none (as stored), int8, "
               "int4 (--quantize's values, with --quantize-activations auto), each with -a8 "
               "(int8 activations) or -f32 (f32 activations); a GPU runs each weight format once, "
               "with f32 activations");
  flags.Int("tp", &config.tp, "tensor-parallel degree (0: all ranks)");
  flags.Int("prompt-tokens", &config.prompt_tokens, "prompt length");
  flags.Int("decode-tokens", &config.decode_tokens, "tokens decoded");
  AddDeviceFlag(flags, &config.device);
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  flags.Bool("allow-cross-node-tp", &config.allow_cross_node_tp,
             "let the tensor-parallel group span nodes (to measure what that costs)");
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (std::optional<int> done = ParseOrExit(flags, rest)) return *done;
  return ReportExit(BenchGenerate(config, argc, argv));
}

}  // namespace tessera::launcher
