#include "kernels/cpu/training_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
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

// Queries and keys a block: a block's scores (64 x 64) and the q, k, v, dout rows it reads
// (64 x head_dim each) stay in L1 and L2 while the products over it run.
constexpr int64_t kBlock = 64;

// ---- Small products: every matrix step of both passes -------------------------------------
// C (m, n) = A (m, kk) . B (kk, n), or C += A . B with `accumulate`. A's element [r][i] is
// a[r * a_row + i * a_inner], so that A may be a transposed view; B's rows are ldb apart and
// C's ldc apart, each contiguous. Each C element is one chain of multiply-adds over i in order.
struct Product {
  const float* a;
  int64_t a_row, a_inner;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  int64_t m, n, kk;
  bool accumulate;
};

void ProductPortable(const Product& p) {
  for (int64_t r = 0; r < p.m; ++r) {
    float* c = p.c + r * p.ldc;
    if (!p.accumulate) std::fill(c, c + p.n, 0.0f);
    for (int64_t i = 0; i < p.kk; ++i) {
      const float a = p.a[r * p.a_row + i * p.a_inner];
      const float* b = p.b + i * p.ldb;
      for (int64_t col = 0; col < p.n; ++col) c[col] += a * b[col];
    }
  }
}

// An MR x (8 NV) tile of C at (r0, c0), of which `cols` columns are valid; AVX2 + FMA.
template <int MR, int NV>
__attribute__((target("avx2,fma"))) void TileAvx2(const Product& p, int64_t r0, int64_t c0,
                                                  int64_t cols) {
  alignas(32) static constexpr int32_t kLaneIndex[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  const __m256i lane = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLaneIndex));
  __m256i mask[NV];
  for (int v = 0; v < NV; ++v) {
    mask[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(cols - 8 * v)), lane);
  }
  __m256 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = p.accumulate ? _mm256_maskload_ps(p.c + (r0 + r) * p.ldc + c0 + 8 * v, mask[v])
                               : _mm256_setzero_ps();
    }
  }
  const float* a = p.a + r0 * p.a_row;
  const float* b = p.b + c0;
  for (int64_t i = 0; i < p.kk; ++i, a += p.a_inner, b += p.ldb) {
    __m256 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_maskload_ps(b + 8 * v, mask[v]);
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * p.a_row);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      _mm256_maskstore_ps(p.c + (r0 + r) * p.ldc + c0 + 8 * v, mask[v], acc[r][v]);
    }
  }
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The lanes below `lanes` (0 to 16 and beyond).
inline __mmask16 LanesBelow(int64_t lanes) {
  return lanes >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << std::max<int64_t>(lanes, 0)) - 1);
}

// An MR x (16 NV) tile on AVX-512: 6 x 4 takes 24 accumulators, 4 B vectors and a broadcast
// of the 32 registers.
template <int MR, int NV>
__attribute__((target("avx512f,avx2,fma"))) void TileAvx512(const Product& p, int64_t r0,
                                                            int64_t c0, int64_t cols) {
  __mmask16 mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = LanesBelow(cols - 16 * v);
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = p.accumulate
                      ? _mm512_maskz_loadu_ps(mask[v], p.c + (r0 + r) * p.ldc + c0 + 16 * v)
                      : _mm512_setzero_ps();
    }
  }
  const float* a = p.a + r0 * p.a_row;
  const float* b = p.b + c0;
  for (int64_t i = 0; i < p.kk; ++i, a += p.a_inner, b += p.ldb) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(mask[v], b + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * p.a_row]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(p.c + (r0 + r) * p.ldc + c0 + 16 * v, mask[v], acc[r][v]);
    }
  }
}

#pragma GCC diagnostic pop

using TileFn = void (*)(const Product&, int64_t, int64_t, int64_t);

constexpr int kTileRows = 6;

// Tile<MR, NV> for MR in 1..6, NV in 1..kMaxVectors: table[MR - 1][NV - 1].
template <template <int, int> class Tile, int kMaxVectors>
struct TileTable;

template <int MR, int NV>
struct Avx2Tile {
  static constexpr TileFn fn = TileAvx2<MR, NV>;
};
template <int MR, int NV>
struct Avx512Tile {
  static constexpr TileFn fn = TileAvx512<MR, NV>;
};

