#include "launcher/read_bandwidth.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "kernels/cpu/parallel.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::launcher {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kRounds = 10;                             // timed, after one warm-up round
constexpr int64_t kMinBufferBytes = int64_t{64} << 20;  // per reader
constexpr int64_t kCacheMultiple = 4;                   // the node's buffers / the cache
constexpr int64_t kRoundBytes = int64_t{1} << 30;       // at least, per reader and round
// A huge page, so that the reads are not slowed by TLB misses a kernel's weights may not
// have; also a whole number of unrolled iterations.
constexpr int64_t kAlignment = int64_t{2} << 20;
// Ahead of the loads, as a tuned reader would; the hardware prefetchers alone leave a few
// GB/s on the table on some machines (AMD Zen 4: about 10%). Past the end it is harmless.
constexpr int64_t kPrefetchBytes = 1024;

// What the readers read, folded together, so that no load is optimized away.
std::atomic<uint64_t> read_sink{0};

// XOR of every 64-bit word of data[0, bytes), bytes a multiple of 256. Four independent
// accumulators of one-cycle XORs keep the loads, not the arithmetic, the limit.
#if TESSERA_CPU_X86
__attribute__((target("avx512f"))) uint64_t ReadAvx512(const std::byte* data, int64_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < bytes; i += 256) {
    for (int line = 0; line < 256; line += 64) __builtin_prefetch(data + i + kPrefetchBytes + line);
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(data + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(data + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(data + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(data + i + 192));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  uint64_t total = 0;
  for (uint64_t lane : lanes) total ^= lane;
  return total;
}

__attribute__((target("avx2"))) uint64_t ReadAvx2(const std::byte* data, int64_t bytes) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < bytes; i += 128) {
    __builtin_prefetch(data + i + kPrefetchBytes);
    __builtin_prefetch(data + i + kPrefetchBytes + 64);
    a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i)));
    a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i + 32)));
    a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i + 64)));
    a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(data + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}
#endif  // TESSERA_CPU_X86

uint64_t ReadPortable(const std::byte* data, int64_t bytes) {
  const uint64_t* words = reinterpret_cast<const uint64_t*>(data);
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (int64_t i = 0; i < bytes / 8; i += 4) {
    if (i % 8 == 0) __builtin_prefetch(words + i + kPrefetchBytes / 8);
    a0 ^= words[i];
    a1 ^= words[i + 1];
    a2 ^= words[i + 2];
    a3 ^= words[i + 3];
  }
  return a0 ^ a1 ^ a2 ^ a3;
}

uint64_t Read([[maybe_unused]] kernels::CpuVector path, const std::byte* data, int64_t bytes) {
#if TESSERA_CPU_X86
  switch (path) {
    case kernels::CpuVector::kAvx512:
      return ReadAvx512(data, bytes);
    case kernels::CpuVector::kAvx2:
      return ReadAvx2(data, bytes);
    case kernels::CpuVector::kPortable:
      break;
  }
#endif
  return ReadPortable(data, bytes);
}

// "32K", "32768K", "1M" as sysfs writes cache sizes; 0 when unreadable.
int64_t ParseCacheSize(const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || value <= 0) return 0;
  if (*end == 'K') return value << 10;
  if (*end == 'M') return value << 20;
  if (*end == 'G') return value << 30;
  return value;
}

const char* PathName(kernels::CpuVector path) {
  switch (path) {
    case kernels::CpuVector::kAvx512:
      return "avx512 (64-byte)";
    case kernels::CpuVector::kAvx2:
      return "avx2 (32-byte)";
    case kernels::CpuVector::kPortable:
      break;
  }
  return "portable (8-byte)";
}

}  // namespace

int64_t LastLevelCacheBytes() {
  static const int64_t bytes = [] {
    int64_t sysfs = 0;
    int sysfs_level = 0;
    for (int index = 0;; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
      std::ifstream level_file(dir + "/level"), size_file(dir + "/size");
      int level = 0;
      std::string size;
      if (!(level_file >> level) || !(size_file >> size)) break;
      if (level > sysfs_level) sysfs = 0;
      sysfs_level = std::max(sysfs_level, level);
      if (level == sysfs_level) sysfs = std::max(sysfs, ParseCacheSize(size));
    }
    const int64_t l3 = std::max<int64_t>(0, sysconf(_SC_LEVEL3_CACHE_SIZE));
    const int64_t l2 = std::max<int64_t>(0, sysconf(_SC_LEVEL2_CACHE_SIZE));
    const int64_t largest = std::max({sysfs, l3, l2});
    return largest > 0 ? largest : int64_t{32} << 20;
  }();
  return bytes;
}

