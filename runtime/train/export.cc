#include "runtime/train/export.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_plan.h"
#include "runtime/train/lora.h"

namespace tessera::train {
namespace {

namespace fs = std::filesystem;

// Tensors up to this many bytes share a file (transformers' default max_shard_size).
constexpr uint64_t kShardBytes = uint64_t{5} << 30;

// Copies rank `shard` (as `slice` cuts it from a tensor shaped `full_shape`) into `full`.
void PlaceSlice(const Tensor& shard, const model::TensorSlice& slice, Tensor& full) {
  const float* from = shard.data<float>();
  float* to = full.data<float>();
  const int64_t full_rows = full.rank() > 0 ? full.dim(0) : 1;
  const int64_t row = full_rows > 0 ? full.numel() / full_rows : 0;
  switch (slice.kind) {
    case model::TensorSlice::Kind::kWhole:
      std::copy_n(from, full.numel(), to);
      return;
    case model::TensorSlice::Kind::kRows: {
      int64_t at = 0;  // rows of the shard consumed
      for (const model::IndexRange& range : slice.ranges) {
        const int64_t rows = range.end - range.begin;
        std::copy_n(from + at * row, rows * row, to + range.begin * row);
        at += rows;
      }
      return;  // rows past the ranges are padding
    }
    case model::TensorSlice::Kind::kColumns: {
      const int64_t columns = full.dim(1);
      const int64_t width = shard.dim(1);
      for (int64_t r = 0; r < full.dim(0); ++r) {
        int64_t at = 0;
        for (const model::IndexRange& range : slice.ranges) {
          std::copy_n(from + r * width + at, range.end - range.begin,
                      to + r * columns + range.begin);
          at += range.end - range.begin;
        }
      }
      return;
    }
  }
}

absl::StatusOr<Tensor> ToDType(const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) return t;
  TESSERA_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(dtype, t.shape()));
  const float* from = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::kBF16) {
      out.data<BFloat16>()[i] = BFloat16::FromFloat(from[i]);
    } else {
      out.data<Half>()[i] = Half::FromFloat(from[i]);
    }
  }
  return out;
}

// Every rank's plan, to place its shards (a pure function of the config).
absl::StatusOr<std::vector<model::WeightPlan>> AllPlans(const TrainableModel& model) {
  std::vector<model::WeightPlan> plans;
  const int size = model.plan().tp;
  for (int r = 0; r < size; ++r) {
    TESSERA_ASSIGN_OR_RETURN(
        model::WeightPlan plan,
        model::PlanWeights(model.config(), size, r, {.fused_qkv = model.plan().fused_qkv}));
    plans.push_back(std::move(plan));
  }
  return plans;
}

// The planned tensor of `name` on rank `rank` (LoRA factors derived from their Linear's).
absl::StatusOr<model::PlannedTensor> PlannedOn(const std::vector<model::WeightPlan>& plans,
                                               int rank, const Parameter& p, int lora_r) {
  const model::WeightPlan& plan = plans[rank];
  if (const model::PlannedTensor* planned = plan.Find(p.name)) return *planned;
  for (const model::PlannedTensor& weight : plan.tensors) {
    if (LoraAName(weight.name) == p.name) return PlanLoraA(weight, lora_r);
    if (LoraBName(weight.name) == p.name) return PlanLoraB(weight, lora_r);
  }
  return absl::InternalError(absl::StrCat("no plan for ", p.name));
}

