#include "runtime/model/default_model.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/core/tensor.h"
#include "runtime/model/safetensors.h"

namespace tessera::model {
namespace {

namespace fs = std::filesystem;

constexpr int kBeginOfText = 256;
constexpr int kEndOfText = 257;

// GPT-2's byte-to-character map of the byte-level tokenizers: printable bytes stand for
// themselves, the rest are shifted past U+0100.
std::string ByteToken(int byte) {
  bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                   (byte >= 0xAE && byte <= 0xFF);
  int code_point = byte;
  if (!printable) {
    int shifted = 0;
    for (int b = 0; b < byte; ++b) {
      bool p = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      if (!p) ++shifted;
    }
    code_point = 256 + shifted;
  }
  std::string utf8;
  if (code_point < 0x80) {
    utf8 += static_cast<char>(code_point);
  } else {
    utf8 += static_cast<char>(0xC0 | (code_point >> 6));
    utf8 += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return utf8;
}

nlohmann::json TokenizerJson() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteToken(b)] = b;
  auto special = [](int id, const char* text) {
    return nlohmann::json{{"id", id},        {"content", text}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                          {"special", true}};
  };
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens",
           {special(kBeginOfText, "<|begin_of_text|>"), special(kEndOfText, "<|end_of_text|>")}},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "ByteLevel"},
            {"add_prefix_space", false},
            {"trim_offsets", true},
            {"use_regex", true}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 1}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens",
             {{"<|begin_of_text|>",
               {{"id", "<|begin_of_text|>"},
                {"ids", {kBeginOfText}},
                {"tokens", {"<|begin_of_text|>"}}}}}}}},
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
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", nlohmann::json::array()}}}};
}

nlohmann::json ConfigJson(const RandomLlamaShape& shape) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", shape.vocab},
          {"hidden_size", shape.hidden},
          {"intermediate_size", shape.intermediate},
          {"num_hidden_layers", shape.layers},
          {"num_attention_heads", shape.heads},
          {"num_key_value_heads", shape.kv_heads},
          {"hidden_act", "silu"},
          {"max_position_embeddings", 4096},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"rope_scaling", nullptr},
          {"attention_bias", false},
          {"tie_word_embeddings", false},
          {"torch_dtype", shape.dtype == DType::kBF16 ? "bfloat16" : "float32"},
          {"bos_token_id", kBeginOfText},
          {"eos_token_id", kEndOfText}};
}

// Deterministic weights: SplitMix64 counters turned into uniform values in [-scale, scale).
class WeightSource {
 public:
  float Next(float scale) {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    double unit = static_cast<double>(z >> 11) * 0x1.0p-53;
    return static_cast<float>((2.0 * unit - 1.0) * scale);
  }

 private:
  uint64_t state_ = 20261121;
};

absl::StatusOr<Tensor> Filled(WeightSource& source, DType dtype, Shape shape, float center,
                              float scale) {
  TESSERA_ASSIGN_OR_RETURN(Tensor t, Tensor::Empty(dtype, std::move(shape)));
  if (dtype == DType::kBF16) {
    for (BFloat16& v : t.span<BFloat16>()) v = BFloat16::FromFloat(center + source.Next(scale));
  } else {
    for (float& v : t.span<float>()) v = center + source.Next(scale);
  }
  return t;
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

}  // namespace

std::string DefaultCacheDirectory() {
  if (const char* dir = std::getenv("TESSERA_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    return (fs::path(xdg) / "tessera").string();
  }
  const char* home = std::getenv("HOME");
  return (fs::path(home && *home ? home : "/tmp") / ".cache" / "tessera").string();
}

absl::Status WriteRandomLlama(const std::string& dir, const RandomLlamaShape& shape) {
  fs::path root(dir);
  WeightSource source;
  std::vector<std::pair<std::string, Tensor>> tensors;
  auto add = [&](std::string name, Shape dims, float center, float scale) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(Tensor t, Filled(source, shape.dtype, std::move(dims), center, scale));
    tensors.emplace_back(std::move(name), std::move(t));
    return absl::OkStatus();
  };
  const int kHidden = shape.hidden, kHeads = shape.heads, kKvHeads = shape.kv_heads;
  const int kIntermediate = shape.intermediate, kVocab = shape.vocab, kLayers = shape.layers;
  int head_dim = kHidden / kHeads;
  // Uniform(-a, a) with a = sqrt(3 / fan_in): unit-variance activations through each layer.
  float in_scale = std::sqrt(3.0f / kHidden), down_scale = std::sqrt(3.0f / kIntermediate);
  TESSERA_RETURN_IF_ERROR(add("model.embed_tokens.weight", {kVocab, kHidden}, 0.0f, 1.0f));
  for (int l = 0; l < kLayers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".");
    TESSERA_RETURN_IF_ERROR(add(p + "input_layernorm.weight", {kHidden}, 1.0f, 0.1f));
    TESSERA_RETURN_IF_ERROR(
        add(p + "self_attn.q_proj.weight", {kHeads * head_dim, kHidden}, 0.0f, in_scale));
    TESSERA_RETURN_IF_ERROR(
        add(p + "self_attn.k_proj.weight", {kKvHeads * head_dim, kHidden}, 0.0f, in_scale));
    TESSERA_RETURN_IF_ERROR(
        add(p + "self_attn.v_proj.weight", {kKvHeads * head_dim, kHidden}, 0.0f, in_scale));
    TESSERA_RETURN_IF_ERROR(
        add(p + "self_attn.o_proj.weight", {kHidden, kHeads * head_dim}, 0.0f, in_scale));
    TESSERA_RETURN_IF_ERROR(add(p + "post_attention_layernorm.weight", {kHidden}, 1.0f, 0.1f));
    TESSERA_RETURN_IF_ERROR(
        add(p + "mlp.gate_proj.weight", {kIntermediate, kHidden}, 0.0f, in_scale));
    TESSERA_RETURN_IF_ERROR(
        add(p + "mlp.up_proj.weight", {kIntermediate, kHidden}, 0.0f, in_scale));
    TESSERA_RETURN_IF_ERROR(
        add(p + "mlp.down_proj.weight", {kHidden, kIntermediate}, 0.0f, down_scale));
  }
  TESSERA_RETURN_IF_ERROR(add("model.norm.weight", {kHidden}, 1.0f, 0.1f));
  TESSERA_RETURN_IF_ERROR(add("lm_head.weight", {kVocab, kHidden}, 0.0f, in_scale * 4));
  TESSERA_RETURN_IF_ERROR(WriteSafetensors((root / "model.safetensors").string(), tensors,
                                           {{"format", "pt"}, {"tessera", "random weights"}}));
  TESSERA_RETURN_IF_ERROR(WriteText(root / "config.json", ConfigJson(shape).dump(2)));
  nlohmann::json generation = {
      {"bos_token_id", kBeginOfText}, {"eos_token_id", kEndOfText}, {"do_sample", false}};
  TESSERA_RETURN_IF_ERROR(WriteText(root / "generation_config.json", generation.dump(2)));
  return WriteText(root / "README.md",
                   "A Llama-architecture checkpoint with RANDOM weights, generated "
                   "deterministically by Tessera. Its output is meaningless.\n");
}

