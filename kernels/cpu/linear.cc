#include "kernels/cpu/linear.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>

#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

// Weight rows per unit of work handed to the thread pool.
constexpr int64_t kRowsPerTask = 16;
// Rows of x multiplied against one block of weight rows before moving on, so that they stay
// in L2 while the block's weights stream through L1.
constexpr int64_t kXRowsPerPass = 64;

inline float ToFloat(float w) { return w; }
inline float ToFloat(uint16_t bf16_bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bf16_bits) << 16);
}

// Portable dot product (machines without AVX2 + FMA), in the one order every row count
// shares: eight partial sums, combined in index order, then the tail.
template <typename W>
float Dot(const float* __restrict x, const W* __restrict w, int64_t k) {
  float partial[8] = {};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += x[i + j] * ToFloat(w[i + j]);
  }
  float sum = 0.0f;
  for (float p : partial) sum += p;
  for (; i < k; ++i) sum += x[i] * ToFloat(w[i]);
  return sum;
}

template <typename W>
void RowsPortable(const float* x, const W* w, float* out, int64_t m, int64_t n, int64_t k,
                  int64_t j_begin, int64_t j_end) {
  for (int64_t j = j_begin; j < j_end; ++j) {
    for (int64_t i = 0; i < m; ++i) out[i * n + j] = Dot(x + i * k, w + j * k, k);
  }
}

// Eight weights as f32 lanes: loaded, or bf16 widened in the register (zero-extend, shift
// into the high half).
__attribute__((target("avx2,fma"))) inline __m256 LoadEight(const float* w) {
  return _mm256_loadu_ps(w);
}
__attribute__((target("avx2,fma"))) inline __m256 LoadEight(const uint16_t* w) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// The sum of the eight lanes, always in the same order.
__attribute__((target("avx2,fma"))) inline float SumLanes(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_shuffle_ps(half, half, 1));
  return _mm_cvtss_f32(half);
}

// out (MR, NR) (row stride n) = x (MR, K) . w (NR, K)^T, AVX2 + FMA. Each output has one
// eight-lane accumulator fed by fused multiply-adds over k in steps of 8, then SumLanes,
// then the tail by fused multiply-adds in index order: the same operations in the same
// order whatever MR and NR are, so an output never depends on how many rows share the
// call. The MR x NR independent accumulators hide the FMA latency.
template <int MR, int NR, typename W>
__attribute__((target("avx2,fma"))) void TileAvx2(const float* x, const W* w, float* out, int64_t n,
                                                  int64_t k) {
  __m256 acc[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 wv[NR];
    for (int c = 0; c < NR; ++c) wv[c] = LoadEight(w + c * k + i);
    for (int r = 0; r < MR; ++r) {
      __m256 xv = _mm256_loadu_ps(x + r * k + i);
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) {
      float sum = SumLanes(acc[r][c]);
      for (int64_t t = i; t < k; ++t) sum = std::fma(x[r * k + t], ToFloat(w[c * k + t]), sum);
      out[r * n + c] = sum;
    }
  }
}

// The same with sixteen lanes (AVX-512): out (MR, NR) = x (MR, K) . w (NR, K)^T, one
// sixteen-lane accumulator per output over k in steps of 16, the lanes summed in a fixed
// order, then the tail in index order. A machine with AVX-512 always takes this path, so
// rows stay independent of the batch.
// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx2,fma"))) inline __m512 LoadSixteen(const float* w) {
  return _mm512_loadu_ps(w);
}
__attribute__((target("avx512f,avx2,fma"))) inline __m512 LoadSixteen(const uint16_t* w) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

__attribute__((target("avx512f,avx2,fma"))) inline float SumLanes16(__m512 v) {
  __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return SumLanes(_mm256_add_ps(_mm512_castps512_ps256(v), high));
}

template <int MR, int NR, typename W>
__attribute__((target("avx512f,avx2,fma"))) void TileAvx512(const float* x, const W* w, float* out,
                                                            int64_t n, int64_t k) {
  __m512 acc[MR][NR];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 wv[NR];
    for (int c = 0; c < NR; ++c) wv[c] = LoadSixteen(w + c * k + i);
    for (int r = 0; r < MR; ++r) {
      __m512 xv = _mm512_loadu_ps(x + r * k + i);
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) {
      float sum = SumLanes16(acc[r][c]);
      for (int64_t t = i; t < k; ++t) sum = std::fma(x[r * k + t], ToFloat(w[c * k + t]), sum);
      out[r * n + c] = sum;
    }
  }
}

#pragma GCC diagnostic pop

