#include "launcher/model_job.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/memory_plan.h"
#include "runtime/model/resident_memory.h"
#if TESSERA_HAVE_CUDA
#include "comm/nccl/nccl_communicator.h"
#endif

namespace tessera::launcher {

absl::StatusOr<std::optional<DType>> ParseDTypeFlag(const std::string& text) {
  if (text == "auto") return std::optional<DType>();
  if (text == "f32") return std::optional<DType>(DType::kF32);
  if (text == "bf16") return std::optional<DType>(DType::kBF16);
  return absl::InvalidArgumentError(absl::StrCat("--dtype: '", text, "' is not auto, f32 or bf16"));
}

absl::StatusOr<DeviceType> ParseDeviceFlag(const std::string& text) {
  if (text == "cpu") return DeviceType::kCpu;
  if (text != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--device: '", text, "' is not cpu or cuda"));
  }
  if (!BuiltWithCuda()) {
    return absl::FailedPreconditionError(
        "--device cuda: this build of Tessera has no CUDA support (TESSERA_CUDA=OFF, or CUDA "
        "and NCCL were not found when it was configured)");
  }
  return DeviceType::kCuda;
}

absl::Status CheckKvCacheMemoryFraction(double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-memory-fraction: ", fraction, " is not in (0, 1]"));
  }
  return absl::OkStatus();
}

void AddDeviceFlag(FlagSet& flags, std::string* device) {
  flags.String("device", device,
               "where the model runs: cpu, or cuda (each rank on the GPU of its local rank, "
               "NCCL between the ranks of a tensor-parallel group)");
}

void AddQuantizeFlags(FlagSet& flags, QuantizeFlags* quantize) {
  flags.String("quantize", &quantize->quantize,
               "weight-only quantization of the layers' projections at load: none, int8, int4, "
               "or stored (a GGUF or GPTQ checkpoint's own 4- and 8-bit groups, int8 for its "
               "other projections) (CPU)");
  flags.String("quantize-group", &quantize->group,
               "inputs per scale: row (int8's default), 32 (int4's default) or 128");
  flags.String("quantize-activations", &quantize->activations,
               "how the quantized products take their activations: f32 (exact), int8 (rounded "
               "per block of 32 as llama.cpp does; integer dot products, faster: int4 about "
               "1.2x in decode and 1.8x in prefill, int8 about 1.3x and 1.5x), or auto (int8 "
               "with int4 weights, f32 with int8 ones)");
}

absl::StatusOr<std::optional<model::WeightQuantization>> ParseQuantizeFlags(
    const QuantizeFlags& quantize) {
  return model::ParseWeightQuantization(quantize.quantize, quantize.group, quantize.activations);
}

std::vector<std::string> QuantizeArguments(const QuantizeFlags& quantize) {
  if (quantize.quantize == "none" || quantize.quantize.empty()) return {};
  std::vector<std::string> args = {"--quantize", quantize.quantize};
  if (!quantize.group.empty()) args.insert(args.end(), {"--quantize-group", quantize.group});
  if (quantize.activations != "auto") {
    args.insert(args.end(), {"--quantize-activations", quantize.activations});
  }
  return args;
}

absl::StatusOr<std::optional<DType>> ParseKvCacheDtypeFlag(const std::string& text) {
  if (text == "auto") return std::nullopt;
  if (text == "int8") return DType::kI8;
  return absl::InvalidArgumentError(
      absl::StrCat("--kv-cache-dtype ", text, ": expected auto or int8"));
}

void AddKvCacheDtypeFlag(FlagSet& flags, std::string* kv_cache_dtype) {
  flags.String("kv-cache-dtype", kv_cache_dtype,
               "the KV cache's keys and values: auto (bf16 for bf16 weights, else f32) or int8 "
               "(a scale per token and head: about twice bf16's tokens in the same memory)");
}

void AddKvCacheMemoryFractionFlag(FlagSet& flags, double* fraction) {
  flags.Double("kv-cache-memory-fraction", fraction,
               "with --device cuda: the share of the GPU memory left free by the weights that "
               "the KV cache takes (instead of --kv-cache-memory)");
}

