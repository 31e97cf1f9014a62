#ifndef TESSERA_RUNTIME_MODEL_STORED_GROUPS_H_
#define TESSERA_RUNTIME_MODEL_STORED_GROUPS_H_

// A slice of a projection weight that its checkpoint already stores quantized in groups along
// the inputs (GGUF's Q8_0, Q4_0 and Q4_1 blocks; GPTQ's 4-bit groups), in the layout that
// kernels::QuantizedWeightFromGroups takes: read without dequantizing, so that the model runs
// on the file's own codes, scales and offsets (`--quantize stored`).

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/core/tensor.h"

namespace tessera::model {

// How a weight's groups are stored: what a memory plan needs without reading them.
struct StoredGroupFormat {
  kernels::WeightQuant quant = kernels::WeightQuant::kInt8;
  int64_t group_size = 0;
  friend bool operator==(const StoredGroupFormat&, const StoredGroupFormat&) = default;
};

struct StoredGroups {
  kernels::WeightQuant quant = kernels::WeightQuant::kInt8;
  int64_t rows = 0;        // output features of the slice
  int64_t cols = 0;        // input features of the slice
  int64_t group_size = 0;  // inputs a group; cols is a multiple of it
  // rows * cols, row-major: int8 -128..127 (w = scale * code), int4 0..15
  // (w = scale * code + offset).
  std::vector<int8_t> codes;
  // rows * (cols / group_size), row-major by row then group.
  std::vector<float> scales;
  std::vector<float> offsets;  // as scales for int4; empty for int8

  int64_t groups_per_row() const { return cols / group_size; }
  StoredGroupFormat format() const { return {quant, group_size}; }
};

// Rows [begin, end) (a part of a fused weight). INVALID_ARGUMENT when out of range.
absl::StatusOr<StoredGroups> StoredGroupRows(const StoredGroups& groups, int64_t begin,
                                             int64_t end);

// `top`'s rows, then `bottom`'s (gate and up stacked into one product). INVALID_ARGUMENT
// unless both have the same format, group size and inputs.
absl::StatusOr<StoredGroups> StackStoredGroups(const StoredGroups& top, const StoredGroups& bottom);

// The weights as a (rows, cols) tensor of `dtype` (f32 or bf16): each the f32 nearest
// scale * code + offset, with the scale and offset rounded as the kernels store them (see
// kernels::QuantizedWeightFromGroups), then rounded to `dtype`.
absl::StatusOr<Tensor> DequantizeStoredGroups(const StoredGroups& groups, DType dtype);

// Packed for kernels::QuantizedLinear (kernels::QuantizedWeightFromGroups).
absl::StatusOr<kernels::QuantizedWeight> ToQuantizedWeight(const StoredGroups& groups);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_STORED_GROUPS_H_
