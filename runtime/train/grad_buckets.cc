#include "runtime/train/grad_buckets.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"

namespace tessera::train {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GradientReducer>> GradientReducer::Create(
    comm::Communicator& dp, std::vector<Entry> entries, const BucketOptions& options,
    Reduction reduction) {
  std::unique_ptr<GradientReducer> reducer(new GradientReducer(dp, options, reduction));
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.stage < b.stage; });
  int64_t cap = options.first_bucket_bytes;
  for (const Entry& entry : entries) {
    if (!entry.grad.defined() || entry.grad.dtype() != DType::kF32) {
      return absl::InternalError("a gradient bucket takes defined f32 tensors");
    }
    if (reducer->buckets_.empty() || reducer->buckets_.back().bytes >= cap) {
      if (!reducer->buckets_.empty()) cap = options.bucket_bytes;
      reducer->buckets_.emplace_back();
    }
    Bucket& bucket = reducer->buckets_.back();
    const int64_t offset =
        bucket.slots.empty() ? 0 : bucket.slots.back().offset + bucket.slots.back().numel;
    bucket.grads.push_back(entry.grad);
    bucket.slots.push_back({entry.id, offset, entry.grad.numel()});
    bucket.last_stage = std::max(bucket.last_stage, entry.stage);
    bucket.bytes += static_cast<int64_t>(entry.grad.nbytes());
  }
  if (reduction == Reduction::kReduceScatter && !reducer->buckets_.empty()) {
    int64_t largest = 0;
    for (Bucket& bucket : reducer->buckets_) {
      const int64_t elements = bucket.slots.back().offset + bucket.slots.back().numel;
      bucket.shard_elements = (elements + dp.size() - 1) / dp.size();
      TESSERA_ASSIGN_OR_RETURN(bucket.shard, Tensor::Zeros(DType::kF32, {bucket.shard_elements}));
      largest = std::max(largest, bucket.shard_elements);
    }
    TESSERA_ASSIGN_OR_RETURN(reducer->flat_, Tensor::Zeros(DType::kF32, {dp.size() * largest}));
  }
  if (options.overlap) reducer->thread_ = std::thread([r = reducer.get()] { r->ThreadMain(); });
  return reducer;
}

GradientReducer::~GradientReducer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void GradientReducer::BeginStep() {
  std::lock_guard<std::mutex> lock(mutex_);
  next_to_queue_ = 0;
  done_ = 0;
  status_ = absl::OkStatus();
  comm_seconds_ = 0;
  queue_.clear();
}

absl::Status GradientReducer::Reduce(int b) {
  const Bucket& bucket = buckets_[b];
  comm::CollectiveBatch batch;
  if (reduction_ == Reduction::kAllReduce) {
    for (const Tensor& grad : bucket.grads) batch.AllReduce(grad, comm::ReduceOp::kSum);
  } else {
    const int64_t padded = dp_.size() * bucket.shard_elements;
    float* flat = flat_.data<float>();
    for (size_t i = 0; i < bucket.grads.size(); ++i) {
      std::copy_n(bucket.grads[i].data<float>(), bucket.slots[i].numel,
                  flat + bucket.slots[i].offset);
    }
    const int64_t used = bucket.slots.back().offset + bucket.slots.back().numel;
    std::fill(flat + used, flat + padded, 0.0f);
    TESSERA_ASSIGN_OR_RETURN(Tensor input, flat_.Slice(0, padded));
    batch.ReduceScatter(input, bucket.shard, comm::ReduceOp::kSum);
  }
  Stream cpu = Stream::Cpu();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<comm::Work> work, dp_.Start(std::move(batch), cpu));
  // Poll with short naps: the collective advances when polled, and the cores belong to the
  // backward meanwhile.
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(bool complete, work->Poll());
    if (complete) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void GradientReducer::StageDone(int stage) {
  if (!options_.overlap) return;  // Finish runs them all
  std::lock_guard<std::mutex> lock(mutex_);
  while (next_to_queue_ < num_buckets() && buckets_[next_to_queue_].last_stage <= stage) {
    queue_.push_back(next_to_queue_++);
  }
  changed_.notify_all();
}

void GradientReducer::ThreadMain() {
  while (true) {
    int b = -1;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      b = queue_.front();
      queue_.pop_front();
      if (!status_.ok()) {  // a failed communicator fails every later call: skip
        ++done_;
        changed_.notify_all();
        continue;
      }
    }
    const double start = Now();
    absl::Status reduced = Reduce(b);
    std::lock_guard<std::mutex> lock(mutex_);
    comm_seconds_ += Now() - start;
    if (status_.ok() && !reduced.ok()) status_ = reduced;
    ++done_;
    changed_.notify_all();
  }
}

absl::Status GradientReducer::Finish(double* exposed_seconds, double* comm_seconds) {
  const double start = Now();
  if (!options_.overlap) {
    double busy = 0;
    for (int b = 0; b < num_buckets(); ++b) {
      const double bucket_start = Now();
      TESSERA_RETURN_IF_ERROR(Reduce(b));
      busy += Now() - bucket_start;
    }
    *exposed_seconds = Now() - start;
    *comm_seconds = busy;
    return absl::OkStatus();
  }
  StageDone(buckets_.empty() ? 0 : buckets_.back().last_stage);  // whatever is left
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return done_ == num_buckets(); });
  *exposed_seconds = Now() - start;
  *comm_seconds = comm_seconds_;
  return status_;
}

}  // namespace tessera::train
