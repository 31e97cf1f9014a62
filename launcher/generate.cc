#include "launcher/generate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "comm/layout.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/topology.h"
#include "launcher/engine_flags.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/offline_generate.h"
#include "launcher/process.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/resident_memory.h"
#include "runtime/model/transformer.h"
#include "runtime/serve/prompt_encoder.h"
#include "runtime/tokenizer/tokenizer.h"

namespace tessera::launcher {
namespace {

using Clock = std::chrono::steady_clock;

struct GenerateConfig {
  std::string model;  // empty: the built-in default
  int tp = 0;         // 0: every rank in one group
  bool allow_cross_node_tp = false;
  std::string prompt = "Hello";
  std::string prompts_file;
  bool chat = false;   // each prompt is a user message, rendered with the chat template
  std::string system;  // with chat: a system message before it
  int max_tokens = 64;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  int seed = 0;
  bool ignore_eos = false;
  std::string dtype = "auto";
  QuantizeFlags quantize;
  std::string kv_cache_dtype = "auto";
  std::string device = "cpu";
  double kv_cache_memory_fraction = kDefaultKvCacheMemoryFraction;
  absl::Duration timeout = absl::Minutes(5);
  bool validate = false;
  std::string requests_file;  // set: offline generation through the engine
  std::string output_file;
  std::string adapters;  // --adapters: name=DIR,... for the requests' "adapter" field
  engine::EngineOptions engine;
};

absl::StatusOr<std::vector<std::string>> ReadPrompts(const GenerateConfig& config) {
  if (config.prompts_file.empty()) return std::vector<std::string>{config.prompt};
  std::ifstream file(config.prompts_file);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("--prompts: cannot read ", config.prompts_file));
  }
  std::vector<std::string> prompts;
  for (std::string line; std::getline(file, line);) {
    if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompts: ", config.prompts_file, " holds no prompt (one per line)"));
  }
  return prompts;
}

// Statistics of one run, for the report on stderr.
struct Throughput {
  int64_t prefill_tokens = 0;
  double prefill_seconds = 0;
  int64_t decode_tokens = 0;
  double decode_seconds = 0;
};

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// A prompt's tokens as a server would encode it (serve/prompt_encoder.h): the text with the
// tokenizer's special tokens, or with --chat a conversation in the model's chat template.
absl::StatusOr<std::vector<int32_t>> PromptTokens(const serve::PromptEncoder& encoder,
                                                  const GenerateConfig& config,
                                                  const std::string& prompt) {
  v1::GenerateRequest request;
  if (!config.chat) {
    request.set_prompt(prompt);
    return encoder.Encode(request);
  }
  if (!config.system.empty()) {
    v1::ChatMessage& system = *request.add_messages();
    system.set_role("system");
    system.set_content(config.system);
  }
  v1::ChatMessage& user = *request.add_messages();
  user.set_role("user");
  user.set_content(prompt);
  return encoder.Encode(request);
}

