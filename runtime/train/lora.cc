#include "runtime/train/lora.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tessera::train {
namespace {

constexpr absl::string_view kModules[] = {"q_proj",    "k_proj",    "v_proj",
                                          "o_proj",    "gate_proj", "up_proj",
                                          "down_proj", "qkv_proj",  "gate_up_proj"};

std::string ModuleOf(absl::string_view weight_name) {
  return std::string(absl::StripSuffix(weight_name, ".weight"));
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseLoraTargets(absl::string_view text) {
  std::vector<std::string> targets;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    if (std::find(std::begin(kModules), std::end(kModules), part) == std::end(kModules)) {
      return absl::InvalidArgumentError(absl::StrCat("--lora-targets: '", part, "' is not one of ",
                                                     absl::StrJoin(kModules, ", ")));
    }
    if (std::find(targets.begin(), targets.end(), part) == targets.end()) {
      targets.emplace_back(part);
    }
  }
  if (targets.empty()) return absl::InvalidArgumentError("--lora-targets names no module");
  return targets;
}

std::string LoraAName(absl::string_view weight_name) {
  return absl::StrCat("base_model.model.", ModuleOf(weight_name), ".lora_A.weight");
}

std::string LoraBName(absl::string_view weight_name) {
  return absl::StrCat("base_model.model.", ModuleOf(weight_name), ".lora_B.weight");
}

model::PlannedTensor PlanLoraA(const model::PlannedTensor& weight, int r) {
  model::PlannedTensor a;
  a.name = LoraAName(weight.name);
  a.shape = {r, weight.shape[1]};
  if (weight.kind == model::ShardKind::kRowParallel) {
    a.kind = model::ShardKind::kRowParallel;
    a.slice = weight.slice;  // the same input columns
    a.rank_shape = {r, weight.rank_shape[1]};
  } else {
    a.kind = model::ShardKind::kReplicated;
    a.rank_shape = a.shape;
  }
  return a;
}

model::PlannedTensor PlanLoraB(const model::PlannedTensor& weight, int r) {
  model::PlannedTensor b;
  b.name = LoraBName(weight.name);
  b.shape = {weight.shape[0], r};
  if (weight.kind == model::ShardKind::kColumnParallel) {
    b.kind = model::ShardKind::kColumnParallel;
    b.slice = weight.slice;  // the same output rows
    b.rank_shape = {weight.rank_shape[0], r};
  } else {
    b.kind = model::ShardKind::kReplicated;
    b.rank_shape = b.shape;
  }
  return b;
}

bool IsLoraTarget(const LoraOptions& options, absl::string_view weight_name) {
  if (!options.enabled() || !absl::StartsWith(weight_name, "model.layers.") ||
      !absl::EndsWith(weight_name, "_proj.weight")) {
    return false;
  }
  const std::string module = ModuleOf(weight_name);
  const size_t dot = module.rfind('.');
  const absl::string_view last = absl::string_view(module).substr(dot + 1);
  return std::find(options.targets.begin(), options.targets.end(), last) != options.targets.end();
}

}  // namespace tessera::train
