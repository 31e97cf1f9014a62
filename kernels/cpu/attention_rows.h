#ifndef TESSERA_KERNELS_CPU_ATTENTION_ROWS_H_
#define TESSERA_KERNELS_CPU_ATTENTION_ROWS_H_

// The parts of paged attention on the CPU that do not depend on how the cache stores keys and
// values: one query row, the runs of its positions that lie in one cache block, and the
// softmax of its scores. Shared by the f32/bf16 cache (attention.cc) and the int8 cache
// (kv_cache_int8.cc), so that both normalize their scores with the same arithmetic, bit for
// bit. Internal to kernels/cpu.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::internal {

// One query row: q (heads, head_dim) against positions [first, last] -> out (heads,
// head_dim), through scores (heads, stride), stride >= span = last - first + 1.
struct QueryRow {
  const float* q;
  float* out;
  float* scores;
  int64_t first, last, stride;
  float scale;
};

// The runs of positions [first, last] that lie in one block, in order: `run` positions
// from `offset` of `block`, the first of them the j-th of the span. `Cache` has the
// sequence's block table (`table`) and `block_size`.
//   for (BlockRuns b(cache, first, last); b.valid(); b.Next()) ... b.block, b.offset ...
struct BlockRuns {
  template <typename Cache>
  BlockRuns(const Cache& cache, int64_t first, int64_t last)
      : table_(cache.table),
        block_size_(cache.block_size),
        first_(first),
        last_(last),
        next_(first) {
    Next();
  }
  bool valid() const { return run > 0; }
  void Next() {
    run = 0;
    if (next_ > last_) return;
    block = table_[next_ / block_size_];
    offset = next_ % block_size_;
    run = std::min(block_size_ - offset, last_ - next_ + 1);
    j = next_ - first_;
    next_ += run;
  }

  int64_t block = 0, offset = 0, run = 0, j = 0;

 private:
  const int32_t* table_;
  int64_t block_size_, first_, last_, next_;
};

// A paged-attention call's query rows, checked against its cache of `blocks` blocks of
// `block_size` positions, `kv_heads` heads of `head_dim`:
//   q (tokens, heads, head_dim) f32, out the same; query_starts (sequences + 1) i32 from 0 to
//   tokens; context_lens (sequences) i32, each at least its new tokens and within its row of
//   block_tables (sequences, max_blocks) i32, whose used entries name cache blocks.
// INVALID_ARGUMENT (OUT_OF_RANGE for a block past the cache) naming `kernel` and what is wrong.
struct QueryRows {
  int64_t tokens = 0, heads = 0, group = 0;  // group: query heads per kv head
  int64_t max_blocks = 0;
  const int32_t* tables = nullptr;  // block_tables' data
  std::vector<int32_t> sequence;    // of each query row
  std::vector<int64_t> position;    // of each query row in its sequence
  int64_t min_rows = 1;             // rows a thread takes at least: all of them when small
};
absl::StatusOr<QueryRows> PlanQueryRows(const char* kernel, const Tensor& q, const Tensor& out,
                                        const Tensor& query_starts, const Tensor& context_lens,
                                        const Tensor& block_tables, int64_t blocks,
                                        int64_t block_size, int64_t kv_heads, int64_t head_dim);

// Calls attend(sequence, row) for every query row of `rows`, on the kernel threads, each row
// with its span (the whole context, or the last `params.sliding_window` positions) and a
// scores buffer of the thread's, kept between calls.
template <typename Attend>
void ForEachQueryRow(const QueryRows& rows, const float* q, float* out,
                     const AttentionParams& params, int64_t head_dim, const Attend& attend) {
  const int64_t row_values = rows.heads * head_dim;
  ParallelFor(
      rows.tokens, rows.min_rows,
      [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> scores;  // kept between calls: no allocation per row
        for (int64_t r = begin; r < end; ++r) {
          QueryRow row;
          row.last = rows.position[r];
          row.first = params.sliding_window > 0
                          ? std::max<int64_t>(0, row.last - params.sliding_window + 1)
                          : 0;
          row.stride = (row.last - row.first + 16) / 16 * 16;  // span rounded up to 16
          scores.resize(rows.heads * row.stride);
          row.scores = scores.data();
          row.q = q + r * row_values;
          row.out = out + r * row_values;
          row.scale = params.scale;
          attend(rows.sequence[r], row);
        }
      },
      /*grain=*/1);
}

// Softmax of each of the `heads` rows of row.scores (span = last - first + 1 values each), in
// place: the maximum, then e^(s - max) summed in lanes (then the lanes in a fixed order, then
// the tail in index order), then each times 1 / sum. The AVX2 and AVX-512 forms need those
// instructions (kernels/cpu/cpu_features.h); each path gives its own bits.
void SoftmaxRowsPortable(int64_t heads, const QueryRow& row);
#if TESSERA_CPU_X86
void SoftmaxRowsAvx2(int64_t heads, const QueryRow& row);
void SoftmaxRowsAvx512(int64_t heads, const QueryRow& row);
#endif

}  // namespace tessera::kernels::internal

#endif  // TESSERA_KERNELS_CPU_ATTENTION_ROWS_H_
