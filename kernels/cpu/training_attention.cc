#include "kernels/cpu/training_attention.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/status_macros.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

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

#if TESSERA_CPU_X86
// The tiles below take an MR x (lanes NV) tile of C at (r0, c0), of which `cols` columns
// are valid: all but the last vector whole, the last masked when kMaskLast. Each keeps its
// MR x NV accumulators in registers through the whole inner dimension: per step NV loads of
// B's row, MR broadcasts of A's column and MR NV fused multiply-adds.

// AVX2 + FMA, 8 lanes: 6 x 2 takes 12 accumulators, 2 B vectors and a broadcast of the 16
// registers.
template <int MR, int NV, bool kMaskLast>
__attribute__((target("avx2,fma"))) void TileAvx2(const Product& p, int64_t r0, int64_t c0,
                                                  int64_t cols) {
  alignas(32) static constexpr int32_t kLaneIndex[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  const __m256i last =
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(cols - 8 * (NV - 1))),
                         _mm256_load_si256(reinterpret_cast<const __m256i*>(kLaneIndex)));
  const int64_t kk = p.kk, ldb = p.ldb, a_row = p.a_row, a_inner = p.a_inner, ldc = p.ldc;
  float* c = p.c + r0 * ldc + c0;
  __m256 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (!p.accumulate) {
        acc[r][v] = _mm256_setzero_ps();
      } else if (kMaskLast && v == NV - 1) {
        acc[r][v] = _mm256_maskload_ps(c + r * ldc + 8 * v, last);
      } else {
        acc[r][v] = _mm256_loadu_ps(c + r * ldc + 8 * v);
      }
    }
  }
  const float* a = p.a + r0 * a_row;
  const float* b = p.b + c0;
  for (int64_t i = 0; i < kk; ++i, a += a_inner, b += ldb) {
    __m256 bv[NV];
    for (int v = 0; v < NV; ++v) {
      bv[v] = kMaskLast && v == NV - 1 ? _mm256_maskload_ps(b + 8 * v, last)
                                       : _mm256_loadu_ps(b + 8 * v);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * a_row);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (kMaskLast && v == NV - 1) {
        _mm256_maskstore_ps(c + r * ldc + 8 * v, last, acc[r][v]);
      } else {
        _mm256_storeu_ps(c + r * ldc + 8 * v, acc[r][v]);
      }
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

// AVX-512, 16 lanes: 6 x 4 takes 24 accumulators, 4 B vectors and a broadcast of the 32
// registers.
template <int MR, int NV, bool kMaskLast>
__attribute__((target("avx512f,avx2,fma"))) void TileAvx512(const Product& p, int64_t r0,
                                                            int64_t c0, int64_t cols) {
  const __mmask16 last = LanesBelow(cols - 16 * (NV - 1));
  const int64_t kk = p.kk, ldb = p.ldb, a_row = p.a_row, a_inner = p.a_inner, ldc = p.ldc;
  float* c = p.c + r0 * ldc + c0;
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (!p.accumulate) {
        acc[r][v] = _mm512_setzero_ps();
      } else if (kMaskLast && v == NV - 1) {
        acc[r][v] = _mm512_maskz_loadu_ps(last, c + r * ldc + 16 * v);
      } else {
        acc[r][v] = _mm512_loadu_ps(c + r * ldc + 16 * v);
      }
    }
  }
  const float* a = p.a + r0 * a_row;
  const float* b = p.b + c0;
  for (int64_t i = 0; i < kk; ++i, a += a_inner, b += ldb) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) {
      bv[v] = kMaskLast && v == NV - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v)
                                       : _mm512_loadu_ps(b + 16 * v);
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * a_row]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      if (kMaskLast && v == NV - 1) {
        _mm512_mask_storeu_ps(c + r * ldc + 16 * v, last, acc[r][v]);
      } else {
        _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
      }
    }
  }
}

#pragma GCC diagnostic pop

using TileFn = void (*)(const Product&, int64_t, int64_t, int64_t);

