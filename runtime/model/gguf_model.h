#ifndef TESSERA_RUNTIME_MODEL_GGUF_MODEL_H_
#define TESSERA_RUNTIME_MODEL_GGUF_MODEL_H_

// A GGUF file's model as a Hugging Face model directory: what its metadata says, written as
// the config.json, generation_config.json, tokenizer.json and tokenizer_config.json that the
// rest of Tessera reads, beside the file itself (linked as model.gguf, read by
// gguf_checkpoint.h). So `--model file.gguf` works wherever `--model DIR` does.
//
// Architectures: "llama" (and Llama-architecture models such as SmolLM2) and "qwen2".
// Tokenizers: "gpt2" (byte-level BPE, with the pre-tokenizer `tokenizer.ggml.pre` names:
// see GgufPreTokenizer). SentencePiece vocabularies ("llama" tokenizer model, with scores
// instead of merges) are refused with a message saying so.

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime/model/gguf_file.h"

namespace tessera::model {

// The files of a model directory, as JSON.
struct GgufModelFiles {
  nlohmann::json config;             // config.json
  nlohmann::json generation_config;  // generation_config.json
  nlohmann::json tokenizer;          // tokenizer.json
  nlohmann::json tokenizer_config;   // tokenizer_config.json
};

// Made from `file`'s metadata. INVALID_ARGUMENT naming the file and the key for an
// architecture, tokenizer model or pre-tokenizer Tessera does not read, or a required key
// that is missing or of the wrong type.
absl::StatusOr<GgufModelFiles> GgufModelFilesOf(const GgufFile& file);

// The Hugging Face pre_tokenizer (tokenizer.json) of llama.cpp's pre-tokenizer name
// (`tokenizer.ggml.pre`), and the normalizer that goes with it (null for none).
// INVALID_ARGUMENT naming the name and the names known.
struct GgufPreTokenizer {
  nlohmann::json pre_tokenizer;
  nlohmann::json normalizer;
  bool ignore_merges = false;
};
absl::StatusOr<GgufPreTokenizer> GgufPreTokenizerOf(absl::string_view name);

// The model directory of the GGUF file at `gguf_path`, in Tessera's cache
// (DefaultCacheDirectory()/gguf/<file stem>-<hash of its absolute path, size and time>),
// written first when absent. Safe to call from every rank at once (see EnsureCachedModel).
absl::StatusOr<std::string> PrepareGgufModel(const std::string& gguf_path);

// The name a model is served and listed under: the last part of what `--model` names, without
// a .gguf extension ("models/Qwen2-0.5B/" -> "Qwen2-0.5B", "a/b.Q4_1.gguf" -> "b.Q4_1").
std::string ModelName(const std::string& model);

// What `--model` names, as a model directory: a directory as it is; a file ending in .gguf
// through PrepareGgufModel. NOT_FOUND naming the path when it is neither.
absl::StatusOr<std::string> ResolveModelPath(const std::string& model);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_GGUF_MODEL_H_