template <template <int, int> class Tile, int NV>
constexpr std::array<TileFn, kTileRows> TileColumn() {
  return {Tile<1, NV>::fn, Tile<2, NV>::fn, Tile<3, NV>::fn,
          Tile<4, NV>::fn, Tile<5, NV>::fn, Tile<6, NV>::fn};
}

// Tiles of kTileRows rows by `lanes * max_vectors` columns over C, columns outermost so that
// a panel of B stays in L1 while every row tile reads it.
template <int kLanes, int kMaxVectors>
void ProductByTiles(const Product& p, const std::array<TileFn, kTileRows> (&tiles)[kMaxVectors]) {
  constexpr int64_t kColumns = kLanes * kMaxVectors;
  for (int64_t c0 = 0; c0 < p.n; c0 += kColumns) {
    const int64_t cols = std::min(kColumns, p.n - c0);
    const int64_t vectors = (cols + kLanes - 1) / kLanes;
    for (int64_t r0 = 0; r0 < p.m; r0 += kTileRows) {
      const int64_t rows = std::min<int64_t>(kTileRows, p.m - r0);
      tiles[vectors - 1][rows - 1](p, r0, c0, cols);
    }
  }
}

void ProductAvx2(const Product& p) {
  static constexpr std::array<TileFn, kTileRows> kTiles[2] = {TileColumn<Avx2Tile, 1>(),
                                                              TileColumn<Avx2Tile, 2>()};
  ProductByTiles<8, 2>(p, kTiles);
}

void ProductAvx512(const Product& p) {
  static constexpr std::array<TileFn, kTileRows> kTiles[4] = {
      TileColumn<Avx512Tile, 1>(), TileColumn<Avx512Tile, 2>(), TileColumn<Avx512Tile, 3>(),
      TileColumn<Avx512Tile, 4>()};
  ProductByTiles<16, 4>(p, kTiles);
}

// ---- Row steps of the softmax and its backward ---------------------------------------------
// For one row s[0, n) of a block's scores, with the row's attended columns [lo, hi):
//   scaled_max: the maximum of scale * s[j] over [lo, hi) (lo < hi);
//   exp_row:    s[j] = exp(scale * s[j] - sub) over [lo, hi), 0 elsewhere in [0, n);
//               returns their sum (lo and hi are clamped to [0, n]; lo >= hi: all 0);
//   ds_row:     dp[j] = scale * p[j] * (dp[j] - d) over [0, n).

float ScaledMaxPortable(const float* s, int64_t lo, int64_t hi, float scale) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t j = lo; j < hi; ++j) max = std::max(max, scale * s[j]);
  return max;
}

float ExpRowPortable(float* s, int64_t n, int64_t lo, int64_t hi, float scale, float sub) {
  hi = std::clamp<int64_t>(hi, 0, n);
  lo = std::clamp<int64_t>(lo, 0, hi);
  std::fill(s, s + lo, 0.0f);
  float sum = 0.0f;
  for (int64_t j = lo; j < hi; ++j) {
    s[j] = ExpNonPositive(std::fma(scale, s[j], -sub));
    sum += s[j];
  }
  std::fill(s + hi, s + n, 0.0f);
  return sum;
}

void DsRowPortable(const float* p, float* dp, int64_t n, float d, float scale) {
  for (int64_t j = 0; j < n; ++j) dp[j] = scale * p[j] * (dp[j] - d);
}

