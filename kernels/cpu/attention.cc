#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/attention_rows.h"
#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_loads.h"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;

// k_cache (num_blocks, kv_heads, head_dim, block_size) and v_cache (num_blocks, block_size,
// kv_heads, head_dim), both f32 or both bf16.
absl::Status CheckCache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_cache", v_cache, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "v_cache", v_cache, 4));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_cache", k_cache, {v_cache.dtype()}));
  return ExpectShape(kernel, "k_cache", k_cache,
                     KeyCacheShape(v_cache.dim(0), v_cache.dim(1), v_cache.dim(2), v_cache.dim(3)));
}

// Where one sequence's cached keys and values are (layouts in attention.h); T is float, or
// uint16_t for the bits of bf16.
template <typename T>
struct SequenceCache {
  const T* k;
  const T* v;
  const int32_t* table;  // the sequence's block table
  int64_t block_size, kv_heads, head_dim;
  int64_t group;  // query heads per kv head

  // The keys of kv head g, dimension d, at offsets [0, block_size) of `block`.
  const T* Keys(int64_t block, int64_t g, int64_t d) const {
    return k + ((block * kv_heads + g) * head_dim + d) * block_size;
  }
  // The value rows (kv_heads * head_dim values) of `block` from `offset` on.
  const T* Values(int64_t block, int64_t offset) const {
    return v + (block * block_size + offset) * kv_heads * head_dim;
  }
};

using internal::BlockRuns;
using internal::QueryRow;

// ---- Scores: scores[h][j] = scale * (q[h] . key of position first + j) --------------------
// Each score is one chain of fused multiply-adds over d in index order from 0, then the
// scale, on every path alike. The keys of one head and dimension lie along the positions
// (attention.h), so a vector takes one dimension of a head at consecutive positions and a
// query's value of that dimension is broadcast against it: no lanes are summed across.

#if TESSERA_CPU_X86
// `count` (1 to 8) keys from p as f32 lanes, zeros past them; mask holds lanes < count.
__attribute__((target("avx2,fma"))) inline __m256 LoadKeysAvx2(const float* p, int64_t /*count*/,
                                                               __m256i mask) {
  return _mm256_maskload_ps(p, mask);
}
__attribute__((target("avx2,fma"))) inline __m256 LoadKeysAvx2(const uint16_t* p, int64_t count,
                                                               __m256i /*mask*/) {
  if (count == 8) return LoadEight(p);
  alignas(16) uint16_t staged[8] = {};  // never read past the cache's last block
  std::copy_n(p, count, staged);
  return LoadEight(staged);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// `count` (1 to 16) keys from p as f32 lanes, zeros past them; mask holds lanes < count.
__attribute__((target("avx512f,avx2,fma"))) inline __m512 LoadKeysAvx512(const float* p,
                                                                         int64_t /*count*/,
                                                                         __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
__attribute__((target("avx512f,avx2,fma"))) inline __m512 LoadKeysAvx512(const uint16_t* p,
                                                                         int64_t count,
                                                                         __mmask16 /*mask*/) {
  if (count == 16) return LoadSixteen(p);
  alignas(32) uint16_t staged[16] = {};
  std::copy_n(p, count, staged);
  return LoadSixteen(staged);
}
#pragma GCC diagnostic pop
#endif  // TESSERA_CPU_X86

template <typename T>
void ScoresPortable(const SequenceCache<T>& cache, const QueryRow& row) {
  const int64_t hd = cache.head_dim;
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    const int64_t block = b.block, offset = b.offset, run = b.run, j = b.j;
    for (int64_t g = 0; g < cache.kv_heads; ++g) {
      for (int64_t i = 0; i < cache.group; ++i) {
        const int64_t h = g * cache.group + i;
        for (int64_t r = 0; r < run; ++r) {
          float sum = 0.0f;
          for (int64_t d = 0; d < hd; ++d) {
            sum = std::fma(row.q[h * hd + d], ToFloat(cache.Keys(block, g, d)[offset + r]), sum);
          }
          row.scores[h * row.stride + j + r] = sum * row.scale;
        }
      }
    }
  }
}

#if TESSERA_CPU_X86
// kG query heads of kv head g (heads h0 .. h0 + kG - 1) at up to eight positions.
template <int kG, typename T>
struct ScoreLanesAvx2 {
  __attribute__((target("avx2,fma"))) static void Run(const SequenceCache<T>& cache,
                                                      const QueryRow& row, int64_t block,
                                                      int64_t offset, int64_t count, int64_t g,
                                                      int64_t h0, float* scores) {
    const int64_t hd = cache.head_dim;
    alignas(32) static constexpr int32_t kLaneIndex[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)),
                           _mm256_load_si256(reinterpret_cast<const __m256i*>(kLaneIndex)));
    __m256 acc[kG];
    for (int i = 0; i < kG; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      const __m256 key = LoadKeysAvx2(cache.Keys(block, g, d) + offset, count, mask);
      for (int i = 0; i < kG; ++i) {
        acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(row.q + (h0 + i) * hd + d), key, acc[i]);
      }
    }
    const __m256 scale = _mm256_set1_ps(row.scale);
    for (int i = 0; i < kG; ++i) {
      _mm256_maskstore_ps(scores + (h0 + i) * row.stride, mask, _mm256_mul_ps(acc[i], scale));
    }
  }
};
#endif  // TESSERA_CPU_X86

