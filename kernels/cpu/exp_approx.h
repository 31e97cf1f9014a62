#ifndef TESSERA_KERNELS_CPU_EXP_APPROX_H_
#define TESSERA_KERNELS_CPU_EXP_APPROX_H_

// e^x for x <= 0, branch-free so that a loop of it vectorizes (std::exp does not): softmax
// exponents and the SiLU gate. Within 2.5e-7 (relative) of std::exp over [-87, 0]; e^-87
// below. The same arithmetic for every element, so results never depend on the batch.

#include <algorithm>
#include <bit>
#include <cstdint>

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

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_EXP_APPROX_H_