constexpr int kTileRows = 6;

// Tile<MR, NV, kMaskLast> for MR in 1..kTileRows.
template <template <int, int, bool> class Tile, int NV, bool kMaskLast>
TileFn TileWithRows(int64_t rows) {
  switch (rows) {
    case 1:
      return Tile<1, NV, kMaskLast>::Run;
    case 2:
      return Tile<2, NV, kMaskLast>::Run;
    case 3:
      return Tile<3, NV, kMaskLast>::Run;
    case 4:
      return Tile<4, NV, kMaskLast>::Run;
    case 5:
      return Tile<5, NV, kMaskLast>::Run;
    default:
      return Tile<6, NV, kMaskLast>::Run;
  }
}

template <int MR, int NV, bool kMaskLast>
struct Avx2Tile {
  static constexpr TileFn Run = TileAvx2<MR, NV, kMaskLast>;
};
template <int MR, int NV, bool kMaskLast>
struct Avx512Tile {
  static constexpr TileFn Run = TileAvx512<MR, NV, kMaskLast>;
};

// Tiles of kTileRows rows by kLanes * kMaxVectors columns over C, columns outermost so that
// a panel of B stays in L1 while every row tile reads it.
template <template <int, int, bool> class Tile, int kLanes, int kMaxVectors>
void ProductByTiles(const Product& p) {
  static_assert(kMaxVectors == 2 || kMaxVectors == 4);
  constexpr int64_t kColumns = kLanes * kMaxVectors;
  for (int64_t c0 = 0; c0 < p.n; c0 += kColumns) {
    const int64_t cols = std::min(kColumns, p.n - c0);
    const int64_t vectors = (cols + kLanes - 1) / kLanes;
    const bool mask_last = cols % kLanes != 0;
    for (int64_t r0 = 0; r0 < p.m; r0 += kTileRows) {
      const int64_t rows = std::min<int64_t>(kTileRows, p.m - r0);
      TileFn tile;
      switch (vectors * 2 + (mask_last ? 1 : 0)) {
        case 2:
          tile = TileWithRows<Tile, 1, false>(rows);
          break;
        case 3:
          tile = TileWithRows<Tile, 1, true>(rows);
          break;
        case 4:
          tile = TileWithRows<Tile, 2, false>(rows);
          break;
        case 5:
          tile = TileWithRows<Tile, 2, true>(rows);
          break;
        case 6:
          tile = TileWithRows < Tile, kMaxVectors == 4 ? 3 : 2, false > (rows);
          break;
        case 7:
          tile = TileWithRows < Tile, kMaxVectors == 4 ? 3 : 2, true > (rows);
          break;
        case 8:
          tile = TileWithRows<Tile, kMaxVectors, false>(rows);
          break;
        default:
          tile = TileWithRows<Tile, kMaxVectors, true>(rows);
          break;
      }
      tile(p, r0, c0, cols);
    }
  }
}

void ProductAvx2(const Product& p) { ProductByTiles<Avx2Tile, 8, 2>(p); }

void ProductAvx512(const Product& p) { ProductByTiles<Avx512Tile, 16, 4>(p); }
#endif  // TESSERA_CPU_X86

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

#if TESSERA_CPU_X86
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
#endif  // TESSERA_CPU_X86

// The steps of one path, chosen once per call by the machine (cpu_features.h).
struct Ops {
  void (*product)(const Product&);
  float (*scaled_max)(const float* s, int64_t lo, int64_t hi, float scale);
  float (*exp_row)(float* s, int64_t n, int64_t lo, int64_t hi, float scale, float sub);
  void (*ds_row)(const float* p, float* dp, int64_t n, float d, float scale);
};

