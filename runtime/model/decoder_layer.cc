#include "runtime/model/decoder_layer.h"

#include "runtime/core/status_macros.h"

namespace tessera::model {

absl::Status DecoderLayerForward(DecoderLayerRunner& run) {
  // Attention block.
  TESSERA_ASSIGN_OR_RETURN(const Tensor n1, run.NormStream(LayerNorm::kInput));
  TESSERA_ASSIGN_OR_RETURN(const Tensor q, run.Project(LayerProjection::kQ, n1));
  TESSERA_ASSIGN_OR_RETURN(const Tensor k, run.Project(LayerProjection::kK, n1));
  TESSERA_ASSIGN_OR_RETURN(const Tensor v, run.Project(LayerProjection::kV, n1));
  TESSERA_ASSIGN_OR_RETURN(const Tensor attention, run.Attention(q, k, v));
  TESSERA_ASSIGN_OR_RETURN(Tensor o, run.Project(LayerProjection::kO, attention));
  TESSERA_RETURN_IF_ERROR(run.SumOverTp(o));
  TESSERA_RETURN_IF_ERROR(run.AddReplicatedBias(LayerProjection::kO, o));
  TESSERA_ASSIGN_OR_RETURN(o, run.NormSubLayer(LayerNorm::kPostSelfAttention, o));
  // MLP block.
  TESSERA_ASSIGN_OR_RETURN(const Tensor n2, run.AddToStreamAndNorm(o, LayerNorm::kPostAttention));
  TESSERA_ASSIGN_OR_RETURN(const Tensor gate_up, run.Project(LayerProjection::kGateUp, n2));
  TESSERA_ASSIGN_OR_RETURN(const Tensor activated, run.SiluMul(gate_up));
  TESSERA_ASSIGN_OR_RETURN(Tensor down, run.Project(LayerProjection::kDown, activated));
  TESSERA_RETURN_IF_ERROR(run.SumOverTp(down));
  TESSERA_ASSIGN_OR_RETURN(down, run.NormSubLayer(LayerNorm::kPostMlp, down));
  return run.AddToStream(down);
}

}  // namespace tessera::model
