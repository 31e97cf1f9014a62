#ifndef TESSERA_LAUNCHER_TRAIN_H_
#define TESSERA_LAUNCHER_TRAIN_H_

#include <string>
#include <vector>

namespace tessera::launcher {

// `tessera train`: fine-tunes a Hugging Face model (or the built-in default) on a JSONL
// file, tensor-parallel within each group of --tp ranks and data-parallel across the groups,
// with checkpoints, resume and a Hugging Face export. Returns the process exit code.
int RunTrain(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_TRAIN_H_
