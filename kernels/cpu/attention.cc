#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;

absl::Status CheckCache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_cache", k_cache, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k_cache", k_cache, 4));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_cache", v_cache, {DType::kF32}));
  return ExpectShape(kernel, "v_cache", v_cache, k_cache.shape());
}

// q . k over head_dim with eight partial sums in a fixed order: the compiler keeps them in
// one vector register without reassociating, and every call sums alike.
inline float Dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float partial[8] = {};
  const int64_t whole = n / 8 * 8;
  for (int64_t d = 0; d < whole; d += 8) {
    for (int t = 0; t < 8; ++t) partial[t] += a[d + t] * b[d + t];
  }
  float tail = 0.0f;
  for (int64_t d = whole; d < n; ++d) tail += a[d] * b[d];
  // A pairwise tree (8 -> 4 -> 2 -> 1): shuffles and adds rather than eight dependent adds.
  float four[4], two[2];
  for (int t = 0; t < 4; ++t) four[t] = partial[t] + partial[t + 4];
  for (int t = 0; t < 2; ++t) two[t] = four[t] + four[t + 2];
  return (two[0] + two[1]) + tail;
}

// Each of `rows` rows of `span` scores becomes its softmax, in place.
inline void SoftmaxRows(float* scores, int64_t rows, int64_t span) {
  for (int64_t h = 0; h < rows; ++h) {
    float* row = scores + h * span;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < span; ++j) max = std::max(max, row[j]);
    for (int64_t j = 0; j < span; ++j) row[j] = ExpNonPositive(row[j] - max);
    float sum = 0.0f;
    for (int64_t j = 0; j < span; ++j) sum += row[j];
    const float inverse = 1.0f / sum;
    for (int64_t j = 0; j < span; ++j) row[j] *= inverse;
  }
}

// Where one sequence's cached keys and values are.
struct SequenceCache {
  const float* k;
  const float* v;
  const int32_t* table;  // the sequence's block table
  int64_t block_size;
  int64_t kv_row;               // floats per cached token: kv_heads * head_dim
  const int64_t* head_offsets;  // (h / group) * head_dim for each query head h
};

// One query position against cached positions [first, last], every head at once:
//   q (heads, head_dim), out (heads, head_dim), scores scratch (heads, last - first + 1);
// query head h reads kv head h / group. Cached rows (kv_heads * head_dim floats) are read
// whole and in order, a block (block_size rows) at a time, so the walk streams through
// memory. Built for AVX2 and for the baseline; the loader picks one per machine, so results
// never depend on the batch.
__attribute__((target_clones("avx2", "default"))) void AttendQuery(
    const SequenceCache& cache, int64_t kv_heads, int64_t group, int64_t head_dim, int64_t first,
    int64_t last, const float* q, float scale, float* scores, float* out) {
  const int64_t span = last - first + 1;
  const int64_t heads = kv_heads * group;
  for (int64_t p = first, j = 0; p <= last;) {
    const int64_t block = cache.table[p / cache.block_size];
    const int64_t offset = p % cache.block_size;
    const int64_t run = std::min(cache.block_size - offset, last - p + 1);
    const float* key = cache.k + (block * cache.block_size + offset) * cache.kv_row;
    for (int64_t r = 0; r < run; ++r, ++j, key += cache.kv_row) {
      // Query head h = kv * group + g reads KV head kv (no division in the loop).
      for (int64_t kv = 0, h = 0; kv < kv_heads; ++kv) {
        for (int64_t g = 0; g < group; ++g, ++h) {
          scores[h * span + j] = Dot(q + h * head_dim, key + kv * head_dim, head_dim) * scale;
        }
      }
    }
    p += run;
  }
  SoftmaxRows(scores, heads, span);
  std::fill(out, out + heads * head_dim, 0.0f);
  for (int64_t p = first, j = 0; p <= last;) {
    const int64_t block = cache.table[p / cache.block_size];
    const int64_t offset = p % cache.block_size;
    const int64_t run = std::min(cache.block_size - offset, last - p + 1);
    const float* value = cache.v + (block * cache.block_size + offset) * cache.kv_row;
    for (int64_t r = 0; r < run; ++r, ++j, value += cache.kv_row) {
      for (int64_t kv = 0, h = 0; kv < kv_heads; ++kv) {
        const float* v = value + kv * head_dim;
        for (int64_t g = 0; g < group; ++g, ++h) {
          const float weight = scores[h * span + j];
          float* o = out + h * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) o[d] += weight * v[d];
        }
      }
    }
    p += run;
  }
}