// The query heads sharing a kv head take its key vectors together, up to this many at once
// (their accumulators, a key and a broadcast fit the registers of either path).
constexpr int64_t kHeadsPerKeyLoad = 8;

template <typename T>
using ScoreTileFn = void (*)(const SequenceCache<T>&, const QueryRow&, int64_t, int64_t, int64_t,
                             int64_t, int64_t, float*);

// The tile function for n (1..kHeadsPerKeyLoad) heads.
template <template <int, typename> class Tile, typename T>
ScoreTileFn<T> ScoreTileFor(int64_t n) {
  switch (n) {
    case 1:
      return Tile<1, T>::Run;
    case 2:
      return Tile<2, T>::Run;
    case 3:
      return Tile<3, T>::Run;
    case 4:
      return Tile<4, T>::Run;
    case 5:
      return Tile<5, T>::Run;
    case 6:
      return Tile<6, T>::Run;
    case 7:
      return Tile<7, T>::Run;
    default:
      return Tile<8, T>::Run;
  }
}

#if TESSERA_CPU_X86
// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// kG query heads of kv head g (heads h0 .. h0 + kG - 1) at up to sixteen positions.
template <int kG, typename T>
struct ScoreLanesAvx512 {
  __attribute__((target("avx512f,avx2,fma"))) static void Run(const SequenceCache<T>& cache,
                                                              const QueryRow& row, int64_t block,
                                                              int64_t offset, int64_t count,
                                                              int64_t g, int64_t h0,
                                                              float* scores) {
    const int64_t hd = cache.head_dim;
    const __mmask16 mask = count == 16 ? 0xFFFF : static_cast<__mmask16>((1u << count) - 1);
    __m512 acc[kG];
    for (int i = 0; i < kG; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      const __m512 key = LoadKeysAvx512(cache.Keys(block, g, d) + offset, count, mask);
      for (int i = 0; i < kG; ++i) {
        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(row.q[(h0 + i) * hd + d]), key, acc[i]);
      }
    }
    const __m512 scale = _mm512_set1_ps(row.scale);
    for (int i = 0; i < kG; ++i) {
      _mm512_mask_storeu_ps(scores + (h0 + i) * row.stride, mask, _mm512_mul_ps(acc[i], scale));
    }
  }
};

#pragma GCC diagnostic pop
#endif  // TESSERA_CPU_X86

