#ifndef TESSERA_TESTS_UNIT_RANDOM_TENSOR_H_
#define TESSERA_TESTS_UNIT_RANDOM_TENSOR_H_

// A host tensor of standard-normal values, the same for the same seed, for kernel tests.

#include <cstdint>
#include <random>
#include <utility>

#include "runtime/core/check.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"

namespace tessera::testing {

inline Tensor RandomTensor(DType dtype, Shape shape, uint32_t seed) {
  absl::StatusOr<Tensor> t = Tensor::Empty(dtype, std::move(shape));
  TESSERA_CHECK(t.ok(), "allocation");
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  FillWith(*t, [&](int64_t) { return normal(rng); });
  return *t;
}

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_UNIT_RANDOM_TENSOR_H_
