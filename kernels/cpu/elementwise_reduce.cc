#include "kernels/cpu/elementwise_reduce.h"

#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace tessera::kernels {
namespace {

// Integer sums wrap around (two's complement), as NCCL's and MPI's do; computed in the
// unsigned type because signed overflow is undefined in C++.
struct Sum {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
    } else {
      return a + b;
    }
  }
};
struct Max {
  template <typename T>
  T operator()(T a, T b) const {
    return std::max(a, b);
  }
};
struct Min {
  template <typename T>
  T operator()(T a, T b) const {
    return std::min(a, b);
  }
};

// out, a and b are (count). Element-wise, so out may alias a or b. Plain loops: the
// compiler vectorizes them (the library is built with -O3).
template <typename T, typename Op>
void Combine(T* out, const T* a, const T* b, int64_t count, Op op) {
  for (int64_t i = 0; i < count; ++i) out[i] = op(a[i], b[i]);
}

// 16-bit floats: widen to f32, combine, round back.
template <typename H, typename Op>
void CombineHalf(H* out, const H* a, const H* b, int64_t count, Op op) {
  for (int64_t i = 0; i < count; ++i) out[i] = H::FromFloat(op(a[i].ToFloat(), b[i].ToFloat()));
}

template <typename T, typename Op>
void CombineAs(void* out, const void* a, const void* b, int64_t count, Op op) {
  Combine(static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b), count, op);
}

template <typename Op>
absl::Status Dispatch(void* out, const void* a, const void* b, int64_t count, DType dtype, Op op) {
  switch (dtype) {
    case DType::kF32:
      CombineAs<float>(out, a, b, count, op);
      return absl::OkStatus();
    case DType::kBF16:
      CombineHalf(static_cast<BFloat16*>(out), static_cast<const BFloat16*>(a),
                  static_cast<const BFloat16*>(b), count, op);
      return absl::OkStatus();
    case DType::kF16:
      CombineHalf(static_cast<Half*>(out), static_cast<const Half*>(a), static_cast<const Half*>(b),
                  count, op);
      return absl::OkStatus();
    case DType::kI8:
      CombineAs<int8_t>(out, a, b, count, [op](int8_t x, int8_t y) {
        return static_cast<int8_t>(op(int{x}, int{y}));
      });
      return absl::OkStatus();
    case DType::kI32:
      CombineAs<int32_t>(out, a, b, count, op);
      return absl::OkStatus();
    case DType::kI64:
      CombineAs<int64_t>(out, a, b, count, op);
      return absl::OkStatus();
    case DType::kI4:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("element-wise reduction does not support dtype ", NameOf(dtype)));
}

}  // namespace

absl::Status Reduce(void* output, const void* a, const void* b, int64_t count, DType dtype,
                    Reduction reduction) {
  switch (reduction) {
    case Reduction::kSum:
      return Dispatch(output, a, b, count, dtype, Sum{});
    case Reduction::kMax:
      return Dispatch(output, a, b, count, dtype, Max{});
    case Reduction::kMin:
      return Dispatch(output, a, b, count, dtype, Min{});
  }
  return absl::InvalidArgumentError("unknown reduction");
}

absl::Status ReduceInto(void* accumulator, const void* input, int64_t count, DType dtype,
                        Reduction reduction) {
  return Reduce(accumulator, accumulator, input, count, dtype, reduction);
}

}  // namespace tessera::kernels
