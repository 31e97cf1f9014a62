#include "runtime/model/weight_loader.h"

#include <unistd.h>

#include <chrono>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status_macros.h"

namespace tessera::model {
namespace {

// Stored tensors that transformers itself skips when loading.
bool IsIgnored(const std::string& name, const WeightPlan& plan) {
  return absl::EndsWith(name, ".rotary_emb.inv_freq") ||
         (plan.tied_lm_head && name == "lm_head.weight");
}

// "a, b, c and 5 more"
std::string ListSome(const std::vector<std::string>& items) {
  constexpr size_t kShown = 8;
  if (items.size() <= kShown) return absl::StrJoin(items, ", ");
  std::vector<std::string> shown(items.begin(), items.begin() + kShown);
  return absl::StrCat(absl::StrJoin(shown, ", "), " and ", items.size() - kShown, " more");
}

std::string Plural(size_t n, absl::string_view noun) {
  return absl::StrCat(n, " ", noun, n == 1 ? "" : "s");
}

double GiB(uint64_t bytes) { return static_cast<double>(bytes) / (1u << 30); }

}  // namespace

std::string FormatLoadProgress(const LoadProgress& progress) {
  return absl::StrFormat("%d/%d tensors, %.2f/%.2f GiB  %s", progress.tensors_done,
                         progress.tensors_total, GiB(progress.bytes_done),
                         GiB(progress.bytes_total), progress.current);
}

ProgressCallback TerminalProgress(std::FILE* out, std::string label) {
  struct State {
    std::FILE* out;
    std::string label;
    bool terminal;
    std::chrono::steady_clock::time_point last_draw;
  };
  auto state =
      std::make_shared<State>(State{out, std::move(label), ::isatty(::fileno(out)) == 1, {}});
  return [state](const LoadProgress& progress) {
    const bool last = progress.tensors_done == progress.tensors_total;
    if (!state->terminal) {
      if (last)
        std::fprintf(state->out, "%s %s\n", state->label.c_str(),
                     FormatLoadProgress(progress).c_str());
      return;
    }
    auto now = std::chrono::steady_clock::now();
    if (!last && now - state->last_draw < std::chrono::milliseconds(100)) return;
    state->last_draw = now;
    // \r returns to the line start; \033[K clears what a longer previous line left behind.
    std::fprintf(state->out, "\r%s %s\033[K%s", state->label.c_str(),
                 FormatLoadProgress(progress).c_str(), last ? "\n" : "");
    std::fflush(state->out);
  };
}

absl::Status CheckCheckpoint(const Checkpoint& checkpoint, const WeightPlan& plan) {
  std::vector<std::string> missing, unexpected, wrong_shape, wrong_dtype;
  std::set<std::string, std::less<>> planned;
  for (const PlannedTensor& tensor : plan.tensors) {
    planned.insert(tensor.name);
    const TensorSource* file = checkpoint.FileOf(tensor.name);
    if (file == nullptr) {
      missing.push_back(tensor.name);
      continue;
    }
    const TensorInfo& info = *file->Find(tensor.name);
    if (info.shape != tensor.shape) {
      wrong_shape.push_back(absl::StrCat(tensor.name, " is ", ShapeToString(info.shape),
                                         ", expected ", ShapeToString(tensor.shape)));
    }
    if (!IsFloatingPoint(info.dtype)) {
      wrong_dtype.push_back(
          absl::StrCat(tensor.name, " is ", NameOf(info.dtype), ", expected f32, bf16 or f16"));
    }
  }
  for (const std::string& name : checkpoint.TensorNames()) {
    if (planned.find(name) == planned.end() && !IsIgnored(name, plan)) unexpected.push_back(name);
  }
  if (missing.empty() && unexpected.empty() && wrong_shape.empty() && wrong_dtype.empty()) {
    return absl::OkStatus();
  }
  std::vector<std::string> problems;
  if (!missing.empty()) {
    problems.push_back(
        absl::StrCat("missing ", Plural(missing.size(), "tensor"), ": ", ListSome(missing)));
  }
  if (!unexpected.empty()) {
    problems.push_back(absl::StrCat("unexpected ", Plural(unexpected.size(), "tensor"), ": ",
                                    ListSome(unexpected)));
  }
  if (!wrong_shape.empty()) {
    problems.push_back(absl::StrCat("wrong shape: ", ListSome(wrong_shape)));
  }
  if (!wrong_dtype.empty()) {
    problems.push_back(absl::StrCat("wrong dtype: ", ListSome(wrong_dtype)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("checkpoint ", checkpoint.directory(),
                   " does not match the model configuration: ", absl::StrJoin(problems, "; ")));
}

bool IsLayerProjection(absl::string_view name) {
  return absl::StartsWith(name, "model.layers.") && absl::EndsWith(name, "_proj.weight");
}

absl::StatusOr<RankWeights> LoadRankWeights(const Checkpoint& checkpoint, const WeightPlan& plan,
                                            const LoadOptions& options) {
  if (options.dtype.has_value() && !IsFloatingPoint(*options.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("weights cannot be loaded as ",
                                                   NameOf(*options.dtype), " (f32, bf16 or f16)"));
  }
  TESSERA_RETURN_IF_ERROR(CheckCheckpoint(checkpoint, plan));

  LoadProgress progress;
  progress.tensors_total = static_cast<int>(plan.tensors.size());
  std::vector<DType> dtypes;
  for (const PlannedTensor& tensor : plan.tensors) {
    TESSERA_ASSIGN_OR_RETURN(TensorInfo info, checkpoint.Info(tensor.name));
    dtypes.push_back(options.dtype.value_or(info.dtype));
    progress.bytes_total += StorageBytes(dtypes.back(), NumElements(tensor.rank_shape));
  }
  if (options.progress) options.progress(progress);

  const bool keep_stored_groups = options.quantize.has_value() && options.quantize->stored;
  RankWeights weights;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& planned = plan.tensors[i];
    std::optional<StoredGroups> groups;
    if (keep_stored_groups && IsLayerProjection(planned.name)) {
      TESSERA_ASSIGN_OR_RETURN(groups, checkpoint.ReadStoredGroups(planned.name, planned.slice));
    }
    if (groups.has_value()) {
      weights.stored_groups.emplace(planned.name,
                                    std::make_shared<const StoredGroups>(std::move(*groups)));
    } else {
      TESSERA_ASSIGN_OR_RETURN(Tensor tensor,
                               checkpoint.Read(planned.name, planned.slice, dtypes[i]));
      weights.bytes += tensor.nbytes();
      weights.tensors.emplace(planned.name, std::move(tensor));
    }
    if (options.release_pages) checkpoint.ReleasePages(planned.name);
    progress.bytes_done += StorageBytes(dtypes[i], NumElements(planned.rank_shape));
    progress.tensors_done += 1;
    progress.current = planned.name;
    if (options.progress) options.progress(progress);
  }
  for (const std::string& name : checkpoint.TensorNames()) {
    if (IsIgnored(name, plan)) weights.ignored.push_back(name);
  }
  return weights;
}

absl::StatusOr<RankWeights> LoadRankWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                            int tp, int tp_rank, const LoadOptions& options) {
  TESSERA_ASSIGN_OR_RETURN(WeightPlan plan,
                           PlanWeights(config, tp, tp_rank, DetectWeightPlanOptions(checkpoint)));
  return LoadRankWeights(checkpoint, plan, options);
}

}  // namespace tessera::model
