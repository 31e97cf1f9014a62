#include "runtime/model/lora_adapter.h"

#include <cmath>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/model/json_file.h"

namespace tessera::model {
namespace {

constexpr absl::string_view kModules[] = {"q_proj",    "k_proj",    "v_proj",
                                          "o_proj",    "gate_proj", "up_proj",
                                          "down_proj", "qkv_proj",  "gate_up_proj"};

std::string ModuleOf(absl::string_view weight_name) {
  return std::string(absl::StripSuffix(weight_name, ".weight"));
}

// peft's get_pattern_key: re.match(rf"(.*\.)?({key})$", module). Patterns are checked when
// the config is read, so none throws here.
bool PatternMatches(const std::string& key, absl::string_view module) {
  const std::regex pattern("(.*\\.)?(" + key + ")");
  return std::regex_match(module.begin(), module.end(), pattern);
}

// Whether a config field asks for something: true, a non-empty string, list or object, or a
// non-zero number. Absent and null fields ask for nothing.
bool IsSet(const nlohmann::ordered_json& config, const char* field) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return false;
  if (it->is_boolean()) return it->get<bool>();
  if (it->is_number()) return it->get<double>() != 0;
  if (it->is_string() || it->is_array() || it->is_object()) return !it->empty();
  return true;
}

}  // namespace

absl::Span<const absl::string_view> LoraModuleNames() { return kModules; }

std::string LoraAName(absl::string_view weight_name) {
  return absl::StrCat("base_model.model.", ModuleOf(weight_name), ".lora_A.weight");
}

std::string LoraBName(absl::string_view weight_name) {
  return absl::StrCat("base_model.model.", ModuleOf(weight_name), ".lora_B.weight");
}

PlannedTensor PlanLoraA(const PlannedTensor& weight, int r) {
  PlannedTensor a;
  a.name = LoraAName(weight.name);
  a.shape = {r, weight.shape[1]};
  if (weight.kind == ShardKind::kRowParallel) {
    a.kind = ShardKind::kRowParallel;
    a.slice = weight.slice;  // the same input columns
    a.rank_shape = {r, weight.rank_shape[1]};
  } else {
    a.kind = ShardKind::kReplicated;
    a.rank_shape = a.shape;
  }
  return a;
}

PlannedTensor PlanLoraB(const PlannedTensor& weight, int r) {
  PlannedTensor b;
  b.name = LoraBName(weight.name);
  b.shape = {weight.shape[0], r};
  if (weight.kind == ShardKind::kColumnParallel) {
    b.kind = ShardKind::kColumnParallel;
    b.slice = weight.slice;  // the same output rows
    b.rank_shape = {weight.rank_shape[0], r};
  } else {
    b.kind = ShardKind::kReplicated;
    b.rank_shape = b.shape;
  }
  return b;
}

absl::StatusOr<Tensor> ReadLoraFactor(const SafetensorsFile& file, const PlannedTensor& planned,
                                      DType dtype) {
  const TensorInfo* info = file.Find(planned.name);
  if (info == nullptr || info->shape != planned.shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": ", planned.name,
                     info == nullptr ? " is missing" : " has shape " + ShapeToString(info->shape),
                     " (this model's is ", ShapeToString(planned.shape), ")"));
  }
  return file.Read(planned.name, planned.slice, dtype);
}

int LoraAdapterConfig::RankOf(absl::string_view module) const {
  for (const auto& [key, rank] : rank_pattern) {
    if (PatternMatches(key, module)) return rank;
  }
  return r;
}

double LoraAdapterConfig::AlphaOf(absl::string_view module) const {
  for (const auto& [key, value] : alpha_pattern) {
    if (PatternMatches(key, module)) return value;
  }
  return alpha;
}

float LoraAdapterConfig::ScaleOf(absl::string_view module, int rank) const {
  const double a = AlphaOf(module);
  return static_cast<float>(use_rslora ? a / std::sqrt(static_cast<double>(rank)) : a / rank);
}

