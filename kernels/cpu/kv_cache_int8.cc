#include "kernels/cpu/kv_cache_int8.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention_rows.h"
#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/status_macros.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

// The structure follows kernels/cpu/attention.cc (scores, softmax, values per query row),
// with int8 codes widened to f32 in registers and the scales applied once a position.

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;

// The four tensors of the cache (layouts in kv_cache_int8.h).
absl::Status CheckCache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& k_scale, const Tensor& v_scale) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_cache", v_cache, {DType::kI8}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "v_cache", v_cache, 4));
  const int64_t blocks = v_cache.dim(0), block_size = v_cache.dim(1);
  const int64_t kv_heads = v_cache.dim(2), head_dim = v_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_cache", k_cache, {DType::kI8}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "k_cache", k_cache,
                                      KeyCacheShape(blocks, block_size, kv_heads, head_dim)));
  const Shape scales = KvScaleShape(blocks, block_size, kv_heads);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_scale", k_scale, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "k_scale", k_scale, scales));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_scale", v_scale, {DType::kF32}));
  return ExpectShape(kernel, "v_scale", v_scale, scales);
}

// ---- Quantization --------------------------------------------------------------------------

// x rounded to the nearest integer, ties to even, for |x| < 2^22: adding and removing
// 1.5 * 2^23 (exact in f32, and a loop of it vectorizes where std::nearbyint does not).
inline float RoundToNearestEven(float x) {
  constexpr float kRound = 12582912.0f;
  return (x + kRound) - kRound;
}

// One head vector x (n) -> codes[d * stride], d < n; returns its scale (kv_cache_int8.h).
float QuantizeHead(const float* x, int64_t n, int8_t* codes, int64_t stride) {
  // The largest |x_d| as the largest of the bits of |x_d|, which order as the magnitudes do,
  // with infinity and NaN above every finite value (an integer maximum, which vectorizes).
  int32_t max_bits = 0;
  for (int64_t d = 0; d < n; ++d) {
    max_bits = std::max(max_bits, std::bit_cast<int32_t>(x[d]) & 0x7fffffff);
  }
  const bool finite = max_bits < 0x7f800000;
  const float scale = std::bit_cast<float>(max_bits) / 127.0f;
  // All zeros, or so small that the scale underflows to 0 (every |x_d| below about 1e-43).
  if (!finite || !(scale > 0.0f)) {
    for (int64_t d = 0; d < n; ++d) codes[d * stride] = 0;
    return finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  }
  // In chunks: the arithmetic over contiguous values vectorizes, the strided stores of the
  // keys follow.
  constexpr int64_t kChunk = 64;
  for (int64_t d0 = 0; d0 < n; d0 += kChunk) {
    const int64_t count = std::min(kChunk, n - d0);
    int8_t chunk[kChunk];
    for (int64_t d = 0; d < count; ++d) {
      chunk[d] =
          static_cast<int8_t>(std::clamp(RoundToNearestEven(x[d0 + d] / scale), -127.0f, 127.0f));
    }
    for (int64_t d = 0; d < count; ++d) codes[(d0 + d) * stride] = chunk[d];
  }
  return scale;
}

// ---- The cache as the attention kernel reads it --------------------------------------------

// Where one sequence's codes and scales are.
struct SequenceCache {
  const int8_t* k;
  const int8_t* v;
  const float* k_scale;
  const float* v_scale;
  const int32_t* table;  // the sequence's block table
  int64_t block_size, kv_heads, head_dim;
  int64_t group;  // query heads per kv head

  // The key codes of kv head g, dimension d, at offsets [0, block_size) of `block`.
  const int8_t* Keys(int64_t block, int64_t g, int64_t d) const {
    return k + ((block * kv_heads + g) * head_dim + d) * block_size;
  }
  // The value rows (kv_heads * head_dim codes) of `block` from `offset` on.
  const int8_t* Values(int64_t block, int64_t offset) const {
    return v + (block * block_size + offset) * kv_heads * head_dim;
  }
  // The scales of kv head g at offsets [0, block_size) of `block`.
  const float* KeyScales(int64_t block, int64_t g) const {
    return k_scale + (block * kv_heads + g) * block_size;
  }
  const float* ValueScales(int64_t block, int64_t g) const {
    return v_scale + (block * kv_heads + g) * block_size;
  }
};