RandomLlamaShape DefaultModelShape() { return RandomLlamaShape{}; }

RandomLlamaShape BenchModelShape() {
  RandomLlamaShape shape;
  shape.hidden = 1024;
  shape.layers = 24;
  shape.heads = 16;
  shape.kv_heads = 8;
  shape.intermediate = 4096;
  shape.vocab = 32000;
  shape.dtype = DType::kBF16;
  return shape;
}

// Each turn as <|begin_of_text|>role\ncontent<|end_of_text|>\n: the two special tokens the
// byte-level vocabulary has, so that a reply ends on the model's eos.
constexpr char kChatTemplate[] =
    "{% for message in messages %}{{ bos_token }}{{ message['role'] }}\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant\n{% endif %}";

absl::Status WriteDefaultModel(const std::string& dir) {
  fs::path root(dir);
  TESSERA_RETURN_IF_ERROR(WriteRandomLlama(dir, DefaultModelShape()));
  TESSERA_RETURN_IF_ERROR(WriteText(root / "tokenizer.json", TokenizerJson().dump()));
  nlohmann::json tokenizer_config = {{"bos_token", "<|begin_of_text|>"},
                                     {"eos_token", "<|end_of_text|>"},
                                     {"model_max_length", 4096},
                                     {"chat_template", kChatTemplate}};
  TESSERA_RETURN_IF_ERROR(WriteText(root / "tokenizer_config.json", tokenizer_config.dump(2)));
  return WriteText(root / "README.md",
                   "Tessera's built-in default model: a tiny Llama-architecture checkpoint with "
                   "RANDOM weights and a byte-level tokenizer, generated deterministically so "
                   "that every command runs without a download. Its output text is "
                   "meaningless.\n");
}

absl::StatusOr<std::string> EnsureDefaultModel() {
  return EnsureCachedModel(kDefaultModelName, WriteDefaultModel);
}

std::optional<std::string> CachedServeDefaultModel() {
  const fs::path path = fs::path(DefaultCacheDirectory()) / kServeDefaultModelFile;
  std::error_code error;
  if (!fs::is_regular_file(path, error)) return std::nullopt;
  return path.string();
}

absl::StatusOr<std::string> EnsureCachedModel(
    const std::string& name, const std::function<absl::Status(const std::string&)>& write) {
  fs::path dir = fs::path(DefaultCacheDirectory()) / name;
  std::error_code error;
  // The folder appears whole, by rename: its config.json says it is complete.
  if (fs::exists(dir / "config.json", error)) return dir.string();
  fs::create_directories(dir.parent_path(), error);
  if (error) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create the model cache ",
                                                    dir.parent_path().string(), ": ",
                                                    error.message(), " (set TESSERA_CACHE_DIR)"));
  }
  fs::path staging = dir.parent_path() / absl::StrCat(".", dir.filename().string(), ".", getpid());
  fs::remove_all(staging, error);
  fs::create_directories(staging, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", staging.string(), ": ", error.message()));
  }
  absl::Status written = write(staging.string());
  if (!written.ok()) {
    fs::remove_all(staging, error);
    return written;
  }
  fs::rename(staging, dir, error);
  if (error) {
    // Another process finished first with the same files; keep its copy.
    fs::remove_all(staging, error);
    if (!fs::exists(dir / "config.json")) {
      return absl::InternalError(absl::StrCat("cannot put the model at ", dir.string()));
    }
  }
  return dir.string();
}

}  // namespace tessera::model
