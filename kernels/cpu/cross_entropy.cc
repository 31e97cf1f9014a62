#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

// A row is reduced a chunk at a time: the chunk's maximum, then its sum of exponents while
// the chunk is still in L1, so that the row is read from memory once.
constexpr int64_t kChunk = 2048;
// Below this exponent a term counts as 0 (ExpNonPositive stops at e^-87).
constexpr float kExpFloor = -87.0f;

// e^x for x <= 0 (ExpNonPositive), 0 below kExpFloor.
inline float ExpOrZero(float x) { return x < kExpFloor ? 0.0f : ExpNonPositive(x); }

// The three steps on each path: the maximum of x[0, n) (n >= 1); the sum of e^(x - max) over
// x[0, n); out[0, n) = scale * e^(x - lse), where out may be x.
struct RowOps {
  float (*max)(const float* x, int64_t n);
  float (*sum_exp)(const float* x, int64_t n, float max);
  void (*scaled_exp)(const float* x, float* out, int64_t n, float lse, float scale);
};

float MaxPortable(const float* x, int64_t n) {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

float SumExpPortable(const float* x, int64_t n, float max) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += ExpOrZero(x[i] - max);
  return sum;
}

void ScaledExpPortable(const float* x, float* out, int64_t n, float lse, float scale) {
  for (int64_t i = 0; i < n; ++i) out[i] = scale * ExpOrZero(x[i] - lse);
}

#if TESSERA_CPU_X86
// Lanes of x below kExpFloor as 0, the others through ExpNonPositive8.
__attribute__((target("avx2,fma"))) inline __m256 ExpOrZero8(__m256 x) {
  return _mm256_and_ps(ExpNonPositive8(x), _mm256_cmp_ps(x, _mm256_set1_ps(kExpFloor), _CMP_GE_OQ));
}

__attribute__((target("avx2,fma"))) float MaxAvx2(const float* x, int64_t n) {
  const int64_t whole = n / 8 * 8;
  __m256 max8 = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < whole; i += 8) max8 = _mm256_max_ps(max8, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max8);
  float max = lanes[0];
  for (int l = 1; l < 8; ++l) max = std::max(max, lanes[l]);
  for (int64_t i = whole; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

__attribute__((target("avx2,fma"))) float SumExpAvx2(const float* x, int64_t n, float max) {
  const int64_t whole = n / 8 * 8;
  const __m256 max8 = _mm256_set1_ps(max);
  __m256 sum8 = _mm256_setzero_ps();
  for (int64_t i = 0; i < whole; i += 8) {
    sum8 = _mm256_add_ps(sum8, ExpOrZero8(_mm256_sub_ps(_mm256_loadu_ps(x + i), max8)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum8);
  float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
              ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  for (int64_t i = whole; i < n; ++i) sum += ExpOrZero(x[i] - max);
  return sum;
}

__attribute__((target("avx2,fma"))) void ScaledExpAvx2(const float* x, float* out, int64_t n,
                                                       float lse, float scale) {
  const int64_t whole = n / 8 * 8;
  const __m256 lse8 = _mm256_set1_ps(lse), scale8 = _mm256_set1_ps(scale);
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 e = ExpOrZero8(_mm256_sub_ps(_mm256_loadu_ps(x + i), lse8));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(scale8, e));
  }
  for (int64_t i = whole; i < n; ++i) out[i] = scale * ExpOrZero(x[i] - lse);
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

__attribute__((target("avx512f,avx2,fma"))) inline __m512 ExpOrZero16(__m512 x) {
  const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFloor), _CMP_GE_OQ);
  return _mm512_maskz_mov_ps(kept, ExpNonPositive16(x));
}

inline __mmask16 TailMask(int64_t lanes) { return static_cast<__mmask16>((1u << lanes) - 1); }

__attribute__((target("avx512f,avx2,fma"))) float MaxAvx512(const float* x, int64_t n) {
  const int64_t whole = n / 16 * 16;
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 max16 = lowest;
  for (int64_t i = 0; i < whole; i += 16) max16 = _mm512_max_ps(max16, _mm512_loadu_ps(x + i));
  if (whole < n) {
    max16 = _mm512_max_ps(max16, _mm512_mask_loadu_ps(lowest, TailMask(n - whole), x + whole));
  }
  return _mm512_reduce_max_ps(max16);
}

__attribute__((target("avx512f,avx2,fma"))) float SumExpAvx512(const float* x, int64_t n,
                                                               float max) {
  const int64_t whole = n / 16 * 16;
  const __m512 max16 = _mm512_set1_ps(max);
  __m512 sum16 = _mm512_setzero_ps();
  for (int64_t i = 0; i < whole; i += 16) {
    sum16 = _mm512_add_ps(sum16, ExpOrZero16(_mm512_sub_ps(_mm512_loadu_ps(x + i), max16)));
  }
  if (whole < n) {
    const __mmask16 tail = TailMask(n - whole);
    const __m512 e = ExpOrZero16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + whole), max16));
    sum16 = _mm512_add_ps(sum16, _mm512_maskz_mov_ps(tail, e));
  }
  return _mm512_reduce_add_ps(sum16);
}

__attribute__((target("avx512f,avx2,fma"))) void ScaledExpAvx512(const float* x, float* out,
                                                                 int64_t n, float lse,
                                                                 float scale) {
  const int64_t whole = n / 16 * 16;
  const __m512 lse16 = _mm512_set1_ps(lse), scale16 = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < whole; i += 16) {
    const __m512 e = ExpOrZero16(_mm512_sub_ps(_mm512_loadu_ps(x + i), lse16));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(scale16, e));
  }
  if (whole < n) {
    const __mmask16 tail = TailMask(n - whole);
    const __m512 e = ExpOrZero16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + whole), lse16));
    _mm512_mask_storeu_ps(out + whole, tail, _mm512_mul_ps(scale16, e));
  }
}