Ops OpsForMachine() {
#if TESSERA_CPU_X86
  switch (CpuVectorPath()) {
    case CpuVector::kAvx512:
      return {ProductAvx512, ScaledMaxAvx512, ExpRowAvx512, DsRowAvx512};
    case CpuVector::kAvx2:
      return {ProductAvx2, ScaledMaxAvx2, ExpRowAvx2, DsRowAvx2};
    case CpuVector::kPortable:
      break;
  }
#endif
  return {ProductPortable, ScaledMaxPortable, ExpRowPortable, DsRowPortable};
}

// ---- Shapes, documents and staged copies ---------------------------------------------------

struct Dims {
  int64_t tokens, heads, kv_heads, head_dim, group;
  int64_t window;  // 0: none
  float scale;
};

// A document's tokens [begin, end), cut into blocks of kBlock from begin; its blocks are
// numbered from first_block among all documents' blocks.
struct Document {
  int64_t begin, end, first_block;
  int64_t blocks() const { return (end - begin + kBlock - 1) / kBlock; }
};

// q (T, Hq, D), k and v (T, Hkv, D), sequence_starts (S+1) running 0 .. T; fills dims and
// the non-empty documents.
absl::Status CheckInputs(const char* kernel, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& sequence_starts, const AttentionParams& params, Dims& dims,
                         std::vector<Document>& documents) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "q", q, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "q", q, 3));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k", k, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k", k, 3));
  if (k.dim(0) != q.dim(0) || k.dim(2) != q.dim(2) || k.dim(1) == 0 || q.dim(1) < k.dim(1) ||
      q.dim(1) % k.dim(1) != 0) {
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
  int64_t blocks = 0;
  for (int64_t s = 0; s + 1 < count; ++s) {
    if (starts[s + 1] < starts[s]) {
      return absl::InvalidArgumentError(
          absl::StrCat(kernel, ": sequence_starts[", s + 1, "] = ", starts[s + 1],
                       " is below sequence_starts[", s, "] = ", starts[s]));
    }
    if (starts[s + 1] == starts[s]) continue;
    documents.push_back({starts[s], starts[s + 1], blocks});
    blocks += documents.back().blocks();
  }
  return absl::OkStatus();
}

// The keys token t of a document starting at `begin` attends to: [KeyBegin, t].
inline int64_t KeyBegin(const Dims& dims, int64_t begin, int64_t t) {
  return dims.window > 0 ? std::max(begin, t - dims.window + 1) : begin;
}

// Work of the call in multiply-adds, for whether threads pay.
int64_t Work(const Dims& dims, const std::vector<Document>& documents) {
  int64_t work = 0;
  for (const Document& doc : documents) {
    const int64_t length = doc.end - doc.begin;
    const int64_t keys = dims.window > 0 ? std::min(length, dims.window) : length;
    work += length * keys;
  }
  return work * dims.heads * dims.head_dim;
}

constexpr int64_t kParallelWork = int64_t{1} << 16;

// Scratch slots of the calling thread, kept between calls: a training step calls with the
// same shapes layer after layer, and fresh pages cost more than the copies that fill them.
// Each slot grows to the largest call's need and is freed when the thread exits.
enum ScratchSlot {
  kQueries,
  kValuesOrOutputGradient,
  kKeysTransposed,
  kValuesTransposed,
  kKeys,
  kDelta,
  kKeyGradients,
  kValueGradients,
  kScratchSlots
};

// At least n floats of `slot`, not initialized.
float* ThreadScratch(ScratchSlot slot, int64_t n) {
  struct Buffer {
    std::unique_ptr<float[]> data;
    int64_t size = 0;
  };
  thread_local std::array<Buffer, kScratchSlots> buffers;
  Buffer& buffer = buffers[slot];
  if (buffer.size < n) {
    buffer.data.reset();
    buffer.data = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(n));
    buffer.size = n;
  }
  return buffer.data.get();
}

// The products read their operands from copies laid out for them, made once a call: rows of
// one head contiguous, and keys (and the backward's values) transposed a block at a time, so
// that every operand of a block's product is one contiguous run of memory (strided rows of
// (T, H, D), or a (D, T) transpose, fall on few cache sets and many pages).

