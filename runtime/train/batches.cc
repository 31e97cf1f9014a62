#include "runtime/train/batches.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <numeric>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status_macros.h"

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

namespace {

// The examples of RowStream::Create(examples, ...), kept in memory.
class InMemorySource final : public ExampleSource {
 public:
  explicit InMemorySource(std::vector<Example> examples) : examples_(std::move(examples)) {}
  absl::StatusOr<const Example*> Get(int64_t index, Example* /*scratch*/) const override {
    return &examples_[index];
  }

 private:
  std::vector<Example> examples_;
};

}  // namespace

ExampleSummary SummarizeExample(const Example& example, int seq_len) {
  ExampleSummary summary;
  summary.line = example.line;
  summary.tokens = static_cast<int64_t>(example.tokens.size());
  const int64_t length = std::min<int64_t>(summary.tokens, seq_len);
  summary.kept_targets = std::count_if(example.labels.begin() + std::min<int64_t>(length, 1),
                                       example.labels.begin() + length,
                                       [](int32_t label) { return label != kIgnoreLabel; });
  Fingerprinter hash;
  hash.Add(example.tokens);
  hash.Add(example.labels);
  summary.hash = hash.Finish();
  return summary;
}

absl::StatusOr<RowStream> RowStream::Create(std::vector<Example> examples,
                                            const BatchOptions& options) {
  std::vector<ExampleSummary> summaries;
  summaries.reserve(examples.size());
  for (const Example& example : examples) {
    if (example.tokens.size() != example.labels.size()) {
      return absl::InvalidArgumentError(absl::StrCat("example of line ", example.line, " has ",
                                                     example.tokens.size(), " tokens but ",
                                                     example.labels.size(), " labels"));
    }
    summaries.push_back(SummarizeExample(example, std::max(options.seq_len, 0)));
  }
  return Create(summaries, std::make_shared<InMemorySource>(std::move(examples)), options);
}

absl::StatusOr<RowStream> RowStream::Create(const std::vector<ExampleSummary>& summaries,
                                            std::shared_ptr<const ExampleSource> source,
                                            const BatchOptions& options) {
  if (options.seq_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len must be at least 2 (is ", options.seq_len, ")"));
  }
  if (options.pad_token_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pad_token_id must not be negative (is ", options.pad_token_id, ")"));
  }
  if (summaries.empty()) return absl::InvalidArgumentError("no examples to train on");
  if (summaries.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("too many examples (", summaries.size(), ")"));
  }

  RowStream stream;
  stream.options_ = options;
  stream.source_ = std::move(source);
  const int64_t seq_len = options.seq_len;
  std::vector<int32_t> kept_lengths;
  std::vector<int64_t> kept_targets;
  for (size_t i = 0; i < summaries.size(); ++i) {
    const ExampleSummary& summary = summaries[i];
    if (summary.tokens > seq_len) ++stream.truncated_examples_;
    if (summary.kept_targets == 0) {
      ++stream.dropped_examples_;
      continue;
    }
    const int64_t length = std::min(summary.tokens, seq_len);
    stream.tokens_per_epoch_ += length;
    stream.targets_per_epoch_ += summary.kept_targets;
    stream.kept_.push_back(static_cast<int64_t>(i));
    stream.kept_lines_.push_back(summary.line);
    kept_lengths.push_back(static_cast<int32_t>(length));
    kept_targets.push_back(summary.kept_targets);
  }
  if (stream.kept_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("none of the ", stream.dropped_examples_,
                                                   " examples has a trained target within seq_len ",
                                                   seq_len));
  }

  const int32_t count = static_cast<int32_t>(stream.kept_.size());
  std::vector<int32_t> packing_order(count);
  if (options.packing) {
    packing_order = ShuffledIndices(count, SplitMix64(options.seed, kPackingStream));
  } else {
    std::iota(packing_order.begin(), packing_order.end(), 0);
  }
  stream.row_begin_.push_back(0);
  stream.row_totals_.emplace_back();
  int64_t fill = 0;  // tokens in the current row
  for (int32_t index : packing_order) {
    const int32_t length = kept_lengths[index];
    if (fill > 0 && (!options.packing || fill + length > seq_len)) {
      stream.row_begin_.push_back(static_cast<int64_t>(stream.segments_.size()));
      stream.row_totals_.emplace_back();
      fill = 0;
    }
    stream.segments_.push_back({index, length});
    stream.row_totals_.back().tokens += length;
    stream.row_totals_.back().targets += kept_targets[index];
    fill += length;
  }
  stream.row_begin_.push_back(static_cast<int64_t>(stream.segments_.size()));

  Fingerprinter fingerprint;
  fingerprint.Add(static_cast<uint64_t>(options.seq_len));
  fingerprint.Add(options.packing ? 1 : 0);
  fingerprint.Add(options.seed);
  fingerprint.Add(static_cast<uint64_t>(options.pad_token_id));
  fingerprint.Add(stream.kept_.size());
  for (int64_t i : stream.kept_) fingerprint.Add(summaries[i].hash);
  stream.fingerprint_ = fingerprint.Finish();
  stream.cache_ = std::make_shared<OrderCache>();
  return stream;
}