__attribute__((target("avx2,fma"))) float ScaledMaxAvx2(const float* s, int64_t lo, int64_t hi,
                                                        float scale) {
  const __m256 scale8 = _mm256_set1_ps(scale);
  __m256 max8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = lo;
  for (; j + 8 <= hi; j += 8) {
    max8 = _mm256_max_ps(max8, _mm256_mul_ps(scale8, _mm256_loadu_ps(s + j)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max8);
  float max = lanes[0];
  for (int l = 1; l < 8; ++l) max = std::max(max, lanes[l]);
  for (; j < hi; ++j) max = std::max(max, scale * s[j]);
  return max;
}

__attribute__((target("avx2,fma"))) float ExpRowAvx2(float* s, int64_t n, int64_t lo, int64_t hi,
                                                     float scale, float sub) {
  hi = std::clamp<int64_t>(hi, 0, n);
  lo = std::clamp<int64_t>(lo, 0, hi);
  std::fill(s, s + lo, 0.0f);
  const __m256 scale8 = _mm256_set1_ps(scale), sub8 = _mm256_set1_ps(sub);
  __m256 sum8 = _mm256_setzero_ps();
  int64_t j = lo;
  for (; j + 8 <= hi; j += 8) {
    const __m256 e = ExpNonPositive8(_mm256_fmsub_ps(scale8, _mm256_loadu_ps(s + j), sub8));
    _mm256_storeu_ps(s + j, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum8);
  float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
              ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (; j < hi; ++j) {
    s[j] = ExpNonPositive(std::fma(scale, s[j], -sub));
    sum += s[j];
  }
  std::fill(s + hi, s + n, 0.0f);
  return sum;
}

__attribute__((target("avx2,fma"))) void DsRowAvx2(const float* p, float* dp, int64_t n, float d,
                                                   float scale) {
  const __m256 d8 = _mm256_set1_ps(d), scale8 = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 sp = _mm256_mul_ps(scale8, _mm256_loadu_ps(p + j));
    _mm256_storeu_ps(dp + j, _mm256_mul_ps(sp, _mm256_sub_ps(_mm256_loadu_ps(dp + j), d8)));
  }
  for (; j < n; ++j) dp[j] = scale * p[j] * (dp[j] - d);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

__attribute__((target("avx512f,avx2,fma"))) float ScaledMaxAvx512(const float* s, int64_t lo,
                                                                  int64_t hi, float scale) {
  const __m512 scale16 = _mm512_set1_ps(scale);
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 max16 = lowest;
  for (int64_t j = lo; j < hi; j += 16) {
    const __mmask16 mask = LanesBelow(hi - j);
    max16 = _mm512_mask_max_ps(max16, mask, max16,
                               _mm512_mul_ps(scale16, _mm512_maskz_loadu_ps(mask, s + j)));
  }
  return _mm512_reduce_max_ps(max16);
}

__attribute__((target("avx512f,avx2,fma"))) float ExpRowAvx512(float* s, int64_t n, int64_t lo,
                                                               int64_t hi, float scale, float sub) {
  hi = std::clamp<int64_t>(hi, 0, n);
  lo = std::clamp<int64_t>(lo, 0, hi);
  std::fill(s, s + lo, 0.0f);
  const __m512 scale16 = _mm512_set1_ps(scale), sub16 = _mm512_set1_ps(sub);
  __m512 sum16 = _mm512_setzero_ps();
  for (int64_t j = lo; j < hi; j += 16) {
    const __mmask16 mask = LanesBelow(hi - j);
    const __m512 e =
        ExpNonPositive16(_mm512_fmsub_ps(scale16, _mm512_maskz_loadu_ps(mask, s + j), sub16));
    _mm512_mask_storeu_ps(s + j, mask, e);
    sum16 = _mm512_mask_add_ps(sum16, mask, sum16, e);
  }
  std::fill(s + hi, s + n, 0.0f);
  return _mm512_reduce_add_ps(sum16);
}

__attribute__((target("avx512f,avx2,fma"))) void DsRowAvx512(const float* p, float* dp, int64_t n,
                                                             float d, float scale) {
  const __m512 d16 = _mm512_set1_ps(d), scale16 = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 mask = LanesBelow(n - j);
    const __m512 sp = _mm512_mul_ps(scale16, _mm512_maskz_loadu_ps(mask, p + j));
    const __m512 g = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, dp + j), d16);
    _mm512_mask_storeu_ps(dp + j, mask, _mm512_mul_ps(sp, g));
  }
}

#pragma GCC diagnostic pop

// The steps of one path, chosen once per call by the machine (cpu_features.h).
struct Ops {
  void (*product)(const Product&);
  float (*scaled_max)(const float* s, int64_t lo, int64_t hi, float scale);
  float (*exp_row)(float* s, int64_t n, int64_t lo, int64_t hi, float scale, float sub);
  void (*ds_row)(const float* p, float* dp, int64_t n, float d, float scale);
};