// Generates for one prompt on this replica's group; its TP rank 0 writes the text as it
// comes (to stdout when `stream`, else into *text).
absl::Status GenerateOne(model::Transformer& model, const serve::PromptEncoder& encoder,
                         const GenerateConfig& config, const std::string& prompt, bool leader,
                         bool stream, std::string* text, Throughput* stats) {
  const tokenizer::Tokenizer& tok = encoder.tokenizer();
  TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, PromptTokens(encoder, config, prompt));
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  const model::ModelConfig& mc = model.config();
  int64_t total = static_cast<int64_t>(tokens.size()) + config.max_tokens;
  if (mc.max_position_embeddings > 0 && total > mc.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", tokens.size(), " tokens) + --max-tokens ", config.max_tokens,
                     " exceeds the model's context of ", mc.max_position_embeddings, " tokens"));
  }
  constexpr int kBlock = 16;
  int blocks = static_cast<int>((total + kBlock - 1) / kBlock);
  TESSERA_ASSIGN_OR_RETURN(model::KvCache cache, model.AllocateKvCache(blocks, kBlock));
  auto step = [&](int begin, int end) {
    return model.Forward(model::ForwardBatch::SingleSequence(tokens, begin, end, blocks), cache,
                         /*all_positions=*/false);
  };
  kernels::SamplingParams sampling{config.temperature, config.top_k, config.top_p,
                                   static_cast<uint64_t>(config.seed)};
  const std::vector<int64_t>& stop = mc.generation.eos_token_ids;  // as the engine's

  tokenizer::StreamingDecoder decoder(tok, /*skip_special_tokens=*/true);
  auto emit = [&](const std::string& piece) {
    if (!leader || piece.empty()) return;
    if (stream) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    } else {
      text->append(piece);
    }
  };
  auto start = Clock::now();
  int prompt_length = static_cast<int>(tokens.size());
  TESSERA_ASSIGN_OR_RETURN(Tensor logits, step(0, prompt_length));
  stats->prefill_seconds += Seconds(start);
  stats->prefill_tokens += prompt_length;
  start = Clock::now();
  for (int i = 0; i < config.max_tokens; ++i) {
    TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> next,
                             model.NextTokens(logits, sampling, {static_cast<uint64_t>(i)}));
    int32_t token = static_cast<int32_t>(next[0]);
    ++stats->decode_tokens;
    if (!config.ignore_eos && std::find(stop.begin(), stop.end(), token) != stop.end()) break;
    TESSERA_ASSIGN_OR_RETURN(std::string piece, decoder.Add(token));
    emit(piece);
    tokens.push_back(token);
    if (i + 1 == config.max_tokens) break;
    int length = static_cast<int>(tokens.size());
    TESSERA_ASSIGN_OR_RETURN(logits, step(length - 1, length));
  }
  emit(decoder.Flush());
  stats->decode_seconds += Seconds(start);
  return absl::OkStatus();
}

