// Tests of runtime/model/weight_quantization.h: the --quantize flags, and the refusal of a
// group that a tensor-parallel split would cut.

#include "runtime/model/weight_quantization.h"

#include "gtest/gtest.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::testing::IsError;

TEST(WeightQuantizationTest, ParsesTheFlags) {
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> none, ParseWeightQuantization("none", ""));
  EXPECT_FALSE(none.has_value());
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> int8, ParseWeightQuantization("int8", ""));
  ASSERT_TRUE(int8.has_value());
  EXPECT_EQ(int8->quant, kernels::WeightQuant::kInt8);
  EXPECT_EQ(int8->group_size, 0);
  EXPECT_EQ(int8->GroupFor(576), 576);
  EXPECT_EQ(int8->ToString(), "int8 (a scale per row)");
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> int4, ParseWeightQuantization("int4", ""));
  EXPECT_EQ(int4->group_size, 32);
  EXPECT_EQ(int4->ToString(), "int4 (groups of 32)");
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> int4_128,
                       ParseWeightQuantization("int4", "128"));
  EXPECT_EQ(int4_128->group_size, 128);
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> int8_32,
                       ParseWeightQuantization("int8", "32"));
  EXPECT_EQ(int8_32->group_size, 32);

  EXPECT_TRUE(IsError(ParseWeightQuantization("fp8", ""), absl::StatusCode::kInvalidArgument,
                      {"--quantize fp8", "int8, int4 or stored"}));
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> stored,
                       ParseWeightQuantization("stored", "", "int8"));
  EXPECT_TRUE(stored->stored);
  EXPECT_EQ(stored->quant, kernels::WeightQuant::kInt8);  // for projections stored otherwise
  EXPECT_EQ(stored->group_size, 32);
  EXPECT_EQ(stored->activations, kernels::ActivationQuant::kInt8);
  EXPECT_NE(stored->ToString().find("the checkpoint's own groups"), std::string::npos);
  EXPECT_TRUE(IsError(ParseWeightQuantization("stored", "128"), absl::StatusCode::kInvalidArgument,
                      {"--quantize-group 128", "--quantize stored"}));
  EXPECT_TRUE(IsError(ParseWeightQuantization("int4", "row"), absl::StatusCode::kInvalidArgument,
                      {"--quantize-group row", "32 or 128"}));
  EXPECT_TRUE(IsError(ParseWeightQuantization("int8", "64"), absl::StatusCode::kInvalidArgument,
                      {"--quantize-group 64"}));
  EXPECT_TRUE(IsError(ParseWeightQuantization("none", "32"), absl::StatusCode::kInvalidArgument,
                      {"--quantize-group 32", "needs --quantize"}));
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> a8,
                       ParseWeightQuantization("int4", "", "int8"));
  EXPECT_EQ(a8->activations, kernels::ActivationQuant::kInt8);
  EXPECT_EQ(a8->ToString(), "int4 (groups of 32, int8 activations)");
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> int8_a8,
                       ParseWeightQuantization("int8", "", "int8"));
  EXPECT_EQ(int8_a8->activations, kernels::ActivationQuant::kInt8);
  EXPECT_EQ(int8_a8->ToString(), "int8 (a scale per row, int8 activations)");
  EXPECT_TRUE(IsError(ParseWeightQuantization("none", "", "int8"),
                      absl::StatusCode::kInvalidArgument, {"needs --quantize int8, int4"}));
  EXPECT_TRUE(IsError(ParseWeightQuantization("int4", "", "fp8"),
                      absl::StatusCode::kInvalidArgument, {"--quantize-activations fp8"}));
  // auto (the flag's default): int8 activations for int4 weights, f32 for the others.
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> int4_auto,
                       ParseWeightQuantization("int4", "128", "auto"));
  EXPECT_EQ(int4_auto->activations, kernels::ActivationQuant::kInt8);
  for (const char* kind : {"int8", "stored"}) {
    ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> other,
                         ParseWeightQuantization(kind, "", "auto"));
    EXPECT_EQ(other->activations, kernels::ActivationQuant::kF32) << kind;
  }
  ASSERT_OK_AND_ASSIGN(std::optional<WeightQuantization> none_auto,
                       ParseWeightQuantization("none", "", "auto"));
  EXPECT_FALSE(none_auto.has_value());
}

