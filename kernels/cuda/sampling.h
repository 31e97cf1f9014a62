#ifndef TESSERA_KERNELS_CUDA_SAMPLING_H_
#define TESSERA_KERNELS_CUDA_SAMPLING_H_

// The device half of kernels/cpu/sampling.h: greedy decoding's per-shard argmax. Sampling
// with temperature, top-k and top-p stays on the host (kernels::SampleToken): the GPU path
// copies the logits of the rows it samples to host memory and draws there, so every rank and
// every tensor-parallel degree draws the same token as the CPU backend.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/sampling.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// logits (T, V_shard) f32 holding vocabulary columns [vocab_begin, vocab_begin + V_shard)
// -> values (T) f32 and indices (T) i64, all on the stream's device: the maximum of each row
// and its vocabulary index, lowest on ties; NaN never wins; a row with nothing but NaN gives
// value 0 and index -1, as ArgmaxResult{} on the CPU. Asynchronous; V_shard < 2^31.
absl::Status ShardArgmax(const Tensor& logits, int64_t vocab_begin, Tensor& values, Tensor& indices,
                         Stream& stream);

// The CPU kernel's signature: the same results copied into `rows` on the host. Allocates two
// small device tensors and waits for the stream before returning.
absl::Status ShardArgmax(const Tensor& logits, int64_t vocab_begin, std::vector<ArgmaxResult>* rows,
                         Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_SAMPLING_H_
