#ifndef TESSERA_RUNTIME_MODEL_ADAPTER_FORWARD_H_
#define TESSERA_RUNTIME_MODEL_ADAPTER_FORWARD_H_

// Many LoRA adapters in one batch (as Punica and S-LoRA serve them): the base projection runs
// once over every row, then for each adapter present its rows are gathered, multiplied by its
// low-rank factors and added back into their rows of the projection's output.
//
// Row invariant, bitwise: both products are kernels::Linear's kernel (cpu/linear.h) over the
// gathered rows, whose row i depends only on input row i, so a row's result never depends on
// which other rows or adapters share the batch, nor on how the rows are split into blocks.
// CPU only so far.

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

// One adapter's product on some rows of a projection: for each row i of `rows`,
//   out[i, f.column : f.column + f.outputs] += f.scale * ((x[i] A^T) B^T)
// with u = x[rows] A^T (M, r) and v = u B^T (M, outputs) computed on the gathered rows.
struct LoraProduct {
  absl::Span<const int32_t> rows;
  const RankLoraFactors* factors = nullptr;
  Tensor* out = nullptr;  // (T, width) f32
};

// Every product of `products`, over x (T, K) f32 on the CPU, in one pass over the threads:
// the work is split by product and by blocks of rows, each block on one thread with Linear's
// kernel (LinearPackedOnThisThread), so that many adapters with a few rows each cost one
// dispatch rather than two products apiece. Products that write the same out must use
// disjoint rows or columns.
absl::Status AddLoraProducts(const Tensor& x, absl::Span<const LoraProduct> products);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_ADAPTER_FORWARD_H_
