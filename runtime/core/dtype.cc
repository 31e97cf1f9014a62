#include "runtime/core/dtype.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera {

int BitsOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 32;
    case DType::kBF16:
      return 16;
    case DType::kF16:
      return 16;
    case DType::kI8:
      return 8;
    case DType::kI32:
      return 32;
    case DType::kI64:
      return 64;
    case DType::kI4:
      return 4;
  }
  return 0;
}

size_t StorageBytes(DType dtype, int64_t numel) {
  return (static_cast<size_t>(numel) * BitsOf(dtype) + 7) / 8;
}

absl::string_view NameOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI8:
      return "i8";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    case DType::kI4:
      return "i4";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  std::vector<absl::string_view> names;
  for (DType dtype : kAllDTypes) {
    if (NameOf(dtype) == name) return dtype;
    names.push_back(NameOf(dtype));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "' (expected one of ",
                                                 absl::StrJoin(names, ", "), ")"));
}

bool IsFloatingPoint(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

int UnpackInt4(const uint8_t* packed, int64_t index) {
  uint8_t byte = packed[index / 2];
  int nibble = (index % 2 == 0) ? (byte & 0x0f) : (byte >> 4);
  return nibble >= 8 ? nibble - 16 : nibble;
}

void PackInt4(uint8_t* packed, int64_t index, int value) {
  uint8_t nibble = static_cast<uint8_t>(value & 0x0f);
  uint8_t& byte = packed[index / 2];
  byte = (index % 2 == 0) ? static_cast<uint8_t>((byte & 0xf0) | nibble)
                          : static_cast<uint8_t>((byte & 0x0f) | (nibble << 4));
}

}  // namespace tessera
