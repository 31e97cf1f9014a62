#include "runtime/model/model_config.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/model/json_file.h"

namespace tessera::model {
namespace {

using Json = nlohmann::json;

// What config.json leaves to the architecture's defaults (transformers' config classes).
struct ArchitectureTraits {
  Architecture architecture;
  absl::string_view name;
  absl::string_view model_type;
  double rms_norm_eps;
  double rope_theta;
  int64_t max_position_embeddings;
  bool glm_family;  // interleaved partial rotary, attention_bias on q/k/v, fused gate_up
};

constexpr ArchitectureTraits kArchitectures[] = {
    {Architecture::kLlama, "LlamaForCausalLM", "llama", 1e-6, 10000.0, 2048, false},
    {Architecture::kMistral, "MistralForCausalLM", "mistral", 1e-6, 10000.0, 131072, false},
    {Architecture::kQwen2, "Qwen2ForCausalLM", "qwen2", 1e-6, 10000.0, 32768, false},
    {Architecture::kGlm, "GlmForCausalLM", "glm", 1.5625e-7, 10000.0, 131072, true},
    {Architecture::kGlm4, "Glm4ForCausalLM", "glm4", 1.5625e-7, 10000.0, 131072, true},
};

// GlmConfig's end-of-sequence tokens when config.json names none.
constexpr int64_t kGlmDefaultEos[] = {151329, 151336, 151338};

std::string SupportedArchitectures() {
  std::vector<absl::string_view> names;
  for (const ArchitectureTraits& traits : kArchitectures) names.push_back(traits.name);
  return absl::StrJoin(names, ", ");
}

// Typed access to the fields of one JSON object, with errors that name the file and field.
// A field that is present but null counts as absent, as it does for transformers.
class Fields {
 public:
  Fields(const Json& object, absl::string_view source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  bool Has(absl::string_view key) const {
    auto it = object_.find(std::string(key));
    return it != object_.end() && !it->is_null();
  }
  const Json* Get(absl::string_view key) const {
    auto it = object_.find(std::string(key));
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  absl::Status Missing(absl::string_view key) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": required field '", prefix_, key, "' is missing"));
  }
  absl::Status Invalid(absl::string_view key, absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", prefix_, key, "' ", why));
  }
  absl::Status WrongType(absl::string_view key, absl::string_view expected) const {
    return Invalid(key, absl::StrCat("must be ", expected, ", got ", Get(key)->dump()));
  }

