#ifndef TESSERA_RUNTIME_TRAIN_TRAINABLE_MODEL_H_
#define TESSERA_RUNTIME_TRAIN_TRAINABLE_MODEL_H_

// One tensor-parallel rank's shard of a decoder-only transformer for training: the forward
// with its activations kept, and the explicit backward of every op (no autograd), on the CPU.
// A layer's forward is the serving model's (model/decoder_layer.h), run by TrainingLayer.
//
// The shards are the serving model's (the same weight plan and loader), held as f32 master
// parameters (parameters.h). The tensor-parallel pattern is Megatron's conjugate pair:
//   forward:  the row-parallel o_proj and down_proj outputs are all-reduced, the
//             vocab-parallel embedding too; column-parallel inputs are used as they are;
//   backward: the gradient of each column-parallel layer's input (the normed activations
//             before Q/K/V and before gate/up, and before the LM head) is all-reduced, the
//             row-parallel ones need nothing.
// The loss is a vocab-parallel cross-entropy: each rank's logits shard gives its row maximum,
// sum of exponentials and target logit, gathered over the group (3 floats a row); the full
// logits are never gathered. KV heads replicated across ranks (tp > kv_heads) have their
// gradients summed among the ranks that share them.
//
// Every call below is collective over the tensor-parallel communicator. Thread compatible.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "kernels/cpu/rotary.h"
#include "runtime/core/tensor.h"
#include "runtime/model/model_config.h"
#include "runtime/model/transformer.h"
#include "runtime/model/weight_plan.h"
#include "runtime/model/weight_quantization.h"
#include "runtime/train/batches.h"
#include "runtime/train/lora.h"
#include "runtime/train/parameters.h"
#include "runtime/train/vocab_parallel_loss.h"

namespace tessera::train {

struct TrainableModelOptions {
  // Rows of logits computed at a time by the loss (bounds the (rows, vocab shard) buffer).
  int64_t loss_chunk_rows = 1024;
  // Enabled: the base is frozen and only LoRA adapters on the targeted Linears train.
  LoraOptions lora;
  // With LoRA: the frozen base's layer projections quantized at load (int8 or int4,
  // weight_quantization.h), as serving quantizes them, in a quarter (int8) or about a sixth
  // (int4) of their f32 memory. The forward multiplies by the quantized weights
  // (kernels::QuantizedLinear, as `generate --quantize` does), the backward by their
  // dequantized values, so the adapter learns against the weights it will be served with.
  std::optional<model::WeightQuantization> quantize;
  // With LoRA: the layer projections of this serving model (the same checkpoint, at this TP
  // degree and rank) are the frozen base, shared instead of copied: the forward multiplies by
  // them as the serving model does (packed, bf16 or quantized as it holds them), the backward
  // by their dense values, one projection at a time. `quantize` is then the serving model's.
  // It must outlive the trainable model. CPU only.
  const model::Transformer* frozen_base = nullptr;
  // With LoRA, neither `quantize` nor `frozen_base`: the frozen base's layer projections packed
  // once at load as the forward's product takes them (kernels::PackLinearWeight; the backward
  // reads them packed too) instead of at every product, their dense copies released. The same
  // bits. ExportHuggingFace then cannot merge the adapters (it needs the dense base).
  bool pack_frozen_base = false;
  // Keep only each layer's input in the forward and run the layer again in the backward:
  // activation memory of one layer instead of all, for a third more compute. The gradients
  // are bitwise the same.
  bool recompute = false;
};

class TrainableModel {
 public:
  // Loads this rank's shard of the Hugging Face model in `dir` as f32 parameters. `tp` must
  // be a CPU (MPI) communicator and outlive the model. Errors name the file or tensor.
  static absl::StatusOr<std::unique_ptr<TrainableModel>> Load(
      const std::string& dir, comm::Communicator& tp, const TrainableModelOptions& options = {});
  ~TrainableModel();

  const model::ModelConfig& config() const { return config_; }
  const model::WeightPlan& plan() const { return plan_; }
  ParameterSet& parameters() { return params_; }
  const ParameterSet& parameters() const { return params_; }
  comm::Communicator& tp() { return tp_; }
  const TrainableModelOptions& options() const { return options_; }