// Lane i = the sum of v[i]'s eight lanes as ((0+1)+(2+3)) + ((4+5)+(6+7)), for eight
// vectors at once.
__attribute__((target("avx2,fma"))) inline __m256 SumLanesTree8(const __m256* v) {
  const __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  // ab = [low sums of v0..v3 | high sums of v0..v3], cd the same for v4..v7.
  return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

// q . k over head_dim (a multiple of 8), as eight lanes still to be summed.
__attribute__((target("avx2,fma"))) inline __m256 DotLanes(const float* q, const float* k,
                                                           int64_t head_dim) {
  __m256 sum = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(k));
  for (int64_t d = 8; d < head_dim; d += 8) {
    sum = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), sum);
  }
  return sum;
}

// Softmax of each column of scores (span, stride), eight columns (heads) at a time; the
// sums run in position order.
__attribute__((target("avx2,fma"))) inline void SoftmaxColumnsAvx2(float* scores, int64_t span,
                                                                   int64_t stride) {
  for (int64_t h0 = 0; h0 < stride; h0 += 8) {
    __m256 max = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < span; ++j)
      max = _mm256_max_ps(max, _mm256_loadu_ps(scores + j * stride + h0));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < span; ++j) {
      float* s = scores + j * stride + h0;
      const __m256 e = ExpNonPositive8(_mm256_sub_ps(_mm256_loadu_ps(s), max));
      _mm256_storeu_ps(s, e);
      sum = _mm256_add_ps(sum, e);
    }
    const __m256 inverse = _mm256_div_ps(_mm256_set1_ps(1.0f), sum);
    for (int64_t j = 0; j < span; ++j) {
      float* s = scores + j * stride + h0;
      _mm256_storeu_ps(s, _mm256_mul_ps(_mm256_loadu_ps(s), inverse));
    }
  }
}