  absl::StatusOr<std::optional<int64_t>> OptionalInt(absl::string_view key) const {
    const Json* value = Get(key);
    if (value == nullptr) return std::nullopt;
    if (value->is_number_unsigned()) {
      uint64_t v = value->get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(key, absl::StrCat("is too large: ", v));
      }
      return static_cast<int64_t>(v);
    }
    if (value->is_number_integer()) return value->get<int64_t>();
    return WrongType(key, "an integer");
  }
  absl::StatusOr<int64_t> Int(absl::string_view key, int64_t default_value) const {
    TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(key));
    return value.value_or(default_value);
  }
  absl::StatusOr<int64_t> RequiredInt(absl::string_view key) const {
    TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(key));
    if (!value.has_value()) return Missing(key);
    return *value;
  }
  // A required integer in [1, max].
  absl::StatusOr<int64_t> RequiredPositive(absl::string_view key,
                                           int64_t max = std::numeric_limits<int32_t>::max()) {
    TESSERA_ASSIGN_OR_RETURN(int64_t value, RequiredInt(key));
    if (value < 1 || value > max) {
      return Invalid(key, absl::StrCat("must be in [1, ", max, "], got ", value));
    }
    return value;
  }

  absl::StatusOr<std::optional<double>> OptionalDouble(absl::string_view key) const {
    const Json* value = Get(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number()) return WrongType(key, "a number");
    return value->get<double>();
  }
  absl::StatusOr<double> Double(absl::string_view key, double default_value) const {
    TESSERA_ASSIGN_OR_RETURN(std::optional<double> value, OptionalDouble(key));
    return value.value_or(default_value);
  }
  absl::StatusOr<double> RequiredDouble(absl::string_view key) const {
    TESSERA_ASSIGN_OR_RETURN(std::optional<double> value, OptionalDouble(key));
    if (!value.has_value()) return Missing(key);
    return *value;
  }

  absl::StatusOr<bool> Bool(absl::string_view key, bool default_value) const {
    const Json* value = Get(key);
    if (value == nullptr) return default_value;
    if (!value->is_boolean()) return WrongType(key, "true or false");
    return value->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> OptionalString(absl::string_view key) const {
    const Json* value = Get(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) return WrongType(key, "a string");
    return value->get<std::string>();
  }

  // A token id field that holds an integer or a list of integers (empty when absent).
  absl::StatusOr<std::vector<int64_t>> TokenIds(absl::string_view key) const {
    const Json* value = Get(key);
    std::vector<int64_t> ids;
    if (value == nullptr) return ids;
    auto as_id = [](const Json& item) -> std::optional<int64_t> {
      if (item.is_number_unsigned() &&
          item.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return static_cast<int64_t>(item.get<uint64_t>());
      }
      return std::nullopt;
    };
    if (value->is_array()) {
      for (const Json& item : *value) {
        std::optional<int64_t> id = as_id(item);
        if (!id.has_value()) return WrongType(key, "a token id or a list of token ids");
        ids.push_back(*id);
      }
      return ids;
    }
    std::optional<int64_t> id = as_id(*value);
    if (!id.has_value()) return WrongType(key, "a token id or a list of token ids");
    ids.push_back(*id);
    return ids;
  }

  // "sliding_window": null turns the window off; leaving the field out keeps the
  // 4096 that MistralConfig and Qwen2Config default to.
  absl::StatusOr<std::optional<int64_t>> SlidingWindow() const {
    if (object_.find("sliding_window") == object_.end()) return int64_t{4096};
    return OptionalInt("sliding_window");
  }

  absl::string_view source() const { return source_; }

 private:
  const Json& object_;
  absl::string_view source_;
  std::string prefix_;
};

absl::StatusOr<const ArchitectureTraits*> FindArchitecture(const Json& root,
                                                           absl::string_view source) {
  Fields fields(root, source);
  std::string name;
  if (const Json* list = fields.Get("architectures")) {
    if (!list->is_array() || list->empty() || !(*list)[0].is_string()) {
      return fields.WrongType("architectures", "a list of architecture names");
    }
    if (list->size() > 1) {
      return absl::UnimplementedError(absl::StrCat(source, ": 'architectures' lists ", list->size(),
                                                   " architectures, ", list->dump(),
                                                   "; Tessera loads checkpoints of exactly one"));
    }
    name = (*list)[0].get<std::string>();
    for (const ArchitectureTraits& traits : kArchitectures) {
      if (traits.name == name) return &traits;
    }
  } else {
    TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                             fields.OptionalString("model_type"));
    if (!model_type.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": names no architecture: 'architectures' and 'model_type' are both missing"));
    }
    for (const ArchitectureTraits& traits : kArchitectures) {
      if (traits.model_type == *model_type) return &traits;
    }
    name = absl::StrCat("model_type '", *model_type, "'");
  }
  return absl::UnimplementedError(
      absl::StrCat(source, ": architecture ", name,
                   " is not supported (supported: ", SupportedArchitectures(), ")"));
}

absl::StatusOr<DType> ParseTorchDType(const Fields& fields) {
  // transformers >= 4.56 writes "dtype"; earlier releases "torch_dtype".
  absl::string_view key = fields.Has("dtype") ? "dtype" : "torch_dtype";
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> name, fields.OptionalString(key));
  if (!name.has_value()) return DType::kF32;  // transformers' default
  if (*name == "float32" || *name == "float") return DType::kF32;
  if (*name == "bfloat16") return DType::kBF16;
  if (*name == "float16" || *name == "half") return DType::kF16;
  return absl::UnimplementedError(absl::StrCat(fields.source(), ": ", key, " '", *name,
                                               "' is not supported (float32, bfloat16, float16)"));
}