// Every score of the row, kLanes positions at a time by Tile (ScoreLanesAvx2 or
// ScoreLanesAvx512), the query heads of a kv head kHeadsPerKeyLoad at a time.
template <template <int, typename> class Tile, int kLanes, typename T>
void ScoresByLanes(const SequenceCache<T>& cache, const QueryRow& row) {
  const int64_t group = cache.group;
  const ScoreTileFn<T> whole = ScoreTileFor<Tile, T>(std::min(group, kHeadsPerKeyLoad));
  const ScoreTileFn<T> rest = ScoreTileFor<Tile, T>(group % kHeadsPerKeyLoad);
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    for (int64_t o = 0; o < b.run; o += kLanes) {
      const int64_t count = std::min<int64_t>(kLanes, b.run - o);
      for (int64_t g = 0; g < cache.kv_heads; ++g) {
        for (int64_t i = 0; i < group; i += kHeadsPerKeyLoad) {
          const ScoreTileFn<T> tile = group - i >= kHeadsPerKeyLoad ? whole : rest;
          tile(cache, row, b.block, b.offset + o, count, g, g * group + i, row.scores + b.j + o);
        }
      }
    }
  }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ---- Softmax of each head's row of scores, in place (attention_rows.h) ---------------------

template <typename T>
void SoftmaxPortable(const SequenceCache<T>& cache, const QueryRow& row) {
  internal::SoftmaxRowsPortable(cache.kv_heads * cache.group, row);
}

#if TESSERA_CPU_X86
template <typename T>
void SoftmaxAvx2(const SequenceCache<T>& cache, const QueryRow& row) {
  internal::SoftmaxRowsAvx2(cache.kv_heads * cache.group, row);
}

template <typename T>
void SoftmaxAvx512(const SequenceCache<T>& cache, const QueryRow& row) {
  internal::SoftmaxRowsAvx512(cache.kv_heads * cache.group, row);
}

// ---- Values: out[h] = sum over j of scores[h][j] * value of position first + j ------------
// Each output accumulated from 0 by fused multiply-adds in position order.

// Sixteen vectors of outputs kept in registers per pass over the rows, for head_dim =
// 16 * kVectorsPerHead.
template <int kVectorsPerHead, typename T>
__attribute__((target("avx512f,avx2,fma"))) void ValuesAvx512(const SequenceCache<T>& cache,
                                                              const QueryRow& row) {
  constexpr int kHeadsPerPass = 16 / kVectorsPerHead;
  constexpr int64_t kHeadDim = 16 * kVectorsPerHead;
  const int64_t heads = cache.kv_heads * cache.group;
  for (int64_t h0 = 0; h0 < heads; h0 += kHeadsPerPass) {
    const int64_t pass_heads = std::min<int64_t>(kHeadsPerPass, heads - h0);
    __m512 acc[kHeadsPerPass][kVectorsPerHead];
    int64_t value_offset[kHeadsPerPass];  // where head h0 + i's kv head starts in a row
    for (int i = 0; i < kHeadsPerPass; ++i) {
      for (int c = 0; c < kVectorsPerHead; ++c) acc[i][c] = _mm512_setzero_ps();
      value_offset[i] = (h0 + i) / cache.group * kHeadDim;
    }
    for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
      const int64_t block = b.block, offset = b.offset, run = b.run, j0 = b.j;
      const T* value = cache.Values(block, offset);
      for (int64_t r = 0; r < run; ++r, value += cache.kv_heads * kHeadDim) {
        for (int i = 0; i < kHeadsPerPass; ++i) {
          if (i >= pass_heads) break;
          const int64_t h = h0 + i;
          const __m512 weight = _mm512_set1_ps(row.scores[h * row.stride + j0 + r]);
          const T* v = value + value_offset[i];
          for (int c = 0; c < kVectorsPerHead; ++c) {
            acc[i][c] = _mm512_fmadd_ps(weight, LoadSixteen(v + 16 * c), acc[i][c]);
          }
        }
      }
    }
    for (int i = 0; i < pass_heads; ++i) {
      for (int c = 0; c < kVectorsPerHead; ++c) {
        _mm512_storeu_ps(row.out + (h0 + i) * kHeadDim + 16 * c, acc[i][c]);
      }
    }
  }
}
#endif  // TESSERA_CPU_X86

