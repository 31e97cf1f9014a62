#ifndef TESSERA_KERNELS_CPU_ROW_OPS_H_
#define TESSERA_KERNELS_CPU_ROW_OPS_H_

// Row-wise steps of the forward pass that are not a layer of their own: a bias added to
// every row (o_proj's bias, added once after the tensor-parallel sum), a band of columns set
// to one value (the padding of a logits shard past the vocabulary's end), and rows picked out
// of a matrix (each sequence's last token before the LM head). Exact: the CUDA kernels give
// the same bits.

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

// x (R, C) f32 += bias (C) f32|bf16 on every row, in f32.
absl::Status AddBias(Tensor& x, const Tensor& bias);

// x (R, C) f32: x[r, c] = value for c in [begin, end), every row. 0 <= begin <= end <= C.
absl::Status FillColumns(Tensor& x, int64_t begin, int64_t end, float value);

// x (T, H) f32, rows (S) i32 -> out (S, H) f32: out[s] = x[rows[s]]. A row outside [0, T)
// is INVALID_ARGUMENT naming its index s.
absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor& out);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_ROW_OPS_H_
