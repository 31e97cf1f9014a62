#include "runtime/train/lora.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tessera::train {
namespace {

std::string ModuleOf(absl::string_view weight_name) {
  return std::string(absl::StripSuffix(weight_name, ".weight"));
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseLoraTargets(absl::string_view text) {
  std::vector<std::string> targets;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    const absl::Span<const absl::string_view> modules = model::LoraModuleNames();
    if (std::find(modules.begin(), modules.end(), part) == modules.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--lora-targets: '", part, "' is not one of ",
                                                     absl::StrJoin(modules, ", ")));
    }
    if (std::find(targets.begin(), targets.end(), part) == targets.end()) {
      targets.emplace_back(part);
    }
  }
  if (targets.empty()) return absl::InvalidArgumentError("--lora-targets names no module");
  return targets;
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
