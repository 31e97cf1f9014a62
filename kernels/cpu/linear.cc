#include "kernels/cpu/linear.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

// Rows of x up to which bf16 weights are streamed row by row rather than widened into tiles.
constexpr int64_t kStreamingRows = 8;
// Weight rows widened per tile on the sgemm path.
constexpr int64_t kTileRows = 128;

// f32 (K) <- bf16 (K): the upper half of each float.
void Widen(const BFloat16* __restrict in, float* __restrict out, int64_t k) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < k; ++i) {
    out[i] = std::bit_cast<float>(static_cast<uint32_t>(bits[i]) << 16);
  }
}

float Dot(const float* __restrict a, const float* __restrict b, int64_t k) {
  // Eight partial sums let the compiler keep a vector of them without reassociating.
  float partial[8] = {};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += a[i + j] * b[i + j];
  }
  float sum = 0.0f;
  for (; i < k; ++i) sum += a[i] * b[i];
  for (float p : partial) sum += p;
  return sum;
}

// AVX2 + FMA: eight bf16 weights widened in a register (zero-extend, shift into the high
// half) and multiplied into four independent accumulators per x row, so the FMA latency is
// hidden and the weight row is read once per x row from L1.
__attribute__((target("avx2,fma"))) float DotWidenAvx2(const float* x, const uint16_t* w,
                                                       int64_t k) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    for (int u = 0; u < 4; ++u) {
      __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i + 8 * u));
      __m256 widened = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
      acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * u), widened, acc[u]);
    }
  }
  for (; i + 8 <= k; i += 8) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i));
    __m256 widened = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), widened, acc[0]);
  }
  __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_shuffle_ps(half, half, 1));
  float total = _mm_cvtss_f32(half);
  for (; i < k; ++i) total += x[i] * std::bit_cast<float>(static_cast<uint32_t>(w[i]) << 16);
  return total;
}

// OpenBLAS starts one thread per core in every process; with several ranks on a node those
// threads outnumber the cores and spin against each other. It gets the same share of the
// node as the other CPU kernels (parallel.h), set once before the first multiply.
void ShareCoresWithBlas() {
  static const bool set = [] {
    openblas_set_num_threads(CpuKernelThreads());
    return true;
  }();
  (void)set;
}

void LinearF32(const float* x, const float* w, float* out, int64_t m, int64_t n, int64_t k) {
  ShareCoresWithBlas();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, x, static_cast<int>(k), w, static_cast<int>(k), 0.0f, out,
              static_cast<int>(n));
}

void LinearBF16(const float* x, const BFloat16* w, float* out, int64_t m, int64_t n, int64_t k) {
  if (m <= kStreamingRows) {
    if (HasAvx2Fma()) {
      const uint16_t* bits = reinterpret_cast<const uint16_t*>(w);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t i = 0; i < m; ++i) out[i * n + j] = DotWidenAvx2(x + i * k, bits + j * k, k);
      }
      return;
    }
    std::vector<float> row(k);
    for (int64_t j = 0; j < n; ++j) {
      Widen(w + j * k, row.data(), k);
      for (int64_t i = 0; i < m; ++i) out[i * n + j] = Dot(x + i * k, row.data(), k);
    }
    return;
  }
  ShareCoresWithBlas();
  std::vector<float> tile(kTileRows * k);
  for (int64_t j0 = 0; j0 < n; j0 += kTileRows) {
    int64_t rows = std::min(kTileRows, n - j0);
    Widen(w + j0 * k, tile.data(), rows * k);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                static_cast<int>(rows), static_cast<int>(k), 1.0f, x, static_cast<int>(k),
                tile.data(), static_cast<int>(k), 0.0f, out + j0, static_cast<int>(n));
  }
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
    LinearF32(x.data<float>(), w.data<float>(), out.data<float>(), m, n, k);
  } else {
    LinearBF16(x.data<float>(), w.data<BFloat16>(), out.data<float>(), m, n, k);
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
