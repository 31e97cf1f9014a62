#ifndef TESSERA_KERNELS_CPU_VECTOR_LOADS_H_
#define TESSERA_KERNELS_CPU_VECTOR_LOADS_H_

// Eight or sixteen consecutive f32 or bf16 values (bf16 as its 16 bits) as f32 lanes: bf16 is
// widened in the register (zero-extend, shift into the high half), which is exact. For the
// kernels that read weights or cached keys and values in either type. The vector loads exist
// in x86 builds only (cpu_features.h); ToFloat, the portable paths' element load, everywhere.

#include <bit>
#include <cstdint>

#include "kernels/cpu/cpu_features.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::kernels {

inline float ToFloat(float value) { return value; }
inline float ToFloat(uint16_t bf16_bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bf16_bits) << 16);
}

#if TESSERA_CPU_X86
__attribute__((target("avx2,fma"))) inline __m256 LoadEight(const float* p) {
  return _mm256_loadu_ps(p);
}
__attribute__((target("avx2,fma"))) inline __m256 LoadEight(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx2,fma"))) inline __m512 LoadSixteen(const float* p) {
  return _mm512_loadu_ps(p);
}
__attribute__((target("avx512f,avx2,fma"))) inline __m512 LoadSixteen(const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
#pragma GCC diagnostic pop
#endif  // TESSERA_CPU_X86

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_VECTOR_LOADS_H_
