#include "launcher/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/process.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_quantization.h"

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
  // Also run the model as stored (--dtype, no --quantize, the default KV cache) and compare.
  bool compare = false;
  absl::Duration timeout = absl::Minutes(5);
};

// log(sum exp(row)), in double.
double LogSumExp(const float* row, int64_t vocab) {
  const double top = *std::max_element(row, row + vocab);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - top);
  return top + std::log(sum);
}

struct Scores {
  double nll = 0;  // nats, summed over the scored tokens
  int64_t scored = 0;
  // Against the reference model (--compare), over the same positions:
  double reference_nll = 0;
  int64_t same_top = 0;       // positions whose most likely next token is the reference's
  double max_logit_diff = 0;  // largest |logit - reference logit|
  double kl_divergence = 0;   // sum of KL(reference || model), nats
};

// The negative log-likelihood, in nats, of each token of `tokens` after its predecessors in
// the same window: windows of `window` tokens, back to back; the first token of a window is
// context only. With a `reference`, the same windows through it as well, compared position by
// position. Collective over the models' group; the scores are known on every rank.
absl::StatusOr<Scores> ScoreWindows(model::Transformer& model, model::Transformer* reference,
                                    const std::vector<int32_t>& tokens, int window) {
  constexpr int kBlock = 16;
  const int blocks = (window + kBlock - 1) / kBlock;
  TESSERA_ASSIGN_OR_RETURN(model::KvCache cache, model.AllocateKvCache(blocks, kBlock));
  std::optional<model::KvCache> reference_cache;
  if (reference != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(reference_cache, reference->AllocateKvCache(blocks, kBlock));
  }
  auto logits_of = [&](model::Transformer& m, model::KvCache& kv,
                       const std::vector<int32_t>& piece) -> absl::StatusOr<Tensor> {
    const int n = static_cast<int>(piece.size());
    TESSERA_ASSIGN_OR_RETURN(
        Tensor shard,
        m.Forward(model::ForwardBatch::SingleSequence(piece, 0, n, blocks), kv, true));
    return m.GatherLogits(shard);
  };
  Scores scores;
  for (size_t begin = 0; begin + 1 < tokens.size(); begin += window) {
    const size_t end = std::min(tokens.size(), begin + window);
    std::vector<int32_t> piece(tokens.begin() + begin, tokens.begin() + end);
    const int n = static_cast<int>(piece.size());
    TESSERA_ASSIGN_OR_RETURN(Tensor logits, logits_of(model, cache, piece));
    Tensor reference_logits;
    if (reference != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(reference_logits, logits_of(*reference, *reference_cache, piece));
    }
    const int64_t vocab = logits.dim(1);
    for (int i = 0; i + 1 < n; ++i) {
      const float* row = logits.data<float>() + i * vocab;
      const double log_z = LogSumExp(row, vocab);
      scores.nll += log_z - row[piece[i + 1]];
      ++scores.scored;
      if (reference == nullptr) continue;
      const float* ref = reference_logits.data<float>() + i * vocab;
      const double ref_log_z = LogSumExp(ref, vocab);
      scores.reference_nll += ref_log_z - ref[piece[i + 1]];
      scores.same_top +=
          std::max_element(row, row + vocab) - row == std::max_element(ref, ref + vocab) - ref;
      for (int64_t v = 0; v < vocab; ++v) {
        scores.max_logit_diff =
            std::max(scores.max_logit_diff, std::abs(static_cast<double>(row[v]) - ref[v]));
        const double ref_log_p = ref[v] - ref_log_z;
        scores.kl_divergence += std::exp(ref_log_p) * (ref_log_p - (row[v] - log_z));
      }
    }
  }
  return scores;
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
  std::unique_ptr<model::Transformer> reference;
  if (config.compare) {
    model::LoadOptions load;
    TESSERA_ASSIGN_OR_RETURN(load.dtype, ParseDTypeFlag(config.dtype));
    TESSERA_ASSIGN_OR_RETURN(reference,
                             model::Transformer::Load(job.model_dir, job.model_tp(), load));
  }
  TESSERA_ASSIGN_OR_RETURN(Scores scores,
                           ScoreWindows(*job.model, reference.get(), tokens, window));
  TESSERA_ASSIGN_OR_RETURN(const std::optional<model::WeightQuantization> quantization,
                           ParseQuantizeFlags(options.quantize));
  if (job.mpi.world->rank() == 0) {
    const double count = static_cast<double>(scores.scored);
    const double mean = scores.nll / count;
    const std::string weights = quantization.has_value() ? quantization->ToString() : options.dtype;
    std::printf(
        "perplexity %.4f  (mean NLL %.5f nats over %lld tokens, windows of %d; weights %s, KV "
        "cache %s, TP %d)\n",
        std::exp(mean), mean, static_cast<long long>(scores.scored), window, weights.c_str(),
        std::string(NameOf(job.model->kv_cache_dtype())).c_str(), job.layout->tp_size());
    if (reference != nullptr) {
      const double reference_ppl = std::exp(scores.reference_nll / count);
      std::printf(
          "against the weights as stored (%s, KV cache %s): perplexity %.4f (%+.2f%%); same "
          "most likely token at %lld of %lld positions (%.2f%%); mean KL divergence %.3g nats; "
          "largest logit difference %.4g\n",
          config.dtype.c_str(), std::string(NameOf(reference->kv_cache_dtype())).c_str(),
          reference_ppl, 100.0 * (std::exp(mean) / reference_ppl - 1.0),
          static_cast<long long>(scores.same_top), static_cast<long long>(scores.scored),
          100.0 * static_cast<double>(scores.same_top) / count, scores.kl_divergence / count,
          scores.max_logit_diff);
    }
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
  flags.Bool("compare", &config.compare,
             "also run the model as stored (--dtype, no --quantize, the default KV cache) and "
             "report how far the quantized one is from it: perplexity, same most likely token, "
             "KL divergence, largest logit difference");
  flags.Duration("timeout", &config.timeout, "deadline of each collective");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(Perplexity(config, argc, argv));
}

}  // namespace tessera::launcher