using internal::BlockRuns;
using internal::QueryRow;

#if TESSERA_CPU_X86
// Eight codes from p as f32 lanes (exact).
__attribute__((target("avx2,fma"))) inline __m256 WidenEight(const int8_t* p) {
  const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
}
// `count` (1 to 8) codes from p as f32 lanes, zeros past them; never reads past p + count.
__attribute__((target("avx2,fma"))) inline __m256 WidenUpToEight(const int8_t* p, int64_t count) {
  if (count == 8) return WidenEight(p);
  alignas(8) int8_t staged[8] = {};
  std::copy_n(p, count, staged);
  return WidenEight(staged);
}
#endif  // TESSERA_CPU_X86

// ---- Scores: scores[h][j] = (q[h] . codes of position first + j) * (k_scale * scale) -------
// The dot product is one chain of fused multiply-adds over d in index order from 0 (each
// product of an f32 and a small integer), then one multiply by the position's scale times
// params.scale, on every path alike.

void ScoresPortable(const SequenceCache& cache, const QueryRow& row) {
  const int64_t hd = cache.head_dim;
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    for (int64_t g = 0; g < cache.kv_heads; ++g) {
      const float* key_scales = cache.KeyScales(b.block, g) + b.offset;
      for (int64_t i = 0; i < cache.group; ++i) {
        const int64_t h = g * cache.group + i;
        for (int64_t r = 0; r < b.run; ++r) {
          float sum = 0.0f;
          for (int64_t d = 0; d < hd; ++d) {
            sum = std::fma(row.q[h * hd + d],
                           static_cast<float>(cache.Keys(b.block, g, d)[b.offset + r]), sum);
          }
          row.scores[h * row.stride + b.j + r] = sum * (key_scales[r] * row.scale);
        }
      }
    }
  }
}

#if TESSERA_CPU_X86
// kG query heads of kv head g (heads h0 .. h0 + kG - 1) at up to eight positions from
// `offset` of `block`, into scores (the row's scores from the first of those positions).
template <int kG>
struct ScoreLanesAvx2 {
  __attribute__((target("avx2,fma"))) static void Run(const SequenceCache& cache,
                                                      const QueryRow& row, int64_t block,
                                                      int64_t offset, int64_t count, int64_t g,
                                                      int64_t h0, float* scores) {
    const int64_t hd = cache.head_dim;
    alignas(32) static constexpr int32_t kLaneIndex[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)),
                           _mm256_load_si256(reinterpret_cast<const __m256i*>(kLaneIndex)));
    __m256 acc[kG];
#pragma GCC unroll 8
    for (int i = 0; i < kG; ++i) acc[i] = _mm256_setzero_ps();
    // Dimension d's codes at keys + d * block_size. A whole vector loads directly; a shorter
    // one is staged, in a loop of its own so that the staging does not push acc out of the
    // registers of the common loop. (The unroll pragmas do the same: without them GCC also
    // stores the accumulator arrays to the stack on every iteration.)
    const int8_t* keys = cache.Keys(block, g, 0) + offset;
    const float* q = row.q + h0 * hd;
    if (count == 8) {
      for (int64_t d = 0; d < hd; ++d, keys += cache.block_size) {
        const __m256 key = WidenEight(keys);
#pragma GCC unroll 8
        for (int i = 0; i < kG; ++i) {
          acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(q + i * hd + d), key, acc[i]);
        }
      }
    } else {
      for (int64_t d = 0; d < hd; ++d, keys += cache.block_size) {
        const __m256 key = WidenUpToEight(keys, count);
#pragma GCC unroll 8
        for (int i = 0; i < kG; ++i) {
          acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(q + i * hd + d), key, acc[i]);
        }
      }
    }
    const __m256 factor = _mm256_mul_ps(
        _mm256_maskload_ps(cache.KeyScales(block, g) + offset, mask), _mm256_set1_ps(row.scale));
#pragma GCC unroll 8
    for (int i = 0; i < kG; ++i) {
      _mm256_maskstore_ps(scores + (h0 + i) * row.stride, mask, _mm256_mul_ps(acc[i], factor));
    }
  }
};

// The query heads sharing a kv head take its key vectors together, up to this many at once
// (their accumulators, a key and a broadcast fit the sixteen registers).
constexpr int64_t kHeadsPerKeyLoad = 8;