// The whole checkpoint tensor of `p` from every rank's `value` (its part of it), on TP rank
// 0 (an undefined tensor elsewhere). Collective over the model's TP communicator.
absl::StatusOr<Tensor> GatherWhole(TrainableModel& model,
                                   const std::vector<model::WeightPlan>& plans, const Parameter& p,
                                   const Tensor& value) {
  comm::Communicator& tp = model.tp();
  const int size = tp.size();
  Tensor gathered = value;
  if (size > 1) {
    TESSERA_ASSIGN_OR_RETURN(gathered, Tensor::Empty(DType::kF32, {size * value.numel()}));
    Stream cpu = Stream::Cpu();
    TESSERA_RETURN_IF_ERROR(tp.AllGather(value.Flatten(), gathered, cpu));
  }
  if (tp.rank() != 0) return Tensor();
  TESSERA_ASSIGN_OR_RETURN(Tensor full, Tensor::Zeros(DType::kF32, p.planned.shape));
  const int lora_r = model.options().lora.r;
  for (int r = 0; r < size; ++r) {
    TESSERA_ASSIGN_OR_RETURN(model::PlannedTensor planned, PlannedOn(plans, r, p, lora_r));
    TESSERA_ASSIGN_OR_RETURN(Tensor part,
                             gathered.Flatten().Slice(r * value.numel(), (r + 1) * value.numel()));
    TESSERA_ASSIGN_OR_RETURN(part, part.Reshape(planned.rank_shape));
    PlaceSlice(part, planned.slice, full);
  }
  return full;
}

// W + scale * B A for this rank's part of a Linear with an adapter; `w` itself otherwise.
absl::StatusOr<Tensor> MergedValue(const ParameterSet& params, const Parameter& p, float scale) {
  const Parameter* a = params.LoraA(p.name);
  const Parameter* b = params.LoraB(p.name);
  if (a == nullptr || b == nullptr) return p.value;
  const int64_t n = b->value.dim(0), r = b->value.dim(1), k = a->value.dim(1);
  TESSERA_ASSIGN_OR_RETURN(Tensor merged, Tensor::Empty(DType::kF32, p.value.shape()));
  const float* wa = a->value.data<float>();
  const float* wb = b->value.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      float sum = 0;
      for (int64_t c = 0; c < r; ++c) sum += wb[i * r + c] * wa[c * k + j];
      merged.data<float>()[i * k + j] = p.value.data<float>()[i * k + j] + scale * sum;
    }
  }
  return merged;
}

