#include "kernels/cpu/attention_rows.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "runtime/core/status_macros.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::kernels::internal {

absl::StatusOr<QueryRows> PlanQueryRows(const char* kernel, const Tensor& q, const Tensor& out,
                                        const Tensor& query_starts, const Tensor& context_lens,
                                        const Tensor& block_tables, int64_t blocks,
                                        int64_t block_size, int64_t kv_heads, int64_t head_dim) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "q", q, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "q", q, 3));
  QueryRows rows;
  rows.tokens = q.dim(0);
  rows.heads = q.dim(1);
  if (q.dim(2) != head_dim || kv_heads == 0 || rows.heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": q ", q.DebugString(),
                                                   " does not match a cache of ", kv_heads,
                                                   " kv heads of ", head_dim, " dimensions"));
  }
  rows.group = rows.heads / kv_heads;
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "context_lens", context_lens, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "context_lens", context_lens, 1));
  const int64_t sequences = context_lens.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "query_starts", query_starts, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "query_starts", query_starts, {sequences + 1}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "block_tables", block_tables, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "block_tables", block_tables, 2));
  if (block_tables.dim(0) != sequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        kernel, ": block_tables ", block_tables.DebugString(), " for ", sequences, " sequences"));
  }
  rows.max_blocks = block_tables.dim(1);
  rows.tables = block_tables.data<int32_t>();
  const int32_t* starts = query_starts.data<int32_t>();
  const int32_t* lens = context_lens.data<int32_t>();
  if (starts[0] != 0 || starts[sequences] != rows.tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": query_starts must run from 0 to the ", rows.tokens, " query rows"));
  }
  rows.sequence.resize(rows.tokens);
  rows.position.resize(rows.tokens);
  int64_t work = 0;  // multiply-adds of the whole call, over head_dim
  for (int64_t s = 0; s < sequences; ++s) {
    const int64_t new_tokens = starts[s + 1] - starts[s];
    const int64_t context = lens[s];
    if (new_tokens < 0 || new_tokens > context || context > rows.max_blocks * block_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(kernel, ": sequence ", s, " has ", new_tokens, " queries over a context of ",
                       context, " tokens and room for ", rows.max_blocks * block_size));
    }
    const int32_t* table = rows.tables + s * rows.max_blocks;
    for (int64_t b = 0; b < (context + block_size - 1) / block_size; ++b) {
      if (table[b] < 0 || table[b] >= blocks) {
        return absl::OutOfRangeError(absl::StrCat(kernel, ": sequence ", s, " block ", b, " is ",
                                                  table[b], ", not one of the ", blocks,
                                                  " cache blocks"));
      }
    }
    for (int64_t i = 0; i < new_tokens; ++i) {
      rows.sequence[starts[s] + i] = static_cast<int32_t>(s);
      rows.position[starts[s] + i] = context - new_tokens + i;
      work += context - new_tokens + i + 1;
    }
  }
  work *= rows.heads * head_dim;
  // Items are query rows, handed out one at a time (a prefill row late in a long prompt
  // costs hundreds of times a short decode row); below about 64k multiply-adds threads do
  // not pay.
  constexpr int64_t kParallelWork = int64_t{1} << 16;
  rows.min_rows = work < kParallelWork ? rows.tokens : 1;
  return rows;
}

void SoftmaxRowsPortable(int64_t heads, const QueryRow& row) {
  const int64_t span = row.last - row.first + 1;
  for (int64_t h = 0; h < heads; ++h) {
    float* s = row.scores + h * row.stride;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < span; ++j) max = std::max(max, s[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < span; ++j) {
      s[j] = ExpNonPositive(s[j] - max);
      sum += s[j];
    }
    const float inverse = 1.0f / sum;
    for (int64_t j = 0; j < span; ++j) s[j] *= inverse;
  }
}

#if TESSERA_CPU_X86
__attribute__((target("avx2,fma"))) void SoftmaxRowsAvx2(int64_t heads, const QueryRow& row) {
  const int64_t span = row.last - row.first + 1;
  const int64_t whole = span / 8 * 8;
  for (int64_t h = 0; h < heads; ++h) {
    float* s = row.scores + h * row.stride;
    __m256 max8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < whole; j += 8) max8 = _mm256_max_ps(max8, _mm256_loadu_ps(s + j));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, max8);
    float max = lanes[0];
    for (int l = 1; l < 8; ++l) max = std::max(max, lanes[l]);
    for (int64_t j = whole; j < span; ++j) max = std::max(max, s[j]);
    const __m256 max_vector = _mm256_set1_ps(max);
    __m256 sum8 = _mm256_setzero_ps();
    for (int64_t j = 0; j < whole; j += 8) {
      const __m256 e = ExpNonPositive8(_mm256_sub_ps(_mm256_loadu_ps(s + j), max_vector));
      _mm256_storeu_ps(s + j, e);
      sum8 = _mm256_add_ps(sum8, e);
    }
    _mm256_store_ps(lanes, sum8);
    float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
                ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (int64_t j = whole; j < span; ++j) {
      s[j] = ExpNonPositive(s[j] - max);
      sum += s[j];
    }
    const float inverse = 1.0f / sum;
    const __m256 inverse8 = _mm256_set1_ps(inverse);
    for (int64_t j = 0; j < whole; j += 8) {
      _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inverse8));
    }
    for (int64_t j = whole; j < span; ++j) s[j] *= inverse;
  }
}

// GCC 12 warns of the undefined upper lanes its own AVX-512 reductions start from.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx2,fma"))) void SoftmaxRowsAvx512(int64_t heads,
                                                                   const QueryRow& row) {
  const int64_t span = row.last - row.first + 1;
  const int64_t whole = span / 16 * 16;
  for (int64_t h = 0; h < heads; ++h) {
    float* s = row.scores + h * row.stride;
    __m512 max16 = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < whole; j += 16) max16 = _mm512_max_ps(max16, _mm512_loadu_ps(s + j));
    float max = _mm512_reduce_max_ps(max16);
    for (int64_t j = whole; j < span; ++j) max = std::max(max, s[j]);
    const __m512 max_vector = _mm512_set1_ps(max);
    __m512 sum16 = _mm512_setzero_ps();
    for (int64_t j = 0; j < whole; j += 16) {
      const __m512 e = ExpNonPositive16(_mm512_sub_ps(_mm512_loadu_ps(s + j), max_vector));
      _mm512_storeu_ps(s + j, e);
      sum16 = _mm512_add_ps(sum16, e);
    }
    float sum = _mm512_reduce_add_ps(sum16);
    for (int64_t j = whole; j < span; ++j) {
      s[j] = ExpNonPositive(s[j] - max);
      sum += s[j];
    }
    const float inverse = 1.0f / sum;
    const __m512 inverse16 = _mm512_set1_ps(inverse);
    for (int64_t j = 0; j < whole; j += 16) {
      _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inverse16));
    }
    for (int64_t j = whole; j < span; ++j) s[j] *= inverse;
  }
}
#pragma GCC diagnostic pop
#endif  // TESSERA_CPU_X86

}  // namespace tessera::kernels::internal
