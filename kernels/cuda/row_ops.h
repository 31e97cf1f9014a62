#ifndef TESSERA_KERNELS_CUDA_ROW_OPS_H_
#define TESSERA_KERNELS_CUDA_ROW_OPS_H_

// kernels/cpu/row_ops.h on a GPU: the bias add, the column fill and the row gather of the
// forward pass, with every tensor on the device of `stream` (a CUDA stream); work is queued on
// the stream and the call returns without waiting for it. The results are the CPU kernels'
// bit for bit.

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/row_ops.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::cuda {

// x (R, C) f32 += bias (C) f32|bf16|f16 on every row, in f32.
absl::Status AddBias(Tensor& x, const Tensor& bias, Stream& stream);

// x (R, C) f32: x[r, c] = value for c in [begin, end), every row. 0 <= begin <= end <= C.
absl::Status FillColumns(Tensor& x, int64_t begin, int64_t end, float value, Stream& stream);

// x (T, H) f32, rows (S) i32 -> out (S, H) f32: out[s] = x[rows[s]]. The row numbers are on
// the device, so one outside [0, T) cannot be reported as the CPU kernel reports it: out[s]
// is filled with NaN instead, which poisons everything computed from it. out must not
// overlap x.
absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor& out, Stream& stream);

}  // namespace tessera::kernels::cuda

#endif  // TESSERA_KERNELS_CUDA_ROW_OPS_H_