// AttendQuery with AVX2 and FMA, for head_dim a multiple of 8. Cached rows are read whole and
// in order as there; the scores are kept position-major, (span, heads rounded up to 8), so
// that each position's head scores are summed across lanes eight at a time (SumLanesTree8,
// zeros standing in for missing heads) and the softmax runs eight heads per vector along the
// positions. Every score takes the same arithmetic whatever its place, so a query's result
// depends only on its own position and context. scores holds span * RoundUp8(heads) floats.
__attribute__((target("avx2,fma"))) void AttendQueryAvx2(const SequenceCache& cache,
                                                         int64_t kv_heads, int64_t group,
                                                         int64_t head_dim, int64_t first,
                                                         int64_t last, const float* q, float scale,
                                                         float* scores, float* out) {
  const int64_t span = last - first + 1;
  const int64_t heads = kv_heads * group;
  const int64_t stride = (heads + 7) / 8 * 8;
  const __m256 scale8 = _mm256_set1_ps(scale);
  for (int64_t p = first, j = 0; p <= last;) {
    const int64_t block = cache.table[p / cache.block_size];
    const int64_t offset = p % cache.block_size;
    const int64_t run = std::min(cache.block_size - offset, last - p + 1);
    const float* key = cache.k + (block * cache.block_size + offset) * cache.kv_row;
    for (int64_t r = 0; r < run; ++r, ++j, key += cache.kv_row) {
      for (int64_t h0 = 0; h0 < heads; h0 += 8) {
        __m256 lanes[8];
        for (int64_t i = 0; i < 8; ++i) {
          const int64_t h = h0 + i;
          lanes[i] = h < heads ? DotLanes(q + h * head_dim, key + cache.head_offsets[h], head_dim)
                               : _mm256_setzero_ps();
        }
        _mm256_storeu_ps(scores + j * stride + h0, _mm256_mul_ps(SumLanesTree8(lanes), scale8));
      }
    }
    p += run;
  }
  SoftmaxColumnsAvx2(scores, span, stride);
  std::fill(out, out + heads * head_dim, 0.0f);
  for (int64_t p = first, j = 0; p <= last;) {
    const int64_t block = cache.table[p / cache.block_size];
    const int64_t offset = p % cache.block_size;
    const int64_t run = std::min(cache.block_size - offset, last - p + 1);
    const float* value = cache.v + (block * cache.block_size + offset) * cache.kv_row;
    for (int64_t r = 0; r < run; ++r, ++j, value += cache.kv_row) {
      for (int64_t kv = 0, h = 0; kv < kv_heads; ++kv) {
        const float* v = value + kv * head_dim;
        for (int64_t g = 0; g < group; ++g, ++h) {
          const __m256 weight = _mm256_set1_ps(scores[j * stride + h]);
          float* o = out + h * head_dim;
          for (int64_t d = 0; d < head_dim; d += 8) {
            _mm256_storeu_ps(
                o + d, _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
          }
        }
      }
    }
    p += run;
  }
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// q . k over head_dim (a multiple of 16), folded to eight lanes still to be summed.
__attribute__((target("avx512f,avx2,fma"))) inline __m256 DotLanes16(const float* q, const float* k,
                                                                     int64_t head_dim) {
  __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
  for (int64_t d = 16; d < head_dim; d += 16) {
    sum = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), sum);
  }
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sum), 1));
  return _mm256_add_ps(_mm512_castps512_ps256(sum), high);
}

// out (heads, head_dim = 16 * kVectorsPerHead) = the scores-weighted sum of the cached
// value rows of positions [first, last], each output accumulated from 0 by fused
// multiply-adds in position order (as AttendQueryAvx2 does in memory), here in registers:
// sixteen vectors of outputs per pass over the rows.
template <int kVectorsPerHead>
__attribute__((target("avx512f,avx2,fma"))) void WeightedValuesAvx512(const SequenceCache& cache,
                                                                      int64_t heads, int64_t first,
                                                                      int64_t last,
                                                                      const float* scores,
                                                                      int64_t stride, float* out) {
  constexpr int kHeadsPerPass = 16 / kVectorsPerHead;
  constexpr int64_t kHeadDim = 16 * kVectorsPerHead;
  for (int64_t h0 = 0; h0 < heads; h0 += kHeadsPerPass) {
    const int64_t pass_heads = std::min<int64_t>(kHeadsPerPass, heads - h0);
    __m512 acc[kHeadsPerPass][kVectorsPerHead];
    for (int i = 0; i < kHeadsPerPass; ++i) {
      for (int c = 0; c < kVectorsPerHead; ++c) acc[i][c] = _mm512_setzero_ps();
    }
    for (int64_t p = first, j = 0; p <= last;) {
      const int64_t block = cache.table[p / cache.block_size];
      const int64_t offset = p % cache.block_size;
      const int64_t run = std::min(cache.block_size - offset, last - p + 1);
      const float* value = cache.v + (block * cache.block_size + offset) * cache.kv_row;
      for (int64_t r = 0; r < run; ++r, ++j, value += cache.kv_row) {
        for (int i = 0; i < kHeadsPerPass; ++i) {
          if (i >= pass_heads) break;
          const int64_t h = h0 + i;
          const __m512 weight = _mm512_set1_ps(scores[j * stride + h]);
          const float* v = value + cache.head_offsets[h];
          for (int c = 0; c < kVectorsPerHead; ++c) {
            acc[i][c] = _mm512_fmadd_ps(weight, _mm512_loadu_ps(v + 16 * c), acc[i][c]);
          }
        }
      }
      p += run;
    }
    for (int i = 0; i < pass_heads; ++i) {
      for (int c = 0; c < kVectorsPerHead; ++c) {
        _mm512_storeu_ps(out + (h0 + i) * kHeadDim + 16 * c, acc[i][c]);
      }
    }
  }
}