absl::StatusOr<std::unique_ptr<comm::Communicator>> CreateDeviceTpCommunicator(
    const comm::Topology& topology, comm::Layout& layout, const comm::CommOptions& options) {
#if TESSERA_HAVE_CUDA
  // Every rank of the group sees the same table, so all of them refuse alike instead of some
  // waiting in NCCL's initialization for a rank that gave up.
  std::vector<std::string> problems;
  std::map<std::pair<int, std::string>, int> users;  // (node, GPU uuid) -> first world rank
  for (int world_rank : layout.TpGroupOf(layout.dp_rank())) {
    const comm::RankPlacement& placement = topology.rank(world_rank);
    if (placement.gpu < 0) {
      problems.push_back(absl::StrCat("rank ", world_rank, " on ", placement.host, " sees no GPU"));
      continue;
    }
    if (placement.gpu_uuid.empty()) continue;
    auto [it, first] =
        users.emplace(std::make_pair(placement.node, placement.gpu_uuid), world_rank);
    if (!first) {
      problems.push_back(absl::StrCat("ranks ", it->second, " and ", world_rank, " on ",
                                      placement.host, " would share GPU ", placement.gpu));
    }
  }
  if (!problems.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda needs one GPU per rank: ", absl::StrJoin(problems, "; "),
                     " (start at most as many ranks on a host as it has GPUs, and check "
                     "CUDA_VISIBLE_DEVICES)"));
  }
  const int gpu = topology.rank(layout.world_rank()).gpu;
  TESSERA_ASSIGN_OR_RETURN(
      std::unique_ptr<comm::NcclCommunicator> nccl,
      comm::NcclCommunicator::Create(layout.tp(), Device::Cuda(gpu), options, layout.tp().name()));
  return std::unique_ptr<comm::Communicator>(std::move(nccl));
#else
  (void)topology;
  (void)layout;
  (void)options;
  return absl::FailedPreconditionError("--device cuda: this build of Tessera has no CUDA support");
#endif
}

