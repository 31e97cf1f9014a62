#include "runtime/train/export.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
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

}  // namespace

absl::Status ExportHuggingFace(TrainableModel& model, const std::string& base_dir,
                               const std::string& out_dir) {
  comm::Communicator& tp = model.tp();
  const model::ModelConfig& config = model.config();
  const int size = tp.size();
  // Every rank's plan, to place its shards (a pure function of the config).
  std::vector<model::WeightPlan> plans;
  for (int r = 0; r < size; ++r) {
    TESSERA_ASSIGN_OR_RETURN(
        model::WeightPlan plan,
        model::PlanWeights(config, size, r, {.fused_qkv = model.plan().fused_qkv}));
    plans.push_back(std::move(plan));
  }
  const DType dtype = config.torch_dtype == DType::kBF16 || config.torch_dtype == DType::kF16
                          ? config.torch_dtype
                          : DType::kF32;
  Stream cpu = Stream::Cpu();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Parameter& p : model.parameters().all()) {
    Tensor gathered = p.value;
    if (size > 1) {
      TESSERA_ASSIGN_OR_RETURN(gathered, Tensor::Empty(DType::kF32, {size * p.value.numel()}));
      TESSERA_RETURN_IF_ERROR(tp.AllGather(p.value.Flatten(), gathered, cpu));
    }
    if (tp.rank() != 0) continue;
    TESSERA_ASSIGN_OR_RETURN(Tensor full, Tensor::Zeros(DType::kF32, p.planned.shape));
    for (int r = 0; r < size; ++r) {
      const model::PlannedTensor* planned = plans[r].Find(p.name);
      if (planned == nullptr) return absl::InternalError(absl::StrCat("no plan for ", p.name));
      TESSERA_ASSIGN_OR_RETURN(Tensor part, gathered.Flatten().Slice(r * p.value.numel(),
                                                                     (r + 1) * p.value.numel()));
      TESSERA_ASSIGN_OR_RETURN(part, part.Reshape(planned->rank_shape));
      PlaceSlice(part, planned->slice, full);
    }
    TESSERA_ASSIGN_OR_RETURN(Tensor stored, ToDType(full, dtype));
    tensors.emplace_back(p.name, std::move(stored));
  }
  if (tp.rank() != 0) return tp.Barrier();

  absl::Status written = [&]() -> absl::Status {
    const fs::path target(out_dir);
    const fs::path temporary = fs::path(out_dir + ".tmp");
    std::error_code error;
    fs::remove_all(temporary, error);
    fs::create_directories(temporary, error);
    if (error) {
      return absl::InternalError(absl::StrCat("cannot create ", temporary.string(), ": ",
                                              error.message()));
    }
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
          model::WriteSafetensors((temporary / name).string(), files[f], {{"format", "pt"}}));
      for (const auto& named : files[f]) weight_map[named.first] = name;
    }
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream((temporary / "model.safetensors.index.json").string()) << index.dump(2) << "\n";
    for (const char* file :
         {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja"}) {
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
  }();
  // The other ranks wait at the barrier whatever happened here.
  absl::Status barrier = tp.Barrier();
  TESSERA_RETURN_IF_ERROR(written);
  return barrier;
}

}  // namespace tessera::train