// x (T, H, D) -> (H, T, D).
const float* HeadMajor(const float* x, int64_t tokens, int64_t heads, int64_t d, int64_t min_rows,
                       ScratchSlot slot) {
  float* out = ThreadScratch(slot, tokens * heads * d);
  ParallelFor(tokens, min_rows, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        std::copy_n(x + (t * heads + h) * d, d, out + (h * tokens + t) * d);
      }
    }
  });
  return out;
}

// x (T, H, D) -> (H, blocks, D, kBlock): [h][b][e][j] = x[token j of block b][h][e], zero past
// the block's document.
const float* BlockTransposed(const float* x, int64_t heads, int64_t d,
                             const std::vector<Document>& documents, int64_t min_items,
                             ScratchSlot slot) {
  const int64_t blocks =
      documents.empty() ? 0 : documents.back().first_block + documents.back().blocks();
  float* out = ThreadScratch(slot, heads * blocks * d * kBlock);
  std::vector<std::pair<int64_t, int64_t>> block_tokens;  // each block's [begin, end)
  for (const Document& doc : documents) {
    for (int64_t t = doc.begin; t < doc.end; t += kBlock) {
      block_tokens.emplace_back(t, std::min(doc.end, t + kBlock));
    }
  }
  ParallelFor(heads * blocks, min_items, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / blocks, b = item % blocks;
      const auto [t0, t1] = block_tokens[b];
      float* panel = out + item * d * kBlock;
      for (int64_t e = 0; e < d; ++e) {
        float* row = panel + e * kBlock;
        for (int64_t t = t0; t < t1; ++t) row[t - t0] = x[(t * heads + h) * d + e];
        std::fill(row + (t1 - t0), row + kBlock, 0.0f);
      }
    }
  });
  return out;
}

// ---- Forward --------------------------------------------------------------------------------

struct ForwardItem {
  const Document* doc;
  int64_t block;  // the query block within the document
  int64_t head;
  int64_t cost;  // key blocks it reads
};

struct ForwardArgs {
  const float* q;    // (Hq, T, D)
  const float* k_t;  // (Hkv, blocks, D, kBlock)
  const float* v;    // (Hkv, T, D)
  int64_t blocks;
  float* out;  // (T, Hq, D)
  float* lse;  // (T, Hq)
};

// One query block of one head: online softmax over its key blocks, the diagonal block first.
void ForwardBlock(const Ops& ops, const Dims& dims, const ForwardItem& item,
                  const ForwardArgs& args) {
  thread_local std::vector<float> buffer;
  const int64_t d = dims.head_dim, hq = dims.heads, tokens = dims.tokens;
  buffer.resize(kBlock * kBlock + kBlock * d + 2 * kBlock);
  float* scores = buffer.data();          // (kBlock, kBlock)
  float* acc = scores + kBlock * kBlock;  // (kBlock, d): unnormalized outputs
  float* row_max = acc + kBlock * d;      // running maximum of scale * score
  float* row_sum = row_max + kBlock;      // running sum of exp(scale * score - max)
  const Document& doc = *item.doc;
  const int64_t a = doc.begin, h = item.head, g = h / dims.group;
  const int64_t q0 = a + item.block * kBlock, q1 = std::min(doc.end, q0 + kBlock);
  const int64_t nq = q1 - q0;
  std::fill(acc, acc + nq * d, 0.0f);
  std::fill(row_max, row_max + nq, -std::numeric_limits<float>::infinity());
  std::fill(row_sum, row_sum + nq, 0.0f);
  const float* q = args.q + (h * tokens + q0) * d;
  const int64_t first_block = (KeyBegin(dims, a, q0) - a) / kBlock;
  for (int64_t kb = item.block; kb >= first_block; --kb) {
    const int64_t k0 = a + kb * kBlock, k1 = std::min(doc.end, k0 + kBlock);
    const int64_t nk = k1 - k0;
    const float* keys = args.k_t + (g * args.blocks + doc.first_block + kb) * d * kBlock;
    ops.product({q, d, 1, keys, kBlock, scores, kBlock, nq, nk, d, false});
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
    ops.product({scores, kBlock, 1, args.v + (g * tokens + k0) * d, d, acc, d, nq, d, nk, true});
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t t = q0 + i;
    const float inverse = 1.0f / row_sum[i];
    float* o = args.out + (t * hq + h) * d;
    for (int64_t e = 0; e < d; ++e) o[e] = acc[i * d + e] * inverse;
    args.lse[t * hq + h] = row_max[i] + std::log(row_sum[i]);
  }
}