Ops OpsForMachine() {
  switch (CpuVectorPath()) {
    case CpuVector::kAvx512:
      return {ProductAvx512, ScaledMaxAvx512, ExpRowAvx512, DsRowAvx512};
    case CpuVector::kAvx2:
      return {ProductAvx2, ScaledMaxAvx2, ExpRowAvx2, DsRowAvx2};
    case CpuVector::kPortable:
      break;
  }
  return {ProductPortable, ScaledMaxPortable, ExpRowPortable, DsRowPortable};
}

// ---- Shapes, documents and work items ------------------------------------------------------

struct Dims {
  int64_t tokens, heads, kv_heads, head_dim, group;
  int64_t window;  // 0: none
  float scale;
};

// q (T, Hq, D), k and v (T, Hkv, D), sequence_starts (S+1) running 0 .. T; fills dims and
// the documents' [begin, end) pairs.
absl::Status CheckInputs(const char* kernel, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& sequence_starts, const AttentionParams& params, Dims& dims,
                         std::vector<std::pair<int64_t, int64_t>>& documents) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "q", q, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "q", q, 3));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k", k, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k", k, 3));
  if (k.dim(0) != q.dim(0) || k.dim(2) != q.dim(2) || k.dim(1) == 0 || q.dim(1) % k.dim(1) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kernel, ": k is ", k.DebugString(), ", expected (", q.dim(0), ", kv_heads, ", q.dim(2),
        ") with kv_heads dividing the ", q.dim(1), " query heads of q ", q.DebugString()));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v", v, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "sequence_starts", sequence_starts, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "sequence_starts", sequence_starts, 1));
  if (params.sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": sliding_window is ", params.sliding_window, ", expected >= 0"));
  }
  dims = {q.dim(0),    q.dim(1), k.dim(1), q.dim(2), q.dim(1) / k.dim(1), params.sliding_window,
          params.scale};
  const int64_t count = sequence_starts.dim(0);
  const int32_t* starts = sequence_starts.data<int32_t>();
  if (count < 1 || starts[0] != 0 || starts[count - 1] != dims.tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": sequence_starts ", sequence_starts.DebugString(),
                     " must run from 0 to the ", dims.tokens, " tokens"));
  }
  documents.clear();
  for (int64_t s = 0; s + 1 < count; ++s) {
    if (starts[s + 1] < starts[s]) {
      return absl::InvalidArgumentError(
          absl::StrCat(kernel, ": sequence_starts[", s + 1, "] = ", starts[s + 1],
                       " is below sequence_starts[", s, "] = ", starts[s]));
    }
    if (starts[s + 1] > starts[s]) documents.emplace_back(starts[s], starts[s + 1]);
  }
  return absl::OkStatus();
}

// The keys token t of a document starting at `begin` attends to: [KeyBegin, t].
inline int64_t KeyBegin(const Dims& dims, int64_t begin, int64_t t) {
  return dims.window > 0 ? std::max(begin, t - dims.window + 1) : begin;
}

// kv (T, Hkv, D) -> transposed (Hkv, D, T): a kv head's dimension d at consecutive tokens,
// the layout a block of scores reads keys (and the backward values) in.
void TransposeHeads(const float* kv, const Dims& dims, float* transposed) {
  const int64_t t_blocks = (dims.tokens + kBlock - 1) / kBlock;
  const int64_t d = dims.head_dim, hkv = dims.kv_heads, tokens = dims.tokens;
  ParallelFor(hkv * t_blocks, tokens * hkv * d < 65536 ? hkv * t_blocks : 1,
              [&](int64_t begin, int64_t end) {
                for (int64_t item = begin; item < end; ++item) {
                  const int64_t g = item / t_blocks, t0 = item % t_blocks * kBlock;
                  const int64_t t1 = std::min(tokens, t0 + kBlock);
                  for (int64_t e = 0; e < d; ++e) {
                    float* to = transposed + (g * d + e) * tokens;
                    for (int64_t t = t0; t < t1; ++t) to[t] = kv[(t * hkv + g) * d + e];
                  }
                }
              });
}

// Work of the call in multiply-adds, for whether threads pay.
int64_t Work(const Dims& dims, const std::vector<std::pair<int64_t, int64_t>>& documents) {
  int64_t work = 0;
  for (const auto& [begin, end] : documents) {
    const int64_t length = end - begin;
    const int64_t keys = dims.window > 0 ? std::min(length, dims.window) : length;
    work += length * keys;
  }
  return work * dims.heads * dims.head_dim;
}

