#include "runtime/model/gguf_model.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"

namespace tessera::model {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// llama.cpp's token types (tokenizer.ggml.token_type).
constexpr int64_t kTokenNormal = 1;
constexpr int64_t kTokenUnknown = 2;
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

// The Hugging Face model type of each GGUF architecture Tessera reads.
struct Architecture {
  absl::string_view gguf;
  absl::string_view model_type;
  absl::string_view class_name;
};
constexpr Architecture kArchitectures[] = {
    {"llama", "llama", "LlamaForCausalLM"},
    {"qwen2", "qwen2", "Qwen2ForCausalLM"},
};

// The pre-tokenizer regexes of the model families, as their tokenizer.json files write them.
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

Json SplitThenByteLevel(const char* pattern) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"},
             {"pattern", {{"Regex", pattern}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            ByteLevel(/*use_regex=*/false)}}};
}

absl::Status Invalid(const GgufFile& file, absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file.path(), ": ", key, ": ", what));
}

// An optional unsigned key: `fallback` when absent.
absl::StatusOr<uint64_t> UnsignedOr(const GgufFile& file, absl::string_view key,
                                    uint64_t fallback) {
  if (file.Find(key) == nullptr) return fallback;
  return file.GetUnsigned(key);
}

absl::StatusOr<double> FloatOr(const GgufFile& file, absl::string_view key, double fallback) {
  if (file.Find(key) == nullptr) return fallback;
  return file.GetFloat(key);
}

// "float32", or the 16-bit type every stored matrix has (a file of f16 weights runs as f16).
std::string TorchDType(const GgufFile& file) {
  std::set<GgmlType> matrix_types;
  for (const GgufTensorInfo& info : file.tensors()) {
    if (info.dims.size() >= 2) matrix_types.insert(info.type);
  }
  if (matrix_types == std::set<GgmlType>{GgmlType::kBF16}) return "bfloat16";
  if (matrix_types == std::set<GgmlType>{GgmlType::kF16}) return "float16";
  return "float32";
}

absl::StatusOr<Json> ConfigJson(const GgufFile& file, const Architecture& arch,
                                int64_t vocab_size) {
  const std::string p = std::string(arch.gguf) + ".";
  TESSERA_ASSIGN_OR_RETURN(uint64_t hidden, file.GetUnsigned(p + "embedding_length"));
  TESSERA_ASSIGN_OR_RETURN(uint64_t layers, file.GetUnsigned(p + "block_count"));
  TESSERA_ASSIGN_OR_RETURN(uint64_t intermediate, file.GetUnsigned(p + "feed_forward_length"));
  TESSERA_ASSIGN_OR_RETURN(uint64_t heads, file.GetUnsigned(p + "attention.head_count"));
  TESSERA_ASSIGN_OR_RETURN(uint64_t kv_heads,
                           UnsignedOr(file, p + "attention.head_count_kv", heads));
  if (heads == 0 || hidden % heads != 0) {
    return Invalid(file, p + "attention.head_count",
                   absl::StrCat(heads, " heads do not divide the hidden size ", hidden));
  }
  TESSERA_ASSIGN_OR_RETURN(uint64_t head_dim,
                           UnsignedOr(file, p + "attention.key_length", hidden / heads));
  TESSERA_ASSIGN_OR_RETURN(double eps, file.GetFloat(p + "attention.layer_norm_rms_epsilon"));
  TESSERA_ASSIGN_OR_RETURN(double theta, FloatOr(file, p + "rope.freq_base", 10000.0));
  TESSERA_ASSIGN_OR_RETURN(uint64_t context, UnsignedOr(file, p + "context_length", 4096));
  TESSERA_ASSIGN_OR_RETURN(uint64_t rotary_dims,
                           UnsignedOr(file, p + "rope.dimension_count", head_dim));
  if (rotary_dims != head_dim) {
    return Invalid(file, p + "rope.dimension_count",
                   absl::StrCat(rotary_dims, " rotary dimensions of ", head_dim,
                                " per head: partial rotary embeddings are not read from GGUF"));
  }
  Json config = {{"architectures", {arch.class_name}},
                 {"model_type", arch.model_type},
                 {"hidden_size", hidden},
                 {"intermediate_size", intermediate},
                 {"num_hidden_layers", layers},
                 {"num_attention_heads", heads},
                 {"num_key_value_heads", kv_heads},
                 {"head_dim", head_dim},
                 {"hidden_act", "silu"},
                 {"rms_norm_eps", eps},
                 {"rope_theta", theta},
                 {"max_position_embeddings", context},
                 {"vocab_size", vocab_size},
                 {"tie_word_embeddings", file.FindTensor("output.weight") == nullptr},
                 {"torch_dtype", TorchDType(file)}};
  if (file.Find(p + "rope.scaling.type") != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(std::string type, file.GetString(p + "rope.scaling.type"));
    if (type == "linear") {
      TESSERA_ASSIGN_OR_RETURN(double factor, file.GetFloat(p + "rope.scaling.factor"));
      config["rope_scaling"] = {{"rope_type", "linear"}, {"factor", factor}};
    } else if (type != "none") {
      return Invalid(file, p + "rope.scaling.type",
                     absl::StrCat("'", type, "' is not read from GGUF (linear or none)"));
    }
  }
  if (file.FindTensor("rope_freqs.weight") != nullptr) {
    return Invalid(file, "rope_freqs.weight",
                   "per-frequency rotary factors (Llama 3.1 scaling) are not read from GGUF");
  }
  return config;
}