#pragma GCC diagnostic pop

#if TESSERA_CPU_X86
// In memory, eight dimensions per instruction (head_dim a multiple of 8).
template <typename T>
__attribute__((target("avx2,fma"))) void ValuesAvx2(const SequenceCache<T>& cache,
                                                    const QueryRow& row) {
  const int64_t hd = cache.head_dim, heads = cache.kv_heads * cache.group;
  std::fill(row.out, row.out + heads * hd, 0.0f);
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    const int64_t block = b.block, offset = b.offset, run = b.run, j0 = b.j;
    const T* value = cache.Values(block, offset);
    for (int64_t r = 0; r < run; ++r, value += cache.kv_heads * hd) {
      // Query head h = g * group + i reads kv head g (no division in the loop).
      for (int64_t g = 0, h = 0; g < cache.kv_heads; ++g) {
        const T* v = value + g * hd;
        for (int64_t i = 0; i < cache.group; ++i, ++h) {
          const __m256 weight = _mm256_set1_ps(row.scores[h * row.stride + j0 + r]);
          float* o = row.out + h * hd;
          for (int64_t d = 0; d < hd; d += 8) {
            _mm256_storeu_ps(o + d,
                             _mm256_fmadd_ps(weight, LoadEight(v + d), _mm256_loadu_ps(o + d)));
          }
        }
      }
    }
  }
}
#endif  // TESSERA_CPU_X86

template <typename T>
void ValuesPortable(const SequenceCache<T>& cache, const QueryRow& row) {
  const int64_t hd = cache.head_dim, heads = cache.kv_heads * cache.group;
  std::fill(row.out, row.out + heads * hd, 0.0f);
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    const int64_t block = b.block, offset = b.offset, run = b.run, j0 = b.j;
    const T* value = cache.Values(block, offset);
    for (int64_t r = 0; r < run; ++r, value += cache.kv_heads * hd) {
      for (int64_t g = 0, h = 0; g < cache.kv_heads; ++g) {
        const T* v = value + g * hd;
        for (int64_t i = 0; i < cache.group; ++i, ++h) {
          const float weight = row.scores[h * row.stride + j0 + r];
          float* o = row.out + h * hd;
          for (int64_t d = 0; d < hd; ++d) o[d] = std::fma(weight, ToFloat(v[d]), o[d]);
        }
      }
    }
  }
}

// The three steps of a query row, chosen once per call by the machine's vector path and
// the head size: never by the batch, so a row's result depends only on its own context.
template <typename T>
struct AttendSteps {
  void (*scores)(const SequenceCache<T>&, const QueryRow&);
  void (*softmax)(const SequenceCache<T>&, const QueryRow&);
  void (*values)(const SequenceCache<T>&, const QueryRow&);
};

template <typename T>
AttendSteps<T> StepsFor([[maybe_unused]] int64_t head_dim) {
  AttendSteps<T> steps{ScoresPortable<T>, SoftmaxPortable<T>, ValuesPortable<T>};
#if TESSERA_CPU_X86
  const CpuVector path = CpuVectorPath();
  if (path == CpuVector::kPortable) return steps;
  if (path == CpuVector::kAvx512) {
    steps.scores = ScoresByLanes<ScoreLanesAvx512, 16, T>;
    steps.softmax = SoftmaxAvx512<T>;
    switch (head_dim) {
      case 16:
        steps.values = ValuesAvx512<1, T>;
        return steps;
      case 32:
        steps.values = ValuesAvx512<2, T>;
        return steps;
      case 64:
        steps.values = ValuesAvx512<4, T>;
        return steps;
      case 128:
        steps.values = ValuesAvx512<8, T>;
        return steps;
      case 256:
        steps.values = ValuesAvx512<16, T>;
        return steps;
      default:
        break;
    }
  } else {
    steps.scores = ScoresByLanes<ScoreLanesAvx2, 8, T>;
    steps.softmax = SoftmaxAvx2<T>;
  }
  if (head_dim % 8 == 0) steps.values = ValuesAvx2<T>;
#endif  // TESSERA_CPU_X86
  return steps;
}

