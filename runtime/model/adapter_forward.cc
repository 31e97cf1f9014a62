#include "runtime/model/adapter_forward.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/linear.h"
#include "runtime/core/status_macros.h"

namespace tessera::model {

std::vector<AdapterRows> GroupRowsByAdapter(absl::Span<const int32_t> adapters,
                                            absl::Span<const int32_t> query_starts) {
  std::map<int, std::vector<int32_t>> by_slot;
  for (size_t s = 0; s < adapters.size(); ++s) {
    if (adapters[s] < 0) continue;
    std::vector<int32_t>& rows = by_slot[adapters[s]];
    for (int32_t row = query_starts[s]; row < query_starts[s + 1]; ++row) rows.push_back(row);
  }
  std::vector<AdapterRows> groups;
  for (auto& [slot, rows] : by_slot) {
    std::sort(rows.begin(), rows.end());
    groups.push_back({slot, std::move(rows)});
  }
  return groups;
}

absl::Status AddLoraRows(const Tensor& x, absl::Span<const int32_t> rows, const RankLoraFactors& f,
                         Tensor& out) {
  const int64_t tokens = x.dim(0), k = x.dim(1), width = out.dim(1);
  const int64_t m = static_cast<int64_t>(rows.size());
  if (!x.device().is_cpu() || out.dim(0) != tokens || f.column + f.outputs > width) {
    return absl::InternalError(absl::StrCat("AddLoraRows: x ", x.DebugString(), ", out ",
                                            out.DebugString(), ", adapter columns [", f.column,
                                            ", ", f.column + f.outputs, ")"));
  }
  if (m == 0) return absl::OkStatus();
  // x[rows] (M, K), then u = x[rows] A^T (M, r) and v = u B^T (M, outputs).
  TESSERA_ASSIGN_OR_RETURN(Tensor gathered, Tensor::Empty(DType::kF32, {m, k}));
  for (int64_t i = 0; i < m; ++i) {
    std::copy_n(x.data<float>() + rows[i] * k, k, gathered.data<float>() + i * k);
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor u, Tensor::Empty(DType::kF32, {m, f.r}));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(gathered, f.a, Tensor(), u));
  TESSERA_ASSIGN_OR_RETURN(Tensor v, Tensor::Empty(DType::kF32, {m, f.outputs}));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(u, f.b, Tensor(), v));
  // peft's order: the base output plus (the adapter's product times scale).
  for (int64_t i = 0; i < m; ++i) {
    float* row = out.data<float>() + rows[i] * width + f.column;
    const float* add = v.data<float>() + i * f.outputs;
    for (int64_t j = 0; j < f.outputs; ++j) row[j] += add[j] * f.scale;
  }
  return absl::OkStatus();
}

}  // namespace tessera::model
