#ifndef TESSERA_RUNTIME_CORE_DTYPE_H_
#define TESSERA_RUNTIME_CORE_DTYPE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/half.h"

namespace tessera {

// Element types of a Tensor. kI4 is packed signed 4-bit: two elements per byte, the element
// with the lower index in the low nibble.
enum class DType : uint8_t { kF32, kBF16, kF16, kI8, kI32, kI64, kI4 };

inline constexpr DType kAllDTypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kI8,
                                       DType::kI32, DType::kI64,  DType::kI4};

// Bits per element: 32, 16, 16, 8, 32, 64, 4.
int BitsOf(DType dtype);
// Bytes that `numel` elements occupy (int4 rounds up to whole bytes).
size_t StorageBytes(DType dtype, int64_t numel);
// "f32", "bf16", "f16", "i8", "i32", "i64", "i4".
absl::string_view NameOf(DType dtype);
// The inverse of NameOf; INVALID_ARGUMENT naming the text and the accepted names otherwise.
absl::StatusOr<DType> ParseDType(absl::string_view name);
bool IsFloatingPoint(DType dtype);

// The C++ type that holds one element of a dtype (none for kI4).
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::kBF16;
};
template <>
struct DTypeOf<Half> {
  static constexpr DType value = DType::kF16;
};
template <>
struct DTypeOf<int8_t> {
  static constexpr DType value = DType::kI8;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kI32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kI64;
};

// Packed int4 access. Values are in [-8, 7].
int UnpackInt4(const uint8_t* packed, int64_t index);
void PackInt4(uint8_t* packed, int64_t index, int value);

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_DTYPE_H_
