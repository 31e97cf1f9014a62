#include "runtime/train/batches.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <numeric>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::train {
namespace {

// SplitMix64's output function: a bijection of 64-bit values that mixes every bit.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// SplitMix64 (Steele, Lea and Flood): fully specified, unlike the distributions and
// std::shuffle of the standard library, so every rank and build draws the same numbers.
class SplitMix64 {
 public:
  // An independent generator for each (seed, stream).
  SplitMix64(uint64_t seed, uint64_t stream) : state_(Mix(Mix(seed) + stream)) {}

  uint64_t Next() { return Mix(state_ += 0x9e3779b97f4a7c15ULL); }

  // Uniform in [0, n), n > 0, without modulo bias.
  uint64_t Below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n: the values to reject
    while (true) {
      uint64_t x = Next();
      if (x >= threshold) return x % n;
    }
  }

 private:
  uint64_t state_;
};

// The stream of the packing order; epochs use streams 0, 1, ...
constexpr uint64_t kPackingStream = std::numeric_limits<uint64_t>::max();

// 0 .. n-1 in an order drawn by Fisher-Yates.
std::vector<int32_t> ShuffledIndices(int32_t n, SplitMix64 random) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  for (int32_t i = n - 1; i > 0; --i) {
    std::swap(order[i], order[random.Below(static_cast<uint64_t>(i) + 1)]);
  }
  return order;
}

// FNV-1a over 64-bit words, finished by Mix.
class Fingerprinter {
 public:
  void Add(uint64_t value) { hash_ = (hash_ ^ value) * 0x100000001b3ULL; }
  void Add(const std::vector<int32_t>& values) {
    Add(values.size());
    for (int32_t value : values) Add(static_cast<uint64_t>(static_cast<uint32_t>(value)));
  }
  uint64_t Finish() const { return Mix(hash_); }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

}  // namespace

// The orders of the last two epochs asked for (a micro-batch may straddle two).
struct RowStream::OrderCache {
  struct Slot {
    int64_t epoch = -1;
    std::shared_ptr<const std::vector<int32_t>> order;
  };
  std::mutex mutex;
  Slot slots[2] ABSL_GUARDED_BY(mutex);
  int next ABSL_GUARDED_BY(mutex) = 0;  // the slot to replace
};

absl::StatusOr<RowStream> RowStream::Create(std::vector<Example> examples,
                                            const BatchOptions& options) {
  if (options.seq_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len must be at least 2 (is ", options.seq_len, ")"));
  }
  if (options.pad_token_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pad_token_id must not be negative (is ", options.pad_token_id, ")"));
  }
  if (examples.empty()) return absl::InvalidArgumentError("no examples to train on");
  if (examples.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("too many examples (", examples.size(), ")"));
  }

  RowStream stream;
  stream.options_ = options;
  const int64_t seq_len = options.seq_len;
  for (Example& example : examples) {
    if (example.tokens.size() != example.labels.size()) {
      return absl::InvalidArgumentError(absl::StrCat("example of line ", example.line, " has ",
                                                     example.tokens.size(), " tokens but ",
                                                     example.labels.size(), " labels"));
    }
    const int64_t length = std::min<int64_t>(static_cast<int64_t>(example.tokens.size()), seq_len);
    const int64_t targets = std::count_if(example.labels.begin() + std::min<int64_t>(length, 1),
                                          example.labels.begin() + length,
                                          [](int32_t label) { return label != kIgnoreLabel; });
    if (static_cast<int64_t>(example.tokens.size()) > seq_len) ++stream.truncated_examples_;
    if (targets == 0) {
      ++stream.dropped_examples_;
      continue;
    }
    stream.tokens_per_epoch_ += length;
    stream.targets_per_epoch_ += targets;
    stream.examples_.push_back(std::move(example));
  }
  if (stream.examples_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("none of the ", stream.dropped_examples_,
                                                   " examples has a trained target within seq_len ",
                                                   seq_len));
  }

  const int32_t count = static_cast<int32_t>(stream.examples_.size());
  std::vector<int32_t> packing_order(count);
  if (options.packing) {
    packing_order = ShuffledIndices(count, SplitMix64(options.seed, kPackingStream));
  } else {
    std::iota(packing_order.begin(), packing_order.end(), 0);
  }
  stream.row_begin_.push_back(0);
  int64_t fill = 0;  // tokens in the current row
  for (int32_t index : packing_order) {
    const int32_t length = static_cast<int32_t>(
        std::min<int64_t>(static_cast<int64_t>(stream.examples_[index].tokens.size()), seq_len));
    if (fill > 0 && (!options.packing || fill + length > seq_len)) {
      stream.row_begin_.push_back(static_cast<int64_t>(stream.segments_.size()));
      fill = 0;
    }
    stream.segments_.push_back({index, length});
    fill += length;
  }
  stream.row_begin_.push_back(static_cast<int64_t>(stream.segments_.size()));

  Fingerprinter fingerprint;
  fingerprint.Add(static_cast<uint64_t>(options.seq_len));
  fingerprint.Add(options.packing ? 1 : 0);
  fingerprint.Add(options.seed);
  fingerprint.Add(static_cast<uint64_t>(options.pad_token_id));
  fingerprint.Add(stream.examples_.size());
  for (const Example& example : stream.examples_) {
    fingerprint.Add(example.tokens);
    fingerprint.Add(example.labels);
  }
  stream.fingerprint_ = fingerprint.Finish();
  stream.cache_ = std::make_shared<OrderCache>();
  return stream;
}