// The token strings, their types (normal when absent) and merges.
struct Vocabulary {
  std::vector<std::string> tokens;
  std::vector<int64_t> types;
  std::vector<std::string> merges;
};

absl::StatusOr<Vocabulary> ReadVocabulary(const GgufFile& file) {
  Vocabulary vocabulary;
  TESSERA_ASSIGN_OR_RETURN(const std::vector<GgufValue>* tokens,
                           file.GetArray("tokenizer.ggml.tokens", GgufValueType::kString));
  for (const GgufValue& token : *tokens) vocabulary.tokens.push_back(*token.AsString());
  vocabulary.types.assign(vocabulary.tokens.size(), kTokenNormal);
  if (const GgufValue* types = file.Find("tokenizer.ggml.token_type")) {
    const std::vector<GgufValue>* list = types->AsArray();
    if (list == nullptr || list->size() != vocabulary.tokens.size()) {
      return Invalid(file, "tokenizer.ggml.token_type",
                     absl::StrCat("is ", types->DebugString(), ", expected an integer per token (",
                                  vocabulary.tokens.size(), ")"));
    }
    for (size_t i = 0; i < list->size(); ++i) {
      std::optional<int64_t> type = (*list)[i].AsSigned();
      if (!type.has_value()) {
        return Invalid(file, "tokenizer.ggml.token_type",
                       absl::StrCat("entry ", i, " is not an integer"));
      }
      vocabulary.types[i] = *type;
    }
  }
  // A vocabulary of bytes alone has no merges, and llama.cpp then writes none.
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(const std::vector<GgufValue>* merges,
                             file.GetArray("tokenizer.ggml.merges", GgufValueType::kString));
    for (const GgufValue& merge : *merges) vocabulary.merges.push_back(*merge.AsString());
  }
  return vocabulary;
}

// A token id key, checked against the vocabulary; nullopt when absent.
absl::StatusOr<std::optional<int64_t>> TokenId(const GgufFile& file, absl::string_view key,
                                               size_t vocab_size) {
  if (file.Find(key) == nullptr) return std::nullopt;
  TESSERA_ASSIGN_OR_RETURN(uint64_t id, file.GetUnsigned(key));
  if (id >= vocab_size) {
    return Invalid(file, key,
                   absl::StrCat("token ", id, " is outside the vocabulary of ", vocab_size));
  }
  return static_cast<int64_t>(id);
}

