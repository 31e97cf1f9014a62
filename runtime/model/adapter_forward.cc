#include "runtime/model/adapter_forward.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/parallel.h"
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

namespace {

// Rows of one product a thread takes at once: enough for the kernel's tiles, few enough that
// a batch of a few sequences still spreads over the threads.
constexpr int64_t kRowsPerBlock = 8;

struct Block {
  const LoraProduct* product;
  int64_t begin;  // into product->rows
  int64_t count;
};

// The gathered rows and the two products of one block, kept per thread between calls.
struct Scratch {
  std::vector<float> gathered, u, v;
};

void RunBlock(const Tensor& x, const Block& block, Scratch& scratch) {
  const RankLoraFactors& f = *block.product->factors;
  Tensor& out = *block.product->out;
  const int64_t k = x.dim(1), width = out.dim(1), m = block.count;
  const int32_t* rows = block.product->rows.data() + block.begin;
  scratch.gathered.resize(m * k);
  scratch.u.resize(m * f.r);
  scratch.v.resize(m * f.outputs);
  for (int64_t i = 0; i < m; ++i) {
    std::copy_n(x.data<float>() + rows[i] * k, k, scratch.gathered.data() + i * k);
  }
  kernels::LinearPackedOnThisThread(scratch.gathered.data(), f.a, scratch.u.data(), m, f.r, k);
  kernels::LinearPackedOnThisThread(scratch.u.data(), f.b, scratch.v.data(), m, f.outputs, f.r);
  // peft's order: the base output plus (the adapter's product times scale).
  for (int64_t i = 0; i < m; ++i) {
    float* row = out.data<float>() + rows[i] * width + f.column;
    const float* add = scratch.v.data() + i * f.outputs;
    for (int64_t j = 0; j < f.outputs; ++j) row[j] += add[j] * f.scale;
  }
}

}  // namespace

absl::Status AddLoraProducts(const Tensor& x, absl::Span<const LoraProduct> products) {
  const int64_t tokens = x.dim(0), k = x.dim(1);
  std::vector<Block> blocks;
  int64_t multiply_adds = 0;
  for (const LoraProduct& product : products) {
    const RankLoraFactors& f = *product.factors;
    const Tensor& out = *product.out;
    if (!x.device().is_cpu() || x.dtype() != DType::kF32 || out.dim(0) != tokens ||
        f.column + f.outputs > out.dim(1) || f.a.dim(1) != k) {
      return absl::InternalError(absl::StrCat("AddLoraProducts: x ", x.DebugString(), ", out ",
                                              out.DebugString(), ", adapter columns [", f.column,
                                              ", ", f.column + f.outputs, ")"));
    }
    const int64_t m = static_cast<int64_t>(product.rows.size());
    for (int64_t begin = 0; begin < m; begin += kRowsPerBlock) {
      blocks.push_back({&product, begin, std::min(kRowsPerBlock, m - begin)});
    }
    multiply_adds += m * f.r * (k + f.outputs);
  }
  const int64_t count = static_cast<int64_t>(blocks.size());
  // Below about 64k multiply-adds, waking threads costs more than the products.
  kernels::ParallelFor(
      count, multiply_adds < 65536 ? count : 1,
      [&](int64_t begin, int64_t end) {
        thread_local Scratch scratch;
        for (int64_t b = begin; b < end; ++b) RunBlock(x, blocks[b], scratch);
      },
      /*grain=*/1);
  return absl::OkStatus();
}

}  // namespace tessera::model
