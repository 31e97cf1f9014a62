#ifndef TESSERA_RUNTIME_TRAIN_BATCHES_H_
#define TESSERA_RUNTIME_TRAIN_BATCHES_H_

// Training examples as a deterministic stream of rows, cut into micro-batches.
//
// The stream. Examples are packed into rows of seq_len tokens: greedily, in the order of a
// shuffle by `seed`, an example going into the current row while it fits and otherwise
// starting the next (with packing off, one example a row). An example longer than seq_len is
// truncated to its first seq_len tokens (counted in truncated_examples()); one whose kept
// part then has no trained target is left out (counted in dropped_examples()). Epoch e visits
// every row once, in an order shuffled by (seed, e), and the stream then moves on to epoch
// e+1. The packing is made once, so every epoch has the same rows_per_epoch() and a position
// is plain arithmetic; what changes between epochs is the order of the rows, hence which
// examples share a step. (Documents never see each other inside a row, see MicroBatch, so
// which examples share a row does not change any gradient.) Shuffles use their own generator
// (SplitMix64 and Fisher-Yates), so every rank and every standard library builds the same
// stream from the same examples and options.
//
// Data parallelism. An optimizer step takes the next G = micro_batch * grad_accum * dp rows of
// the stream from its position P. Data-parallel rank d's micro-batch a (a < grad_accum) is
//   Rows(RankMicroBatchStart(P, d, a, micro_batch, grad_accum), micro_batch)
// that is the rows [P + (d * grad_accum + a) * micro_batch, ... + micro_batch), and the next
// step starts at Advance(P, G). So a step is made of the same G rows however it is split:
// micro-batch 2 x accumulation 4 == micro-batch 8 == DP 2 x micro-batch 4, rank by rank and
// micro-batch by micro-batch in that order. Trainers that normalize the loss by the step's
// number of targets get the same loss and gradients from every split.
//
// Resuming. A DataPosition (with the same examples and options, which Fingerprint() lets a
// checkpoint check) gives back exactly the rows the run would have seen next.
//
// Thread safety: a RowStream is immutable after Create (its cache of epoch orders locks
// itself); its const methods may run on many threads at once. Copies share the cache.

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/train/data.h"

namespace tessera::train {

// A micro-batch in the flat form the trainer consumes: `rows` rows of seq_len tokens laid back
// to back (T = rows * seq_len), each row holding one or more documents (examples) and, when
// they do not fill it, padding. Attention stays inside a document.
struct MicroBatch {
  std::vector<int32_t> tokens;     // (T)
  std::vector<int32_t> positions;  // (T): restart at 0 at every document (padding included)
  // (S+1): the document boundaries in [0, T], from 0 to T; padding at the end of a row is a
  // document of its own, and a row boundary is always a document boundary.
  std::vector<int32_t> sequence_starts;
  // (T): targets[t] = labels[t+1] when t+1 is in the same document, else kIgnoreLabel (so
  // the last token of a document, and all padding, have none).
  std::vector<int32_t> targets;
  int64_t target_count = 0;  // entries of targets != kIgnoreLabel
};

struct BatchOptions {
  int seq_len = 1024;        // tokens a row; at least 2
  bool packing = true;       // several examples a row; else one example a row, padded
  uint64_t seed = 1;         // the packing order and every epoch's row order
  int32_t pad_token_id = 0;  // the token of padding (it has no targets); not negative
};

// Where a run is in its data: enough to resume exactly. `row` is the next row of `epoch`, in
// [0, rows_per_epoch()).
struct DataPosition {
  int64_t epoch = 0;
  int64_t row = 0;
  friend bool operator==(const DataPosition&, const DataPosition&) = default;
};

class RowStream {
 public:
  // INVALID_ARGUMENT for seq_len < 2, a negative pad_token_id, no examples, an example whose
  // tokens and labels differ in length, or examples that all have to be left out.
  static absl::StatusOr<RowStream> Create(std::vector<Example> examples,
                                          const BatchOptions& options);

  int64_t rows_per_epoch() const { return static_cast<int64_t>(row_begin_.size()) - 1; }
  // Examples longer than seq_len (truncated in every epoch).
  int64_t truncated_examples() const { return truncated_examples_; }
  // Examples left out because their first seq_len tokens have no trained target.
  int64_t dropped_examples() const { return dropped_examples_; }
  // Examples in the stream (each once an epoch).
  int64_t example_count() const;
  // Tokens of an epoch that are not padding, and targets of an epoch.
  int64_t tokens_per_epoch() const { return tokens_per_epoch_; }
  int64_t targets_per_epoch() const { return targets_per_epoch_; }
  const BatchOptions& options() const { return options_; }
  // A hash of the examples and options (not of the tokenizer): equal for streams that give
  // the same rows. Stable across runs, builds and machines.
  uint64_t Fingerprint() const { return fingerprint_; }

  // The micro-batch of `count` consecutive rows of the global stream starting at `at` (rows
  // advance across epochs). Does not change the stream. INVALID_ARGUMENT for count < 1, a
  // position outside the stream (negative epoch, row outside [0, rows_per_epoch())), or more
  // than 2^31 - 1 tokens. Costs O(count * seq_len), plus O(rows_per_epoch()) for an epoch
  // whose order is not among the two cached.
  absl::StatusOr<MicroBatch> Rows(DataPosition at, int64_t count) const;

  // The position `rows` rows after `at` (rows >= 0; a negative count goes back).
  DataPosition Advance(DataPosition at, int64_t rows) const;

  // Where data-parallel rank `dp_rank`'s micro-batch `micro_index` (of grad_accum) of the step
  // starting at `step_start` begins (see the top of this file).
  DataPosition RankMicroBatchStart(DataPosition step_start, int dp_rank, int micro_index,
                                   int micro_batch, int grad_accum) const;

 private:
  // A document of a row: the first `length` tokens of examples_[example].
  struct Segment {
    int32_t example = 0;
    int32_t length = 0;
  };
  struct OrderCache;

  RowStream() = default;
  // The order of the rows in `epoch`: order[i] is the packed row visited i-th.
  std::shared_ptr<const std::vector<int32_t>> EpochOrder(int64_t epoch) const;
  void AppendRow(int32_t row, MicroBatch* batch) const;

  std::vector<Example> examples_;
  BatchOptions options_;
  std::vector<Segment> segments_;   // the rows' documents, row by row
  std::vector<int64_t> row_begin_;  // (rows+1): row r holds segments_[row_begin_[r], [r+1])
  int64_t truncated_examples_ = 0;
  int64_t dropped_examples_ = 0;
  int64_t tokens_per_epoch_ = 0;
  int64_t targets_per_epoch_ = 0;
  uint64_t fingerprint_ = 0;
  std::shared_ptr<OrderCache> cache_;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_BATCHES_H_
