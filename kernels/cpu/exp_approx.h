#ifndef TESSERA_KERNELS_CPU_EXP_APPROX_H_
#define TESSERA_KERNELS_CPU_EXP_APPROX_H_

// e^x for x <= 0, branch-free so that a loop of it vectorizes (std::exp does not): softmax
// exponents and the SiLU gate. Within 2.5e-7 (relative) of std::exp over [-87, 0]; e^-87
// below. The same arithmetic for every element, so results never depend on the batch.

#include <algorithm>
#include <bit>
#include <cstdint>

#include "kernels/cpu/cpu_features.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::kernels {

// x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial, 2^n through the
// exponent bits.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  // Round to nearest by adding and removing 1.5 * 2^23 (exact in float; vectorizes).
  constexpr float kRound = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  // r = x - n ln2 in two steps (ln2 split into a short high part and the rest) keeps r exact.
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// 1 / (1 + e^-x) for any x, through e^-|x| (never overflows); 0 below -87, where e^-|x|
// would otherwise stop at e^-87.
inline float Sigmoid(float x) {
  const float t = x >= 0.0f ? -x : x;
  const float e = t < -87.0f ? 0.0f : ExpNonPositive(t);
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

#if TESSERA_CPU_X86
// ExpNonPositive on eight lanes, operation for operation (the same bits as the scalar one).
__attribute__((target("avx2,fma"))) inline __m256 ExpNonPositive8(__m256 x) {
  const __m256 round = _mm256_set1_ps(12582912.0f);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_sub_ps(
      _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), round), round);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_add_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(2.12194440e-4f)));
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  for (float c : {1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f}) {
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
  }
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// ExpNonPositive on sixteen lanes (AVX-512), operation for operation.
__attribute__((target("avx512f,avx2,fma"))) inline __m512 ExpNonPositive16(__m512 x) {
  const __m512 round = _mm512_set1_ps(12582912.0f);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_sub_ps(
      _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), round), round);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_add_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  for (float c : {1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f}) {
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
  }
  const __m512i bits =
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#pragma GCC diagnostic pop

// Sigmoid on eight lanes, operation for operation.
__attribute__((target("avx2,fma"))) inline __m256 Sigmoid8(__m256 x) {
  const __m256 t = _mm256_or_ps(x, _mm256_set1_ps(-0.0f));  // -|x|
  __m256 e = ExpNonPositive8(t);
  e = _mm256_and_ps(e, _mm256_cmp_ps(t, _mm256_set1_ps(-87.0f), _CMP_GE_OQ));
  const __m256 numerator =
      _mm256_blendv_ps(e, _mm256_set1_ps(1.0f), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
  return _mm256_div_ps(numerator, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
#endif  // TESSERA_CPU_X86

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_EXP_APPROX_H_