int64_t RowStream::example_count() const { return static_cast<int64_t>(kept_.size()); }

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

absl::Status RowStream::AppendRow(int32_t row, MicroBatch* batch) const {
  const int32_t row_start = static_cast<int32_t>(batch->tokens.size());
  Example scratch;
  for (int64_t s = row_begin_[row]; s < row_begin_[row + 1]; ++s) {
    const Segment& segment = segments_[s];
    TESSERA_ASSIGN_OR_RETURN(const Example* example,
                             source_->Get(kept_[segment.example], &scratch));
    if (static_cast<int64_t>(example->tokens.size()) < segment.length ||
        example->labels.size() != example->tokens.size()) {
      return absl::DataLossError(absl::StrCat("the example of line ", kept_lines_[segment.example],
                                              " is not the one the data stream was planned with"));
    }
    batch->sequence_starts.push_back(static_cast<int32_t>(batch->tokens.size()));
    for (int32_t t = 0; t < segment.length; ++t) {
      batch->tokens.push_back(example->tokens[t]);
      batch->positions.push_back(t);
      const int32_t target = t + 1 < segment.length ? example->labels[t + 1] : kIgnoreLabel;
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
  return absl::OkStatus();
}

absl::Status RowStream::CheckSpan(DataPosition at, int64_t count) const {
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
  return absl::OkStatus();
}

template <typename Visit>
absl::Status RowStream::ForEachRow(DataPosition at, int64_t count, Visit visit) const {
  TESSERA_RETURN_IF_ERROR(CheckSpan(at, count));
  std::shared_ptr<const std::vector<int32_t>> order = EpochOrder(at.epoch);
  DataPosition position = at;
  for (int64_t i = 0; i < count; ++i) {
    if (i > 0) {
      const int64_t epoch = position.epoch;
      position = Advance(position, 1);
      if (position.epoch != epoch) order = EpochOrder(position.epoch);
    }
    TESSERA_RETURN_IF_ERROR(visit((*order)[position.row]));
  }
  return absl::OkStatus();
}

absl::StatusOr<MicroBatch> RowStream::Rows(DataPosition at, int64_t count) const {
  TESSERA_RETURN_IF_ERROR(CheckSpan(at, count));
  const size_t total = static_cast<size_t>(count) * static_cast<size_t>(options_.seq_len);
  MicroBatch batch;
  batch.tokens.reserve(total);
  batch.positions.reserve(total);
  batch.targets.reserve(total);
  TESSERA_RETURN_IF_ERROR(
      ForEachRow(at, count, [&](int32_t row) { return AppendRow(row, &batch); }));
  batch.sequence_starts.push_back(static_cast<int32_t>(total));
  return batch;
}

absl::StatusOr<RowTotals> RowStream::Totals(DataPosition at, int64_t count) const {
  RowTotals totals;
  TESSERA_RETURN_IF_ERROR(ForEachRow(at, count, [&](int32_t row) {
    totals.tokens += row_totals_[row].tokens;
    totals.targets += row_totals_[row].targets;
    return absl::OkStatus();
  }));
  return totals;
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