// Writes `files` into `out_dir` through a temporary folder renamed into place, then copies
// `copied` from `base_dir` where present.
absl::Status WriteDirectory(const std::string& out_dir,
                            const std::function<absl::Status(const fs::path&)>& write,
                            const std::string& base_dir, const std::vector<std::string>& copied) {
  const fs::path target(out_dir);
  const fs::path temporary = fs::path(out_dir + ".tmp");
  std::error_code error;
  fs::remove_all(temporary, error);
  fs::create_directories(temporary, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", temporary.string(), ": ", error.message()));
  }
  TESSERA_RETURN_IF_ERROR(write(temporary));
  for (const std::string& file : copied) {
    const fs::path from = fs::path(base_dir) / file;
    if (!fs::exists(from)) continue;
    fs::copy_file(from, temporary / file, fs::copy_options::overwrite_existing, error);
    if (error) {
      return absl::InternalError(
          absl::StrCat("cannot copy ", from.string(), ": ", error.message()));
    }
  }
  fs::remove_all(target, error);
  fs::rename(temporary, target, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot rename ", temporary.string(), " to ",
                                            target.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExportHuggingFace(TrainableModel& model, const std::string& base_dir,
                               const std::string& out_dir) {
  if (model.options().quantize.has_value()) {
    return absl::FailedPreconditionError(
        "the model holds its base quantized (--quantize): export the adapter, or merge it with "
        "`tessera train export --merge`, which loads the base unquantized");
  }
  if (model.options().pack_frozen_base || model.options().frozen_base != nullptr) {
    return absl::FailedPreconditionError(
        "the model holds its frozen base packed or shared, not as parameters: export the "
        "adapter, or merge it with `tessera train export --merge`, which loads the base");
  }
  comm::Communicator& tp = model.tp();
  const model::ModelConfig& config = model.config();
  TESSERA_ASSIGN_OR_RETURN(std::vector<model::WeightPlan> plans, AllPlans(model));
  const DType dtype = config.torch_dtype == DType::kBF16 || config.torch_dtype == DType::kF16
                          ? config.torch_dtype
                          : DType::kF32;
  const float scale = model.options().lora.enabled() ? model.options().lora.scale() : 0.0f;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Parameter& p : model.parameters().all()) {
    if (p.name.rfind("base_model.", 0) == 0) continue;  // adapters: merged below
    TESSERA_ASSIGN_OR_RETURN(Tensor value, MergedValue(model.parameters(), p, scale));
    TESSERA_ASSIGN_OR_RETURN(Tensor full, GatherWhole(model, plans, p, value));
    if (tp.rank() != 0) continue;
    TESSERA_ASSIGN_OR_RETURN(Tensor stored, ToDType(full, dtype));
    tensors.emplace_back(p.name, std::move(stored));
  }
  if (tp.rank() != 0) return tp.Barrier();
  absl::Status written = WriteDirectory(
      out_dir,
      [&](const fs::path& dir) -> absl::Status {
        // Files of at most kShardBytes each, in checkpoint order.
        std::vector<std::vector<std::pair<std::string, Tensor>>> files(1);
        uint64_t in_file = 0, total = 0;
        for (auto& named : tensors) {
          if (in_file > 0 && in_file + named.second.nbytes() > kShardBytes) {
            files.emplace_back();
            in_file = 0;
          }
          in_file += named.second.nbytes();
          total += named.second.nbytes();
          files.back().push_back(named);
        }
        nlohmann::json weight_map = nlohmann::json::object();
        for (size_t f = 0; f < files.size(); ++f) {
          const std::string name =
              absl::StrFormat("model-%05d-of-%05d.safetensors", f + 1, files.size());
          TESSERA_RETURN_IF_ERROR(
              model::WriteSafetensors((dir / name).string(), files[f], {{"format", "pt"}}));
          for (const auto& named : files[f]) weight_map[named.first] = name;
        }
        nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
        std::ofstream((dir / "model.safetensors.index.json").string()) << index.dump(2) << "\n";
        return absl::OkStatus();
      },
      base_dir,
      {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
       "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja"});
  // The other ranks wait at the barrier whatever happened here.
  absl::Status barrier = tp.Barrier();
  TESSERA_RETURN_IF_ERROR(written);
  return barrier;
}

absl::Status ExportPeftAdapter(TrainableModel& model, const std::string& base_dir,
                               const std::string& out_dir) {
  const LoraOptions& lora = model.options().lora;
  if (!lora.enabled()) {
    return absl::FailedPreconditionError("the model has no LoRA adapters to export");
  }
  comm::Communicator& tp = model.tp();
  TESSERA_ASSIGN_OR_RETURN(std::vector<model::WeightPlan> plans, AllPlans(model));
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Parameter& p : model.parameters().all()) {
    if (!p.trainable) continue;
    TESSERA_ASSIGN_OR_RETURN(Tensor full, GatherWhole(model, plans, p, p.value));
    if (tp.rank() == 0) tensors.emplace_back(p.name, std::move(full));
  }
  if (tp.rank() != 0) return tp.Barrier();
  absl::Status written = WriteDirectory(
      out_dir,
      [&](const fs::path& dir) -> absl::Status {
        TESSERA_RETURN_IF_ERROR(model::WriteSafetensors(
            (dir / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}}));
        nlohmann::json config = {{"peft_type", "LORA"},
                                 {"task_type", "CAUSAL_LM"},
                                 {"base_model_name_or_path", base_dir},
                                 {"r", lora.r},
                                 {"lora_alpha", lora.alpha},
                                 {"lora_dropout", 0.0},
                                 {"target_modules", lora.targets},
                                 {"bias", "none"},
                                 {"fan_in_fan_out", false},
                                 {"use_rslora", false},
                                 {"use_dora", false},
                                 {"init_lora_weights", true},
                                 {"inference_mode", true},
                                 {"modules_to_save", nullptr}};
        std::ofstream((dir / "adapter_config.json").string()) << config.dump(2) << "\n";
        return absl::OkStatus();
      },
      base_dir, {});
  absl::Status barrier = tp.Barrier();
  TESSERA_RETURN_IF_ERROR(written);
  return barrier;
}

}  // namespace tessera::train
