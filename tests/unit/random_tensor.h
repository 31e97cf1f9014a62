#ifndef TESSERA_TESTS_UNIT_RANDOM_TENSOR_H_
#define TESSERA_TESTS_UNIT_RANDOM_TENSOR_H_

// A host tensor of standard-normal values, the same for the same seed, for kernel tests.

#include <cstdint>
#include <utility>

#include "runtime/core/check.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"

namespace tessera::testing {

inline Tensor RandomTensor(DType dtype, Shape shape, uint32_t seed) {
  absl::StatusOr<Tensor> t = RandomNormalTensor(dtype, std::move(shape), seed);
  TESSERA_CHECK(t.ok(), "allocation");
  return *std::move(t);
}

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_UNIT_RANDOM_TENSOR_H_
