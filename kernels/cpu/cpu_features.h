#ifndef TESSERA_KERNELS_CPU_CPU_FEATURES_H_
#define TESSERA_KERNELS_CPU_CPU_FEATURES_H_

// What the processor offers, for kernels with vector paths beside the portable one. A
// process always takes the same path, so results never depend on the batch.
//
// TESSERA_CPU_VECTOR=portable|avx2|avx512 caps the path (tests run every path a machine
// has; a user can rule out AVX-512 where it slows the clock). A path the processor lacks
// is never taken.
//
// The AVX2 and AVX-512 paths exist only in x86 builds (TESSERA_CPU_X86), each function
// compiled for its extension by a target attribute while the rest of the build stays
// baseline x86-64. Other architectures (aarch64: Grace hosts) compile the portable path
// alone and always take it.

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#define TESSERA_CPU_X86 1
#else
#define TESSERA_CPU_X86 0
#endif

namespace tessera::kernels {

enum class CpuVector { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

inline CpuVector CpuVectorPath() {
  static const CpuVector path = [] {
    CpuVector best = CpuVector::kPortable;
#if TESSERA_CPU_X86
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      best = CpuVector::kAvx2;
      if (__builtin_cpu_supports("avx512f")) best = CpuVector::kAvx512;
    }
#endif
    CpuVector cap = CpuVector::kAvx512;
    if (const char* text = std::getenv("TESSERA_CPU_VECTOR")) {
      if (std::strcmp(text, "portable") == 0) cap = CpuVector::kPortable;
      if (std::strcmp(text, "avx2") == 0) cap = CpuVector::kAvx2;
    }
    return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
  }();
  return path;
}

inline bool HasAvx2Fma() { return CpuVectorPath() >= CpuVector::kAvx2; }
inline bool HasAvx512() { return CpuVectorPath() == CpuVector::kAvx512; }

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_CPU_FEATURES_H_