  // Forward and backward of one micro-batch. Adds loss_scale * d(sum of its token losses)/dp
  // to every parameter's gradient, so that with loss_scale = 1 / (targets of the global
  // batch) the gradients summed over micro-batches and data-parallel ranks are those of the
  // mean loss over the global batch. Token ids and targets outside the vocabulary, and
  // inconsistent batches, are INVALID_ARGUMENT naming the position.
  //
  // The backward finishes the gradients stage by stage: stage 0 the LM head and final norm,
  // stage 1 + (L - 1 - l) layer l, stage L + 1 the embedding (BackwardStageOf). When given,
  // `stage_done` is called after each stage (the trainer starts that stage's data-parallel
  // all-reduce there); an error it returns ends the call.
  using StageCallback = std::function<absl::Status(int stage)>;
  absl::StatusOr<LossSum> ForwardBackward(const MicroBatch& batch, float loss_scale,
                                          const StageCallback& stage_done = nullptr);
  // The same work run a piece at a time (Pass); `batch` is taken.
  class Pass;
  absl::StatusOr<std::unique_ptr<Pass>> BeginForwardBackward(MicroBatch batch, float loss_scale,
                                                             StageCallback stage_done = nullptr);
  // The pieces of a ForwardBackward pass.
  int pieces_per_pass() const { return 2 * config_.num_hidden_layers + 3; }
  // The stage whose backward finishes the gradient of parameter `name`.
  int BackwardStageOf(absl::string_view name) const;
  int num_backward_stages() const { return config_.num_hidden_layers + 2; }
  // The forward and the loss only (evaluation).
  absl::StatusOr<LossSum> Loss(const MicroBatch& batch);

  // After gradients of every micro-batch are in: sums over the TP group the gradients that
  // each rank holds only in part (whole LoRA factors beside split layers), and those of
  // replicated KV heads over the ranks that share them.
  absl::Status ReducePartialGrads();
  // The same for the parameters of one backward stage only.
  absl::Status ReducePartialGrads(int stage);

 private:
  struct LayerWeights;
  struct SavedLayer;
  struct Forwarded;
  struct PassState;

  TrainableModel(model::ModelConfig config, model::WeightPlan plan, comm::Communicator& tp,
                 ParameterSet params, TrainableModelOptions options);
  absl::Status BindLayers();
  // options_.quantize: the frozen projections of every layer into LayerWeights::q, their f32
  // values released.
  absl::Status QuantizeFrozenBase();
  absl::Status PackFrozenBase();
  // options_.frozen_base: its projections into LayerWeights, the f32 copies released.
  absl::Status ShareFrozenBase();
  absl::Status CheckBatch(const MicroBatch& batch) const;
  // A pass over `batch`: with `loss_scale` forward and backward, without it forward and loss.
  absl::StatusOr<std::unique_ptr<Pass>> BeginPass(MicroBatch batch, std::optional<float> loss_scale,
                                                  StageCallback stage_done);
  absl::StatusOr<LossSum> RunWholePass(MicroBatch batch, std::optional<float> loss_scale,
                                       StageCallback stage_done);
  // Piece `k` of a pass (the order is at PassState in the .cc).
  absl::Status RunPassPiece(int k, PassState& state);
  // How one layer's forward runs (model/decoder_layer.h), keeping what the backward reads.
  class TrainingLayer;
  // Layer l on the residual stream h (T, H): the layer's output, its activations in `saved`.
  absl::StatusOr<Tensor> LayerForward(int l, const Tensor& h, const Tensor& positions,
                                      const Tensor& starts, SavedLayer& saved);
  // The loss over the final normed rows, and with `loss_scale` its gradient into d_normed
  // (before the all-reduce over TP) and into the LM head's gradient.
  absl::StatusOr<LossSum> LossAndHeadBackward(const Tensor& normed, const Tensor& targets,
                                              const float* loss_scale, Tensor* d_normed);
  absl::Status LayerBackward(int l, const Tensor& positions, const Tensor& starts,
                             const SavedLayer& s, Tensor& d_residual);
  absl::Status SumOverTp(Tensor& t);

  model::ModelConfig config_;
  model::WeightPlan plan_;
  comm::Communicator& tp_;
  std::unique_ptr<comm::Communicator> kv_sharers_;  // ranks holding the same KV head, or null
  ParameterSet params_;
  TrainableModelOptions options_;
  kernels::RotaryConfig rotary_;
  std::vector<float> inv_freq_;
  std::vector<LayerWeights> layers_;
};

// One micro-batch's forward and backward run a piece at a time, every piece collective over
// the TP group: the embedding, each layer's forward, the loss with the LM head's and final
// norm's backward, each layer's backward, and the embedding's backward (2L + 3 pieces; the
// evaluation's forward-only pass ends at the loss). A fine-tune inside a serving group runs
// a few pieces between two serving steps; ForwardBackward and Loss run them all at once. The
// model must outlive the pass, and no other pass of the model may run between its pieces.
class TrainableModel::Pass {
 public:
  ~Pass();
  Pass(const Pass&) = delete;
  Pass& operator=(const Pass&) = delete;

  int pieces() const;
  int pieces_done() const { return next_; }
  bool done() const { return next_ >= pieces(); }
  // The next piece; after an error the pass is done (and its gradients incomplete).
  absl::Status RunPiece();
  // Once done without error: the micro-batch's loss.
  const LossSum& loss() const { return loss_; }

 private:
  friend class TrainableModel;
  Pass(TrainableModel& model, std::unique_ptr<PassState> state);

  TrainableModel& model_;
  std::unique_ptr<PassState> state_;
  int next_ = 0;
  LossSum loss_;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_TRAINABLE_MODEL_H_