absl::StatusOr<LoraAdapterConfig> ReadLoraAdapterConfig(const std::string& dir) {
  const std::string path = dir + "/adapter_config.json";
  TESSERA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  // Ordered: peft takes the first matching key of rank_pattern and alpha_pattern.
  const nlohmann::ordered_json json = nlohmann::ordered_json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  auto bad = [&](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", field, ": ", why));
  };
  if (auto type = json.find("peft_type"); type != json.end() && *type != "LORA") {
    return bad("peft_type", absl::StrCat(type->dump(), " is not a LoRA adapter (LORA)"));
  }
  if (auto bias = json.find("bias"); bias != json.end() && !bias->is_null() && *bias != "none") {
    return bad("bias", absl::StrCat(bias->dump(), ": adapters that train biases are not supported",
                                    " (only \"none\")"));
  }
  // Fields that change the forward away from plain LoRA, each with what it asks for.
  const std::pair<const char*, const char*> unsupported[] = {
      {"use_dora", "DoRA (weight-decomposed LoRA) is not supported"},
      {"lora_bias", "a bias on lora_B is not supported"},
      {"fan_in_fan_out", "factors stored (in, out), as GPT-2's Conv1D, are not supported"},
      {"modules_to_save", "adapters that replace whole modules are not supported"},
      {"trainable_token_indices", "adapters that train embedding rows are not supported"},
      {"layer_replication", "adapters that replicate layers are not supported"},
      {"target_parameters", "adapters on parameters (not Linears) are not supported"},
      {"alora_invocation_tokens", "aLoRA (activated LoRA) is not supported"},
      {"use_qalora", "QALoRA is not supported"},
      {"velora_config", "VeLoRA is not supported"},
      {"monteclora_config", "MonteCLoRA is not supported"},
      {"arrow_config", "Arrow routing is not supported"},
      {"kasa_config", "KaSA is not supported"},
      {"use_bdlora", "BD-LoRA is not supported"},
  };
  for (const auto& [field, why] : unsupported) {
    if (IsSet(json, field)) return bad(field, why);
  }

  LoraAdapterConfig config;
  auto positive_int = [&](const nlohmann::ordered_json& value, absl::string_view field,
                          int& out) -> absl::Status {
    if (!value.is_number_integer() || value.get<int64_t>() < 1 ||
        value.get<int64_t>() > (int64_t{1} << 20)) {
      return bad(field, absl::StrCat(value.dump(), " is not a positive integer"));
    }
    out = value.get<int>();
    return absl::OkStatus();
  };
  auto positive_number = [&](const nlohmann::ordered_json& value, absl::string_view field,
                             double& out) -> absl::Status {
    if (!value.is_number() || !(value.get<double>() > 0)) {
      return bad(field, absl::StrCat(value.dump(), " is not a positive number"));
    }
    out = value.get<double>();
    return absl::OkStatus();
  };
  if (auto r = json.find("r"); r != json.end())
    TESSERA_RETURN_IF_ERROR(positive_int(*r, "r", config.r));
  if (auto alpha = json.find("lora_alpha"); alpha != json.end()) {
    TESSERA_RETURN_IF_ERROR(positive_number(*alpha, "lora_alpha", config.alpha));
  }
  if (auto rslora = json.find("use_rslora"); rslora != json.end() && !rslora->is_null()) {
    if (!rslora->is_boolean()) return bad("use_rslora", "not true or false");
    config.use_rslora = rslora->get<bool>();
  }
  auto check_pattern = [&](const std::string& field, const std::string& key) -> absl::Status {
    try {
      std::regex pattern("(.*\\.)?(" + key + ")");
    } catch (const std::regex_error& e) {
      return bad(absl::StrCat(field, " key '", key, "'"),
                 absl::StrCat("not a regular expression (", e.what(), ")"));
    }
    return absl::OkStatus();
  };
  for (const char* field : {"rank_pattern", "alpha_pattern"}) {
    auto patterns = json.find(field);
    if (patterns == json.end() || patterns->is_null()) continue;
    if (!patterns->is_object()) return bad(field, "not an object of module patterns");
    for (const auto& [key, value] : patterns->items()) {
      TESSERA_RETURN_IF_ERROR(check_pattern(field, key));
      const std::string where = absl::StrCat(field, "['", key, "']");
      if (std::string(field) == "rank_pattern") {
        int r = 0;
        TESSERA_RETURN_IF_ERROR(positive_int(value, where, r));
        config.rank_pattern.emplace_back(key, r);
      } else {
        double alpha = 0;
        TESSERA_RETURN_IF_ERROR(positive_number(value, where, alpha));
        config.alpha_pattern.emplace_back(key, alpha);
      }
    }
  }
  if (auto targets = json.find("target_modules"); targets != json.end() && targets->is_array()) {
    for (const nlohmann::ordered_json& target : *targets) {
      if (!target.is_string()) return bad("target_modules", "not a list of module names");
      config.target_modules.push_back(target.get<std::string>());
    }
  }
  return config;
}

}  // namespace tessera::model
