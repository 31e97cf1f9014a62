#ifndef TESSERA_RUNTIME_MODEL_ADAPTER_FORWARD_H_
#define TESSERA_RUNTIME_MODEL_ADAPTER_FORWARD_H_

// Many LoRA adapters in one batch (as Punica and S-LoRA serve them): the base projection runs
// once over every row, then for each adapter present its rows are gathered, multiplied by its
// low-rank factors and added back into their rows of the projection's output.
//
// Row invariant, bitwise: both products are kernels::Linear (cpu/linear.h) over the gathered
// rows, whose row i depends only on input row i, so a row's result never depends on which
// other rows or adapters share the batch. CPU only so far.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/core/tensor.h"
#include "runtime/model/rank_adapter.h"

namespace tessera::model {

// The token rows of a batch that use one adapter.
struct AdapterRows {
  int slot = 0;               // the adapter's slot in the model's registry
  std::vector<int32_t> rows;  // ascending
};

// adapters[s] is sequence s's slot (-1: the base alone), query_starts (S+1) its rows
// [query_starts[s], query_starts[s+1]). One entry per slot present, in slot order; empty
// when `adapters` is empty or all -1. The caller has checked the sizes and slots.
std::vector<AdapterRows> GroupRowsByAdapter(absl::Span<const int32_t> adapters,
                                            absl::Span<const int32_t> query_starts);

// x (T, K) f32, out (T, width) f32 on the CPU; for each row i of `rows`:
//   out[i, f.column : f.column + f.outputs] += f.scale * ((x[i] A^T) B^T)
// with u = x[rows] A^T (M, r) and v = u B^T (M, outputs) computed on the gathered rows.
absl::Status AddLoraRows(const Tensor& x, absl::Span<const int32_t> rows, const RankLoraFactors& f,
                         Tensor& out);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_ADAPTER_FORWARD_H_