absl::Status Generate(const GenerateConfig& config, int* argc, char*** argv) {
  std::vector<std::string> prompts;
  if (config.requests_file.empty()) {
    TESSERA_ASSIGN_OR_RETURN(prompts, ReadPrompts(config));
  } else if (!config.prompts_file.empty()) {
    return absl::InvalidArgumentError("--requests and --prompts: give one of them");
  } else if (config.chat) {
    return absl::InvalidArgumentError("--chat and --requests: give one of them");
  }
  if (!config.system.empty() && !config.chat) {
    return absl::InvalidArgumentError("--system: needs --chat");
  }
  // Adapters serve the engine's requests; one-prompt generation runs the base model alone.
  TESSERA_ASSIGN_OR_RETURN(std::vector<engine::AdapterSpec> adapters,
                           ParseAdapterList(config.adapters));
  if (!adapters.empty() && config.requests_file.empty()) {
    return absl::InvalidArgumentError("--adapters: needs --requests (each line names its adapter)");
  }
  TESSERA_RETURN_IF_ERROR(
      kernels::ValidateSamplingParams({config.temperature, config.top_k, config.top_p, 0}));
  if (config.max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be >= 1");

  ModelJobOptions options;
  options.model_dir = config.model;
  options.dtype = config.dtype;
  options.quantize = config.quantize;
  options.kv_cache_dtype = config.kv_cache_dtype;
  options.tp = config.tp;
  options.allow_cross_node_tp = config.allow_cross_node_tp;
  options.timeout = config.timeout;
  options.validate = config.validate;
  options.device = config.device;
  options.kv_cache_memory_fraction = config.kv_cache_memory_fraction;
  TESSERA_ASSIGN_OR_RETURN(ModelJob job, StartModelJob(options, argc, argv));
  comm::MpiCommunicator* world = job.mpi.world.get();
  comm::Layout& layout = *job.layout;
  tokenizer::Tokenizer* tok = job.tokenizer.get();
  model::Transformer* model = job.model.get();
  bool leader = layout.tp_rank() == 0;

  if (!config.requests_file.empty()) {
    OfflineJob offline{config.requests_file, config.output_file,
                       EngineOptionsFor(job, config.engine)};
    offline.engine.adapters = std::move(adapters);
    // Rank 0 alone learns whether some requests failed; everyone still meets at the end.
    absl::Status ran = RunOfflineJob(offline, *world, layout, *model, *tok);
    absl::Status met = world->Barrier();
    return ran.ok() ? met : ran;
  }

  const serve::PromptEncoder encoder(job.tokenizer, job.tokenizer_config);
  if (config.chat) TESSERA_RETURN_IF_ERROR(encoder.chat_status());
  // Replicas take the prompts round robin; one replica streams, several print whole answers.
  bool stream = layout.dp_size() == 1 && prompts.size() == 1;
  Throughput stats;
  for (size_t i = layout.dp_rank(); i < prompts.size(); i += layout.dp_size()) {
    std::string text;
    TESSERA_RETURN_IF_ERROR(
        GenerateOne(*model, encoder, config, prompts[i], leader, stream, &text, &stats));
    if (leader && stream) std::printf("\n");
    if (leader && !stream) std::printf("[%zu] %s\n", i, text.c_str());
    std::fflush(stdout);
  }
  TESSERA_RETURN_IF_ERROR(ReportPeakMemory(*world, {{"its weights", model->weight_bytes()}}));
  if (world->rank() == 0) {
    std::fprintf(stderr,
                 "tessera: tp %d x dp %d; prefill %lld tokens at %.1f tokens/s, decode %lld "
                 "tokens at %.1f tokens/s (replica 0)\n",
                 layout.tp_size(), layout.dp_size(), static_cast<long long>(stats.prefill_tokens),
                 stats.prefill_tokens / std::max(stats.prefill_seconds, 1e-9),
                 static_cast<long long>(stats.decode_tokens),
                 stats.decode_tokens / std::max(stats.decode_seconds, 1e-9));
  }
  return world->Barrier();
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args, int* argc, char*** argv) {
  GenerateConfig config;
  FlagSet flags("tessera generate",
                "Generates text with a Hugging Face model directory (Llama, Mistral, Qwen2, GLM), "
                "tensor-parallel across the ranks:\n  mpirun -np 2 tessera generate --tp 2 "
                "--prompt \"Hello\"\nWithout --model it uses a built-in tiny model with random "
                "weights. Greedy unless --temperature > 0.");
  flags.String("model", &config.model,
               "Hugging Face model directory or GGUF file (default: built-in)");
  flags.Int("tp", &config.tp, "tensor-parallel degree (0: all ranks in one group)");
  flags.Bool("allow-cross-node-tp", &config.allow_cross_node_tp,
             "let a tensor-parallel group span nodes");
  flags.String("prompt", &config.prompt, "the prompt");
  flags.String("prompts", &config.prompts_file, "a file of prompts, one per line");
  flags.Bool("chat", &config.chat,
             "each prompt is a user message, rendered with the model's chat template");
  flags.String("system", &config.system, "with --chat: a system message before each prompt");
  flags.String("requests", &config.requests_file,
               "a JSON Lines file of requests, run through the serving engine (continuous "
               "batching); results in --output");
  flags.String("output", &config.output_file, "where --requests writes results (default: stdout)");
  config.engine.kv_cache_bytes = int64_t{512} << 20;
  AddEngineFlags(flags, &config.engine);
  AddAdapterFlags(flags, &config.adapters, &config.engine);
  flags.Int("max-tokens", &config.max_tokens, "tokens to generate per prompt");
  flags.String("dtype", &config.dtype, "weights in memory: auto (as stored), f32 or bf16");
  AddQuantizeFlags(flags, &config.quantize);
  AddKvCacheDtypeFlag(flags, &config.kv_cache_dtype);
  AddDeviceFlag(flags, &config.device);
  AddKvCacheMemoryFractionFlag(flags, &config.kv_cache_memory_fraction);
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  flags.Bool("validate", &config.validate, "ranks cross-check every collective");
  flags.Bool("ignore-eos", &config.ignore_eos, "keep generating past end-of-sequence tokens");
  flags.Int("top-k", &config.top_k, "sample among the k most likely tokens (0: all)");
  flags.Int("seed", &config.seed, "seed of the sampler");
  double temperature = 0, top_p = 1;
  std::string temperature_text = "0", top_p_text = "1";
  flags.String("temperature", &temperature_text, "sampling temperature (0: greedy)");
  flags.String("top-p", &top_p_text, "nucleus sampling mass in (0, 1]");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  if (!absl::SimpleAtod(temperature_text, &temperature) || !absl::SimpleAtod(top_p_text, &top_p)) {
    std::fprintf(stderr, "tessera generate: --temperature and --top-p take numbers\n");
    return kExitUsage;
  }
  config.temperature = static_cast<float>(temperature);
  config.top_p = static_cast<float>(top_p);
  return ReportExit(Generate(config, argc, argv));
}

}  // namespace tessera::launcher
