#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tessera::kernels {
namespace {

int ThreadsFromEnvironment() {
  if (const char* text = std::getenv("TESSERA_CPU_THREADS")) {
    int threads = std::atoi(text);
    if (threads > 0) return threads;
  }
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int ranks = 1;
  if (const char* text = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) {
    ranks = std::max(1, std::atoi(text));
  }
  return std::max(1, cores / ranks);
}

// Workers wait for a generation number to change, run their share of the current job and
// count themselves done. One job at a time (callers are serialized by `submit_`).
class Pool {
 public:
  explicit Pool(int workers) {
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this, w] { Work(w); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  int workers() const { return static_cast<int>(threads_.size()); }

  void Run(int64_t items, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> serial(submit_);
    const int parts = workers() + 1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      items_ = items;
      parts_ = parts;
      pending_ = workers();
      ++generation_;
    }
    wake_.notify_all();
    RunPart(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void RunPart(int part) {
    const int64_t begin = items_ * part / parts_;
    const int64_t end = items_ * (part + 1) / parts_;
    if (begin < end) (*job_)(begin, end);
  }

  void Work(int worker) {
    uint64_t seen = 0;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      RunPart(worker + 1);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --pending_;
      }
      done_.notify_one();
    }
  }

  std::mutex submit_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t items_ = 0;
  int parts_ = 1;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

Pool& SharedPool() {
  // Never destroyed: kernels may run from static destructors' time in other threads.
  static Pool* pool = new Pool(CpuKernelThreads() - 1);
  return *pool;
}

}  // namespace

int CpuKernelThreads() {
  static const int threads = ThreadsFromEnvironment();
  return threads;
}

void ParallelFor(int64_t items, int64_t min_items_per_thread,
                 const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (items <= 0) return;
  if (CpuKernelThreads() == 1 || items < 2 * std::max<int64_t>(1, min_items_per_thread)) {
    fn(0, items);
    return;
  }
  SharedPool().Run(items, fn);
}

}  // namespace tessera::kernels