constexpr int64_t kParallelWork = int64_t{1} << 16;

// ---- Forward --------------------------------------------------------------------------------

struct ForwardItem {
  int64_t begin, end;  // the document
  int64_t block;       // the query block within it
  int64_t head;
  int64_t cost;  // key blocks it reads
};

// One query block of one head: online softmax over its key blocks, the diagonal block first.
void ForwardBlock(const Ops& ops, const Dims& dims, const ForwardItem& item, const float* q,
                  const float* k_t, const float* v, float* out, float* lse) {
  thread_local std::vector<float> buffer;
  const int64_t d = dims.head_dim, hq = dims.heads, hkv = dims.kv_heads, tokens = dims.tokens;
  buffer.resize(kBlock * kBlock + kBlock * d + 2 * kBlock);
  float* scores = buffer.data();          // (kBlock, kBlock)
  float* acc = scores + kBlock * kBlock;  // (kBlock, d): unnormalized outputs
  float* row_max = acc + kBlock * d;      // running maximum of scale * score
  float* row_sum = row_max + kBlock;      // running sum of exp(scale * score - max)
  const int64_t a = item.begin, h = item.head, g = h / dims.group;
  const int64_t q0 = a + item.block * kBlock, q1 = std::min(item.end, q0 + kBlock);
  const int64_t nq = q1 - q0;
  std::fill(acc, acc + nq * d, 0.0f);
  std::fill(row_max, row_max + nq, -std::numeric_limits<float>::infinity());
  std::fill(row_sum, row_sum + nq, 0.0f);
  const int64_t first_block = (KeyBegin(dims, a, q0) - a) / kBlock;
  for (int64_t kb = item.block; kb >= first_block; --kb) {
    const int64_t k0 = a + kb * kBlock, k1 = std::min(item.end, k0 + kBlock);
    const int64_t nk = k1 - k0;
    ops.product({q + (q0 * hq + h) * d, hq * d, 1, k_t + g * d * tokens + k0, tokens, scores,
                 kBlock, nq, nk, d, false});
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t t = q0 + i;
      const int64_t lo = std::max(k0, KeyBegin(dims, a, t)) - k0;
      const int64_t hi = std::min(k1, t + 1) - k0;
      float* s = scores + i * kBlock;
      if (lo >= hi) {
        std::fill(s, s + nk, 0.0f);
        continue;
      }
      const float block_max = ops.scaled_max(s, lo, hi, dims.scale);
      const float max = std::max(row_max[i], block_max);
      const float sum = ops.exp_row(s, nk, lo, hi, dims.scale, max);
      if (max != row_max[i]) {
        const float rescale = std::exp(row_max[i] - max);
        row_sum[i] *= rescale;
        for (int64_t e = 0; e < d; ++e) acc[i * d + e] *= rescale;
        row_max[i] = max;
      }
      row_sum[i] += sum;
    }
    ops.product({scores, kBlock, 1, v + (k0 * hkv + g) * d, hkv * d, acc, d, nq, d, nk, true});
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t t = q0 + i;
    const float inverse = 1.0f / row_sum[i];
    float* o = out + (t * hq + h) * d;
    for (int64_t e = 0; e < d; ++e) o[e] = acc[i * d + e] * inverse;
    lse[t * hq + h] = row_max[i] + std::log(row_sum[i]);
  }
}

// ---- Backward -------------------------------------------------------------------------------

struct BackwardItem {
  int64_t begin, end;  // the document
  int64_t head;
};

struct BackwardArgs {
  const float *q, *k, *k_t, *v_t, *dout, *lse, *delta;  // delta (T, Hq): dout . out
  float* dq;
  // Where each query head's dk and dv go: rows dkv_stride apart, head h at column offset
  // dkv_head(h) * D (the kv head itself when a kv head has one query head, else per query
  // head, summed afterwards).
  float *dk, *dv;
  int64_t dkv_stride;
  bool per_query_head;
};

