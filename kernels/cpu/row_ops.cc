#include "kernels/cpu/row_ops.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/check_shapes.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::LoadFloat;

}  // namespace

absl::Status AddBias(Tensor& x, const Tensor& bias) {
  constexpr char kKernel[] = "AddBias";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "bias", bias, {DType::kF32, DType::kBF16}));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "bias", bias, {cols}));
  float* data = x.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    float* row = data + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] += LoadFloat(bias, c);
  }
  return absl::OkStatus();
}

absl::Status FillColumns(Tensor& x, int64_t begin, int64_t end, float value) {
  constexpr char kKernel[] = "FillColumns";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (begin < 0 || end < begin || end > cols) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": columns [", begin, ", ", end,
                                                   ") are not within the ", cols, " of ",
                                                   x.DebugString()));
  }
  float* data = x.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    std::fill(data + r * cols + begin, data + r * cols + end, value);
  return absl::OkStatus();
}

absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) {
  constexpr char kKernel[] = "GatherRows";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "rows", rows, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "rows", rows, 1));
  const int64_t count = rows.dim(0), width = x.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {count, width}));
  const int32_t* index = rows.data<int32_t>();
  for (int64_t s = 0; s < count; ++s) {
    if (index[s] < 0 || index[s] >= x.dim(0)) {
      return absl::InvalidArgumentError(absl::StrCat(kKernel, ": rows[", s, "] = ", index[s],
                                                     " is outside the ", x.dim(0), " rows of x"));
    }
  }
  const float* from = x.data<float>();
  float* to = out.data<float>();
  for (int64_t s = 0; s < count; ++s) {
    std::copy_n(from + int64_t{index[s]} * width, width, to + s * width);
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