absl::StatusOr<Json> TokenizerJson(const GgufFile& file, const Vocabulary& vocabulary) {
  TESSERA_ASSIGN_OR_RETURN(std::string model, file.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return Invalid(file, "tokenizer.ggml.model",
                   absl::StrCat("'", model,
                                "' is not read from GGUF (only 'gpt2', byte-level BPE; a "
                                "SentencePiece vocabulary has scores, not merges)"));
  }
  const std::string pre_name = file.Find("tokenizer.ggml.pre") != nullptr
                                   ? *file.Find("tokenizer.ggml.pre")->AsString()
                                   : std::string("default");
  absl::StatusOr<GgufPreTokenizer> pre = GgufPreTokenizerOf(pre_name);
  if (!pre.ok()) return Invalid(file, "tokenizer.ggml.pre", pre.status().message());

  Json vocab = Json::object();
  Json added = Json::array();
  for (size_t id = 0; id < vocabulary.tokens.size(); ++id) {
    const std::string& token = vocabulary.tokens[id];
    if (vocab.contains(token)) {
      return Invalid(file, "tokenizer.ggml.tokens",
                     absl::StrCat("token ", id, " repeats token ", vocab[token].get<int64_t>()));
    }
    vocab[token] = id;
    const int64_t type = vocabulary.types[id];
    if (type == kTokenControl || type == kTokenUnknown || type == kTokenUserDefined) {
      const bool special = type != kTokenUserDefined;
      added.push_back({{"id", id},
                       {"content", token},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", !special},
                       {"special", special}});
    }
  }
  return Json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", pre->normalizer},
              {"pre_tokenizer", pre->pre_tokenizer},
              {"post_processor", nullptr},
              {"decoder",
               {{"type", "ByteLevel"},
                {"add_prefix_space", true},
                {"trim_offsets", true},
                {"use_regex", true}}},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", pre->ignore_merges},
                {"vocab", vocab},
                {"merges", vocabulary.merges}}}};
}

absl::Status WriteJson(const fs::path& path, const Json& json) {
  std::ofstream out(path, std::ios::trunc);
  out << json.dump(2) << "\n";
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GgufPreTokenizer> GgufPreTokenizerOf(absl::string_view name) {
  GgufPreTokenizer pre;
  if (name == "llama3" || name == "llama-v3" || name == "llama-bpe" || name == "falcon3") {
    pre.pre_tokenizer = SplitThenByteLevel(kLlama3Pattern);
    pre.ignore_merges = true;
  } else if (name == "qwen2") {
    pre.pre_tokenizer = SplitThenByteLevel(kQwen2Pattern);
    pre.normalizer = {{"type", "NFC"}};
  } else if (name == "smollm" || name == "starcoder") {
    // Every digit apart, then GPT-2's byte-level split.
    pre.pre_tokenizer = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Digits"}, {"individual_digits", true}}, ByteLevel(/*use_regex=*/true)}}};
  } else if (name == "gpt-2") {
    pre.pre_tokenizer = ByteLevel(/*use_regex=*/true);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "pre-tokenizer '", name,
        "' is not known to Tessera (llama3, llama-bpe, qwen2, smollm, starcoder, gpt-2)"));
  }
  return pre;
}