// ---- Backward -------------------------------------------------------------------------------
// Every (key block, query block) pair a head attends over gives P and dS, and from them
// dv, dk of the key block and dq of the query block. In one pass, an item is a whole
// (document, query head): it takes its key blocks in order and, for each, the query blocks
// that read it, adding into dk, dv of the key block and into its own dq rows. In two passes
// (when there are fewer of those items than twice the threads), the first pass's items are
// (document, head, key block), computing dk and dv, and the second's are (document, head,
// query block), computing P and dS again for dq. Both add every contribution in the same
// order with the same operations, so they give the same bits: the choice (by the number of
// threads) only changes the speed.

struct BackwardArgs {
  const float *q, *dout;   // (Hq, T, D)
  const float* k;          // (Hkv, T, D)
  const float *k_t, *v_t;  // (Hkv, blocks, D, kBlock)
  int64_t blocks;
  const float *lse, *delta;  // (T, Hq); delta = dout . out
  float* dq;                 // (T, Hq, D)
  // Where each query head's share of dk and dv goes: per query head (Hq, T, D), summed over
  // the group afterwards, when a kv head has several; else straight to dk, dv (T, Hkv, D).
  float *dk, *dv;
  bool per_query_head;
};

// Where one block pair's steps read and write.
struct BlockPair {
  const Document* doc;
  int64_t head, kv_head;
  int64_t k0, nk;  // the key block's tokens
  int64_t q0, nq;  // the query block's
};

// The first query block past the window of key block kb's last key, or past the document.
int64_t QueryBlockEnd(const Dims& dims, const Document& doc, int64_t kb) {
  const int64_t k1 = std::min(doc.end, doc.begin + (kb + 1) * kBlock);
  const int64_t query_end = dims.window > 0 ? std::min(doc.end, k1 - 1 + dims.window) : doc.end;
  return (query_end - doc.begin + kBlock - 1) / kBlock;
}

BlockPair PairOf(const Dims& dims, const Document& doc, int64_t head, int64_t kb, int64_t qb) {
  const int64_t k0 = doc.begin + kb * kBlock, q0 = doc.begin + qb * kBlock;
  return {&doc,
          head,
          head / dims.group,
          k0,
          std::min(doc.end, k0 + kBlock) - k0,
          q0,
          std::min(doc.end, q0 + kBlock) - q0};
}

// p (nq, kBlock) = P of the pair, ds (nq, kBlock) = scale * dS.
void Probabilities(const Ops& ops, const Dims& dims, const BackwardArgs& args, const BlockPair& b,
                   int64_t kb, float* p, float* ds) {
  const int64_t d = dims.head_dim, hq = dims.heads, tokens = dims.tokens;
  const int64_t panel = (b.kv_head * args.blocks + b.doc->first_block + kb) * d * kBlock;
  ops.product({args.q + (b.head * tokens + b.q0) * d, d, 1, args.k_t + panel, kBlock, p, kBlock,
               b.nq, b.nk, d, false});
  ops.product({args.dout + (b.head * tokens + b.q0) * d, d, 1, args.v_t + panel, kBlock, ds, kBlock,
               b.nq, b.nk, d, false});
  for (int64_t i = 0; i < b.nq; ++i) {
    const int64_t t = b.q0 + i;
    const int64_t lo = KeyBegin(dims, b.doc->begin, t) - b.k0;
    const int64_t hi = std::min(b.k0 + b.nk, t + 1) - b.k0;
    ops.exp_row(p + i * kBlock, b.nk, lo, hi, dims.scale, args.lse[t * hq + b.head]);
    ops.ds_row(p + i * kBlock, ds + i * kBlock, b.nk, args.delta[t * hq + b.head], dims.scale);
  }
}