#pragma GCC diagnostic pop
#endif  // TESSERA_CPU_X86

RowOps RowOpsForMachine() {
#if TESSERA_CPU_X86
  switch (CpuVectorPath()) {
    case CpuVector::kAvx512:
      return {MaxAvx512, SumExpAvx512, ScaledExpAvx512};
    case CpuVector::kAvx2:
      return {MaxAvx2, SumExpAvx2, ScaledExpAvx2};
    case CpuVector::kPortable:
      break;
  }
#endif
  return {MaxPortable, SumExpPortable, ScaledExpPortable};
}

// Rows are items; a row of fewer than this many columns is not worth a thread on its own.
constexpr int64_t kParallelElements = int64_t{1} << 15;

int64_t MinRowsPerThread(int64_t cols) {
  return cols >= kParallelElements ? 1 : std::max<int64_t>(1, kParallelElements / (cols + 1));
}

absl::Status CheckShard(const char* kernel, const Tensor& logits, const Tensor& targets,
                        int64_t vocab_begin, int64_t valid_cols) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "logits", logits, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "logits", logits, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "targets", targets, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "targets", targets, {logits.dim(0)}));
  if (vocab_begin < 0 || valid_cols < 0 || valid_cols > logits.dim(1)) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": a shard of ", valid_cols,
                                                   " columns from vocabulary id ", vocab_begin,
                                                   " does not fit logits ", logits.DebugString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CrossEntropyShardStats(const Tensor& logits, const Tensor& targets,
                                    int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                    Tensor& stats) {
  constexpr char kKernel[] = "CrossEntropyShardStats";
  TESSERA_RETURN_IF_ERROR(CheckShard(kKernel, logits, targets, vocab_begin, valid_cols));
  if (vocab_begin + valid_cols > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": the shard [", vocab_begin, ", ", vocab_begin + valid_cols,
                     ") lies outside the vocabulary [0, ", vocab_size, ")"));
  }
  const int64_t rows = logits.dim(0), cols = logits.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "stats", stats, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "stats", stats, {rows, 3}));
  const int32_t* target = targets.data<int32_t>();
  for (int64_t t = 0; t < rows; ++t) {
    if (target[t] != kIgnoreTarget && (target[t] < 0 || target[t] >= vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(kKernel, ": target ", target[t], " of row ", t,
                                                     " is outside the vocabulary [0, ", vocab_size,
                                                     ") and is not -100"));
    }
  }
  const float* x = logits.data<float>();
  float* out = stats.data<float>();
  const RowOps ops = RowOpsForMachine();
  ParallelFor(rows, MinRowsPerThread(valid_cols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = x + t * cols;
      // Chunk by chunk: the sum so far is kept relative to the maximum so far.
      float max = -std::numeric_limits<float>::infinity(), sum = 0.0f;
      for (int64_t c0 = 0; c0 < valid_cols; c0 += kChunk) {
        const int64_t n = std::min(kChunk, valid_cols - c0);
        const float chunk_max = ops.max(row + c0, n);
        const float chunk_sum = ops.sum_exp(row + c0, n, chunk_max);
        if (chunk_max > max) {
          sum = sum * std::exp(max - chunk_max) + chunk_sum;
          max = chunk_max;
        } else {
          sum += chunk_sum * std::exp(chunk_max - max);
        }
      }
      const int64_t local = static_cast<int64_t>(target[t]) - vocab_begin;
      out[t * 3] = max;
      out[t * 3 + 1] = sum;
      out[t * 3 + 2] =
          target[t] != kIgnoreTarget && local >= 0 && local < valid_cols ? row[local] : 0.0f;
    }
  });
  return absl::OkStatus();
}

absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                  int64_t valid_cols, const Tensor& lse, const Tensor& row_scale,
                                  Tensor& dlogits) {
  constexpr char kKernel[] = "CrossEntropyBackward";
  TESSERA_RETURN_IF_ERROR(CheckShard(kKernel, logits, targets, vocab_begin, valid_cols));
  const int64_t rows = logits.dim(0), cols = logits.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {rows}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "row_scale", row_scale, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "row_scale", row_scale, {rows}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dlogits", dlogits, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dlogits", dlogits, logits.shape()));
  const int32_t* target = targets.data<int32_t>();
  for (int64_t t = 0; t < rows; ++t) {
    if (target[t] < 0 && target[t] != kIgnoreTarget) {
      return absl::InvalidArgumentError(absl::StrCat(kKernel, ": target ", target[t], " of row ", t,
                                                     " is negative and not -100"));
    }
  }
  const float* x = logits.data<float>();
  const float* row_lse = lse.data<float>();
  const float* scale = row_scale.data<float>();
  float* out = dlogits.data<float>();
  const RowOps ops = RowOpsForMachine();
  ParallelFor(rows, MinRowsPerThread(cols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* d = out + t * cols;
      if (scale[t] == 0.0f) {
        std::fill(d, d + cols, 0.0f);
        continue;
      }
      ops.scaled_exp(x + t * cols, d, valid_cols, row_lse[t], scale[t]);
      std::fill(d + valid_cols, d + cols, 0.0f);
      const int64_t local = static_cast<int64_t>(target[t]) - vocab_begin;
      if (target[t] != kIgnoreTarget && local >= 0 && local < valid_cols) d[local] -= scale[t];
    }
  });
  return absl::OkStatus();
}

}  // namespace tessera::kernels
