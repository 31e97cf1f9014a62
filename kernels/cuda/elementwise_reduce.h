#ifndef TESSERA_KERNELS_CUDA_ELEMENTWISE_REDUCE_H_
#define TESSERA_KERNELS_CUDA_ELEMENTWISE_REDUCE_H_

// kernels/cpu/elementwise_reduce.h on a GPU: the element-wise combination of two arrays, for
// reductions that do not go through NCCL (and to test against the host's). Same dtypes and
// arithmetic as the CPU version: bf16 and f16 are combined in f32 and rounded back to
// nearest-even, integer sums wrap around, int4 is refused. Queued on `stream`.

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/elementwise_reduce.h"
#include "runtime/core/dtype.h"
#include "runtime/core/stream.h"

namespace tessera::kernels::cuda {

// output[i] = reduction(a[i], b[i]) for i in [0, count). output, a and b are arrays of
// `count` elements of `dtype` in the memory of the stream's device (checked with
// cudaPointerGetAttributes); output may alias a or b.
absl::Status Reduce(void* output, const void* a, const void* b, int64_t count, DType dtype,
                    Reduction reduction, Stream& stream);

// accumulator[i] = reduction(accumulator[i], input[i]), in place.
absl::Status ReduceInto(void* accumulator, const void* input, int64_t count, DType dtype,
                        Reduction reduction, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_ELEMENTWISE_REDUCE_H_
