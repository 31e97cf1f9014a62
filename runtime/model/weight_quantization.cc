#include "runtime/model/weight_quantization.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tessera::model {

std::string WeightQuantization::ToString() const {
  if (stored) {
    return absl::StrCat("stored (the checkpoint's own groups",
                        activations == kernels::ActivationQuant::kInt8 ? ", int8 activations" : "",
                        "; int8 groups of 32 for the others)");
  }
  const char* int8_activations =
      activations == kernels::ActivationQuant::kInt8 ? ", int8 activations" : "";
  if (group_size == 0) {
    return absl::StrCat(kernels::WeightQuantName(quant), " (a scale per row", int8_activations,
                        ")");
  }
  return absl::StrCat(kernels::WeightQuantName(quant), " (groups of ", group_size, int8_activations,
                      ")");
}

absl::StatusOr<std::optional<WeightQuantization>> ParseWeightQuantization(
    absl::string_view quantize, absl::string_view group, absl::string_view activations) {
  WeightQuantization q;
  if (activations != "f32" && activations != "int8" && activations != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("--quantize-activations ", activations, ": expected auto, f32 or int8"));
  }
  if (activations == "auto") activations = quantize == "int4" ? "int8" : "f32";
  if (activations == "int8") {
    if (quantize.empty() || quantize == "none") {
      return absl::InvalidArgumentError(
          "--quantize-activations int8 needs --quantize int8, int4 or stored");
    }
    q.activations = kernels::ActivationQuant::kInt8;
  }
  if (quantize.empty() || quantize == "none") {
    if (!group.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--quantize-group ", group, " needs --quantize int8 or int4"));
    }
    return std::nullopt;
  }
  if (quantize == "int8") {
    q.quant = kernels::WeightQuant::kInt8;
    q.group_size = 0;
  } else if (quantize == "int4") {
    q.quant = kernels::WeightQuant::kInt4;
    q.group_size = 32;
  } else if (quantize == "stored") {
    if (!group.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--quantize-group ", group,
                       " does not go with --quantize stored (the groups are the "
                       "checkpoint's)"));
    }
    q.quant = kernels::WeightQuant::kInt8;
    q.group_size = 32;
    q.stored = true;
    return q;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--quantize ", quantize, ": expected none, int8, int4 or stored"));
  }
  if (group.empty()) return q;
  if (group == "row" && q.quant == kernels::WeightQuant::kInt8) {
    q.group_size = 0;
    return q;
  }
  int64_t size = 0;
  if (!absl::SimpleAtoi(group, &size) || (size != 32 && size != 128)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--quantize-group ", group, ": expected 32 or 128",
        q.quant == kernels::WeightQuant::kInt8 ? " (or row, the default for int8)" : ""));
  }
  q.group_size = size;
  return q;
}

absl::Status CheckQuantizationFits(const ModelConfig& config, const WeightPlan& plan,
                                   const WeightQuantization& quantization) {
  // int8 activations are rounded in blocks of 32 inputs, which must not straddle a split
  // either (groups of 32 and 128 are whole blocks).
  const bool int8_activations = quantization.activations == kernels::ActivationQuant::kInt8;
  if (quantization.group_size == 0 && !int8_activations) return absl::OkStatus();
  const int64_t group = quantization.group_size != 0 ? quantization.group_size : 32;
  const bool groups = quantization.group_size != 0;
  const char* whole = groups ? "groups" : "int8 activation blocks";
  const char* one = groups ? "a group" : "an int8 activation block";
  const int64_t hidden = config.hidden_size;
  const int64_t attention_inputs = int64_t{plan.attention.num_q_heads} * config.head_dim;
  const int64_t mlp_inputs = plan.intermediate_size;
  struct Inputs {
    const char* tensor;
    int64_t inputs;
    bool split;  // row-parallel: the inputs are this rank's share
  };
  const Inputs projections[] = {
      {"self_attn.{q,k,v}_proj.weight", hidden, false},
      {"mlp.{gate,up}_proj.weight", hidden, false},
      {"self_attn.o_proj.weight", attention_inputs, true},
      {"mlp.down_proj.weight", mlp_inputs, true},
  };
  for (const Inputs& p : projections) {
    if (p.inputs % group == 0) continue;
    if (!p.split || plan.tp == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--quantize ", quantization.ToString(), ": model.layers.*.", p.tensor,
                       " has ", p.inputs, " inputs, not a whole number of ", whole, " of ", group));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "--quantize ", quantization.ToString(), ": model.layers.*.", p.tensor, " is split over ",
        plan.tp, " tensor-parallel ranks into ", p.inputs, " inputs each, which would cut ", one,
        " of ", group, " across two ranks; use another TP degree",
        groups ? " or group size" : " or f32 activations"));
  }
  return absl::OkStatus();
}

}  // namespace tessera::model
