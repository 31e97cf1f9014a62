#include "runtime/model/stored_groups.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"

namespace tessera::model {
namespace {

// The rows [begin, end) of a row-major array of `per_row` values a row.
template <typename T>
std::vector<T> RowsOf(const std::vector<T>& values, int64_t per_row, int64_t begin, int64_t end) {
  if (values.empty()) return {};
  return std::vector<T>(values.begin() + begin * per_row, values.begin() + end * per_row);
}

template <typename T>
void Append(std::vector<T>& to, const std::vector<T>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

}  // namespace

absl::StatusOr<StoredGroups> StoredGroupRows(const StoredGroups& groups, int64_t begin,
                                             int64_t end) {
  if (begin < 0 || end < begin || end > groups.rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows [", begin, ", ", end, ") of a weight of ", groups.rows, " rows"));
  }
  StoredGroups part = groups;
  part.rows = end - begin;
  part.codes = RowsOf(groups.codes, groups.cols, begin, end);
  part.scales = RowsOf(groups.scales, groups.groups_per_row(), begin, end);
  part.offsets = RowsOf(groups.offsets, groups.groups_per_row(), begin, end);
  return part;
}

absl::StatusOr<StoredGroups> StackStoredGroups(const StoredGroups& top,
                                               const StoredGroups& bottom) {
  if (top.quant != bottom.quant || top.group_size != bottom.group_size || top.cols != bottom.cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot stack ", kernels::WeightQuantName(top.quant), " groups of ", top.group_size, " (",
        top.cols, " inputs) on ", kernels::WeightQuantName(bottom.quant), " groups of ",
        bottom.group_size, " (", bottom.cols, " inputs)"));
  }
  StoredGroups stacked = top;
  stacked.rows = top.rows + bottom.rows;
  Append(stacked.codes, bottom.codes);
  Append(stacked.scales, bottom.scales);
  Append(stacked.offsets, bottom.offsets);
  return stacked;
}

absl::StatusOr<Tensor> DequantizeStoredGroups(const StoredGroups& groups, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("stored groups dequantize to f32 or bf16, not ", NameOf(dtype)));
  }
  // Through the packed form, so that the scales and offsets are rounded as the kernels
  // round them.
  TESSERA_ASSIGN_OR_RETURN(kernels::QuantizedWeight packed, ToQuantizedWeight(groups));
  TESSERA_ASSIGN_OR_RETURN(Tensor values, kernels::DequantizeWeight(packed));
  if (dtype == DType::kF32) return values;
  TESSERA_ASSIGN_OR_RETURN(Tensor narrowed, Tensor::Empty(DType::kBF16, values.shape()));
  const float* from = values.data<float>();
  uint16_t* to = static_cast<uint16_t*>(narrowed.data());
  for (int64_t i = 0; i < values.numel(); ++i) to[i] = BFloat16::FromFloat(from[i]).bits;
  return narrowed;
}

absl::StatusOr<kernels::QuantizedWeight> ToQuantizedWeight(const StoredGroups& groups) {
  return kernels::QuantizedWeightFromGroups(groups.quant, groups.rows, groups.cols,
                                            groups.group_size, groups.codes, groups.scales,
                                            groups.offsets);
}

}  // namespace tessera::model
