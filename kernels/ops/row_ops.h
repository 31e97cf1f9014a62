#ifndef TESSERA_KERNELS_OPS_ROW_OPS_H_
#define TESSERA_KERNELS_OPS_ROW_OPS_H_

// The bias add, column fill and row gather of the forward pass on the device of the tensor
// written (see dispatch.h): kernels/cpu/row_ops.h on the CPU, kernels/cuda/row_ops.h on a
// GPU, with the same bits on both.

#include <cstdint>

#include "absl/status/status.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

// x (R, C) f32 += bias (C) f32|bf16 (|f16 on a GPU) on every row.
absl::Status AddBias(Tensor& x, const Tensor& bias, Stream& stream);

// x (R, C) f32: columns [begin, end) of every row = value.
absl::Status FillColumns(Tensor& x, int64_t begin, int64_t end, float value, Stream& stream);

// x (T, H) f32, rows (S) i32 -> out (S, H) f32: out[s] = x[rows[s]]. A row outside [0, T)
// is INVALID_ARGUMENT on the CPU and a row of NaN on a GPU.
absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor& out, Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_ROW_OPS_H_
