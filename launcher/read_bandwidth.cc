#include "launcher/read_bandwidth.h"

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif
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

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/cpu_affinity.h"
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

// Pins the calling thread to `cpus`; false (it runs where it ran) if the system refuses.
bool RunOnCpus(const std::vector<int>& cpus) {
#ifdef __linux__
  if (cpus.empty()) return false;
  const int bits = *std::max_element(cpus.begin(), cpus.end()) + 1;
  cpu_set_t* set = CPU_ALLOC(bits);
  if (set == nullptr) return false;
  const size_t bytes = CPU_ALLOC_SIZE(bits);
  CPU_ZERO_S(bytes, set);
  for (int cpu : cpus) CPU_SET_S(cpu, bytes, set);
  const bool pinned = pthread_setaffinity_np(pthread_self(), bytes, set) == 0;
  CPU_FREE(set);
  return pinned;
#else
  return false;
#endif
}

// The processes that measure together, and how their figures combine.
class ProbeGroup {
 public:
  enum class Combine { kSum, kMax, kMin };
  virtual ~ProbeGroup() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  virtual void Barrier() = 0;
  // Elementwise over the group's processes, in place; every process gets the same values.
  virtual void AllReduce(std::vector<double>& values, Combine how) = 0;
  double AllReduce(double value, Combine how) {
    std::vector<double> values{value};
    AllReduce(values, how);
    return values[0];
  }
};

class ThisProcess final : public ProbeGroup {
 public:
  int size() const override { return 1; }
  int rank() const override { return 0; }
  void Barrier() override {}
  void AllReduce(std::vector<double>&, Combine) override {}
};

class MpiGroup final : public ProbeGroup {
 public:
  explicit MpiGroup(MPI_Comm comm) : comm_(comm) {}
  int size() const override {
    int ranks = 1;
    MPI_Comm_size(comm_, &ranks);
    return ranks;
  }
  int rank() const override {
    int rank = 0;
    MPI_Comm_rank(comm_, &rank);
    return rank;
  }
  void Barrier() override { MPI_Barrier(comm_); }
  void AllReduce(std::vector<double>& values, Combine how) override {
    const MPI_Op op = how == Combine::kSum ? MPI_SUM : how == Combine::kMax ? MPI_MAX : MPI_MIN;
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE, op,
                  comm_);
  }

 private:
  const MPI_Comm comm_;
};

using Combine = ProbeGroup::Combine;

// Every process of `group` runs `probe` at once (its group_threads filled in), rounds aligned
// by the group's barrier; a round's figure is every process's bytes over the slowest one's
// seconds. Collective; every process gets the same result.
ReadBandwidth MeasureTogether(ProbeGroup& group, ReadProbe probe) {
  probe.group_threads = static_cast<int>(group.AllReduce(probe.threads, Combine::kSum));
  probe.before_round = [&group] { group.Barrier(); };
  const ReadBandwidth mine = MeasureReadBandwidth(probe);
  ReadBandwidth all = mine;
  all.ranks = group.size();
  all.threads = probe.group_threads;
  group.AllReduce(all.round_seconds, Combine::kMax);
  const double bytes = group.AllReduce(
      static_cast<double>(mine.threads) * mine.passes * mine.bytes_per_thread, Combine::kSum);
  // A process that could not allocate leaves the group without a figure (0).
  const bool measured = mine.threads == 0 || mine.bytes_per_second > 0;
  const bool everywhere = group.AllReduce(measured ? 1 : 0, Combine::kMin) > 0;
  all.bytes_per_second = 0;
  if (!everywhere) return all;
  for (double seconds : all.round_seconds) {
    if (seconds > 0) all.bytes_per_second = std::max(all.bytes_per_second, bytes / seconds);
  }
  return all;
}

// The CPUs this process's kernel threads run on: the first `threads` of its mask where the
// pool pins them there (kernels/cpu/parallel.h), else the whole mask.
std::vector<int> KernelThreadCpus(int threads) {
  const kernels::CpuSetup& setup = kernels::CurrentCpuSetup();
  std::vector<int> cpus = setup.cpus;
  if (setup.plan.pin && threads >= 1 && threads < static_cast<int>(cpus.size())) {
    cpus.resize(threads);
  }
  return cpus;
}

// The group's figure over `nodes` (the host's NUMA nodes): one measurement as on a host of
// one node unless some process's readers are placed on nodes; then each node with readers
// alone, and all of them at once unless there is one such node and no reader elsewhere.
ReadBandwidth MeasureOnNodes(ProbeGroup& group, int threads, kernels::CpuVector path,
                             const std::vector<NumaNode>& nodes) {
  ReadProbe probe;
  probe.threads = std::max(0, threads);
  probe.path = path;
  const std::vector<NodeReaders> placed =
      PlaceReadersOnNodes(nodes, KernelThreadCpus(probe.threads), probe.threads, group.rank());
  if (group.AllReduce(placed.empty() ? 0 : 1, Combine::kMax) == 0) {
    return MeasureTogether(group, probe);
  }
  // Every process's readers per node id, and those on no node (a process whose CPUs sysfs
  // does not place), which take part only in the measurement of all at once.
  int ids = 0;
  for (const NodeReaders& share : placed) ids = std::max(ids, share.node + 1);
  ids = static_cast<int>(group.AllReduce(ids, Combine::kMax));
  std::vector<double> node_threads(ids, 0);
  for (const NodeReaders& share : placed) node_threads[share.node] += share.readers;
  group.AllReduce(node_threads, Combine::kSum);
  const double unplaced = group.AllReduce(placed.empty() ? probe.threads : 0, Combine::kSum);
  std::vector<NumaReadBandwidth> figures;
  ReadBandwidth all;
  for (int id = 0; id < ids; ++id) {
    if (node_threads[id] == 0) continue;
    ReadProbe on_node = probe;
    on_node.threads = 0;
    for (const NodeReaders& share : placed) {
      if (share.node != id) continue;
      on_node.threads = share.readers;
      on_node.reader_cpus.assign(share.readers, share.cpus);
    }
    all = MeasureTogether(group, on_node);
    figures.push_back({id, static_cast<int>(node_threads[id]), all.bytes_per_second});
  }
  if (figures.size() > 1 || unplaced > 0) {
    for (const NodeReaders& share : placed) {
      probe.reader_cpus.insert(probe.reader_cpus.end(), share.readers, share.cpus);
    }
    all = MeasureTogether(group, probe);
    // Every node's readers at once read at least as fast as one node's alone: a round of
    // all of them slowed by a passing disturbance must not make the limit one node's less.
    for (const NumaReadBandwidth& node : figures) {
      all.bytes_per_second = std::max(all.bytes_per_second, node.bytes_per_second);
    }
  }
  all.numa_nodes = std::move(figures);
  all.host_numa_nodes =
      static_cast<int>(group.AllReduce(static_cast<double>(nodes.size()), Combine::kMax));
  return all;
}

}  // namespace