// Columns [j_begin, j_end) of rows [0, MR) of out: tiles of NR weight rows (more for a
// single row of x, whose tile is otherwise too short to hide the FMA latency), single
// weight rows at the edge.
struct Avx2Tiles {
  template <int MR, typename W>
  static void Columns(const float* x, const W* w, float* out, int64_t n, int64_t k, int64_t j_begin,
                      int64_t j_end) {
    int64_t j = j_begin;
    for (; j + 3 <= j_end; j += 3) TileAvx2<MR, 3>(x, w + j * k, out + j, n, k);
    for (; j < j_end; ++j) TileAvx2<MR, 1>(x, w + j * k, out + j, n, k);
  }
};

struct Avx512Tiles {
  template <int MR, typename W>
  static void Columns(const float* x, const W* w, float* out, int64_t n, int64_t k, int64_t j_begin,
                      int64_t j_end) {
    constexpr int kNR = MR == 1 ? 8 : 4;
    int64_t j = j_begin;
    for (; j + kNR <= j_end; j += kNR) TileAvx512<MR, kNR>(x, w + j * k, out + j, n, k);
    for (; j < j_end; ++j) TileAvx512<MR, 1>(x, w + j * k, out + j, n, k);
  }
};

// Columns [j_begin, j_end) of every row of out: kXRowsPerPass rows of x at a time against
// kRowsPerTask weight rows, in tiles of 4 x rows (and single rows at the edge).
template <typename Tiles, typename W>
void RowsVector(const float* x, const W* w, float* out, int64_t m, int64_t n, int64_t k,
                int64_t j_begin, int64_t j_end) {
  for (int64_t i0 = 0; i0 < m; i0 += kXRowsPerPass) {
    const int64_t i_end = std::min(m, i0 + kXRowsPerPass);
    for (int64_t jb = j_begin; jb < j_end; jb += kRowsPerTask) {
      const int64_t jb_end = std::min(j_end, jb + kRowsPerTask);
      int64_t i = i0;
      for (; i + 4 <= i_end; i += 4) {
        Tiles::template Columns<4>(x + i * k, w, out + i * n, n, k, jb, jb_end);
      }
      for (; i < i_end; ++i)
        Tiles::template Columns<1>(x + i * k, w, out + i * n, n, k, jb, jb_end);
    }
  }
}

// One kernel for every row count: each output is computed by the same code in the same
// order however many rows x has (decode or prefill, one sequence or many), and by exactly
// one thread, so a row's result never depends on the rest of the batch. (A BLAS sgemm
// does not promise that: OpenBLAS picks other kernels, and other summation orders, by the
// number of rows.) Weight rows are split over the kernel threads (parallel.h).
template <typename W>
void LinearRows(const float* x, const W* w, float* out, int64_t m, int64_t n, int64_t k) {
  const int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  // Enough work per thread to be worth waking it: about 64k multiply-adds.
  const int64_t min_tasks = std::max<int64_t>(1, 65536 / (m * k * kRowsPerTask));
  const CpuVector path = CpuVectorPath();
  ParallelFor(tasks, min_tasks, [&](int64_t t_begin, int64_t t_end) {
    const int64_t j_begin = t_begin * kRowsPerTask;
    const int64_t j_end = std::min(n, t_end * kRowsPerTask);
    switch (path) {
      case CpuVector::kAvx512:
        RowsVector<Avx512Tiles>(x, w, out, m, n, k, j_begin, j_end);
        break;
      case CpuVector::kAvx2:
        RowsVector<Avx2Tiles>(x, w, out, m, n, k, j_begin, j_end);
        break;
      case CpuVector::kPortable:
        RowsPortable(x, w, out, m, n, k, j_begin, j_end);
        break;
    }
  });
}

}  // namespace

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  constexpr char kKernel[] = "Linear";
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "w", w, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "w", w, 2));
  int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
  if (w.dim(1) != k) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": x ", x.DebugString(), " and w ",
                                                   w.DebugString(),
                                                   " disagree on the inner dimension"));
  }
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "out", out, {m, n}));
  if (bias.defined()) {
    TESSERA_RETURN_IF_ERROR(
        internal::ExpectDType(kKernel, "bias", bias, {DType::kF32, DType::kBF16}));
    TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "bias", bias, {n}));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  if (k == 0) {
    std::fill(out.data<float>(), out.data<float>() + m * n, 0.0f);
  } else if (w.dtype() == DType::kF32) {
    LinearRows(x.data<float>(), w.data<float>(), out.data<float>(), m, n, k);
  } else {
    LinearRows(x.data<float>(), reinterpret_cast<const uint16_t*>(w.data<BFloat16>()),
               out.data<float>(), m, n, k);
  }
  if (bias.defined()) {
    float* o = out.data<float>();
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) o[i * n + j] += internal::LoadFloat(bias, j);
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