ReadBandwidth MeasureReadBandwidth(int threads, kernels::CpuVector path,
                                   const std::function<void()>& before_round, int processes) {
  ReadBandwidth result;
  result.threads = std::max(1, threads);
  result.path = path;
  // Several times the cache over the node's readers, so that no round finds its bytes there
  // from the round before (a victim cache keeps part of a stream only a little larger).
  const int64_t wanted =
      std::max(kMinBufferBytes, kCacheMultiple * LastLevelCacheBytes() /
                                    (int64_t{result.threads} * std::max(1, processes)));
  result.bytes_per_thread = (wanted + kAlignment - 1) / kAlignment * kAlignment;
  result.passes = static_cast<int>(
      std::max<int64_t>(1, (kRoundBytes + result.bytes_per_thread - 1) / result.bytes_per_thread));
  // Address space only: no page is placed until its reader first writes it.
  struct Free {
    void operator()(std::byte* bytes) const { std::free(bytes); }
  };
  std::vector<std::unique_ptr<std::byte, Free>> buffers;
  bool allocated = true;
  for (int t = 0; t < result.threads; ++t) {
    buffers.emplace_back(static_cast<std::byte*>(
        std::aligned_alloc(kAlignment, static_cast<size_t>(result.bytes_per_thread))));
    allocated = allocated && buffers.back() != nullptr;
    // Huge pages where the kernel grants them (transparent_hugepage "madvise" or "always").
    if (buffers.back() != nullptr) {
      madvise(buffers.back().get(), static_cast<size_t>(result.bytes_per_thread), MADV_HUGEPAGE);
    }
  }
  // Phases: the readers and this thread meet before each round (release) and after it (done).
  std::barrier<> meet(result.threads + 1);
  std::vector<std::thread> readers;
  for (int t = 0; t < result.threads && allocated; ++t) {
    readers.emplace_back([&, t] {
      std::byte* buffer = buffers[t].get();
      // First touch by the reader, so that the pages are local to where it runs.
      std::memset(buffer, t + 1, static_cast<size_t>(result.bytes_per_thread));
      uint64_t folded = 0;
      for (int round = 0; round <= kRounds; ++round) {
        meet.arrive_and_wait();
        for (int pass = 0; pass < result.passes; ++pass) {
          folded ^= Read(path, buffer, result.bytes_per_thread);
        }
        meet.arrive_and_wait();
      }
      read_sink.fetch_xor(folded, std::memory_order_relaxed);
    });
  }
  for (int round = 0; round <= kRounds; ++round) {
    if (before_round) before_round();
    // Out of memory: the rounds still meet the other processes' barriers, and time nothing.
    if (!allocated) continue;
    const auto start = Clock::now();
    meet.arrive_and_wait();
    meet.arrive_and_wait();
    // Round 0 warms up (and waits for the first touch).
    if (round > 0) {
      result.round_seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
  }
  if (!allocated) result.round_seconds.assign(kRounds, 0);
  for (std::thread& reader : readers) reader.join();
  const double bytes =
      static_cast<double>(result.threads) * result.passes * result.bytes_per_thread;
  for (double seconds : result.round_seconds) {
    if (seconds > 0) result.bytes_per_second = std::max(result.bytes_per_second, bytes / seconds);
  }
  return result;
}

ReadBandwidth MeasureNodeReadBandwidth(MPI_Comm node) {
  int ranks = 1;
  MPI_Comm_size(node, &ranks);
  ReadBandwidth mine = MeasureReadBandwidth(
      kernels::CpuKernelThreads(), kernels::CpuVectorPath(), [node] { MPI_Barrier(node); }, ranks);
  ReadBandwidth all = mine;
  all.ranks = ranks;
  MPI_Allreduce(&mine.threads, &all.threads, 1, MPI_INT, MPI_SUM, node);
  MPI_Allreduce(mine.round_seconds.data(), all.round_seconds.data(),
                static_cast<int>(mine.round_seconds.size()), MPI_DOUBLE, MPI_MAX, node);
  const double my_bytes = static_cast<double>(mine.threads) * mine.passes * mine.bytes_per_thread;
  double bytes = 0;
  MPI_Allreduce(&my_bytes, &bytes, 1, MPI_DOUBLE, MPI_SUM, node);
  // A rank that could not allocate leaves the node without a figure (0).
  double measured = mine.bytes_per_second > 0 ? 1 : 0, everywhere = 0;
  MPI_Allreduce(&measured, &everywhere, 1, MPI_DOUBLE, MPI_MIN, node);
  all.bytes_per_second = 0;
  for (double seconds : all.round_seconds) {
    if (everywhere > 0) all.bytes_per_second = std::max(all.bytes_per_second, bytes / seconds);
  }
  return all;
}

std::string DescribeReadBandwidth(const ReadBandwidth& measured) {
  return absl::StrFormat(
      "%d thread(s) over %d rank(s) reading at once, each its own %lld MiB buffer "
      "(first-touched by it, 2 MiB pages where granted; the largest last-level cache figure is "
      "%lld MiB), %s "
      "loads prefetching 1 KiB ahead, %d pass(es) a round, best of %d rounds after a warm-up",
      measured.threads, measured.ranks, static_cast<long long>(measured.bytes_per_thread >> 20),
      static_cast<long long>(LastLevelCacheBytes() >> 20), PathName(measured.path), measured.passes,
      static_cast<int>(measured.round_seconds.size()));
}

}  // namespace tessera::launcher
