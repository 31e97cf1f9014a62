#ifndef TESSERA_RUNTIME_CORE_TENSOR_VALUES_H_
#define TESSERA_RUNTIME_CORE_TENSOR_VALUES_H_

// Element-wise access to a host tensor of any dtype through double: for filling inputs with
// known patterns and checking results in tests and benchmarks. Not for hot paths.

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "runtime/core/tensor.h"

namespace tessera {

// Element `index` of a host tensor, widened to double.
double ElementAsDouble(const Tensor& tensor, int64_t index);
// Stores `value` into element `index` (rounded to nearest for 16-bit floats; integers are
// truncated and wrap to the dtype's width).
void SetElement(Tensor& tensor, int64_t index, double value);
// tensor[i] = value_of(i) for every element.
void FillWith(Tensor& tensor, const std::function<double(int64_t)>& value_of);
// A host tensor of standard-normal values (std::mt19937 seeded with `seed`), the same for
// the same seed.
absl::StatusOr<Tensor> RandomNormalTensor(DType dtype, Shape shape, uint32_t seed);

// Largest relative error a value of this dtype can carry after one rounding (0 for integer
// types): 2^-8 for bf16, 2^-11 for f16, 2^-24 for f32.
double RoundingUnit(DType dtype);

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_TENSOR_VALUES_H_
