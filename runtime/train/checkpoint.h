#ifndef TESSERA_RUNTIME_TRAIN_CHECKPOINT_H_
#define TESSERA_RUNTIME_TRAIN_CHECKPOINT_H_

// Training checkpoints: everything a run needs to continue exactly.
//
//   <output>/checkpoints/step-00000200/
//     model-tp0-of-2.safetensors       TP rank 0's f32 master parameters (its shards)
//     optimizer-tp0-of-2.safetensors   its AdamW moments
//     ...                              the same for every TP rank
//     trainer_state.json               step, data position, what the run was (the model,
//                                      its LoRA options, TP degree, base model directory)
//   <output>/checkpoints/latest        the name of the newest complete checkpoint
//
// A checkpoint is written into step-N.tmp and renamed to step-N only once every rank's part
// is complete on disk, then `latest` is replaced by an atomic rename: a crash at any moment
// leaves the previous checkpoint as the latest, whole. Data-parallel replicas hold the same
// state, so replica 0 writes it; with ZeRO (zero_optimizer.h) the replicas' shares of the
// AdamW moments are gathered first, so the files are the same whether the run sharded them
// or not, and either kind of run resumes from them. The data order is a function of the seed
// and the position, and nothing else in a step draws random numbers, so the position is the
// whole random state.
//
// Resuming checks the checkpoint against this run: the model (architecture, sizes), the TP
// degree (a checkpoint holds TP shards: another degree is refused, naming both) and the data
// (a fingerprint of the examples and batching options). The DP degree may differ.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "runtime/train/lora.h"
#include "runtime/train/trainer.h"

namespace tessera::train {

// Writes the trainer's state at its current step, and keeps only the newest `keep`
// checkpoints (0 keeps all). Collective over `world` (every rank of the job); `tp_rank` and
// `dp_rank` place this rank. Errors name the file.
// `base_model` (the model directory the run started from) is recorded for export.
absl::Status SaveCheckpoint(const std::string& output, Trainer& trainer, comm::Communicator& world,
                            int tp_rank, int dp_rank, uint64_t data_fingerprint, int keep,
                            const std::string& base_model);

// The newest complete checkpoint under `output` (a run directory, or a checkpoint directory
// itself), or NOT_FOUND saying where it looked.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& output);

// What a checkpoint is of: enough to load a model for it (`tessera train export`).
struct CheckpointSummary {
  int64_t step = 0;
  int tp = 1;
  std::string base_model;  // the model directory the run started from
  LoraOptions lora;        // r 0 for a full fine-tune
};
absl::StatusOr<CheckpointSummary> ReadCheckpointSummary(const std::string& checkpoint);

// Loads this rank's trained parameters from `checkpoint` into `model` (errors as
// LoadCheckpoint's, without the data and optimizer).
absl::Status LoadCheckpointWeights(const std::string& checkpoint, TrainableModel& model,
                                   int tp_rank);

// Loads this rank's part of `checkpoint` into the trainer (parameters, moments, step, data
// position). FAILED_PRECONDITION naming what differs when the checkpoint is of another model,
// TP degree or data; DATA_LOSS for a damaged file.
absl::Status LoadCheckpoint(const std::string& checkpoint, Trainer& trainer, int tp_rank,
                            uint64_t data_fingerprint);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_CHECKPOINT_H_
