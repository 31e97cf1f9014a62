#ifndef TESSERA_RUNTIME_MODEL_DEFAULT_MODEL_H_
#define TESSERA_RUNTIME_MODEL_DEFAULT_MODEL_H_

// The built-in default model, for when no --model is given: a tiny Llama-architecture
// checkpoint with RANDOM weights (so its text is meaningless) and a byte-level tokenizer
// without merges, made deterministically by Tessera itself and cached on disk, so that every
// command runs anywhere without a download. It is a complete Hugging Face model directory
// (config.json, generation_config.json, model.safetensors, tokenizer.json,
// tokenizer_config.json) and loads through the same code as any published checkpoint.

#include <string>

#include "absl/status/statusor.h"

namespace tessera::model {

// Bump when the recipe changes; it names the cache folder.
inline constexpr char kDefaultModelName[] = "tessera-tiny-llama-random-v1";

// The cache folder: $TESSERA_CACHE_DIR, else $XDG_CACHE_HOME/tessera, else
// $HOME/.cache/tessera.
std::string DefaultCacheDirectory();

// Returns the default model's directory, creating it first when absent. Safe to call from
// every rank at once: each writes into a private temporary folder and renames it into place;
// the identical loser's copy is discarded.
absl::StatusOr<std::string> EnsureDefaultModel();

// Writes the default model's files into `dir` (which must exist).
absl::Status WriteDefaultModel(const std::string& dir);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_DEFAULT_MODEL_H_
