#include "runtime/model/rank_adapter.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "kernels/cpu/linear.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/lora_adapter.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"

namespace tessera::model {
namespace {

std::optional<LoraModule> ModuleByName(absl::string_view name) {
  static const std::map<absl::string_view, LoraModule> modules = {
      {"q_proj", LoraModule::kQ},
      {"k_proj", LoraModule::kK},
      {"v_proj", LoraModule::kV},
      {"o_proj", LoraModule::kO},
      {"gate_proj", LoraModule::kGate},
      {"up_proj", LoraModule::kUp},
      {"gate_up_proj", LoraModule::kGateUp},
      {"down_proj", LoraModule::kDown}};
  auto it = modules.find(name);
  if (it == modules.end()) return std::nullopt;
  return it->second;
}

// A layer projection of the plan: "model.layers.<layer>.<...>.<module>.weight".
struct ProjectionName {
  int layer = 0;
  std::string module;  // "q_proj"
};

std::optional<ProjectionName> ParseProjection(absl::string_view weight_name) {
  if (!IsLayerProjection(weight_name)) return std::nullopt;
  absl::string_view rest = absl::StripPrefix(weight_name, "model.layers.");
  const size_t dot = rest.find('.');
  ProjectionName name;
  if (dot == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dot), &name.layer)) {
    return std::nullopt;
  }
  absl::string_view module = absl::StripSuffix(rest, ".weight");
  name.module = std::string(module.substr(module.rfind('.') + 1));
  return name;
}

// What a tensor of the file that no projection of the model explains is most likely for.
std::string WhyNotAFactor(absl::string_view name) {
  if (absl::StrContains(name, "lora_magnitude_vector")) {
    return "a DoRA magnitude (use_dora), which is not supported";
  }
  if (absl::StrContains(name, "lora_embedding")) return "an adapter on an embedding";
  if (absl::StrContains(name, "modules_to_save")) return "a module copy (modules_to_save)";
  if (absl::StrContains(name, "lm_head")) return "an adapter on lm_head";
  if (absl::StrContains(name, ".bias")) return "a bias";
  return "not a LoRA factor of one of this model's layer projections";
}

}  // namespace

absl::StatusOr<RankAdapter> LoadRankAdapter(const std::string& dir, const ModelConfig& config,
                                            const WeightPlan& plan, DType factor_dtype) {
  TESSERA_ASSIGN_OR_RETURN(LoraAdapterConfig adapter, ReadLoraAdapterConfig(dir));
  const std::string config_path = dir + "/adapter_config.json";
  // The modules this checkpoint's layers have, for target_modules and the messages.
  std::vector<std::string> present;
  for (const PlannedTensor& planned : plan.tensors) {
    std::optional<ProjectionName> p = ParseProjection(planned.name);
    if (p && std::find(present.begin(), present.end(), p->module) == present.end()) {
      present.push_back(p->module);
    }
  }
  for (const std::string& target : adapter.target_modules) {
    // peft matches a target against the end of a module's name ("self_attn.q_proj" too).
    const std::string last = target.substr(target.rfind('.') + 1);
    if (std::find(present.begin(), present.end(), last) == present.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path, ": target_modules: '", target, "' is not a Linear of this ",
                       ArchitectureName(config.architecture), " checkpoint's layers (they have ",
                       absl::StrJoin(present, ", "), ")"));
    }
  }

  const std::string path = dir + "/adapter_model.safetensors";
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  // Every factor the file may hold, by name, with the projection it belongs to.
  std::map<std::string, const PlannedTensor*, std::less<>> factor_of;
  for (const PlannedTensor& planned : plan.tensors) {
    if (!ParseProjection(planned.name)) continue;
    factor_of[LoraAName(planned.name)] = &planned;
    factor_of[LoraBName(planned.name)] = &planned;
  }
  for (const TensorInfo& info : file->tensors()) {
    if (factor_of.find(info.name) == factor_of.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", info.name, " is ", WhyNotAFactor(info.name)));
    }
  }

  RankAdapter out;
  out.dir = dir;
  out.layers.resize(config.num_hidden_layers);
  int factors = 0;
  for (const PlannedTensor& planned : plan.tensors) {
    std::optional<ProjectionName> p = ParseProjection(planned.name);
    if (!p) continue;
    const TensorInfo* a_info = file->Find(LoraAName(planned.name));
    const TensorInfo* b_info = file->Find(LoraBName(planned.name));
    if (a_info == nullptr && b_info == nullptr) continue;
    if (a_info == nullptr || b_info == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", a_info == nullptr ? b_info->name : a_info->name, " has no ",
                       a_info == nullptr ? LoraAName(planned.name) : LoraBName(planned.name)));
    }
    const std::string module(absl::StripSuffix(planned.name, ".weight"));
    const int r = adapter.RankOf(module);
    if (a_info->shape.size() != 2 || a_info->shape[0] != r) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", a_info->name, " has shape ",
                                                     ShapeToString(a_info->shape), " but ",
                                                     config_path, " gives ", module, " r = ", r));
    }
    std::optional<LoraModule> which = ModuleByName(p->module);
    if (!which.has_value()) {  // qkv_proj: the forward splits it into q, k and v
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", a_info->name, ": adapters on a fused qkv_proj are not supported yet"));
    }
    TESSERA_ASSIGN_OR_RETURN(Tensor a, ReadLoraFactor(*file, PlanLoraA(planned, r), factor_dtype));
    TESSERA_ASSIGN_OR_RETURN(Tensor b, ReadLoraFactor(*file, PlanLoraB(planned, r), factor_dtype));
    RankLoraFactors& f = out.layers[p->layer][static_cast<int>(*which)];
    f.r = r;
    f.outputs = b.dim(0);
    f.column = *which == LoraModule::kUp ? plan.intermediate_size : 0;
    f.scale = adapter.ScaleOf(module, r);
    TESSERA_ASSIGN_OR_RETURN(f.a, kernels::PackLinearWeight(a));
    TESSERA_ASSIGN_OR_RETURN(f.b, kernels::PackLinearWeight(b));
    out.bytes += f.a.nbytes() + f.b.nbytes();
    ++factors;
  }
  if (factors == 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": holds no LoRA factors"));
  }
  return out;
}

}  // namespace tessera::model
