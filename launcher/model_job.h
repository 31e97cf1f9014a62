#ifndef TESSERA_LAUNCHER_MODEL_JOB_H_
#define TESSERA_LAUNCHER_MODEL_JOB_H_

// What every subcommand that runs a model does first: MPI, topology and the TP x DP layout,
// then the model directory (or the built-in default), its tokenizer and this rank's shard,
// on the CPU or (--device cuda) on this rank's GPU.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/layout.h"
#include "comm/topology.h"
#include "launcher/flags.h"
#include "launcher/process.h"
#include "runtime/core/dtype.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_quantization.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"

namespace tessera::launcher {

// "auto" -> nullopt (as stored), "f32", "bf16". INVALID_ARGUMENT naming --dtype otherwise.
absl::StatusOr<std::optional<DType>> ParseDTypeFlag(const std::string& text);

// "cpu" or "cuda". INVALID_ARGUMENT naming --device otherwise; FAILED_PRECONDITION for
// cuda in a build without CUDA support.
absl::StatusOr<DeviceType> ParseDeviceFlag(const std::string& text);
// INVALID_ARGUMENT naming --kv-cache-memory-fraction unless 0 < fraction <= 1.
absl::Status CheckKvCacheMemoryFraction(double fraction);

// Declares --device, writing into *device ("cpu" or "cuda"; its value is the default).
void AddDeviceFlag(FlagSet& flags, std::string* device);
// --quantize and --quantize-group (runtime/model/weight_quantization.h).
struct QuantizeFlags {
  std::string quantize = "none";
  std::string group;  // empty: the default of the kind
  std::string activations = "auto";
};
// Declares --quantize, --quantize-group and --quantize-activations, writing into *flags.
void AddQuantizeFlags(FlagSet& flags, QuantizeFlags* quantize);
// --kv-cache-dtype: "auto" (nullopt: the weights' bf16, else f32) or "int8" (DType::kI8).
// INVALID_ARGUMENT naming the flag otherwise.
absl::StatusOr<std::optional<DType>> ParseKvCacheDtypeFlag(const std::string& text);
// Declares --kv-cache-dtype, writing into *kv_cache_dtype (its value is the default).
void AddKvCacheDtypeFlag(FlagSet& flags, std::string* kv_cache_dtype);
// The quantization the flags ask for (nullopt for none); INVALID_ARGUMENT naming a bad flag.
absl::StatusOr<std::optional<model::WeightQuantization>> ParseQuantizeFlags(
    const QuantizeFlags& quantize);
// The flags as they are passed on to another tessera command (nothing for none).
std::vector<std::string> QuantizeArguments(const QuantizeFlags& quantize);

// Declares --kv-cache-memory-fraction, writing into *fraction (its value is the default).
void AddKvCacheMemoryFractionFlag(FlagSet& flags, double* fraction);

inline constexpr double kDefaultKvCacheMemoryFraction = 0.9;

struct ModelJobOptions {
  std::string model_dir;  // empty: the built-in default
  std::string dtype = "auto";
  QuantizeFlags quantize;
  std::string kv_cache_dtype = "auto";
  int tp = 0;  // 0: every rank in one group
  bool allow_cross_node_tp = false;
  absl::Duration timeout = absl::Minutes(5);
  bool validate = false;
  std::string device = "cpu";  // cpu, or cuda: each rank on the GPU of its local rank
  // With cuda: the share of the GPU memory still free once the weights are loaded that the
  // KV cache may take (ModelJob::device_kv_cache_bytes).
  double kv_cache_memory_fraction = kDefaultKvCacheMemoryFraction;
  // False: stop after the tokenizer, leaving ModelJob::model empty (the trainer loads its
  // own, trainable, shard).
  bool load_model = true;
};

struct ModelJob {
  MpiJob mpi;
  std::unique_ptr<comm::Topology> topology;
  std::unique_ptr<comm::Layout> layout;
  std::string model_dir;  // the directory loaded
  std::shared_ptr<tokenizer::Tokenizer> tokenizer;
  // tokenizer_config.json and chat_template.jinja (special tokens, chat template).
  tokenizer::TokenizerConfig tokenizer_config;
  // With --device cuda: the tensor-parallel group's NCCL communicator on this rank's GPU,
  // which the model runs on. layout->tp() stays the host communicator of the same ranks (the
  // engine's step plans and other host exchanges go there). Declared before `model`, which
  // refers to it.
  std::unique_ptr<comm::Communicator> device_tp;
  std::unique_ptr<model::Transformer> model;
  // With --device cuda: --kv-cache-memory-fraction of the GPU memory free after loading, the
  // KV cache's budget on this rank. 0 on the CPU.
  int64_t device_kv_cache_bytes = 0;

  // The communicator the model runs on: device_tp, or layout->tp() on the CPU.
  comm::Communicator& model_tp() { return device_tp ? *device_tp : layout->tp(); }
};

// With CUDA: an NCCL communicator over `layout`'s tensor-parallel group (layout.tp(), a host
// communicator, bootstraps it) on this rank's GPU as `topology` assigns it (the GPU of its
// local rank). Collective over the group. FAILED_PRECONDITION naming the ranks when a rank of
// the group has no GPU or two share one, and in a build without CUDA.
absl::StatusOr<std::unique_ptr<comm::Communicator>> CreateDeviceTpCommunicator(
    const comm::Topology& topology, comm::Layout& layout, const comm::CommOptions& options);

// Memory a rank holds for one purpose, for ReportPeakMemory: "its weights", 1.2 GB.
struct HeldMemory {
  std::string what;
  uint64_t bytes = 0;
};

// Prints, on world rank 0, every rank's peak resident memory beside what it holds (its
// weights; the weights, gradients and optimizer state of training), each rank's own figures:
//   tessera: rank 1 peak resident memory 1.4 GiB (weights: 512 MiB, AdamW moments: 256 MiB)
// Every rank passes the same number of parts, in the same order. Collective over `world`.
absl::Status ReportPeakMemory(comm::MpiCommunicator& world, const std::vector<HeldMemory>& held);

// Starts MPI and loads the model on every rank (collective). World rank 0 says which model
// it uses and shows loading progress on a terminal.
absl::StatusOr<ModelJob> StartModelJob(const ModelJobOptions& options, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_MODEL_JOB_H_