// AttendQueryAvx2 on sixteen lanes, for head_dim 16, 32, 64, 128 or 256: the same walk, scores
// layout and softmax; each head's dot product and weighted sum of values take sixteen
// dimensions per instruction. A machine with AVX-512 always takes it for such heads, so a
// query's result still depends only on its own position and context.
__attribute__((target("avx512f,avx2,fma"))) void AttendQueryAvx512(
    const SequenceCache& cache, int64_t kv_heads, int64_t group, int64_t head_dim, int64_t first,
    int64_t last, const float* q, float scale, float* scores, float* out) {
  const int64_t span = last - first + 1;
  const int64_t heads = kv_heads * group;
  const int64_t stride = (heads + 7) / 8 * 8;
  const __m256 scale8 = _mm256_set1_ps(scale);
  for (int64_t p = first, j = 0; p <= last;) {
    const int64_t block = cache.table[p / cache.block_size];
    const int64_t offset = p % cache.block_size;
    const int64_t run = std::min(cache.block_size - offset, last - p + 1);
    const float* key = cache.k + (block * cache.block_size + offset) * cache.kv_row;
    for (int64_t r = 0; r < run; ++r, ++j, key += cache.kv_row) {
      for (int64_t h0 = 0; h0 < heads; h0 += 8) {
        __m256 lanes[8];
        for (int64_t i = 0; i < 8; ++i) {
          const int64_t h = h0 + i;
          lanes[i] = h < heads ? DotLanes16(q + h * head_dim, key + cache.head_offsets[h], head_dim)
                               : _mm256_setzero_ps();
        }
        _mm256_storeu_ps(scores + j * stride + h0, _mm256_mul_ps(SumLanesTree8(lanes), scale8));
      }
    }
    p += run;
  }
  SoftmaxColumnsAvx2(scores, span, stride);
  switch (head_dim) {
    case 16:
      return WeightedValuesAvx512<1>(cache, heads, first, last, scores, stride, out);
    case 32:
      return WeightedValuesAvx512<2>(cache, heads, first, last, scores, stride, out);
    case 64:
      return WeightedValuesAvx512<4>(cache, heads, first, last, scores, stride, out);
    case 128:
      return WeightedValuesAvx512<8>(cache, heads, first, last, scores, stride, out);
    default:
      return WeightedValuesAvx512<16>(cache, heads, first, last, scores, stride, out);
  }
}

#pragma GCC diagnostic pop

using AttendQueryFn = void (*)(const SequenceCache&, int64_t, int64_t, int64_t, int64_t, int64_t,
                               const float*, float, float*, float*);