// rope_scaling (or transformers 5's rope_parameters, which also carries rope_theta).
absl::Status ParseRope(const Fields& fields, const ArchitectureTraits& traits,
                       ModelConfig& config) {
  TESSERA_ASSIGN_OR_RETURN(config.rope_theta, fields.Double("rope_theta", traits.rope_theta));
  absl::string_view key = fields.Has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const Json* scaling = fields.Get(key);
  if (scaling != nullptr) {
    if (!scaling->is_object()) return fields.WrongType(key, "an object or null");
    Fields params(*scaling, fields.source(), absl::StrCat(key, "."));
    if (key == "rope_parameters") {
      TESSERA_ASSIGN_OR_RETURN(config.rope_theta, params.Double("rope_theta", config.rope_theta));
    }
    // Older configs say "type", newer ones "rope_type".
    absl::string_view type_key = params.Has("rope_type") ? "rope_type" : "type";
    TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> type, params.OptionalString(type_key));
    if (!type.has_value()) return params.Missing("rope_type");
    RopeScaling& rope = config.rope_scaling;
    if (*type == "default") {
      rope.type = RopeScalingType::kNone;
    } else if (*type == "linear") {
      rope.type = RopeScalingType::kLinear;
      TESSERA_ASSIGN_OR_RETURN(rope.factor, params.RequiredDouble("factor"));
    } else if (*type == "llama3") {
      rope.type = RopeScalingType::kLlama3;
      TESSERA_ASSIGN_OR_RETURN(rope.factor, params.RequiredDouble("factor"));
      TESSERA_ASSIGN_OR_RETURN(rope.low_freq_factor, params.RequiredDouble("low_freq_factor"));
      TESSERA_ASSIGN_OR_RETURN(rope.high_freq_factor, params.RequiredDouble("high_freq_factor"));
      TESSERA_ASSIGN_OR_RETURN(rope.original_max_position_embeddings,
                               params.RequiredInt("original_max_position_embeddings"));
      if (rope.original_max_position_embeddings < 1) {
        return params.Invalid("original_max_position_embeddings", "must be positive");
      }
      if (!(rope.low_freq_factor > 0 && rope.low_freq_factor < rope.high_freq_factor)) {
        return params.Invalid("low_freq_factor",
                              absl::StrCat("must be positive and below high_freq_factor (",
                                           rope.high_freq_factor, "), got ", rope.low_freq_factor));
      }
    } else {
      return absl::UnimplementedError(
          absl::StrCat(fields.source(), ": ", key, " type '", *type,
                       "' is not supported (supported: default, linear, llama3)"));
    }
    if (!(rope.factor > 0) || !std::isfinite(rope.factor)) {
      return params.Invalid("factor", absl::StrCat("must be positive, got ", rope.factor));
    }
  }
  if (!(config.rope_theta > 0) || !std::isfinite(config.rope_theta)) {
    return fields.Invalid("rope_theta", absl::StrCat("must be positive, got ", config.rope_theta));
  }
  return absl::OkStatus();
}