using ScoreTileFn = void (*)(const SequenceCache&, const QueryRow&, int64_t, int64_t, int64_t,
                             int64_t, int64_t, float*);

// The tile function for n (1..kHeadsPerKeyLoad) heads.
ScoreTileFn ScoreTileFor(int64_t n) {
  switch (n) {
    case 1:
      return ScoreLanesAvx2<1>::Run;
    case 2:
      return ScoreLanesAvx2<2>::Run;
    case 3:
      return ScoreLanesAvx2<3>::Run;
    case 4:
      return ScoreLanesAvx2<4>::Run;
    case 5:
      return ScoreLanesAvx2<5>::Run;
    case 6:
      return ScoreLanesAvx2<6>::Run;
    case 7:
      return ScoreLanesAvx2<7>::Run;
    default:
      return ScoreLanesAvx2<8>::Run;
  }
}

// Every score of the row, eight positions at a time, the query heads of a kv head
// kHeadsPerKeyLoad at a time.
void ScoresAvx2(const SequenceCache& cache, const QueryRow& row) {
  const int64_t group = cache.group;
  const ScoreTileFn whole = ScoreTileFor(std::min(group, kHeadsPerKeyLoad));
  const ScoreTileFn rest = ScoreTileFor(group % kHeadsPerKeyLoad);
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    for (int64_t o = 0; o < b.run; o += 8) {
      const int64_t count = std::min<int64_t>(8, b.run - o);
      for (int64_t g = 0; g < cache.kv_heads; ++g) {
        for (int64_t i = 0; i < group; i += kHeadsPerKeyLoad) {
          const ScoreTileFn tile = group - i >= kHeadsPerKeyLoad ? whole : rest;
          tile(cache, row, b.block, b.offset + o, count, g, g * group + i, row.scores + b.j + o);
        }
      }
    }
  }
}
#endif  // TESSERA_CPU_X86

// ---- Softmax of each head's row of scores, in place (attention_rows.h) ---------------------

void SoftmaxPortable(const SequenceCache& cache, const QueryRow& row) {
  internal::SoftmaxRowsPortable(cache.kv_heads * cache.group, row);
}

#if TESSERA_CPU_X86
void SoftmaxAvx2(const SequenceCache& cache, const QueryRow& row) {
  internal::SoftmaxRowsAvx2(cache.kv_heads * cache.group, row);
}
#endif  // TESSERA_CPU_X86

// ---- Values: out[h] = sum over j of (p[h][j] * v_scale_j) * value codes of position j -------
// First each weight p[h][j] becomes p[h][j] * v_scale_j in place (one multiply a position and
// head); then each output is accumulated from 0 by fused multiply-adds in position order, a
// run of positions (within one block) at a time. An output is stored and reloaded between
// runs, which is exact, so every path gives the same bits.

void ScaleWeights(const SequenceCache& cache, const QueryRow& row) {
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    for (int64_t g = 0, h = 0; g < cache.kv_heads; ++g) {
      const float* value_scales = cache.ValueScales(b.block, g) + b.offset;
      for (int64_t i = 0; i < cache.group; ++i, ++h) {
        float* weights = row.scores + h * row.stride + b.j;
        for (int64_t r = 0; r < b.run; ++r) weights[r] *= value_scales[r];
      }
    }
  }
}

void ValuesPortable(const SequenceCache& cache, const QueryRow& row) {
  const int64_t hd = cache.head_dim, heads = cache.kv_heads * cache.group;
  ScaleWeights(cache, row);
  std::fill(row.out, row.out + heads * hd, 0.0f);
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    const int8_t* value = cache.Values(b.block, b.offset);
    for (int64_t r = 0; r < b.run; ++r, value += cache.kv_heads * hd) {
      for (int64_t g = 0, h = 0; g < cache.kv_heads; ++g) {
        const int8_t* v = value + g * hd;
        for (int64_t i = 0; i < cache.group; ++i, ++h) {
          const float weight = row.scores[h * row.stride + b.j + r];
          float* o = row.out + h * hd;
          for (int64_t d = 0; d < hd; ++d) o[d] = std::fma(weight, static_cast<float>(v[d]), o[d]);
        }
      }
    }
  }
}

