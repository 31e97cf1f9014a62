#include "launcher/plan.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/process.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/memory_plan.h"
#include "runtime/model/model_config.h"

namespace tessera::launcher {
namespace {

struct PlanConfig {
  std::string model;  // empty: the built-in default
  int tp = 1;
  std::string dtype = "auto";
  QuantizeFlags quantize;
  std::string kv_cache_dtype = "auto";
  std::string device = "cpu";
  int64_t device_memory = 0;
  int max_context = 0;
  int block_size = 16;
  int max_step_tokens = 512;
  int max_running = 64;
  double kv_cache_memory_fraction = kDefaultKvCacheMemoryFraction;
  int64_t kv_cache_bytes = int64_t{512} << 20;  // a CPU worker's default --kv-cache-memory
};

absl::Status Plan(const PlanConfig& config) {
  std::string dir = config.model;
  if (dir.empty()) {
    TESSERA_ASSIGN_OR_RETURN(dir, model::EnsureDefaultModel());
  }
  TESSERA_ASSIGN_OR_RETURN(dir, model::ResolveModelPath(dir));
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig model_config, model::LoadModelConfig(dir));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> checkpoint,
                           model::Checkpoint::Open(dir));
  model::MemoryPlanOptions options;
  options.tp = config.tp;
  TESSERA_ASSIGN_OR_RETURN(DeviceType device, ParseDeviceFlag(config.device));
  options.gpu = device == DeviceType::kCuda;
  TESSERA_ASSIGN_OR_RETURN(options.dtype, ParseDTypeFlag(config.dtype));
  TESSERA_ASSIGN_OR_RETURN(options.quantize, ParseQuantizeFlags(config.quantize));
  TESSERA_ASSIGN_OR_RETURN(options.kv_cache_dtype, ParseKvCacheDtypeFlag(config.kv_cache_dtype));
  options.max_context = config.max_context;
  options.block_size = config.block_size;
  options.max_step_tokens = config.max_step_tokens;
  options.max_running = config.max_running;
  options.kv_cache_memory_fraction = config.kv_cache_memory_fraction;
  options.kv_cache_bytes = config.kv_cache_bytes;
  options.device_memory = config.device_memory;
  if (options.gpu && options.device_memory == 0) {
    // The GPU of this machine, whole (a worker measures what is free after loading).
    TESSERA_ASSIGN_OR_RETURN(GpuMemory memory, QueryGpuMemory(0));
    options.device_memory = static_cast<int64_t>(memory.total_bytes);
  }
  TESSERA_ASSIGN_OR_RETURN(model::MemoryPlan plan,
                           model::PlanMemory(model_config, *checkpoint, options));
  std::printf("# tessera plan: %s\n%s", dir.c_str(),
              model::DescribeMemoryPlan(model_config, *checkpoint, options, plan).c_str());
  return plan.fits() ? absl::OkStatus()
                     : absl::ResourceExhaustedError("the model does not fit (see above)");
}

}  // namespace

int RunPlan(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  PlanConfig config;
  FlagSet flags("tessera plan",
                "What a model takes in memory on each tensor-parallel rank (weights, KV cache "
                "per token, a step's activations), what is left for the KV cache and how many "
                "sequences of --max-context tokens fit; when it does not fit, what would. "
                "Workers size their KV cache the same way. Exits non-zero when it does not fit.");
  flags.String("model", &config.model, "Hugging Face model directory or GGUF file");
  flags.Int("tp", &config.tp, "tensor-parallel degree");
  flags.String("dtype", &config.dtype, "weights in memory: auto (as stored), f32 or bf16");
  AddQuantizeFlags(flags, &config.quantize);
  AddKvCacheDtypeFlag(flags, &config.kv_cache_dtype);
  AddDeviceFlag(flags, &config.device);
  flags.Bytes("device-memory", &config.device_memory,
              "memory of one device (e.g. 80G); with --device cuda and none, this machine's "
              "first GPU");
  flags.Bytes("kv-cache-memory", &config.kv_cache_bytes,
              "without --device-memory on the CPU: the KV cache's bytes per rank");
  AddKvCacheMemoryFractionFlag(flags, &config.kv_cache_memory_fraction);
  flags.Int("max-context", &config.max_context,
            "tokens of one sequence (0: the model's context length)");
  flags.Int("block-size", &config.block_size, "tokens per KV block");
  flags.Int("max-step-tokens", &config.max_step_tokens, "tokens through the model in one step");
  flags.Int("max-running", &config.max_running, "sequences in one step at most");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(Plan(config));
}

}  // namespace tessera::launcher