// dq rows of the pair's query block += ds . k.
void AddQueryGradient(const Ops& ops, const Dims& dims, const BackwardArgs& args,
                      const BlockPair& b, const float* ds) {
  const int64_t d = dims.head_dim, hq = dims.heads;
  ops.product({ds, kBlock, 1, args.k + (b.kv_head * dims.tokens + b.k0) * d, d,
               args.dq + (b.q0 * hq + b.head) * d, hq * d, b.nq, d, b.nk, true});
}

// Zeroes dq rows [t0, t1) of a head.
void ZeroQueryGradient(const Dims& dims, const BackwardArgs& args, int64_t head, int64_t t0,
                       int64_t t1) {
  const int64_t d = dims.head_dim, hq = dims.heads;
  for (int64_t t = t0; t < t1; ++t) {
    std::fill(args.dq + (t * hq + head) * d, args.dq + (t * hq + head + 1) * d, 0.0f);
  }
}

// dk, dv of key blocks [kb_begin, kb_end) of one head, from every query block that reads
// them; with `with_dq`, the dq contributions too (the item then owns the head's dq rows).
void KeyBlocks(const Ops& ops, const Dims& dims, const BackwardArgs& args, const Document& doc,
               int64_t head, int64_t kb_begin, int64_t kb_end, bool with_dq) {
  thread_local std::vector<float> buffer;
  buffer.resize(2 * kBlock * kBlock);
  float* p = buffer.data();         // (kBlock, kBlock): P
  float* ds = p + kBlock * kBlock;  // (kBlock, kBlock): dP, then scale * dS
  const int64_t d = dims.head_dim, hkv = dims.kv_heads;
  // The head's dk and dv rows: ldc apart from `offset`.
  const int64_t ldc = args.per_query_head ? d : hkv * d;
  const int64_t offset = args.per_query_head ? head * dims.tokens * d : head / dims.group * d;
  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    const int64_t qb_end = QueryBlockEnd(dims, doc, kb);
    for (int64_t qb = kb; qb < qb_end; ++qb) {
      const BlockPair b = PairOf(dims, doc, head, kb, qb);
      Probabilities(ops, dims, args, b, kb, p, ds);
      const bool first = qb == kb;
      // dv += P^T . dout, dk += dS^T . q.
      ops.product({p, 1, kBlock, args.dout + (head * dims.tokens + b.q0) * d, d,
                   args.dv + offset + b.k0 * ldc, ldc, b.nk, d, b.nq, !first});
      ops.product({ds, 1, kBlock, args.q + (head * dims.tokens + b.q0) * d, d,
                   args.dk + offset + b.k0 * ldc, ldc, b.nk, d, b.nq, !first});
      if (with_dq) AddQueryGradient(ops, dims, args, b, ds);
    }
  }
}

// dq of query block qb of one head, from the key blocks it reads in order.
void QueryBlock(const Ops& ops, const Dims& dims, const BackwardArgs& args, const Document& doc,
                int64_t head, int64_t qb) {
  thread_local std::vector<float> buffer;
  buffer.resize(2 * kBlock * kBlock);
  float* p = buffer.data();
  float* ds = p + kBlock * kBlock;
  const int64_t q0 = doc.begin + qb * kBlock;
  ZeroQueryGradient(dims, args, head, q0, std::min(doc.end, q0 + kBlock));
  for (int64_t kb = (KeyBegin(dims, doc.begin, q0) - doc.begin) / kBlock; kb <= qb; ++kb) {
    const BlockPair b = PairOf(dims, doc, head, kb, qb);
    Probabilities(ops, dims, args, b, kb, p, ds);
    AddQueryGradient(ops, dims, args, b, ds);
  }
}