// Fills config.layer_sliding_window from the architecture's sliding-window fields.
absl::Status ParseSlidingWindow(const Fields& fields, ModelConfig& config) {
  config.layer_sliding_window.assign(config.num_hidden_layers, 0);
  if (config.architecture == Architecture::kMistral) {
    TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> window, fields.SlidingWindow());
    if (!window.has_value()) return absl::OkStatus();
    if (*window < 1) return fields.Invalid("sliding_window", "must be positive or null");
    config.layer_sliding_window.assign(config.num_hidden_layers, *window);
    return absl::OkStatus();
  }
  if (config.architecture != Architecture::kQwen2) return absl::OkStatus();

  // Qwen2: the window applies only when use_sliding_window, and then to the layers that
  // layer_types marks "sliding_attention", or else to those at or past max_window_layers.
  TESSERA_ASSIGN_OR_RETURN(bool use_sliding_window, fields.Bool("use_sliding_window", false));
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> window, fields.SlidingWindow());
  TESSERA_ASSIGN_OR_RETURN(int64_t max_window_layers, fields.Int("max_window_layers", 28));
  std::vector<bool> sliding_layer(config.num_hidden_layers);
  if (const Json* types = fields.Get("layer_types")) {
    if (!types->is_array() || types->size() != static_cast<size_t>(config.num_hidden_layers)) {
      return fields.WrongType("layer_types",
                              absl::StrCat("a list of ", config.num_hidden_layers, " layer types"));
    }
    for (int i = 0; i < config.num_hidden_layers; ++i) {
      const Json& type = (*types)[i];
      if (type == "sliding_attention") {
        sliding_layer[i] = true;
      } else if (type != "full_attention") {
        return fields.Invalid("layer_types", absl::StrCat("entry ", i, " is ", type.dump(),
                                                          " (expected \"full_attention\" or "
                                                          "\"sliding_attention\")"));
      }
    }
  } else {
    for (int i = 0; i < config.num_hidden_layers; ++i) sliding_layer[i] = i >= max_window_layers;
  }
  if (!use_sliding_window || !window.has_value()) return absl::OkStatus();
  if (*window < 1) return fields.Invalid("sliding_window", "must be positive or null");
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    if (sliding_layer[i]) config.layer_sliding_window[i] = *window;
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseConfigObject(const Json& root, absl::string_view source) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object, got ", root.type_name()));
  }
  TESSERA_ASSIGN_OR_RETURN(const ArchitectureTraits* traits, FindArchitecture(root, source));
  Fields fields(root, source);
  ModelConfig config;
  config.architecture = traits->architecture;
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                           fields.OptionalString("model_type"));
  config.model_type = model_type.value_or("");

  constexpr int64_t kMaxSize = int64_t{1} << 40;
  TESSERA_ASSIGN_OR_RETURN(config.vocab_size, fields.RequiredPositive("vocab_size", kMaxSize));
  TESSERA_ASSIGN_OR_RETURN(config.hidden_size, fields.RequiredPositive("hidden_size", kMaxSize));
  TESSERA_ASSIGN_OR_RETURN(config.intermediate_size,
                           fields.RequiredPositive("intermediate_size", kMaxSize));
  // Far beyond any real model, and small enough that per-layer tables stay small.
  constexpr int64_t kMaxCount = 65536;
  TESSERA_ASSIGN_OR_RETURN(int64_t layers, fields.RequiredPositive("num_hidden_layers", kMaxCount));
  config.num_hidden_layers = static_cast<int>(layers);
  TESSERA_ASSIGN_OR_RETURN(int64_t heads,
                           fields.RequiredPositive("num_attention_heads", kMaxCount));
  config.num_attention_heads = static_cast<int>(heads);

  TESSERA_ASSIGN_OR_RETURN(int64_t kv_heads, fields.Int("num_key_value_heads", heads));
  if (kv_heads < 1 || heads % kv_heads != 0) {
    return fields.Invalid("num_key_value_heads", absl::StrCat("(", kv_heads,
                                                              ") must be positive and divide "
                                                              "num_attention_heads (",
                                                              heads, ")"));
  }
  config.num_key_value_heads = static_cast<int>(kv_heads);

  // Far beyond any real head, and small enough for an int, as the kernels take it.
  constexpr int64_t kMaxHeadDim = 65536;
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, fields.OptionalInt("head_dim"));
  if (head_dim.has_value()) {
    if (*head_dim < 1 || *head_dim > kMaxHeadDim) {
      return fields.Invalid("head_dim",
                            absl::StrCat("must be in [1, ", kMaxHeadDim, "], got ", *head_dim));
    }
  } else {
    if (config.hidden_size % heads != 0) {
      return fields.Invalid("num_attention_heads",
                            absl::StrCat("(", heads, ") must divide hidden_size (",
                                         config.hidden_size, ") when there is no head_dim"));
    }
    head_dim = config.hidden_size / heads;
    if (*head_dim > kMaxHeadDim) {
      return fields.Invalid(
          "hidden_size", absl::StrCat("(", config.hidden_size, ") / num_attention_heads (", heads,
                                      ") gives head_dim ", *head_dim, ", above ", kMaxHeadDim,
                                      " (set head_dim, or check both)"));
    }
  }
  config.head_dim = static_cast<int>(*head_dim);

  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> act, fields.OptionalString("hidden_act"));
  if (act.has_value() && *act != "silu" && *act != "swish") {
    return absl::UnimplementedError(
        absl::StrCat(source, ": hidden_act '", *act, "' is not supported (only silu)"));
  }
  TESSERA_ASSIGN_OR_RETURN(bool mlp_bias, fields.Bool("mlp_bias", false));
  if (mlp_bias) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": mlp_bias true is not supported (MLP projections without bias)"));
  }

  TESSERA_ASSIGN_OR_RETURN(config.rms_norm_eps,
                           fields.Double("rms_norm_eps", traits->rms_norm_eps));
  if (!(config.rms_norm_eps > 0) || !std::isfinite(config.rms_norm_eps)) {
    return fields.Invalid("rms_norm_eps",
                          absl::StrCat("must be positive, got ", config.rms_norm_eps));
  }
  TESSERA_RETURN_IF_ERROR(ParseRope(fields, *traits, config));
  TESSERA_ASSIGN_OR_RETURN(config.max_position_embeddings,
                           fields.Int("max_position_embeddings", traits->max_position_embeddings));
  if (config.max_position_embeddings < 1) {
    return fields.Invalid("max_position_embeddings", "must be positive");
  }

  // Rotary layout and width. Llama-style attention applies rotary to the whole head (a
  // partial factor there would not even run in transformers), so only GLM may set one.
  const double default_partial = traits->glm_family ? 0.5 : 1.0;
  TESSERA_ASSIGN_OR_RETURN(config.partial_rotary_factor,
                           fields.Double("partial_rotary_factor", default_partial));
  if (!traits->glm_family && config.partial_rotary_factor != 1.0) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": partial_rotary_factor ", config.partial_rotary_factor,
                     " is not supported for ", traits->name, " (only 1.0)"));
  }
  if (!(config.partial_rotary_factor > 0 && config.partial_rotary_factor <= 1)) {
    return fields.Invalid("partial_rotary_factor",
                          absl::StrCat("must be in (0, 1], got ", config.partial_rotary_factor));
  }
  config.rotary_dim = static_cast<int>(config.head_dim * config.partial_rotary_factor);
  if (config.rotary_dim < 2 || config.rotary_dim % 2 != 0) {
    return fields.Invalid(
        "partial_rotary_factor",
        absl::StrCat("gives ", config.rotary_dim, " rotary dimensions of head_dim ",
                     config.head_dim, "; they must be even and at least 2"));
  }
  config.rotary_layout = traits->glm_family ? RotaryLayout::kInterleaved : RotaryLayout::kHalfSplit;

  TESSERA_ASSIGN_OR_RETURN(config.tie_word_embeddings, fields.Bool("tie_word_embeddings", false));
  TESSERA_ASSIGN_OR_RETURN(config.torch_dtype, ParseTorchDType(fields));

  switch (config.architecture) {
    case Architecture::kLlama: {
      TESSERA_ASSIGN_OR_RETURN(bool bias, fields.Bool("attention_bias", false));
      config.qkv_bias = bias;
      config.o_proj_bias = bias;
      break;
    }
    case Architecture::kMistral:
      break;
    case Architecture::kQwen2:
      config.qkv_bias = true;
      break;
    case Architecture::kGlm:
    case Architecture::kGlm4: {
      TESSERA_ASSIGN_OR_RETURN(config.qkv_bias, fields.Bool("attention_bias", true));
      config.fused_gate_up = true;
      config.post_sublayer_norms = config.architecture == Architecture::kGlm4;
      break;
    }
  }
  TESSERA_RETURN_IF_ERROR(ParseSlidingWindow(fields, config));

  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> bos, fields.TokenIds("bos_token_id"));
  if (bos.size() > 1) return fields.WrongType("bos_token_id", "one token id");
  if (!bos.empty()) config.bos_token_id = bos[0];
  TESSERA_ASSIGN_OR_RETURN(config.eos_token_ids, fields.TokenIds("eos_token_id"));
  if (traits->glm_family && !fields.Has("eos_token_id")) {
    config.eos_token_ids.assign(std::begin(kGlmDefaultEos), std::end(kGlmDefaultEos));
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> pad, fields.TokenIds("pad_token_id"));
  if (pad.size() > 1) return fields.WrongType("pad_token_id", "one token id");
  if (!pad.empty()) config.pad_token_id = pad[0];
  config.generation.eos_token_ids = config.eos_token_ids;
  return config;
}

}  // namespace

