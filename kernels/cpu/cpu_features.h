#ifndef TESSERA_KERNELS_CPU_CPU_FEATURES_H_
#define TESSERA_KERNELS_CPU_CPU_FEATURES_H_

// What the processor offers, for kernels with a vector path beside the portable one. A
// machine always takes the same path, so results never depend on the batch.

namespace tessera::kernels {

inline bool HasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_CPU_FEATURES_H_