bool FitsInLastLevelCaches(double bytes, int ranks) {
  return bytes <= static_cast<double>(ranks) * static_cast<double>(LastLevelCacheBytes());
}

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

ReadBandwidth MeasureReadBandwidth(const ReadProbe& probe) {
  ReadBandwidth result;
  result.threads = std::max(0, probe.threads);
  result.path = probe.path;
  const kernels::CpuVector path = probe.path;
  // Several times the cache over the group's readers, so that no round finds its bytes there
  // from the round before (a victim cache keeps part of a stream only a little larger).
  const int group_threads = probe.group_threads > 0 ? probe.group_threads : result.threads;
  const int64_t wanted = std::max(
      kMinBufferBytes, kCacheMultiple * LastLevelCacheBytes() / std::max(1, group_threads));
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
      if (!probe.reader_cpus.empty()) RunOnCpus(probe.reader_cpus[t % probe.reader_cpus.size()]);
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
    if (probe.before_round) probe.before_round();
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

ReadBandwidth MeasureProcessReadBandwidth(int threads, kernels::CpuVector path) {
  return MeasureProcessReadBandwidth(threads, path, ReadNumaNodes());
}

ReadBandwidth MeasureProcessReadBandwidth(int threads, kernels::CpuVector path,
                                          const std::vector<NumaNode>& numa_nodes) {
  ThisProcess alone;
  return MeasureOnNodes(alone, threads, path, numa_nodes);
}

ReadBandwidth MeasureNodeReadBandwidth(MPI_Comm node) {
  return MeasureNodeReadBandwidth(node, ReadNumaNodes());
}

ReadBandwidth MeasureNodeReadBandwidth(MPI_Comm node, const std::vector<NumaNode>& numa_nodes) {
  MpiGroup ranks(node);
  return MeasureOnNodes(ranks, kernels::CpuKernelThreads(), kernels::CpuVectorPath(), numa_nodes);
}

ReadBandwidth BetterReadBandwidth(ReadBandwidth a, const ReadBandwidth& b) {
  if (b.bytes_per_second > a.bytes_per_second) {
    ReadBandwidth better = b;
    better.round_seconds.insert(better.round_seconds.end(), a.round_seconds.begin(),
                                a.round_seconds.end());
    return better;
  }
  a.round_seconds.insert(a.round_seconds.end(), b.round_seconds.begin(), b.round_seconds.end());
  return a;
}

std::string DescribeReadBandwidth(const ReadBandwidth& measured) {
  std::string text = absl::StrFormat(
      "%d thread(s) over %d rank(s) reading at once, each its own %lld MiB buffer "
      "(first-touched by it, 2 MiB pages where granted; the largest last-level cache figure is "
      "%lld MiB), %s "
      "loads prefetching 1 KiB ahead, %d pass(es) a round, best of %d timed rounds (each "
      "measurement after a warm-up)",
      measured.threads, measured.ranks, static_cast<long long>(measured.bytes_per_thread >> 20),
      static_cast<long long>(LastLevelCacheBytes() >> 20), PathName(measured.path), measured.passes,
      static_cast<int>(measured.round_seconds.size()));
  if (measured.numa_nodes.size() == 1 && measured.numa_nodes[0].threads == measured.threads) {
    absl::StrAppendFormat(&text,
                          "; on NUMA node %d of the host's %d, where the kernel threads run, each "
                          "reader pinned to the node's CPUs",
                          measured.numa_nodes[0].node, measured.host_numa_nodes);
  } else if (!measured.numa_nodes.empty()) {
    absl::StrAppendFormat(
        &text,
        "; the figure is all at once over NUMA nodes %s of the host's %d, where the kernel "
        "threads run, each reader pinned to its node's CPUs; each node alone: %s",
        absl::StrJoin(measured.numa_nodes, ", ",
                      [](std::string* out, const NumaReadBandwidth& node) {
                        absl::StrAppend(out, node.node);
                      }),
        measured.host_numa_nodes,
        absl::StrJoin(measured.numa_nodes, ", ",
                      [](std::string* out, const NumaReadBandwidth& node) {
                        absl::StrAppendFormat(out, "node %d %.2f GB/s (%d thread(s))", node.node,
                                              node.bytes_per_second / 1e9, node.threads);
                      }));
  }
  return text;
}

}  // namespace tessera::launcher