// 0: by the number of threads; 1 or 2: forced (TEST_SetCausalAttentionBackwardPasses).
std::atomic<int> forced_backward_passes{0};

}  // namespace

absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse) {
  constexpr char kKernel[] = "CausalAttention";
  Dims dims;
  std::vector<Document> documents;
  TESSERA_RETURN_IF_ERROR(CheckInputs(kKernel, q, k, v, sequence_starts, params, dims, documents));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {dims.tokens, dims.heads}));
  if (dims.tokens == 0) return absl::OkStatus();
  const Ops ops = OpsForMachine();
  const int64_t d = dims.head_dim, tokens = dims.tokens;
  const bool parallel = Work(dims, documents) >= kParallelWork;
  const int64_t blocks = documents.back().first_block + documents.back().blocks();
  const float* q_h =
      HeadMajor(q.data<float>(), tokens, dims.heads, d, parallel ? 1 : tokens, kQueries);
  const float* v_h = HeadMajor(v.data<float>(), tokens, dims.kv_heads, d, parallel ? 1 : tokens,
                               kValuesOrOutputGradient);
  const float* k_t = BlockTransposed(k.data<float>(), dims.kv_heads, d, documents,
                                     parallel ? 1 : dims.kv_heads * blocks, kKeysTransposed);

  // Items are (document, query block, head), the costliest first so that the last ones
  // handed out are short.
  std::vector<ForwardItem> items;
  for (const Document& doc : documents) {
    for (int64_t block = 0; block < doc.blocks(); ++block) {
      const int64_t q0 = doc.begin + block * kBlock;
      const int64_t cost = block - (KeyBegin(dims, doc.begin, q0) - doc.begin) / kBlock + 1;
      for (int64_t h = 0; h < dims.heads; ++h) items.push_back({&doc, block, h, cost});
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const ForwardItem& x, const ForwardItem& y) { return x.cost > y.cost; });
  const ForwardArgs args{q_h, k_t, v_h, blocks, out.data<float>(), lse.data<float>()};
  const int64_t count = static_cast<int64_t>(items.size());
  ParallelFor(
      count, parallel ? 1 : count,
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) ForwardBlock(ops, dims, items[i], args);
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
  std::vector<Document> documents;
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
  const bool parallel = Work(dims, documents) >= kParallelWork;
  const int64_t min_rows = parallel ? 1 : tokens;
  const int64_t blocks = documents.back().first_block + documents.back().blocks();
  const float* q_h = HeadMajor(q.data<float>(), tokens, hq, d, min_rows, kQueries);
  const float* dout_h =
      HeadMajor(dout.data<float>(), tokens, hq, d, min_rows, kValuesOrOutputGradient);
  const float* k_h = HeadMajor(k.data<float>(), tokens, hkv, d, min_rows, kKeys);
  const int64_t min_blocks = parallel ? 1 : hkv * blocks;
  const float* k_t =
      BlockTransposed(k.data<float>(), hkv, d, documents, min_blocks, kKeysTransposed);
  const float* v_t =
      BlockTransposed(v.data<float>(), hkv, d, documents, min_blocks, kValuesTransposed);
  float* delta = ThreadScratch(kDelta, tokens * hq);
  const float* out_data = out.data<float>();
  const float* dout_data = dout.data<float>();
  ParallelFor(tokens, min_rows, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin * hq; row < end * hq; ++row) {
      float dot = 0.0f;
      for (int64_t e = 0; e < d; ++e) dot += dout_data[row * d + e] * out_data[row * d + e];
      delta[row] = dot;
    }
  });

  // When a kv head has several query heads, each query head's share of dk and dv goes to its
  // own rows of (Hq, T, D) buffers, summed over the group in head order afterwards.
  const bool per_query_head = dims.group > 1;
  float* dk_heads = per_query_head ? ThreadScratch(kKeyGradients, hq * tokens * d) : nullptr;
  float* dv_heads = per_query_head ? ThreadScratch(kValueGradients, hq * tokens * d) : nullptr;
  const BackwardArgs args{q_h,
                          dout_h,
                          k_h,
                          k_t,
                          v_t,
                          blocks,
                          lse.data<float>(),
                          delta,
                          dq.data<float>(),
                          per_query_head ? dk_heads : dk.data<float>(),
                          per_query_head ? dv_heads : dv.data<float>(),
                          per_query_head};
  // Items, the costliest first so that the last ones handed out are short.
  struct Item {
    const Document* doc;
    int64_t head, block;  // block: a key block (first pass), a query block (second), or -1
    int64_t cost;         // block pairs
  };
  std::vector<Item> items;
  const int forced = forced_backward_passes.load();
  const int64_t heads_of_documents = static_cast<int64_t>(documents.size()) * hq;
  const bool two_passes =
      forced == 2 || (forced == 0 && heads_of_documents < 2 * CpuKernelThreads());
  auto run = [&](const std::function<void(const Item&)>& fn) {
    std::stable_sort(items.begin(), items.end(),
                     [](const Item& x, const Item& y) { return x.cost > y.cost; });
    const int64_t count = static_cast<int64_t>(items.size());
    ParallelFor(
        count, parallel ? 1 : count,
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) fn(items[i]);
        },
        /*grain=*/1);
  };
  if (!two_passes) {
    for (const Document& doc : documents) {
      int64_t cost = 0;
      for (int64_t kb = 0; kb < doc.blocks(); ++kb) cost += QueryBlockEnd(dims, doc, kb) - kb;
      for (int64_t h = 0; h < hq; ++h) items.push_back({&doc, h, -1, cost});
    }
    run([&](const Item& item) {
      ZeroQueryGradient(dims, args, item.head, item.doc->begin, item.doc->end);
      KeyBlocks(ops, dims, args, *item.doc, item.head, 0, item.doc->blocks(), /*with_dq=*/true);
    });
  } else {
    for (const Document& doc : documents) {
      for (int64_t kb = 0; kb < doc.blocks(); ++kb) {
        for (int64_t h = 0; h < hq; ++h) {
          items.push_back({&doc, h, kb, QueryBlockEnd(dims, doc, kb) - kb});
        }
      }
    }
    run([&](const Item& item) {
      KeyBlocks(ops, dims, args, *item.doc, item.head, item.block, item.block + 1,
                /*with_dq=*/false);
    });
    items.clear();
    for (const Document& doc : documents) {
      for (int64_t qb = 0; qb < doc.blocks(); ++qb) {
        const int64_t q0 = doc.begin + qb * kBlock;
        const int64_t cost = qb - (KeyBegin(dims, doc.begin, q0) - doc.begin) / kBlock + 1;
        for (int64_t h = 0; h < hq; ++h) items.push_back({&doc, h, qb, cost});
      }
    }
    run([&](const Item& item) { QueryBlock(ops, dims, args, *item.doc, item.head, item.block); });
  }
  if (per_query_head) {
    float* dk_data = dk.data<float>();
    float* dv_data = dv.data<float>();
    ParallelFor(tokens, min_rows, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t g = 0; g < hkv; ++g) {
          const std::pair<const float*, float*> sums[2] = {{dk_heads, dk_data},
                                                           {dv_heads, dv_data}};
          for (const auto& [from, to] : sums) {
            float* sum = to + (t * hkv + g) * d;
            const int64_t h0 = g * dims.group;
            std::copy_n(from + (h0 * tokens + t) * d, d, sum);
            for (int64_t h = h0 + 1; h < h0 + dims.group; ++h) {
              const float* head = from + (h * tokens + t) * d;
              for (int64_t e = 0; e < d; ++e) sum[e] += head[e];
            }
          }
        }
      }
    });
  }
  return absl::OkStatus();
}

void TEST_SetCausalAttentionBackwardPasses(int passes) { forced_backward_passes.store(passes); }

}  // namespace tessera::kernels
