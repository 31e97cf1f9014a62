#include "runtime/core/tensor_values.h"

#include <random>
#include <utility>

namespace tessera {

double ElementAsDouble(const Tensor& tensor, int64_t index) {
  TESSERA_CHECK(index >= 0 && index < tensor.numel(), "element index out of range");
  switch (tensor.dtype()) {
    case DType::kF32:
      return tensor.span<float>()[index];
    case DType::kBF16:
      return tensor.span<BFloat16>()[index].ToFloat();
    case DType::kF16:
      return tensor.span<Half>()[index].ToFloat();
    case DType::kI8:
      return tensor.span<int8_t>()[index];
    case DType::kI32:
      return tensor.span<int32_t>()[index];
    case DType::kI64:
      return static_cast<double>(tensor.span<int64_t>()[index]);
    case DType::kI4:
      return UnpackInt4(static_cast<const uint8_t*>(tensor.data()), index);
  }
  return 0;
}

void SetElement(Tensor& tensor, int64_t index, double value) {
  TESSERA_CHECK(index >= 0 && index < tensor.numel(), "element index out of range");
  switch (tensor.dtype()) {
    case DType::kF32:
      tensor.span<float>()[index] = static_cast<float>(value);
      return;
    case DType::kBF16:
      tensor.span<BFloat16>()[index] = BFloat16::FromFloat(static_cast<float>(value));
      return;
    case DType::kF16:
      tensor.span<Half>()[index] = Half::FromFloat(static_cast<float>(value));
      return;
    case DType::kI8:
      tensor.span<int8_t>()[index] = static_cast<int8_t>(static_cast<int64_t>(value));
      return;
    case DType::kI32:
      tensor.span<int32_t>()[index] = static_cast<int32_t>(static_cast<int64_t>(value));
      return;
    case DType::kI64:
      tensor.span<int64_t>()[index] = static_cast<int64_t>(value);
      return;
    case DType::kI4:
      PackInt4(static_cast<uint8_t*>(tensor.data()), index, static_cast<int>(value));
      return;
  }
}

void FillWith(Tensor& tensor, const std::function<double(int64_t)>& value_of) {
  for (int64_t i = 0; i < tensor.numel(); ++i) SetElement(tensor, i, value_of(i));
}

absl::StatusOr<Tensor> RandomNormalTensor(DType dtype, Shape shape, uint32_t seed) {
  absl::StatusOr<Tensor> tensor = Tensor::Empty(dtype, std::move(shape));
  if (!tensor.ok()) return tensor.status();
  std::mt19937 random(seed);
  std::normal_distribution<float> normal;
  FillWith(*tensor, [&](int64_t) { return normal(random); });
  return tensor;
}

double RoundingUnit(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 0x1p-24;
    case DType::kBF16:
      return 0x1p-8;
    case DType::kF16:
      return 0x1p-11;
    default:
      return 0;
  }
}

}  // namespace tessera
