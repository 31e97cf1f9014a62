#include "launcher/fma_peak.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "mpi.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::launcher {
namespace {

using Clock = std::chrono::steady_clock;

// Independent FMA chains, enough to cover the latency of two FMA pipes. Returns a value
// that depends on every chain, so that none is optimized away.
constexpr int kChains = 12;

#if TESSERA_CPU_X86
__attribute__((target("avx512f,avx2,fma"))) float FmaChains512(int64_t iterations) {
  __m512 chains[kChains];
  for (int c = 0; c < kChains; ++c) chains[c] = _mm512_set1_ps(1.0f + c);
  const __m512 scale = _mm512_set1_ps(0.999999f), shift = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16  // the chains must live in registers, not in the array
    for (int c = 0; c < kChains; ++c) chains[c] = _mm512_fmadd_ps(chains[c], scale, shift);
  }
  __m512 sum = chains[0];
  for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, chains[c]);
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}

__attribute__((target("avx2,fma"))) float FmaChains256(int64_t iterations) {
  __m256 chains[kChains];
  for (int c = 0; c < kChains; ++c) chains[c] = _mm256_set1_ps(1.0f + c);
  const __m256 scale = _mm256_set1_ps(0.999999f), shift = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) chains[c] = _mm256_fmadd_ps(chains[c], scale, shift);
  }
  __m256 sum = chains[0];
  for (int c = 1; c < kChains; ++c) sum = _mm256_add_ps(sum, chains[c]);
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  return total;
}
#endif  // TESSERA_CPU_X86

}  // namespace

double MeasureFmaPeak([[maybe_unused]] int threads, kernels::CpuVector path) {
  if (path == kernels::CpuVector::kPortable) return 0;
#if TESSERA_CPU_X86
  const int lanes = path == kernels::CpuVector::kAvx512 ? 16 : 8;
  constexpr int64_t kIterations = 20'000'000;
  double best = 0;
  for (int round = 0; round < 5; ++round) {
    std::vector<float> sinks(threads);
    std::vector<std::thread> workers;
    auto start = Clock::now();
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        sinks[t] = path == kernels::CpuVector::kAvx512 ? FmaChains512(kIterations)
                                                       : FmaChains256(kIterations);
      });
    }
    for (std::thread& worker : workers) worker.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, 2.0 * kIterations * kChains * lanes * threads / seconds);
  }
  return best;
#else
  return 0;  // unreachable: other architectures have the portable path alone
#endif
}

double MeasureJobFmaPeak() {
  MPI_Barrier(MPI_COMM_WORLD);
  double rank_peak = MeasureFmaPeak(kernels::CpuKernelThreads(), kernels::CpuVectorPath());
  double peak = 0;
  MPI_Allreduce(&rank_peak, &peak, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return peak;
}

}  // namespace tessera::launcher