#if TESSERA_CPU_X86
// kG query heads of kv head g (heads h0 .. h0 + kG - 1), dimensions [d0, d0 + 8 kC), over
// one run of positions: their outputs held in registers, each position's codes widened
// once for all kG heads.
template <int kG, int kC>
struct ValueTileAvx2 {
  __attribute__((target("avx2,fma"))) static void Run(const SequenceCache& cache,
                                                      const QueryRow& row, const BlockRuns& b,
                                                      int64_t g, int64_t h0, int64_t d0) {
    const int64_t hd = cache.head_dim, position_stride = cache.kv_heads * hd;
    __m256 acc[kG][kC];
#pragma GCC unroll 8
    for (int i = 0; i < kG; ++i) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c)
        acc[i][c] = _mm256_loadu_ps(row.out + (h0 + i) * hd + d0 + 8 * c);
    }
    const int8_t* value = cache.Values(b.block, b.offset) + g * hd + d0;
    const float* weights = row.scores + h0 * row.stride + b.j;
    for (int64_t r = 0; r < b.run; ++r, value += position_stride) {
      __m256 codes[kC];
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c) codes[c] = WidenEight(value + 8 * c);
#pragma GCC unroll 8
      for (int i = 0; i < kG; ++i) {
        const __m256 weight = _mm256_broadcast_ss(weights + i * row.stride + r);
#pragma GCC unroll 8
        for (int c = 0; c < kC; ++c) acc[i][c] = _mm256_fmadd_ps(weight, codes[c], acc[i][c]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < kG; ++i) {
#pragma GCC unroll 8
      for (int c = 0; c < kC; ++c)
        _mm256_storeu_ps(row.out + (h0 + i) * hd + d0 + 8 * c, acc[i][c]);
    }
  }
};

using ValueTileFn = void (*)(const SequenceCache&, const QueryRow&, const BlockRuns&, int64_t,
                             int64_t, int64_t);

// The tile for n heads of 16 dimensions (kC = 2, n <= 4) or of 8 (kC = 1, n <= 8): eight
// accumulators at most, beside the codes and a broadcast weight.
template <int kC>
ValueTileFn ValueTileFor(int64_t n) {
  if constexpr (kC == 2) {
    switch (n) {
      case 1:
        return ValueTileAvx2<1, 2>::Run;
      case 2:
        return ValueTileAvx2<2, 2>::Run;
      case 3:
        return ValueTileAvx2<3, 2>::Run;
      default:
        return ValueTileAvx2<4, 2>::Run;
    }
  } else {
    switch (n) {
      case 1:
        return ValueTileAvx2<1, 1>::Run;
      case 2:
        return ValueTileAvx2<2, 1>::Run;
      case 3:
        return ValueTileAvx2<3, 1>::Run;
      case 4:
        return ValueTileAvx2<4, 1>::Run;
      case 5:
        return ValueTileAvx2<5, 1>::Run;
      case 6:
        return ValueTileAvx2<6, 1>::Run;
      case 7:
        return ValueTileAvx2<7, 1>::Run;
      default:
        return ValueTileAvx2<8, 1>::Run;
    }
  }
}

// head_dim a multiple of 8 * kC: tiles of (8 / kC heads, 8 * kC dimensions) per run.
template <int kC>
void ValuesAvx2(const SequenceCache& cache, const QueryRow& row) {
  constexpr int64_t kHeads = 8 / kC, kDims = 8 * kC;
  const int64_t hd = cache.head_dim, group = cache.group;
  ScaleWeights(cache, row);
  std::fill(row.out, row.out + cache.kv_heads * group * hd, 0.0f);
  const ValueTileFn whole = ValueTileFor<kC>(std::min(group, kHeads));
  const ValueTileFn rest = ValueTileFor<kC>(group % kHeads);
  for (BlockRuns b(cache, row.first, row.last); b.valid(); b.Next()) {
    for (int64_t g = 0; g < cache.kv_heads; ++g) {
      for (int64_t i = 0; i < group; i += kHeads) {
        const ValueTileFn tile = group - i >= kHeads ? whole : rest;
        for (int64_t d0 = 0; d0 < hd; d0 += kDims) tile(cache, row, b, g, g * group + i, d0);
      }
    }
  }
}
#endif  // TESSERA_CPU_X86

