#ifndef TESSERA_KERNELS_CPU_ELEMENTWISE_REDUCE_H_
#define TESSERA_KERNELS_CPU_ELEMENTWISE_REDUCE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/dtype.h"

namespace tessera::kernels {

enum class Reduction { kSum, kMax, kMin };

// accumulator[i] = reduction(accumulator[i], input[i]) for i in [0, count), in place.
// accumulator and input are host arrays of `count` elements of `dtype`. bf16 and f16
// are combined in f32 and rounded back to nearest-even, as NCCL does. int4 is refused.
absl::Status ReduceInto(void* accumulator, const void* input, int64_t count, DType dtype,
                        Reduction reduction);

// output[i] = reduction(a[i], b[i]) for i in [0, count). output may alias a or b.
absl::Status Reduce(void* output, const void* a, const void* b, int64_t count, DType dtype,
                    Reduction reduction);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_ELEMENTWISE_REDUCE_H_