// One head of one document: for each key block, every query block that attends to it.
void BackwardHead(const Ops& ops, const Dims& dims, const BackwardItem& item,
                  const BackwardArgs& args) {
  thread_local std::vector<float> buffer;
  buffer.resize(2 * kBlock * kBlock);
  float* p = buffer.data();         // (kBlock, kBlock): probabilities
  float* ds = p + kBlock * kBlock;  // (kBlock, kBlock): dP, then scale * dS
  const int64_t d = dims.head_dim, hq = dims.heads, hkv = dims.kv_heads, tokens = dims.tokens;
  const int64_t a = item.begin, h = item.head, g = h / dims.group;
  const int64_t dkv_column = (args.per_query_head ? h : g) * d;
  for (int64_t t = a; t < item.end; ++t) {
    std::fill(args.dq + (t * hq + h) * d, args.dq + (t * hq + h + 1) * d, 0.0f);
  }
  const int64_t blocks = (item.end - a + kBlock - 1) / kBlock;
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const int64_t k0 = a + kb * kBlock, k1 = std::min(item.end, k0 + kBlock);
    const int64_t nk = k1 - k0;
    // Queries past the window of the block's last key do not read it.
    const int64_t query_end = dims.window > 0 ? std::min(item.end, k1 - 1 + dims.window) : item.end;
    float* dk = args.dk + k0 * args.dkv_stride + dkv_column;
    float* dv = args.dv + k0 * args.dkv_stride + dkv_column;
    for (int64_t qb = kb; a + qb * kBlock < query_end; ++qb) {
      const int64_t q0 = a + qb * kBlock, q1 = std::min(item.end, q0 + kBlock);
      const int64_t nq = q1 - q0;
      const float* q = args.q + (q0 * hq + h) * d;
      const float* dout = args.dout + (q0 * hq + h) * d;
      ops.product(
          {q, hq * d, 1, args.k_t + g * d * tokens + k0, tokens, p, kBlock, nq, nk, d, false});
      ops.product(
          {dout, hq * d, 1, args.v_t + g * d * tokens + k0, tokens, ds, kBlock, nq, nk, d, false});
      for (int64_t i = 0; i < nq; ++i) {
        const int64_t t = q0 + i;
        const int64_t lo = std::max<int64_t>(0, KeyBegin(dims, a, t) - k0);
        const int64_t hi = std::min(k1, t + 1) - k0;
        ops.exp_row(p + i * kBlock, nk, lo, hi, dims.scale, args.lse[t * hq + h]);
        ops.ds_row(p + i * kBlock, ds + i * kBlock, nk, args.delta[t * hq + h], dims.scale);
      }
      const bool first = qb == kb;
      // dv += P^T . dout, dk += dS^T . q, dq += dS . k.
      ops.product({p, 1, kBlock, dout, hq * d, dv, args.dkv_stride, nk, d, nq, !first});
      ops.product({ds, 1, kBlock, q, hq * d, dk, args.dkv_stride, nk, d, nq, !first});
      ops.product({ds, kBlock, 1, args.k + (k0 * hkv + g) * d, hkv * d, args.dq + (q0 * hq + h) * d,
                   hq * d, nq, d, nk, true});
    }
  }
}

}  // namespace

absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse) {
  constexpr char kKernel[] = "CausalAttention";
  Dims dims;
  std::vector<std::pair<int64_t, int64_t>> documents;
  TESSERA_RETURN_IF_ERROR(CheckInputs(kKernel, q, k, v, sequence_starts, params, dims, documents));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {dims.tokens, dims.heads}));
  if (dims.tokens == 0) return absl::OkStatus();
  const Ops ops = OpsForMachine();
  std::vector<float> k_t(k.numel());
  TransposeHeads(k.data<float>(), dims, k_t.data());

  // Items are (document, query block, head), the costliest first so that the last ones
  // handed out are short.
  std::vector<ForwardItem> items;
  for (const auto& [begin, end] : documents) {
    for (int64_t block = 0; block * kBlock < end - begin; ++block) {
      const int64_t q0 = begin + block * kBlock;
      const int64_t cost = block - (KeyBegin(dims, begin, q0) - begin) / kBlock + 1;
      for (int64_t h = 0; h < dims.heads; ++h) items.push_back({begin, end, block, h, cost});
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const ForwardItem& x, const ForwardItem& y) { return x.cost > y.cost; });
  const int64_t count = static_cast<int64_t>(items.size());
  const float* q_data = q.data<float>();
  const float* v_data = v.data<float>();
  float* out_data = out.data<float>();
  float* lse_data = lse.data<float>();
  ParallelFor(
      count, Work(dims, documents) < kParallelWork ? count : 1,
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          ForwardBlock(ops, dims, items[i], q_data, k_t.data(), v_data, out_data, lse_data);
        }
      },
      /*grain=*/1);
  return absl::OkStatus();
}

