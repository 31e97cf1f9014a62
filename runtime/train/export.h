#ifndef TESSERA_RUNTIME_TRAIN_EXPORT_H_
#define TESSERA_RUNTIME_TRAIN_EXPORT_H_

// A fine-tuned model as a Hugging Face model directory, which transformers and Tessera's own
// generate and serve load like any published checkpoint:
//   model-00001-of-0000N.safetensors ...   the full tensors, under the checkpoint's names,
//   model.safetensors.index.json           in the dtype of the base model (bf16 stays bf16)
//   config.json, generation_config.json, tokenizer files   copied from the base model
// Each tensor is gathered from the TP ranks' shards (vocabulary padding dropped; a tied
// embedding written once, as the base model stores it).

#include <string>

#include "absl/status/status.h"
#include "runtime/train/trainable_model.h"

namespace tessera::train {

// Collective over the model's TP communicator; TP rank 0 writes `out_dir` (through a
// temporary folder renamed into place). `base_dir` is the model the run started from. A
// model with LoRA adapters is exported with them merged: W + (alpha / r) B A.
absl::Status ExportHuggingFace(TrainableModel& model, const std::string& base_dir,
                               const std::string& out_dir);

// A LoRA run's adapters as a PEFT adapter directory (adapter_config.json and
// adapter_model.safetensors, f32, PEFT's tensor names) that peft's PeftModel.from_pretrained
// loads onto the base model. `base_dir` is recorded as base_model_name_or_path.
// FAILED_PRECONDITION for a model without adapters. Collective as above.
absl::Status ExportPeftAdapter(TrainableModel& model, const std::string& base_dir,
                               const std::string& out_dir);

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_EXPORT_H_
