#ifndef TESSERA_RUNTIME_MODEL_WEIGHT_LOADER_H_
#define TESSERA_RUNTIME_MODEL_WEIGHT_LOADER_H_

// Loads one tensor-parallel rank's weights (see weight_plan.h) from a checkpoint into host
// tensors. Each tensor is read straight from the mapped file into its destination, reading
// only the bytes of this rank's slice, and the file pages are unmapped again once copied, so
// the rank's resident memory stays near its share of the weights plus one tensor's pages
// (resident_memory_test measures it).

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/tensor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/stored_groups.h"
#include "runtime/model/weight_plan.h"
#include "runtime/model/weight_quantization.h"

namespace tessera::model {

struct LoadProgress {
  int tensors_done = 0;
  int tensors_total = 0;
  uint64_t bytes_done = 0;  // of this rank's slices, in the dtype they are loaded as
  uint64_t bytes_total = 0;
  std::string current;  // the tensor just loaded; empty before the first
};
using ProgressCallback = std::function<void(const LoadProgress&)>;

// "37/291 tensors, 1.20/4.51 GiB  model.layers.3.mlp.down_proj.weight"
std::string FormatLoadProgress(const LoadProgress& progress);

// A ProgressCallback that shows progress on `out` (stderr, say): on a terminal, one line
// redrawn in place at most every 100 ms and finished with a newline; otherwise one line at the
// end. `label` starts each line ("rank 0 loading").
ProgressCallback TerminalProgress(std::FILE* out, std::string label);

struct LoadOptions {
  // Every tensor is converted to this dtype (f32, bf16 or f16); nullopt keeps each tensor's
  // stored dtype.
  std::optional<DType> dtype;
  // Weight-only quantization of the layers' projections after loading (weight_quantization.h);
  // nullopt keeps them in `dtype`.
  std::optional<WeightQuantization> quantize;
  // The KV cache's element type: nullopt for the weights' (bf16 or f32), or i8 (codes with a
  // scale per token and head, kernels/cpu/kv_cache_int8.h). Not about loading weights, but
  // chosen with them.
  std::optional<DType> kv_cache_dtype;
  // Called once before the first tensor and after each one. May be empty.
  ProgressCallback progress;
  // Unmap each tensor's file pages once its slice is copied (see SafetensorsFile::
  // ReleasePages). Off only to measure what reading alone keeps resident.
  bool release_pages = true;
};

struct RankWeights {
  // This rank's part of every planned tensor, by checkpoint name, shaped plan.rank_shape;
  // except, with LoadOptions::quantize stored, the layer projections in `stored_groups`.
  std::map<std::string, Tensor> tensors;
  // With `--quantize stored`: this rank's part of each layer projection (model.layers.*
  // _proj.weight) that the checkpoint stores in groups the kernels take
  // (TensorSource::ReadStoredGroups), by checkpoint name, instead of a tensor.
  std::map<std::string, std::shared_ptr<const StoredGroups>> stored_groups;
  // Stored tensors deliberately not loaded: rotary inv_freq buffers, and lm_head.weight of a
  // checkpoint with tied embeddings.
  std::vector<std::string> ignored;
  uint64_t bytes = 0;  // held in `tensors`
};

// A layer's projection weight, "model.layers.N.(self_attn|mlp).*_proj.weight": what
// `--quantize` quantizes.
bool IsLayerProjection(absl::string_view name);

// Checks, before reading anything, that `checkpoint` holds exactly the tensors of `plan`
// (apart from the ignored ones) with the planned shapes and floating-point dtypes; the error
// (INVALID_ARGUMENT) lists every problem found: missing tensors, unexpected tensors, wrong
// shapes and wrong dtypes, each naming the tensor and, for shapes and dtypes, expected and
// actual.
absl::Status CheckCheckpoint(const Checkpoint& checkpoint, const WeightPlan& plan);

// CheckCheckpoint, then reads every planned slice.
absl::StatusOr<RankWeights> LoadRankWeights(const Checkpoint& checkpoint, const WeightPlan& plan,
                                            const LoadOptions& options = {});

// Plans for (tp, tp_rank) with the layout the checkpoint stores, then loads.
absl::StatusOr<RankWeights> LoadRankWeights(const Checkpoint& checkpoint, const ModelConfig& config,
                                            int tp, int tp_rank, const LoadOptions& options = {});

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_WEIGHT_LOADER_H_
