#include "kernels/cpu/elementwise_reduce.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tessera::kernels {
namespace {

struct Sum {
  template <typename T>
  T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  T operator()(T a, T b) const { return std::max(a, b); }
};
struct Min {
  template <typename T>
  T operator()(T a, T b) const { return std::min(a, b); }
};

// acc is (count), in is (count). Plain loops: the compiler vectorizes them at -O2/-O3.
template <typename T, typename Op>
void Combine(T* __restrict acc, const T* __restrict in, int64_t count, Op op) {
  for (int64_t i = 0; i < count; ++i) acc[i] = op(acc[i], in[i]);
}

// 16-bit floats: widen to f32, combine, round back.
template <typename H, typename Op>
void CombineHalf(H* __restrict acc, const H* __restrict in, int64_t count, Op op) {
  for (int64_t i = 0; i < count; ++i) {
    acc[i] = H::FromFloat(op(acc[i].ToFloat(), in[i].ToFloat()));
  }
}

template <typename Op>
absl::Status Dispatch(void* acc, const void* in, int64_t count, DType dtype, Op op) {
  switch (dtype) {
    case DType::kF32:
      Combine(static_cast<float*>(acc), static_cast<const float*>(in), count, op);
      return absl::OkStatus();
    case DType::kBF16:
      CombineHalf(static_cast<BFloat16*>(acc), static_cast<const BFloat16*>(in), count, op);
      return absl::OkStatus();
    case DType::kF16:
      CombineHalf(static_cast<Half*>(acc), static_cast<const Half*>(in), count, op);
      return absl::OkStatus();
    case DType::kI8:
      Combine(static_cast<int8_t*>(acc), static_cast<const int8_t*>(in), count,
              [op](int8_t a, int8_t b) { return static_cast<int8_t>(op(int{a}, int{b})); });
      return absl::OkStatus();
    case DType::kI32:
      Combine(static_cast<int32_t*>(acc), static_cast<const int32_t*>(in), count, op);
      return absl::OkStatus();
    case DType::kI64:
      Combine(static_cast<int64_t*>(acc), static_cast<const int64_t*>(in), count, op);
      return absl::OkStatus();
    case DType::kI4:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("element-wise reduction does not support dtype ", NameOf(dtype)));
}

}  // namespace

absl::Status ReduceInto(void* accumulator, const void* input, int64_t count, DType dtype,
                        Reduction reduction) {
  switch (reduction) {
    case Reduction::kSum: return Dispatch(accumulator, input, count, dtype, Sum{});
    case Reduction::kMax: return Dispatch(accumulator, input, count, dtype, Max{});
    case Reduction::kMin: return Dispatch(accumulator, input, count, dtype, Min{});
  }
  return absl::InvalidArgumentError("unknown reduction");
}

}  // namespace tessera::kernels