absl::StatusOr<GgufModelFiles> GgufModelFilesOf(const GgufFile& file) {
  TESSERA_ASSIGN_OR_RETURN(std::string arch_name, file.GetString("general.architecture"));
  const Architecture* arch = nullptr;
  for (const Architecture& candidate : kArchitectures) {
    if (candidate.gguf == arch_name) arch = &candidate;
  }
  if (arch == nullptr) {
    return Invalid(file, "general.architecture",
                   absl::StrCat("'", arch_name, "' is not read from GGUF (llama, qwen2)"));
  }
  TESSERA_ASSIGN_OR_RETURN(Vocabulary vocabulary, ReadVocabulary(file));
  const size_t vocab_size = vocabulary.tokens.size();

  GgufModelFiles files;
  TESSERA_ASSIGN_OR_RETURN(files.config, ConfigJson(file, *arch, static_cast<int64_t>(vocab_size)));
  TESSERA_ASSIGN_OR_RETURN(files.tokenizer, TokenizerJson(file, vocabulary));

  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> bos,
                           TokenId(file, "tokenizer.ggml.bos_token_id", vocab_size));
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> eos,
                           TokenId(file, "tokenizer.ggml.eos_token_id", vocab_size));
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> eot,
                           TokenId(file, "tokenizer.ggml.eot_token_id", vocab_size));
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> pad,
                           TokenId(file, "tokenizer.ggml.padding_token_id", vocab_size));
  Json end_ids = Json::array();
  if (eos.has_value()) end_ids.push_back(*eos);
  if (eot.has_value() && eot != eos) end_ids.push_back(*eot);

  files.generation_config = Json::object();
  files.tokenizer_config = Json::object();
  if (bos.has_value()) {
    files.config["bos_token_id"] = *bos;
    files.generation_config["bos_token_id"] = *bos;
    files.tokenizer_config["bos_token"] = vocabulary.tokens[*bos];
  }
  if (!end_ids.empty()) {
    files.config["eos_token_id"] = end_ids.size() == 1 ? end_ids[0] : end_ids;
    files.generation_config["eos_token_id"] = files.config["eos_token_id"];
    files.tokenizer_config["eos_token"] = vocabulary.tokens[*(eos.has_value() ? eos : eot)];
  }
  if (pad.has_value()) files.generation_config["pad_token_id"] = *pad;

  for (const char* key : {"add_bos_token", "add_eos_token"}) {
    const std::string gguf_key = absl::StrCat("tokenizer.ggml.", key);
    if (file.Find(gguf_key) == nullptr) continue;
    TESSERA_ASSIGN_OR_RETURN(bool value, file.GetBool(gguf_key));
    files.tokenizer_config[key] = value;
  }
  if (file.Find("tokenizer.chat_template") != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(std::string chat_template, file.GetString("tokenizer.chat_template"));
    files.tokenizer_config["chat_template"] = chat_template;
  }
  return files;
}

absl::StatusOr<std::string> PrepareGgufModel(const std::string& gguf_path) {
  std::error_code error;
  const fs::path absolute = fs::absolute(gguf_path, error);
  struct stat st;
  if (error || ::stat(absolute.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("--model: ", gguf_path, ": no such file"));
  }
  // The folder is keyed by the file's identity, so that a changed file gets a new one.
  const std::string identity = absl::StrCat(absolute.string(), "\n", st.st_size, "\n",
                                            st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
  const std::string name = absl::StrFormat("gguf/%s-%016x", absolute.stem().string(),
                                           std::hash<std::string>{}(identity));
  return EnsureCachedModel(name, [&](const std::string& dir) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(absolute.string()));
    TESSERA_ASSIGN_OR_RETURN(GgufModelFiles files, GgufModelFilesOf(*file));
    const fs::path root(dir);
    TESSERA_RETURN_IF_ERROR(WriteJson(root / "config.json", files.config));
    TESSERA_RETURN_IF_ERROR(WriteJson(root / "generation_config.json", files.generation_config));
    TESSERA_RETURN_IF_ERROR(WriteJson(root / "tokenizer.json", files.tokenizer));
    TESSERA_RETURN_IF_ERROR(WriteJson(root / "tokenizer_config.json", files.tokenizer_config));
    std::error_code link_error;
    fs::create_symlink(absolute, root / "model.gguf", link_error);
    if (link_error) {
      return absl::PermissionDeniedError(absl::StrCat("cannot link ", absolute.string(), " into ",
                                                      dir, ": ", link_error.message()));
    }
    return absl::OkStatus();
  });
}

std::string ModelName(const std::string& model) {
  const fs::path path = fs::path(model).lexically_normal();
  std::string name = path.filename().string();
  if (name.empty()) name = path.parent_path().filename().string();
  if (absl::EndsWith(name, ".gguf")) name.resize(name.size() - 5);
  return name;
}

absl::StatusOr<std::string> ResolveModelPath(const std::string& model) {
  std::error_code error;
  if (fs::is_directory(model, error)) return model;
  if (absl::EndsWith(model, ".gguf") && fs::is_regular_file(model, error)) {
    return PrepareGgufModel(model);
  }
  return absl::NotFoundError(
      absl::StrCat("--model: ", model, " is neither a model directory nor a .gguf file"));
}

}  // namespace tessera::model