absl::Status CausalAttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& sequence_starts, const AttentionParams& params,
                                     Tensor& dq, Tensor& dk, Tensor& dv) {
  constexpr char kKernel[] = "CausalAttentionBackward";
  Dims dims;
  std::vector<std::pair<int64_t, int64_t>> documents;
  TESSERA_RETURN_IF_ERROR(CheckInputs(kKernel, q, k, v, sequence_starts, params, dims, documents));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dout", dout, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dout", dout, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dq", dq, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dq", dq, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {dims.tokens, dims.heads}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dk", dk, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dk", dk, k.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dv", dv, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dv", dv, k.shape()));
  if (dims.tokens == 0) return absl::OkStatus();
  const Ops ops = OpsForMachine();
  const int64_t d = dims.head_dim, hq = dims.heads, hkv = dims.kv_heads, tokens = dims.tokens;
  const int64_t min_items = Work(dims, documents) < kParallelWork ? tokens * hq : 1;
  std::vector<float> k_t(k.numel()), v_t(v.numel()), delta(tokens * hq);
  TransposeHeads(k.data<float>(), dims, k_t.data());
  TransposeHeads(v.data<float>(), dims, v_t.data());
  const float* out_data = out.data<float>();
  const float* dout_data = dout.data<float>();
  ParallelFor(tokens * hq, min_items, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float dot = 0.0f;
      for (int64_t e = 0; e < d; ++e) dot += dout_data[row * d + e] * out_data[row * d + e];
      delta[row] = dot;
    }
  });

  // Items are (document, query head): each owns its dq rows, and its dk and dv rows when a
  // kv head has one query head; otherwise each query head's share goes to its own rows of
  // (T, Hq, D) buffers, summed over the group in head order afterwards.
  const bool per_query_head = dims.group > 1;
  std::vector<float> dk_heads, dv_heads;
  BackwardArgs args{q.data<float>(),  k.data<float>(),   k_t.data(),   v_t.data(),
                    dout_data,        lse.data<float>(), delta.data(), dq.data<float>(),
                    dk.data<float>(), dv.data<float>(),  hkv * d,      per_query_head};
  if (per_query_head) {
    dk_heads.resize(tokens * hq * d);
    dv_heads.resize(tokens * hq * d);
    args.dk = dk_heads.data();
    args.dv = dv_heads.data();
    args.dkv_stride = hq * d;
  }
  std::vector<BackwardItem> items;
  for (const auto& [begin, end] : documents) {
    for (int64_t h = 0; h < hq; ++h) items.push_back({begin, end, h});
  }
  std::stable_sort(items.begin(), items.end(), [](const BackwardItem& x, const BackwardItem& y) {
    return x.end - x.begin > y.end - y.begin;
  });
  const int64_t count = static_cast<int64_t>(items.size());
  ParallelFor(
      count, min_items == 1 ? 1 : count,
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) BackwardHead(ops, dims, items[i], args);
      },
      /*grain=*/1);
  if (per_query_head) {
    float* dk_data = dk.data<float>();
    float* dv_data = dv.data<float>();
    ParallelFor(tokens * hkv, min_items, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {  // row = t * hkv + g
        const int64_t t = row / hkv, g = row % hkv;
        const std::pair<const float*, float*> sums[2] = {{dk_heads.data(), dk_data},
                                                         {dv_heads.data(), dv_data}};
        for (const auto& [from, to] : sums) {
          const float* head = from + (t * hq + g * dims.group) * d;
          float* sum = to + row * d;
          std::copy_n(head, d, sum);
          for (int64_t i = 1; i < dims.group; ++i) {
            for (int64_t e = 0; e < d; ++e) sum[e] += head[i * d + e];
          }
        }
      }
    });
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