// Every query row of the call (see PagedAttention), T the cache's element type.
template <typename T>
void AttendRows(const T* k_data, const T* v_data, const float* q_data, float* out_data,
                const internal::QueryRows& rows, int64_t block_size, int64_t kv_heads,
                int64_t head_dim, const AttentionParams& params) {
  const AttendSteps<T> steps = StepsFor<T>(head_dim);
  internal::ForEachQueryRow(
      rows, q_data, out_data, params, head_dim, [&](int64_t s, const QueryRow& row) {
        const SequenceCache<T> cache{k_data,     v_data,   rows.tables + s * rows.max_blocks,
                                     block_size, kv_heads, head_dim,
                                     rows.group};
        steps.scores(cache, row);
        steps.softmax(cache, row);
        steps.values(cache, row);
      });
}

// A cache element from f32: itself, or bf16 rounded to nearest even.
inline void StoreCacheValue(float value, float* to) { *to = value; }
inline void StoreCacheValue(float value, uint16_t* to) { *to = BFloat16::FromFloat(value).bits; }

// k, v rows of token t -> its slot (see WriteKvCache).
template <typename T>
void WriteSlot(const float* key, const float* value, int64_t slot, int64_t block_size, int64_t row,
               T* k_cache, T* v_cache) {
  // Keys go along the positions of their block (KeyCacheShape), values as rows.
  const int64_t block = slot / block_size, offset = slot % block_size;
  T* keys = k_cache + block * row * block_size + offset;
  for (int64_t e = 0; e < row; ++e) StoreCacheValue(key[e], keys + e * block_size);
  T* values = v_cache + slot * row;
  for (int64_t e = 0; e < row; ++e) StoreCacheValue(value[e], values + e);
}

}  // namespace

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache) {
  constexpr char kKernel[] = "WriteKvCache";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache));
  int64_t blocks = v_cache.dim(0), block_size = v_cache.dim(1);
  int64_t kv_heads = v_cache.dim(2), head_dim = v_cache.dim(3);
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
    const float* key = k.data<float>() + t * row;
    const float* value = v.data<float>() + t * row;
    if (k_cache.dtype() == DType::kF32) {
      WriteSlot(key, value, slots[t], block_size, row, k_cache.data<float>(),
                v_cache.data<float>());
    } else {
      WriteSlot(key, value, slots[t], block_size, row,
                reinterpret_cast<uint16_t*>(k_cache.data<BFloat16>()),
                reinterpret_cast<uint16_t*>(v_cache.data<BFloat16>()));
    }
  }
  return absl::OkStatus();
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params,
                            Tensor& out) {
  constexpr char kKernel[] = "PagedAttention";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache));
  const int64_t blocks = v_cache.dim(0), block_size = v_cache.dim(1);
  const int64_t kv_heads = v_cache.dim(2), head_dim = v_cache.dim(3);
  TESSERA_ASSIGN_OR_RETURN(
      const internal::QueryRows rows,
      internal::PlanQueryRows(kKernel, q, out, query_starts, context_lens, block_tables, blocks,
                              block_size, kv_heads, head_dim));
  if (v_cache.dtype() == DType::kF32) {
    AttendRows(k_cache.data<float>(), v_cache.data<float>(), q.data<float>(), out.data<float>(),
               rows, block_size, kv_heads, head_dim, params);
  } else {
    AttendRows(reinterpret_cast<const uint16_t*>(k_cache.data<BFloat16>()),
               reinterpret_cast<const uint16_t*>(v_cache.data<BFloat16>()), q.data<float>(),
               out.data<float>(), rows, block_size, kv_heads, head_dim, params);
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
