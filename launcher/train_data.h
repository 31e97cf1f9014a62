#ifndef TESSERA_LAUNCHER_TRAIN_DATA_H_
#define TESSERA_LAUNCHER_TRAIN_DATA_H_

// A fine-tune's data files as the trainer's row stream, for `tessera train` and for a fine-tune
// inside a serving group (serving_finetune.h) alike.

#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/model/model_config.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "runtime/train/batches.h"
#include "runtime/train/data.h"

namespace tessera::launcher {

// How the data files' lines become examples for this model (runtime/train/data.h): its
// vocabulary, its bos and eos, and its chat format for {"messages"} lines. A chat template
// that cannot be used fails only such lines, saying why: a dataset of text or
// prompt/completion trains whatever the template holds. `on_bad_line`: "stop" or "skip"
// (INVALID_ARGUMENT naming --on-bad-line otherwise).
absl::StatusOr<train::ExampleOptions> ExampleOptionsFor(
    const std::string& on_bad_line, const model::ModelConfig& model_config,
    const tokenizer::Tokenizer& tok, const tokenizer::TokenizerConfig& tokenizer_config);

// `path` as a row stream batched as `batching` says (its pad token is set here: the model's
// eos), every rank of `world` tokenizing a share of it (sharded_data.h). Collective over
// `world`. When `who` is not empty, the reader's warnings and a summary go to stderr under it.
absl::StatusOr<train::RowStream> ReadTrainRows(const std::string& path,
                                               train::BatchOptions batching,
                                               const train::ExampleOptions& options,
                                               const tokenizer::Tokenizer& tok,
                                               comm::Communicator& world, const std::string& who);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_TRAIN_DATA_H_