AttendQueryFn AttendQueryFor(int64_t head_dim) {
  const bool register_sized =
      head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256;
  if (register_sized && HasAvx512()) return AttendQueryAvx512;
  return head_dim % 8 == 0 && HasAvx2Fma() ? AttendQueryAvx2 : AttendQuery;
}

}  // namespace

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache) {
  constexpr char kKernel[] = "WriteKvCache";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache));
  int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "k", k, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "k", k, 3));
  int64_t tokens = k.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "k", k, {tokens, kv_heads, head_dim}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "v", v, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "slot_mapping", slot_mapping, {DType::kI64}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "slot_mapping", slot_mapping, {tokens}));
  int64_t row = kv_heads * head_dim;
  const int64_t* slots = slot_mapping.data<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    if (slots[t] >= blocks * block_size) {
      return absl::OutOfRangeError(absl::StrCat(kKernel, ": slot ", slots[t], " of token ", t,
                                                " is beyond the cache's ", blocks * block_size,
                                                " slots"));
    }
    std::copy_n(k.data<float>() + t * row, row, k_cache.data<float>() + slots[t] * row);
    std::copy_n(v.data<float>() + t * row, row, v_cache.data<float>() + slots[t] * row);
  }
  return absl::OkStatus();
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params,
                            Tensor& out) {
  constexpr char kKernel[] = "PagedAttention";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache));
  int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "q", q, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "q", q, 3));
  int64_t tokens = q.dim(0), heads = q.dim(1);
  if (q.dim(2) != head_dim || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": q ", q.DebugString(),
                                                   " does not match a cache of ", kv_heads,
                                                   " kv heads of ", head_dim, " dimensions"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "context_lens", context_lens, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "context_lens", context_lens, 1));
  int64_t sequences = context_lens.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "query_starts", query_starts, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "query_starts", query_starts, {sequences + 1}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "block_tables", block_tables, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "block_tables", block_tables, 2));
  if (block_tables.dim(0) != sequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKernel, ": block_tables ", block_tables.DebugString(), " for ", sequences, " sequences"));
  }
  int64_t max_blocks = block_tables.dim(1);
  const int32_t* starts = query_starts.data<int32_t>();
  const int32_t* lens = context_lens.data<int32_t>();
  const int32_t* tables = block_tables.data<int32_t>();
  if (starts[0] != 0 || starts[sequences] != tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": query_starts must run from 0 to the ", tokens, " query rows"));
  }

  const int64_t group = heads / kv_heads;
  const int64_t kv_row = kv_heads * head_dim;
  // Each query row's sequence and position, and the work of the whole call.
  std::vector<int32_t> row_sequence(tokens);
  std::vector<int64_t> row_position(tokens);
  int64_t work = 0;
  for (int64_t s = 0; s < sequences; ++s) {
    int64_t new_tokens = starts[s + 1] - starts[s];
    int64_t context = lens[s];
    if (new_tokens < 0 || new_tokens > context || context > max_blocks * block_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          kKernel, ": sequence ", s, " has ", new_tokens, " queries over a context of ", context,
          " tokens and room for ", max_blocks * block_size));
    }
    const int32_t* table = tables + s * max_blocks;
    for (int64_t b = 0; b < (context + block_size - 1) / block_size; ++b) {
      if (table[b] < 0 || table[b] >= blocks) {
        return absl::OutOfRangeError(absl::StrCat(kKernel, ": sequence ", s, " block ", b, " is ",
                                                  table[b], ", not one of the ", blocks,
                                                  " cache blocks"));
      }
    }
    for (int64_t i = 0; i < new_tokens; ++i) {
      row_sequence[starts[s] + i] = static_cast<int32_t>(s);
      row_position[starts[s] + i] = context - new_tokens + i;
      work += context - new_tokens + i + 1;
    }
  }
  work *= heads * head_dim;

  // Items are query rows, handed out one at a time (a prefill row late in a long prompt
  // costs hundreds of times a short decode row); below about 64k multiply-adds threads do
  // not pay.
  constexpr int64_t kParallelWork = int64_t{1} << 16;
  const float* k_data = k_cache.data<float>();
  const float* v_data = v_cache.data<float>();
  const float* q_data = q.data<float>();
  float* out_data = out.data<float>();
  const AttendQueryFn attend = AttendQueryFor(head_dim);
  std::vector<int64_t> head_offsets(heads);
  for (int64_t h = 0; h < heads; ++h) head_offsets[h] = h / group * head_dim;
  const int64_t min_rows = work < kParallelWork ? tokens : 1;
  ParallelFor(tokens, min_rows, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;  // kept between calls: no allocation per row
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = row_sequence[row];
      const int64_t position = row_position[row];
      int64_t first = 0;
      if (params.sliding_window > 0) {
        first = std::max<int64_t>(0, position - params.sliding_window + 1);
      }
      scores.resize((heads + 7) / 8 * 8 * (position - first + 1));
      SequenceCache cache{k_data,     v_data, tables + s * max_blocks,
                          block_size, kv_row, head_offsets.data()};
      const int64_t offset = row * heads * head_dim;
      attend(cache, kv_heads, group, head_dim, first, position, q_data + offset, params.scale,
             scores.data(), out_data + offset);
    }
  }, /*grain=*/1);
  return absl::OkStatus();
}

}  // namespace tessera::kernels