absl::string_view ArchitectureName(Architecture architecture) {
  for (const ArchitectureTraits& traits : kArchitectures) {
    if (traits.architecture == architecture) return traits.name;
  }
  return "?";
}

absl::Status ModelConfig::CheckTensorParallel(int tp) const {
  auto refuse = [&](absl::string_view field, int64_t value, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("tensor parallelism ", tp, " cannot split ",
                                                   ArchitectureName(architecture), ": ", field,
                                                   " (", value, ") ", why));
  };
  if (tp < 1) return absl::InvalidArgumentError(absl::StrCat("tp must be >= 1, got ", tp));
  if (num_attention_heads % tp != 0) {
    return refuse("num_attention_heads", num_attention_heads, "is not a multiple of tp");
  }
  if (num_key_value_heads % tp != 0 && tp % num_key_value_heads != 0) {
    return refuse("num_key_value_heads", num_key_value_heads,
                  "is neither a multiple of tp nor a divisor of it (KV heads are split or "
                  "replicated whole)");
  }
  if (intermediate_size % tp != 0) {
    return refuse("intermediate_size", intermediate_size, "is not a multiple of tp");
  }
  return absl::OkStatus();
}

std::string ModelConfig::Summary() const {
  std::string window;
  int sliding_layers = 0;
  for (int64_t w : layer_sliding_window) sliding_layers += w > 0;
  if (sliding_layers > 0) {
    window = absl::StrCat(", sliding window on ", sliding_layers, " layers");
  }
  return absl::StrCat(ArchitectureName(architecture), ": ", num_hidden_layers, " layers, hidden ",
                      hidden_size, ", heads ", num_attention_heads, "/", num_key_value_heads, " x ",
                      head_dim, ", mlp ", intermediate_size, ", vocab ", vocab_size, ", rotary ",
                      rotary_dim,
                      rotary_layout == RotaryLayout::kInterleaved ? " interleaved" : " half-split",
                      " theta ", rope_theta, tie_word_embeddings ? ", tied embeddings" : "", window,
                      ", ", NameOf(torch_dtype));
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source) {
  TESSERA_ASSIGN_OR_RETURN(Json root, ParseJson(json_text, source));
  return ParseConfigObject(root, source);
}

