#ifndef TESSERA_KERNELS_CUDA_QUANTIZED_LINEAR_H_
#define TESSERA_KERNELS_CUDA_QUANTIZED_LINEAR_H_

// kernels/cpu/quantized_linear.h's QuantizedLinear on a GPU, for a weight whose tensors live on
// the GPU in the CPU's packing with f32 activations (QuantizedWeightTo moves one there):
//   out (M, N) f32 = x (M, K) f32 . dequant(w)^T + bias,   dequant(w) = scale * code + offset
// int8 (one scale a row, or groups of 32 or 128) and int4 (groups of 32 or 128), as there.
//
//  - Up to kQuantizedDecodeRows rows (decode): the codes are widened in registers, never
//    written out. A block of kQuantizedWarps warps takes one panel of 8 outputs and up to
//    4 rows of x; the warps split the inputs, each warp reading 128 consecutive bytes of
//    codes a step, and every lane multiplies its weights (scale * code + offset, rounded to
//    f32) by x in f32. The partial sums meet by warp shuffles and then in shared memory.
//  - More rows (prefill): the weight is dequantized into stream-ordered scratch as bf16 (each
//    weight scale * code + offset rounded to bf16), and kernels/cuda/linear.h multiplies it on
//    the tensor cores (x rounded to bf16 there too).
// Not the CPU's bits: the decode path differs from the CPU's f32 chains by f32 rounding
// (relative to sum |x w|, about K x 2^-24); the prefill path also by the two bf16 roundings
// (about 2^-8 of sum |x w|). A row's result depends on how many rows the call has only
// through that choice of path. Weights packed for int8 activations (WithActivations) are
// refused: on a GPU activations stay f32.

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/quantized_linear.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// Rows up to which QuantizedLinear widens the codes in registers.
inline constexpr int64_t kQuantizedDecodeRows = 8;

// x (M, K) f32, w on the stream's GPU, bias f32, bf16 or f16 (N) or undefined for none,
// out (M, N) f32 overwritten. INVALID_ARGUMENT naming the argument otherwise.
absl::Status QuantizedLinear(const Tensor& x, const QuantizedWeight& w, const Tensor& bias,
                             Tensor& out, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_QUANTIZED_LINEAR_H_