absl::Status ReportPeakMemory(comm::MpiCommunicator& world, const std::vector<HeldMemory>& held) {
  TESSERA_ASSIGN_OR_RETURN(model::ResidentMemory memory, model::ReadResidentMemory());
  // Per rank: the peak, then each part's bytes.
  const int64_t per_rank = 1 + static_cast<int64_t>(held.size());
  std::vector<int64_t> mine = {static_cast<int64_t>(memory.peak_rss_bytes)};
  for (const HeldMemory& part : held) mine.push_back(static_cast<int64_t>(part.bytes));
  TESSERA_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty(DType::kI64, {per_rank * world.size()}));
  Tensor local = Tensor::Wrap(mine.data(), DType::kI64, {per_rank});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(world.AllGather(local, all, cpu));
  if (world.rank() != 0) return absl::OkStatus();
  for (int r = 0; r < world.size(); ++r) {
    const int64_t* entry = all.data<int64_t>() + per_rank * r;
    std::string parts;
    for (size_t i = 0; i < held.size(); ++i) {
      absl::StrAppend(&parts, i > 0 ? ", " : "", held[i].what, ": ",
                      model::FormatBytes(static_cast<uint64_t>(entry[1 + i])));
    }
    std::fprintf(stderr, "tessera: rank %d peak resident memory %s (%s)\n", r,
                 model::FormatBytes(static_cast<uint64_t>(entry[0])).c_str(), parts.c_str());
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelJob> StartModelJob(const ModelJobOptions& options, int* argc, char*** argv) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<DType> dtype, ParseDTypeFlag(options.dtype));
  TESSERA_ASSIGN_OR_RETURN(DeviceType device, ParseDeviceFlag(options.device));
  if (device == DeviceType::kCuda) {
    TESSERA_RETURN_IF_ERROR(CheckKvCacheMemoryFraction(options.kv_cache_memory_fraction));
  }
  ModelJob job;
  // On the CUDA backend the host threads and memory go to the NUMA node of the rank's GPU.
  TESSERA_ASSIGN_OR_RETURN(
      job.mpi,
      StartMpiJob(argc, argv, options.timeout, options.validate,
                  device == DeviceType::kCuda ? HostPlacement::kNearGpu : HostPlacement::kCpuMask));
  comm::MpiCommunicator& world = *job.mpi.world;
  TESSERA_ASSIGN_OR_RETURN(comm::Topology topology, comm::Topology::Discover(world));
  job.topology = std::make_unique<comm::Topology>(std::move(topology));
  comm::LayoutOptions layout_options{options.tp == 0 ? world.size() : options.tp,
                                     options.allow_cross_node_tp};
  TESSERA_ASSIGN_OR_RETURN(comm::Layout layout,
                           comm::Layout::Create(world, *job.topology, layout_options));
  job.layout = std::make_unique<comm::Layout>(std::move(layout));

  job.model_dir = options.model_dir;
  if (job.model_dir.empty()) {
    TESSERA_ASSIGN_OR_RETURN(job.model_dir, model::EnsureDefaultModel());
    if (world.rank() == 0) {
      std::fprintf(stderr,
                   "tessera: no --model given: using the built-in default %s (tiny, RANDOM "
                   "weights: the text is meaningless) at %s\n",
                   model::kDefaultModelName, job.model_dir.c_str());
    }
  }
  // A .gguf file becomes a model directory in the cache (gguf_model.h).
  TESSERA_ASSIGN_OR_RETURN(job.model_dir, model::ResolveModelPath(job.model_dir));
  model::LoadOptions load;
  load.dtype = dtype;
  TESSERA_ASSIGN_OR_RETURN(load.quantize, ParseQuantizeFlags(options.quantize));
  TESSERA_ASSIGN_OR_RETURN(load.kv_cache_dtype, ParseKvCacheDtypeFlag(options.kv_cache_dtype));
  if (world.rank() == 0 && isatty(fileno(stderr))) {
    load.progress = model::TerminalProgress(stderr, "loading");
  }
  // The tokenizer first: it is quick to read and a missing one should not wait for weights.
  TESSERA_ASSIGN_OR_RETURN(job.tokenizer_config, tokenizer::ReadTokenizerConfig(job.model_dir));
  TESSERA_ASSIGN_OR_RETURN(
      job.tokenizer,
      tokenizer::Tokenizer::FromFile(job.model_dir + "/tokenizer.json", job.tokenizer_config));
  if (!options.load_model) return job;
  if (device == DeviceType::kCuda) {
    TESSERA_ASSIGN_OR_RETURN(
        job.device_tp, CreateDeviceTpCommunicator(*job.topology, *job.layout, world.options()));
  }
  TESSERA_ASSIGN_OR_RETURN(job.model,
                           model::Transformer::Load(job.model_dir, job.model_tp(), load));
  if (device == DeviceType::kCuda) {
    const Device gpu = job.model->device();
    TESSERA_ASSIGN_OR_RETURN(GpuMemory memory, QueryGpuMemory(gpu.index));
    // As `tessera plan` computes it (memory_plan.h).
    job.device_kv_cache_bytes = model::KvCacheBudget(static_cast<int64_t>(memory.free_bytes),
                                                     options.kv_cache_memory_fraction);
    if (world.rank() == 0) {
      std::fprintf(stderr,
                   "tessera: rank 0 runs on %s: weights %s, %s of %s free after loading; the KV "
                   "cache may take %g of it, %s\n",
                   gpu.ToString().c_str(), model::FormatBytes(job.model->weight_bytes()).c_str(),
                   model::FormatBytes(memory.free_bytes).c_str(),
                   model::FormatBytes(memory.total_bytes).c_str(), options.kv_cache_memory_fraction,
                   model::FormatBytes(static_cast<uint64_t>(job.device_kv_cache_bytes)).c_str());
    }
  }
  return job;
}

}  // namespace tessera::launcher
