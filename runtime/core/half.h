#ifndef TESSERA_RUNTIME_CORE_HALF_H_
#define TESSERA_RUNTIME_CORE_HALF_H_

// 16-bit floating-point storage types for host code. Conversions from float round to
// nearest, ties to even, as CUDA's __float2bfloat16 and __float2half do; NaN stays NaN.

#include <bit>
#include <cstdint>

namespace tessera {

// bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the upper half of an IEEE float).
struct BFloat16 {
  uint16_t bits = 0;

  static BFloat16 FromFloat(float value);
  static constexpr BFloat16 FromBits(uint16_t b) { return BFloat16{b}; }
  float ToFloat() const;
};

// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits, with subnormals.
struct Half {
  uint16_t bits = 0;

  static Half FromFloat(float value);
  static constexpr Half FromBits(uint16_t b) { return Half{b}; }
  float ToFloat() const;
};

inline bool operator==(BFloat16 a, BFloat16 b) { return a.bits == b.bits; }
inline bool operator==(Half a, Half b) { return a.bits == b.bits; }

inline BFloat16 BFloat16::FromFloat(float value) {
  uint32_t f = std::bit_cast<uint32_t>(value);
  if ((f & 0x7f800000u) == 0x7f800000u && (f & 0x007fffffu) != 0) {
    return FromBits(static_cast<uint16_t>((f >> 16) | 0x0040u));  // quiet NaN, sign kept
  }
  uint32_t round_to_even = 0x7fffu + ((f >> 16) & 1u);
  return FromBits(static_cast<uint16_t>((f + round_to_even) >> 16));
}

inline float BFloat16::ToFloat() const {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

inline Half Half::FromFloat(float value) {
  uint32_t f = std::bit_cast<uint32_t>(value);
  uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  uint32_t magnitude = f & 0x7fffffffu;

  if (magnitude >= 0x7f800000u) {  // inf or NaN
    uint16_t payload = magnitude > 0x7f800000u ? 0x0200u : 0u;
    return FromBits(sign | 0x7c00u | payload);
  }
  if (magnitude >= 0x477ff000u) {  // rounds to beyond 65504: infinity
    return FromBits(sign | 0x7c00u);
  }
  if (magnitude < 0x38800000u) {                         // below 2^-14: subnormal half or zero
    if (magnitude < 0x33000000u) return FromBits(sign);  // below half the smallest subnormal
    // Value = mantissa * 2^(exp-150); a half subnormal step is 2^-24.
    uint32_t exponent = magnitude >> 23;
    uint32_t mantissa = (magnitude & 0x007fffffu) | 0x00800000u;
    uint32_t shift = 126u - exponent;  // bits dropped to reach units of 2^-24
    uint32_t result = mantissa >> shift;
    uint32_t remainder = mantissa & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
    return FromBits(sign | static_cast<uint16_t>(result));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  uint32_t rebased = magnitude - 0x38000000u;
  uint32_t round_to_even = 0x0fffu + ((rebased >> 13) & 1u);
  return FromBits(sign | static_cast<uint16_t>((rebased + round_to_even) >> 13));
}

inline float Half::ToFloat() const {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x03ffu;
  if (exponent == 0x1fu) {
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    // Subnormal or zero: mantissa * 2^-24, exact in float.
    float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_HALF_H_
