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
// Where the tokens are. The stream is planned from a summary of every example (its length,
// what it trains within seq_len, a hash: ExampleSummary) and asks an ExampleSource for an
// example's tokens only when a row that holds it is cut. The source is the examples in memory,
// or their file read again line by line (sharded_data.h), so that a data-parallel rank
// tokenizes the examples of its own rows and not the whole file. Totals() counts a span of
// rows from the summaries alone.
//
// Thread safety: a RowStream is immutable after Create (its cache of epoch orders locks
// itself); its const methods may run on many threads at once. Copies share the cache.

#include <cstdint>
#include <memory>
#include <utility>
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

// What a stream needs of an example before its tokens.
struct ExampleSummary {
  int64_t line = 0;          // 1-based line in its file, for messages
  int64_t tokens = 0;        // all of its tokens (a row keeps the first seq_len)
  int64_t kept_targets = 0;  // trained labels among labels[1, min(tokens, seq_len))
  uint64_t hash = 0;         // of its tokens and labels, the same on every build and machine
};
// `example`'s summary for rows of `seq_len` tokens (its tokens and labels of equal length).
ExampleSummary SummarizeExample(const Example& example, int seq_len);

// Where a stream gets an example's tokens and labels when a row needs them. Thread safe.
class ExampleSource {
 public:
  virtual ~ExampleSource() = default;
  // Example `index` (its place among the summaries the stream was made from): a pointer to one
  // the source keeps, or to *scratch filled with it. Errors name the example's file and line.
  virtual absl::StatusOr<const Example*> Get(int64_t index, Example* scratch) const = 0;
};

// The non-padding tokens and the targets of a span of rows.
struct RowTotals {
  int64_t tokens = 0;
  int64_t targets = 0;
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
  // The stream of the examples that `summaries` describe (summarized for options.seq_len), whose
  // tokens `source` gives when a row needs them. Errors as above (an example without a target
  // within seq_len, kept_targets 0, is left out).
  static absl::StatusOr<RowStream> Create(const std::vector<ExampleSummary>& summaries,
                                          std::shared_ptr<const ExampleSource> source,
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
  // whose order is not among the two cached. An error of the example source (a file changed
  // under a run) is returned as it is.
  absl::StatusOr<MicroBatch> Rows(DataPosition at, int64_t count) const;
  // The non-padding tokens and targets of those rows (Rows(at, count)'s target_count), from
  // the summaries: no tokens are read. Errors as Rows'.
  absl::StatusOr<RowTotals> Totals(DataPosition at, int64_t count) const;

  // The position `rows` rows after `at` (rows >= 0; a negative count goes back).
  DataPosition Advance(DataPosition at, int64_t rows) const;

  // Where data-parallel rank `dp_rank`'s micro-batch `micro_index` (of grad_accum) of the step
  // starting at `step_start` begins (see the top of this file).
  DataPosition RankMicroBatchStart(DataPosition step_start, int dp_rank, int micro_index,
                                   int micro_batch, int grad_accum) const;

 private:
  // A document of a row: the first `length` tokens of kept example `example`.
  struct Segment {
    int32_t example = 0;
    int32_t length = 0;
  };
  struct OrderCache;

  RowStream() = default;
  // Checks a span of rows as Rows documents.
  absl::Status CheckSpan(DataPosition at, int64_t count) const;
  // Calls visit(row) for the packed rows of `count` rows from `at` in the stream's order.
  template <typename Visit>
  absl::Status ForEachRow(DataPosition at, int64_t count, Visit visit) const;
  // The order of the rows in `epoch`: order[i] is the packed row visited i-th.
  std::shared_ptr<const std::vector<int32_t>> EpochOrder(int64_t epoch) const;
  absl::Status AppendRow(int32_t row, MicroBatch* batch) const;

  std::shared_ptr<const ExampleSource> source_;
  // Of the examples kept (those with a target within seq_len), in summary order: the index
  // the source knows each by, and its line.
  std::vector<int64_t> kept_;
  std::vector<int64_t> kept_lines_;
  BatchOptions options_;
  std::vector<Segment> segments_;      // the rows' documents, row by row
  std::vector<int64_t> row_begin_;     // (rows+1): row r holds segments_[row_begin_[r], [r+1])
  std::vector<RowTotals> row_totals_;  // (rows)
  int64_t truncated_examples_ = 0;
  int64_t dropped_examples_ = 0;
  int64_t tokens_per_epoch_ = 0;
  int64_t targets_per_epoch_ = 0;
  uint64_t fingerprint_ = 0;
  std::shared_ptr<OrderCache> cache_;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_BATCHES_H_
