#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_affinity.h"

namespace tessera::kernels {
namespace {

// How long a worker keeps polling for the next job before it sleeps, and how long the
// submitting thread polls for the workers to finish before it yields between polls. A
// forward pass runs its kernels back to back, each a few microseconds to a few
// milliseconds; waking a sleeping thread costs tens of microseconds on a loaded or virtual
// machine, more than a small kernel's whole share, so workers stay hot between kernels and
// sleep only when the process stops calling (an idle engine).
constexpr auto kWorkerSpin = std::chrono::microseconds(200);
constexpr int kPollsBeforeYield = 4096;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// Workers watch a generation number, run their share of the current job and count
// themselves done. One job at a time (callers are serialized by `submit_`). A worker that
// has seen no new job for kWorkerSpin sleeps on `wake_`; the submitter notifies only when
// one is asleep.
//
// With `pin_cpus` given, worker w pins itself to pin_cpus[(w + 1) % size]; pin_cpus[0] is
// left to the submitting thread, which is not pinned (threads it starts later would inherit
// the pin) but which the scheduler places on the one core no worker holds.
class Pool {
 public:
  Pool(int workers, std::vector<int> pin_cpus) : pin_cpus_(std::move(pin_cpus)) {
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this, w] { Work(w); });
  }
  ~Pool() {
    stop_.store(true);
    { std::lock_guard<std::mutex> lock(mutex_); }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  int workers() const { return static_cast<int>(threads_.size()); }

  void Run(int64_t items, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> serial(submit_);
    job_ = &fn;
    items_ = items;
    grain_ = grain;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(workers());
    generation_.fetch_add(1);  // publishes the job to the workers
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    RunChunks();
    for (int polls = 0; pending_.load(std::memory_order_acquire) != 0; ++polls) {
      if (polls < kPollsBeforeYield) {
        CpuRelax();
      } else {
        std::this_thread::yield();
      }
    }
    job_ = nullptr;
  }

 private:
  // Takes chunks of `grain_` items until none are left. Chunks go to whichever thread asks
  // first, so a thread that the machine stalls (a stolen core) holds up only its chunk.
  void RunChunks() {
    while (true) {
      const int64_t begin = next_.fetch_add(grain_, std::memory_order_relaxed);
      if (begin >= items_) return;
      (*job_)(begin, std::min(items_, begin + grain_));
    }
  }

  // Waits until the generation moves past `seen` or the pool stops; returns the generation
  // then current.
  uint64_t AwaitJob(uint64_t seen) {
    const auto spin_until = std::chrono::steady_clock::now() + kWorkerSpin;
    for (int polls = 0;; ++polls) {
      const uint64_t now = generation_.load(std::memory_order_acquire);
      if (now != seen || stop_.load(std::memory_order_relaxed)) return now;
      CpuRelax();
      if (polls % 64 == 63 && std::chrono::steady_clock::now() >= spin_until) break;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1);
    wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
    sleepers_.fetch_sub(1);
    return generation_.load();
  }

  void Work(int worker) {
    if (!pin_cpus_.empty()) {
      PinCurrentThread(pin_cpus_[(worker + 1) % pin_cpus_.size()]);  // unpinned if refused
    }
    uint64_t seen = 0;
    while (true) {
      seen = AwaitJob(seen);
      if (stop_.load()) return;
      RunChunks();
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  std::mutex submit_;
  std::mutex mutex_;
  std::condition_variable wake_;
  // Written by the submitter before `generation_` moves on; read by workers after.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t items_ = 0;
  int64_t grain_ = 1;
  std::atomic<int64_t> next_{0};  // the first item no thread has taken
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  const std::vector<int> pin_cpus_;
  std::vector<std::thread> threads_;
};

Pool& SharedPool() {
  // Never destroyed: kernels may run from static destructors' time in other threads.
  static Pool* pool = [] {
    const CpuSetup& setup = CurrentCpuSetup();
    return new Pool(setup.plan.threads - 1, setup.plan.pin ? setup.cpus : std::vector<int>());
  }();
  return *pool;
}

}  // namespace

int CpuKernelThreads() {
  static const int threads = CurrentCpuSetup().plan.threads;
  return threads;
}

void ParallelFor(int64_t items, int64_t min_items_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn, int64_t grain) {
  if (items <= 0) return;
  const int threads = CpuKernelThreads();
  if (threads == 1 || items < 2 * std::max<int64_t>(1, min_items_per_thread)) {
    fn(0, items);
    return;
  }
  // About four chunks a thread by default: few enough to keep the hand-out cheap, enough to
  // even out unequal items and a thread that starts late.
  if (grain <= 0) grain = std::max<int64_t>(1, items / (4 * threads));
  SharedPool().Run(items, grain, fn);
}

}  // namespace tessera::kernels