// SmolLM2-135M's shape: hidden 576, 9 heads of 64, MLP 1536.
ModelConfig SmolShape() {
  ModelConfig config;
  config.hidden_size = 576;
  config.num_attention_heads = 9;
  config.num_key_value_heads = 3;
  config.head_dim = 64;
  config.intermediate_size = 1536;
  config.num_hidden_layers = 1;
  config.vocab_size = 49152;
  return config;
}

TEST(WeightQuantizationTest, GroupsMustNotStraddleTheTensorParallelSplit) {
  const ModelConfig config = SmolShape();
  ASSERT_OK_AND_ASSIGN(WeightPlan tp1, PlanWeights(config, 1, 0));
  ASSERT_OK_AND_ASSIGN(WeightPlan tp3, PlanWeights(config, 3, 0));
  const WeightQuantization g32{kernels::WeightQuant::kInt4, 32};
  const WeightQuantization g128{kernels::WeightQuant::kInt4, 128};
  const WeightQuantization row{kernels::WeightQuant::kInt8, 0};
  EXPECT_TRUE(CheckQuantizationFits(config, tp1, g32).ok());
  EXPECT_TRUE(CheckQuantizationFits(config, tp3, g32).ok());  // o_proj 192, down 512 a rank
  EXPECT_TRUE(CheckQuantizationFits(config, tp3, row).ok());
  // 576 inputs are 4.5 groups of 128, whatever the split.
  EXPECT_TRUE(IsError(CheckQuantizationFits(config, tp1, g128), absl::StatusCode::kInvalidArgument,
                      {"q,k,v", "576 inputs", "groups of 128"}));
  // 10 heads of 64 at TP 2: o_proj holds 320 inputs a rank, so a group of 128 would cross
  // from one rank to the other.
  ModelConfig wide = config;
  wide.hidden_size = 640;
  wide.num_attention_heads = 10;
  wide.num_key_value_heads = 10;
  wide.intermediate_size = 1280;
  ASSERT_OK_AND_ASSIGN(WeightPlan wide_tp2, PlanWeights(wide, 2, 1));
  EXPECT_TRUE(IsError(CheckQuantizationFits(wide, wide_tp2, g128),
                      absl::StatusCode::kInvalidArgument,
                      {"o_proj", "2 tensor-parallel ranks", "320 inputs", "group of 128"}));
  // int8 activations are rounded in blocks of 32 inputs, so even int8's one scale a row needs
  // whole blocks on each rank: down_proj's 1536 inputs at TP 3 leave 512 a rank (16 blocks);
  // the model below has 1392 inputs, 464 a rank at TP 3 (14.5 blocks).
  const WeightQuantization row_a8{kernels::WeightQuant::kInt8, 0, kernels::ActivationQuant::kInt8};
  EXPECT_TRUE(CheckQuantizationFits(config, tp3, row_a8).ok());
  ModelConfig odd = config;
  odd.intermediate_size = 1392;
  ASSERT_OK_AND_ASSIGN(WeightPlan odd_tp3, PlanWeights(odd, 3, 2));
  EXPECT_TRUE(CheckQuantizationFits(odd, odd_tp3, row).ok());
  EXPECT_TRUE(
      IsError(CheckQuantizationFits(odd, odd_tp3, row_a8), absl::StatusCode::kInvalidArgument,
              {"down_proj", "464 inputs", "int8 activation block of 32", "f32 activations"}));
}

}  // namespace
}  // namespace tessera::model