absl::Status ParseGenerationConfig(absl::string_view json_text, absl::string_view source,
                                   ModelConfig* config) {
  TESSERA_ASSIGN_OR_RETURN(Json root, ParseJson(json_text, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object, got ", root.type_name()));
  }
  Fields fields(root, source);
  GenerationDefaults generation;
  TESSERA_ASSIGN_OR_RETURN(generation.do_sample, fields.Bool("do_sample", false));
  TESSERA_ASSIGN_OR_RETURN(generation.temperature, fields.Double("temperature", 1.0));
  if (!(generation.temperature >= 0) || !std::isfinite(generation.temperature)) {
    return fields.Invalid("temperature", "must be a finite number >= 0");
  }
  TESSERA_ASSIGN_OR_RETURN(generation.top_k, fields.Int("top_k", 50));
  if (generation.top_k < 0) return fields.Invalid("top_k", "must be >= 0");
  TESSERA_ASSIGN_OR_RETURN(generation.top_p, fields.Double("top_p", 1.0));
  if (!(generation.top_p > 0 && generation.top_p <= 1)) {
    return fields.Invalid("top_p", absl::StrCat("must be in (0, 1], got ", generation.top_p));
  }
  TESSERA_ASSIGN_OR_RETURN(generation.eos_token_ids, fields.TokenIds("eos_token_id"));
  if (!fields.Has("eos_token_id")) generation.eos_token_ids = config->eos_token_ids;
  config->generation = std::move(generation);
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(config_path));
  TESSERA_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, config_path));
  const std::string generation_path =
      (std::filesystem::path(dir) / "generation_config.json").string();
  std::error_code error;
  if (std::filesystem::exists(generation_path, error)) {
    TESSERA_ASSIGN_OR_RETURN(std::string generation_text, ReadTextFile(generation_path));
    TESSERA_RETURN_IF_ERROR(ParseGenerationConfig(generation_text, generation_path, &config));
  }
  return config;
}

}  // namespace tessera::model