int64_t RowStream::example_count() const { return static_cast<int64_t>(examples_.size()); }

std::shared_ptr<const std::vector<int32_t>> RowStream::EpochOrder(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_->mutex);
  for (const OrderCache::Slot& slot : cache_->slots) {
    if (slot.epoch == epoch) return slot.order;
  }
  OrderCache::Slot& slot = cache_->slots[cache_->next];
  cache_->next ^= 1;
  slot.epoch = epoch;
  slot.order = std::make_shared<const std::vector<int32_t>>(
      ShuffledIndices(static_cast<int32_t>(rows_per_epoch()),
                      SplitMix64(options_.seed, static_cast<uint64_t>(epoch))));
  return slot.order;
}

void RowStream::AppendRow(int32_t row, MicroBatch* batch) const {
  const int32_t row_start = static_cast<int32_t>(batch->tokens.size());
  for (int64_t s = row_begin_[row]; s < row_begin_[row + 1]; ++s) {
    const Segment& segment = segments_[s];
    const Example& example = examples_[segment.example];
    batch->sequence_starts.push_back(static_cast<int32_t>(batch->tokens.size()));
    for (int32_t t = 0; t < segment.length; ++t) {
      batch->tokens.push_back(example.tokens[t]);
      batch->positions.push_back(t);
      const int32_t target = t + 1 < segment.length ? example.labels[t + 1] : kIgnoreLabel;
      batch->targets.push_back(target);
      if (target != kIgnoreLabel) ++batch->target_count;
    }
  }
  const int32_t used = static_cast<int32_t>(batch->tokens.size()) - row_start;
  if (used < options_.seq_len) {
    batch->sequence_starts.push_back(static_cast<int32_t>(batch->tokens.size()));
    for (int32_t t = 0; t < options_.seq_len - used; ++t) {
      batch->tokens.push_back(options_.pad_token_id);
      batch->positions.push_back(t);
      batch->targets.push_back(kIgnoreLabel);
    }
  }
}

absl::StatusOr<MicroBatch> RowStream::Rows(DataPosition at, int64_t count) const {
  if (count < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rows: count must be positive (is ", count, ")"));
  }
  if (at.epoch < 0 || at.row < 0 || at.row >= rows_per_epoch()) {
    return absl::InvalidArgumentError(absl::StrCat("Rows: position (epoch ", at.epoch, ", row ",
                                                   at.row, ") is outside the stream (",
                                                   rows_per_epoch(), " rows an epoch)"));
  }
  if (count > std::numeric_limits<int32_t>::max() / options_.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("Rows: ", count, " rows of ", options_.seq_len,
                                                   " tokens are more than 2^31 - 1 tokens"));
  }
  const size_t total = static_cast<size_t>(count) * static_cast<size_t>(options_.seq_len);
  MicroBatch batch;
  batch.tokens.reserve(total);
  batch.positions.reserve(total);
  batch.targets.reserve(total);
  std::shared_ptr<const std::vector<int32_t>> order = EpochOrder(at.epoch);
  DataPosition position = at;
  for (int64_t i = 0; i < count; ++i) {
    if (i > 0) {
      const int64_t epoch = position.epoch;
      position = Advance(position, 1);
      if (position.epoch != epoch) order = EpochOrder(position.epoch);
    }
    AppendRow((*order)[position.row], &batch);
  }
  batch.sequence_starts.push_back(static_cast<int32_t>(total));
  return batch;
}

DataPosition RowStream::Advance(DataPosition at, int64_t rows) const {
  const int64_t per_epoch = rows_per_epoch();
  const int64_t global = at.epoch * per_epoch + at.row + rows;
  return DataPosition{FloorDiv(global, per_epoch),
                      global - FloorDiv(global, per_epoch) * per_epoch};
}

DataPosition RowStream::RankMicroBatchStart(DataPosition step_start, int dp_rank, int micro_index,
                                            int micro_batch, int grad_accum) const {
  const int64_t rows_before =
      (static_cast<int64_t>(dp_rank) * grad_accum + micro_index) * micro_batch;
  return Advance(step_start, rows_before);
}

}  // namespace tessera::train
