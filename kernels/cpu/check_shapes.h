#ifndef TESSERA_KERNELS_CPU_CHECK_SHAPES_H_
#define TESSERA_KERNELS_CPU_CHECK_SHAPES_H_

// Argument checks shared by the CPU kernels: each kernel names itself and the argument that
// is wrong, so a caller's mistake reads as "RmsNorm: weight is f32[7] on cpu, expected 8
// elements" instead of a crash.

#include <initializer_list>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/half.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::internal {

inline absl::Status ExpectHost(absl::string_view kernel, absl::string_view name, const Tensor& t) {
  if (!t.device().is_cpu() || (t.numel() > 0 && t.data() == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": ", name, " is ", t.DebugString(), ", expected host memory"));
  }
  return absl::OkStatus();
}

inline absl::Status ExpectDType(absl::string_view kernel, absl::string_view name, const Tensor& t,
                                std::initializer_list<DType> allowed) {
  for (DType d : allowed) {
    if (t.dtype() == d) return ExpectHost(kernel, name, t);
  }
  std::string names;
  for (DType d : allowed) absl::StrAppend(&names, names.empty() ? "" : " or ", NameOf(d));
  return absl::InvalidArgumentError(
      absl::StrCat(kernel, ": ", name, " is ", t.DebugString(), ", expected ", names));
}

inline absl::Status ExpectShape(absl::string_view kernel, absl::string_view name, const Tensor& t,
                                const Shape& shape) {
  if (t.shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": ", name, " is ", t.DebugString(),
                                                   ", expected shape ", ShapeToString(shape)));
  }
  return absl::OkStatus();
}

inline absl::Status ExpectRank(absl::string_view kernel, absl::string_view name, const Tensor& t,
                               int rank) {
  if (t.rank() != rank) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": ", name, " is ", t.DebugString(),
                                                   ", expected ", rank, " dimensions"));
  }
  return absl::OkStatus();
}

// Element i of a host f32, bf16 or f16 tensor.
inline float LoadFloat(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kBF16:
      return t.data<BFloat16>()[i].ToFloat();
    case DType::kF16:
      return t.data<Half>()[i].ToFloat();
    default:
      return t.data<float>()[i];
  }
}

}  // namespace tessera::kernels::internal

#endif  // TESSERA_KERNELS_CPU_CHECK_SHAPES_H_