// The three steps of a query row, chosen once per call by the machine's vector path and
// the head size: never by the batch, so a row's result depends only on its own context.
struct AttendSteps {
  void (*scores)(const SequenceCache&, const QueryRow&);
  void (*softmax)(const SequenceCache&, const QueryRow&);
  void (*values)(const SequenceCache&, const QueryRow&);
};

AttendSteps StepsFor([[maybe_unused]] int64_t head_dim) {
  AttendSteps steps{ScoresPortable, SoftmaxPortable, ValuesPortable};
#if TESSERA_CPU_X86
  // AVX-512 machines take the AVX2 code: there is no AVX-512 variant of these kernels yet.
  if (!HasAvx2Fma()) return steps;
  steps.scores = ScoresAvx2;
  steps.softmax = SoftmaxAvx2;
  if (head_dim % 16 == 0) {
    steps.values = ValuesAvx2<2>;
  } else if (head_dim % 8 == 0) {
    steps.values = ValuesAvx2<1>;
  }
#endif  // TESSERA_CPU_X86
  return steps;
}

}  // namespace

absl::Status WriteKvCacheInt8(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, Tensor& k_scale, Tensor& v_scale) {
  constexpr char kKernel[] = "WriteKvCacheInt8";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache, k_scale, v_scale));
  const int64_t blocks = v_cache.dim(0), block_size = v_cache.dim(1);
  const int64_t kv_heads = v_cache.dim(2), head_dim = v_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "k", k, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "k", k, 3));
  const int64_t tokens = k.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "k", k, {tokens, kv_heads, head_dim}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "v", v, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "slot_mapping", slot_mapping, {DType::kI64}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "slot_mapping", slot_mapping, {tokens}));
  const int64_t* slots = slot_mapping.data<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] >= blocks * block_size) {
      return absl::OutOfRangeError(absl::StrCat(kKernel, ": slot ", slots[t], " of token ", t,
                                                " is beyond the cache's ", blocks * block_size,
                                                " slots"));
    }
  }
  const int64_t row = kv_heads * head_dim;
  int8_t* key_codes = k_cache.data<int8_t>();
  int8_t* value_codes = v_cache.data<int8_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    const int64_t block = slots[t] / block_size, offset = slots[t] % block_size;
    for (int64_t g = 0; g < kv_heads; ++g) {
      const int64_t head = (block * kv_heads + g) * block_size + offset;  // in the scales
      // Keys along the positions of their block (KeyCacheShape), values as rows.
      k_scale.data<float>()[head] = QuantizeHead(
          k.data<float>() + t * row + g * head_dim, head_dim,
          key_codes + (block * kv_heads + g) * head_dim * block_size + offset, block_size);
      v_scale.data<float>()[head] = QuantizeHead(v.data<float>() + t * row + g * head_dim, head_dim,
                                                 value_codes + slots[t] * row + g * head_dim, 1);
    }
  }
  return absl::OkStatus();
}

absl::Status PagedAttentionInt8(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& k_scale, const Tensor& v_scale,
                                const Tensor& query_starts, const Tensor& context_lens,
                                const Tensor& block_tables, const AttentionParams& params,
                                Tensor& out) {
  constexpr char kKernel[] = "PagedAttentionInt8";
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache, k_scale, v_scale));
  const int64_t blocks = v_cache.dim(0), block_size = v_cache.dim(1);
  const int64_t kv_heads = v_cache.dim(2), head_dim = v_cache.dim(3);
  TESSERA_ASSIGN_OR_RETURN(
      const internal::QueryRows rows,
      internal::PlanQueryRows(kKernel, q, out, query_starts, context_lens, block_tables, blocks,
                              block_size, kv_heads, head_dim));
  const AttendSteps steps = StepsFor(head_dim);
  internal::ForEachQueryRow(rows, q.data<float>(), out.data<float>(), params, head_dim,
                            [&](int64_t s, const QueryRow& row) {
                              const SequenceCache cache{k_cache.data<int8_t>(),
                                                        v_cache.data<int8_t>(),
                                                        k_scale.data<float>(),
                                                        v_scale.data<float>(),
                                                        rows.tables + s * rows.max_blocks,
                                                        block_size,
                                                        kv_heads,
                                                        head_dim,
                                                        rows.group};
                              steps.scores(cache, row);
                              steps.softmax(cache, row);
                              steps.values(cache, row);
                            });
  return absl::OkStatus();
}

}  // namespace tessera::kernels
