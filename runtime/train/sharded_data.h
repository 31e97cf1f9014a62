#ifndef TESSERA_RUNTIME_TRAIN_SHARDED_DATA_H_
#define TESSERA_RUNTIME_TRAIN_SHARDED_DATA_H_

// A JSON Lines file of examples (data.h) read by a group of ranks together, each rank
// tokenizing a share of it:
//   1. every rank indexes the file's lines (JsonlFile: no parsing) and tokenizes non-blank
//      lines r, r + size, r + 2 size, ... of it (rank r of `size`);
//   2. the ranks all-gather a summary of every example (ExampleSummary: its length, what it
//      trains within seq_len, a hash: four integers a line), from which every rank plans the
//      same RowStream (batches.h) without the tokens;
//   3. the stream's rows tokenize their examples again from the file when a rank cuts them
//      (RowStream::Rows), and its step totals come from the summaries (RowStream::Totals).
// So a data-parallel rank tokenizes 1/size of the file at start and, as it trains, only the
// examples of its own micro-batches (and of the evaluation calls it takes), never the whole
// file, and keeps no tokens beyond the rows it is cutting. The stream, its rows and its
// fingerprint are those of RowStream::Create over ReadExamples' examples, whatever the size of
// the group.
//
// Errors are ReadExamples' (data.h). A bad line stops the read on the rank that tokenizes it,
// with that line's message (BadLinePolicy::kStop), and the other ranks with ABORTED saying that
// another rank failed (comm::AgreeOnStatus); skipped lines are counted over the group, and every
// rank's report lists the first ones' messages. Every rank must be able to read the file. A
// row whose line no longer reads as it did (the file was changed during the run) is DATA_LOSS
// naming the line.
//
// Collective over `group`. The tokenizer must outlive the stream; the stream is thread safe
// as RowStream is.

#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/train/batches.h"
#include "runtime/train/data.h"

namespace tessera::train {

// The stream of the examples in `path` for `batching`, read by `group` as above. `report`
// may be null; when given it is overwritten, also when an error is returned.
absl::StatusOr<RowStream> ReadRowStream(const std::string& path,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const ExampleOptions& example_options,
                                        const BatchOptions& batching, comm::Communicator& group,
                                        ReadReport* report);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_SHARDED_DATA_H_
