#include "launcher/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/process.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/transformer.h"

namespace tessera::launcher {
namespace {

struct PerplexityConfig {
  std::string model;  // empty: the built-in default
  std::string text_file;
  int window = 512;    // tokens scored in one forward, each with the window's earlier tokens
  int max_tokens = 0;  // 0: the whole text
  int tp = 0;          // 0: every rank
  std::string dtype = "auto";
  QuantizeFlags quantize;
  std::string kv_cache_dtype = "auto";
  absl::Duration timeout = absl::Minutes(5);
};

// The negative log-likelihood, in nats, of each token of `tokens` after its predecessors in
// the same window: windows of `window` tokens, back to back; the first token of a window is
// context only. Collective over the model's group; the sum is known on every rank.
absl::StatusOr<std::pair<double, int64_t>> ScoreWindows(model::Transformer& model,
                                                        const std::vector<int32_t>& tokens,
                                                        int window) {
  constexpr int kBlock = 16;
  const int blocks = (window + kBlock - 1) / kBlock;
  TESSERA_ASSIGN_OR_RETURN(model::KvCache cache, model.AllocateKvCache(blocks, kBlock));
  double nll = 0;
  int64_t scored = 0;
  for (size_t begin = 0; begin + 1 < tokens.size(); begin += window) {
    const size_t end = std::min(tokens.size(), begin + window);
    std::vector<int32_t> piece(tokens.begin() + begin, tokens.begin() + end);
    const int n = static_cast<int>(piece.size());
    TESSERA_ASSIGN_OR_RETURN(
        Tensor shard,
        model.Forward(model::ForwardBatch::SingleSequence(piece, 0, n, blocks), cache, true));
    TESSERA_ASSIGN_OR_RETURN(Tensor logits, model.GatherLogits(shard));
    const int64_t vocab = logits.dim(1);
    for (int i = 0; i + 1 < n; ++i) {
      const float* row = logits.data<float>() + i * vocab;
      const double top = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - top);
      nll += top + std::log(sum) - row[piece[i + 1]];
      ++scored;
    }
  }
  return std::make_pair(nll, scored);
}

absl::Status Perplexity(const PerplexityConfig& config, int* argc, char*** argv) {
  if (config.text_file.empty()) return absl::InvalidArgumentError("--text: a file is required");
  if (config.window < 2) return absl::InvalidArgumentError("--window must be >= 2");
  std::ifstream file(config.text_file);
  if (!file) return absl::NotFoundError(absl::StrCat("--text: cannot read ", config.text_file));
  std::stringstream text;
  text << file.rdbuf();

  ModelJobOptions options;
  options.model_dir = config.model;
  options.tp = config.tp;
  options.dtype = config.dtype;
  options.quantize = config.quantize;
  options.kv_cache_dtype = config.kv_cache_dtype;
  options.timeout = config.timeout;
  TESSERA_ASSIGN_OR_RETURN(ModelJob job, StartModelJob(options, argc, argv));
  if (job.layout->dp_size() != 1) {
    return absl::InvalidArgumentError("perplexity runs one group: give --tp the rank count");
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> tokens,
                           job.tokenizer->Encode(text.str(), /*add_special_tokens=*/true));
  if (config.max_tokens > 0 && static_cast<int>(tokens.size()) > config.max_tokens) {
    tokens.resize(config.max_tokens);
  }
  const model::ModelConfig& mc = job.model->config();
  const int window =
      mc.max_position_embeddings > 0
          ? static_cast<int>(std::min<int64_t>(config.window, mc.max_position_embeddings))
          : config.window;
  if (tokens.size() < 2) return absl::InvalidArgumentError("--text: fewer than two tokens");
  TESSERA_ASSIGN_OR_RETURN(auto score, ScoreWindows(*job.model, tokens, window));
  if (job.mpi.world->rank() == 0) {
    const double mean = score.first / static_cast<double>(score.second);
    std::printf(
        "perplexity %.4f  (mean NLL %.5f nats over %lld tokens, windows of %d; weights %s, KV "
        "cache %s, TP %d)\n",
        std::exp(mean), mean, static_cast<long long>(score.second), window,
        options.quantize.quantize != "none" ? options.quantize.quantize.c_str()
                                            : options.dtype.c_str(),
        std::string(NameOf(job.model->kv_cache_dtype())).c_str(), job.layout->tp_size());
  }
  return absl::OkStatus();
}

}  // namespace

int RunPerplexity(const std::vector<std::string>& args, int* argc, char*** argv) {
  PerplexityConfig config;
  FlagSet flags("tessera perplexity",
                "A model's perplexity on a text file (mpirun -np N tessera perplexity --text "
                "FILE): the text's tokens in windows of --window, each token scored after the "
                "earlier ones of its window.");
  flags.String("model", &config.model, "Hugging Face model directory or GGUF file");
  flags.String("text", &config.text_file, "the text file to score (UTF-8)");
  flags.Int("window", &config.window, "tokens a forward scores together");
  flags.Int("max-tokens", &config.max_tokens, "score at most this many tokens (0: all)");
  flags.Int("tp", &config.tp, "tensor-parallel degree: the rank count (0: all ranks)");
  flags.String("dtype", &config.dtype, "weights in memory: auto (as stored), f32 or bf16");
  AddQuantizeFlags(flags, &config.quantize);
  AddKvCacheDtypeFlag(flags, &config.kv_cache_dtype);
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(Perplexity(config, argc, argv));
}

}  // namespace tessera::launcher
