// Tests of runtime/model/gptq_checkpoint.h against the GPTQ checkpoints of tests/golden/gptq,
// which GPTQModel quantized and dequantized (make_gptq_golden.py there): every projection
// dequantizes bit for bit as GPTQModel does (f32 and f16), slices of every tensor-parallel
// plan equal the slices of the whole, stored int4 groups reproduce the weights exactly, and
// damaged checkpoints and configurations are refused with errors that name what is wrong.

#include "runtime/model/gptq_checkpoint.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/model/model_config.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/weight_loader.h"
#include "runtime/model/weight_plan.h"
#include "tests/model/model_test_util.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::model::testing::ReadBytes;
using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::Contains;
using ::tessera::testing::IsError;
using Json = nlohmann::json;

// name: group_size 32, act-order, symmetric, v1 zero points; ...
const std::vector<std::string>& Variants() {
  static const std::vector<std::string> names = {"llama_g32_act_order_sym", "llama_g128_asym",
                                                 "llama_g64_act_order_asym_v2",
                                                 "llama_g32_asym_v2"};
  return names;
}

std::string GoldenDir(const std::string& name) {
  return absl::StrCat(TESSERA_GPTQ_GOLDEN_DIR, "/", name);
}

Json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return Json::parse(text.str());
}

// FNV-1a 64 of a tensor's bytes, as make_gptq_golden.py computes it.
std::string Fnv1a64(const Tensor& tensor) {
  uint64_t h = 0xCBF29CE484222325ull;
  const auto* bytes = static_cast<const uint8_t*>(tensor.data());
  for (uint64_t i = 0; i < tensor.nbytes(); ++i) {
    h ^= bytes[i];
    h *= 0x100000001B3ull;
  }
  return absl::StrFormat("%016x", h);
}

// The part of a whole [out, in] f32 weight that `slice` takes.
std::vector<float> SliceOf(const Tensor& whole, const TensorSlice& slice) {
  const int64_t out = whole.dim(0), in = whole.dim(1);
  const float* w = whole.data<float>();
  std::vector<float> result;
  std::vector<IndexRange> rows = {{0, out}}, cols = {{0, in}};
  if (slice.kind == TensorSlice::Kind::kRows) rows = slice.ranges;
  if (slice.kind == TensorSlice::Kind::kColumns) cols = slice.ranges;
  for (const IndexRange& r : rows) {
    for (int64_t o = r.begin; o < r.end; ++o) {
      for (const IndexRange& c : cols) {
        for (int64_t i = c.begin; i < c.end; ++i) result.push_back(w[o * in + i]);
      }
    }
  }
  return result;
}

std::vector<float> Values(const Tensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

const GptqCheckpoint* GptqSource(const Checkpoint& checkpoint, const std::string& name) {
  return dynamic_cast<const GptqCheckpoint*>(checkpoint.FileOf(name));
}

TEST(GptqConfig, ReadsGptqModelsFields) {
  ASSERT_OK_AND_ASSIGN(std::optional<GptqConfig> config,
                       LoadGptqConfig(GoldenDir("llama_g64_act_order_asym_v2")));
  ASSERT_TRUE(config.has_value());
  EXPECT_EQ(config->bits, 4);
  EXPECT_EQ(config->group_size, 64);
  EXPECT_TRUE(config->desc_act);
  EXPECT_FALSE(config->sym);
  EXPECT_EQ(config->format, GptqConfig::Format::kGptqV2);

  ASSERT_OK_AND_ASSIGN(config, ParseGptqConfig(R"({"hidden_size": 8})", "config.json"));
  EXPECT_FALSE(config.has_value());
  // transformers' GPTQConfig: checkpoint_format only; group_size -1; defaults elsewhere.
  ASSERT_OK_AND_ASSIGN(config, ParseGptqConfig(R"({"quantization_config": {"quant_method":
      "gptq", "bits": 4, "group_size": -1}})",
                                               "config.json"));
  ASSERT_TRUE(config.has_value());
  EXPECT_EQ(config->group_size, -1);
  EXPECT_FALSE(config->desc_act);
  EXPECT_TRUE(config->sym);
  EXPECT_EQ(config->format, GptqConfig::Format::kGptq);
}

TEST(GptqConfig, RefusesWhatItCannotRead) {
  struct Case {
    std::string fields;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {R"("quant_method": "awq", "bits": 4)", {"quant_method", "awq"}},
      {R"("quant_method": "gptq", "bits": 8)", {"quantization_config.bits", "8"}},
      {R"("quant_method": "gptq", "bits": 3)", {"quantization_config.bits", "3"}},
      {R"("quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin")",
       {"checkpoint_format", "marlin"}},
      {R"("quant_method": "gptq", "bits": 4, "format": "gptq_p")", {"format", "gptq_p"}},
      {R"("quant_method": "gptq", "bits": 4, "is_marlin_format": true)", {"is_marlin_format"}},
      {R"("quant_method": "gptq", "bits": 4, "pack_dtype": "int16")", {"pack_dtype", "int16"}},
      {R"("quant_method": "gptq", "bits": 4, "group_size": 0)", {"group_size", "0"}},
      {R"("quant_method": "gptq", "bits": 4, "desc_act": "yes")", {"desc_act", "yes"}},
      {R"("quant_method": "gptq", "bits": 4, "dynamic": {"-:.*down": {}})", {"dynamic"}},
  };
  for (const Case& c : cases) {
    const std::string text = absl::StrCat(R"({"quantization_config": {)", c.fields, "}}");
    auto parsed = ParseGptqConfig(text, "the/config.json");
    ASSERT_FALSE(parsed.ok()) << text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << parsed.status();
    for (const std::string& part : c.message) {
      EXPECT_TRUE(Contains(std::string(parsed.status().message()), part));
    }
    EXPECT_TRUE(Contains(std::string(parsed.status().message()), "the/config.json"));
  }
}

// Every projection of every golden checkpoint equals GPTQModel's dequantization bit for bit:
// in f32 (exact) and in f16 (GPTQModel's own arithmetic).
TEST(GptqCheckpoint, DequantizesAsTheReference) {
  for (const std::string& variant : Variants()) {
    SCOPED_TRACE(variant);
    const Json golden = ReadJson(GoldenDir(variant) + "/golden.json");
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint,
                         Checkpoint::Open(GoldenDir(variant)));
    ASSERT_EQ(golden["dequantized"].size(), 7u);
    for (const auto& [name, expected] : golden["dequantized"].items()) {
      SCOPED_TRACE(name);
      const GptqCheckpoint* source = GptqSource(*checkpoint, name);
      ASSERT_NE(source, nullptr);
      EXPECT_TRUE(source->IsQuantized(name));
      ASSERT_OK_AND_ASSIGN(TensorInfo info, checkpoint->Info(name));
      EXPECT_EQ(info.dtype, DType::kF32);
      EXPECT_EQ(info.shape, (Shape{expected["shape"][0], expected["shape"][1]}));

      ASSERT_OK_AND_ASSIGN(Tensor f32, checkpoint->Read(name));
      EXPECT_EQ(f32.dtype(), DType::kF32);
      EXPECT_EQ(Fnv1a64(f32), expected["f32_fnv1a64"].get<std::string>());
      const std::vector<float> head = expected["head"].get<std::vector<float>>();
      for (size_t i = 0; i < head.size(); ++i) EXPECT_EQ(f32.data<float>()[i], head[i]) << i;

      ASSERT_OK_AND_ASSIGN(Tensor f16, checkpoint->Read(name, TensorSlice(), DType::kF16));
      EXPECT_EQ(Fnv1a64(f16), expected["f16_fnv1a64"].get<std::string>());
      ASSERT_OK_AND_ASSIGN(Tensor bf16, checkpoint->Read(name, TensorSlice(), DType::kBF16));
      EXPECT_EQ(bf16.dtype(), DType::kBF16);
      EXPECT_TRUE(IsError(checkpoint->Read(name, TensorSlice(), DType::kI32),
                          absl::StatusCode::kInvalidArgument, {name, "i32"}));
    }
    // The stored quartets are not shown; the float tensors are, as stored.
    EXPECT_FALSE(checkpoint->Contains("model.layers.0.mlp.down_proj.qweight"));
    EXPECT_FALSE(checkpoint->Contains("model.layers.0.mlp.down_proj.g_idx"));
    ASSERT_OK_AND_ASSIGN(TensorInfo norm, checkpoint->Info("model.norm.weight"));
    EXPECT_EQ(norm.dtype, DType::kF16);
  }
}

// Every rank of TP 2 and 4 reads exactly its part of the whole weight, and the weight loader
// accepts the checkpoint as the model's.
TEST(GptqCheckpoint, TensorParallelSlicesEqualSlicesOfTheWhole) {
  for (const std::string& variant : Variants()) {
    SCOPED_TRACE(variant);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint,
                         Checkpoint::Open(GoldenDir(variant)));
    ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(GoldenDir(variant)));
    for (int tp : {1, 2, 4}) {
      for (int rank = 0; rank < tp; ++rank) {
        ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(config, tp, rank));
        ASSERT_OK(CheckCheckpoint(*checkpoint, plan));
        int quantized = 0;
        for (const PlannedTensor& planned : plan.tensors) {
          const GptqCheckpoint* source = GptqSource(*checkpoint, planned.name);
          ASSERT_NE(source, nullptr);
          if (!source->IsQuantized(planned.name)) continue;
          ++quantized;
          SCOPED_TRACE(absl::StrCat(planned.name, " tp ", tp, " rank ", rank));
          ASSERT_OK_AND_ASSIGN(Tensor whole, checkpoint->Read(planned.name));
          ASSERT_OK_AND_ASSIGN(Tensor part, checkpoint->Read(planned.name, planned.slice));
          EXPECT_EQ(part.shape(), planned.rank_shape);
          EXPECT_EQ(Values(part), SliceOf(whole, planned.slice));
        }
        EXPECT_EQ(quantized, 7);
      }
    }
  }
}

// Column ranges need not fall on the 8 inputs of a packed word; several row ranges (a fused
// weight's parts) come one after another.
TEST(GptqCheckpoint, ReadsUnalignedAndFusedSlices) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint,
                       Checkpoint::Open(GoldenDir("llama_g32_act_order_sym")));
  const std::string name = "model.layers.0.mlp.down_proj.weight";  // [64, 256]
  ASSERT_OK_AND_ASSIGN(Tensor whole, checkpoint->Read(name));
  const std::vector<TensorSlice> slices = {
      TensorSlice::Columns(3, 29),
      TensorSlice{TensorSlice::Kind::kColumns, {{250, 256}, {0, 5}}, 0},
      TensorSlice{TensorSlice::Kind::kRows, {{0, 8}, {40, 43}}, 0},
      TensorSlice::Rows(63, 64),
  };
  for (const TensorSlice& slice : slices) {
    SCOPED_TRACE(slice.ToString());
    ASSERT_OK_AND_ASSIGN(Tensor part, checkpoint->Read(name, slice));
    EXPECT_EQ(Values(part), SliceOf(whole, slice));
  }
  // A padded slice (a vocabulary shard) has zero rows past the stored ones.
  ASSERT_OK_AND_ASSIGN(
      Tensor padded, checkpoint->Read(name, TensorSlice{TensorSlice::Kind::kRows, {{60, 64}}, 6}));
  ASSERT_EQ(padded.shape(), (Shape{6, 256}));
  std::vector<float> expected = SliceOf(whole, TensorSlice::Rows(60, 64));
  expected.resize(6 * 256, 0.0f);
  EXPECT_EQ(Values(padded), expected);
  EXPECT_TRUE(IsError(checkpoint->Read(name, TensorSlice::Columns(0, 257)),
                      absl::StatusCode::kInvalidArgument, {name}));
}

// Without act-order and with groups of 32 or 128, the groups come out as stored: codes 0..15,
// and scale * code + offset is the dequantized weight exactly.
TEST(GptqCheckpoint, StoredGroupsReproduceTheWeights) {
  struct Case {
    std::string variant, name;
    TensorSlice slice;
    int64_t group_size;
  };
  const std::vector<Case> cases = {
      {"llama_g32_asym_v2", "model.layers.0.self_attn.q_proj.weight", TensorSlice(), 32},
      {"llama_g32_asym_v2", "model.layers.0.mlp.gate_proj.weight", TensorSlice::Rows(0, 128), 32},
      {"llama_g32_asym_v2", "model.layers.0.mlp.down_proj.weight", TensorSlice::Columns(64, 128),
       32},
      {"llama_g32_asym_v2", "model.layers.0.self_attn.o_proj.weight",
       TensorSlice{TensorSlice::Kind::kColumns, {{32, 64}, {0, 32}}, 0}, 32},
      // v1 zero points, some of them 0 (stored as -1, borrowing from the next field).
      {"llama_g128_asym", "model.layers.0.mlp.down_proj.weight", TensorSlice(), 128},
      {"llama_g128_asym", "model.layers.0.mlp.down_proj.weight", TensorSlice::Columns(128, 256),
       128},
      {"llama_g128_asym", "model.layers.0.mlp.down_proj.weight",
       TensorSlice{TensorSlice::Kind::kRows, {{0, 16}, {32, 40}}, 0}, 128},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.variant, " ", c.name, " ", c.slice.ToString()));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint,
                         Checkpoint::Open(GoldenDir(c.variant)));
    ASSERT_OK_AND_ASSIGN(Tensor weights, checkpoint->Read(c.name, c.slice));
    ASSERT_OK_AND_ASSIGN(std::optional<StoredGroups> groups,
                         checkpoint->ReadStoredGroups(c.name, c.slice));
    ASSERT_TRUE(groups.has_value());
    EXPECT_EQ(checkpoint->StoredFormat(c.name),
              (StoredGroupFormat{kernels::WeightQuant::kInt4, c.group_size}));
    EXPECT_EQ(groups->quant, kernels::WeightQuant::kInt4);
    EXPECT_EQ(groups->group_size, c.group_size);
    ASSERT_EQ(groups->rows, weights.dim(0));
    ASSERT_EQ(groups->cols, weights.dim(1));
    const int64_t per_row = groups->cols / c.group_size;
    ASSERT_EQ(groups->codes.size(), static_cast<size_t>(groups->rows * groups->cols));
    ASSERT_EQ(groups->scales.size(), static_cast<size_t>(groups->rows * per_row));
    ASSERT_EQ(groups->offsets.size(), groups->scales.size());
    int64_t mismatches = 0;
    for (int64_t r = 0; r < groups->rows; ++r) {
      for (int64_t i = 0; i < groups->cols; ++i) {
        const int8_t code = groups->codes[r * groups->cols + i];
        ASSERT_GE(code, 0);
        ASSERT_LE(code, 15);
        const int64_t g = r * per_row + i / c.group_size;
        const float w = groups->scales[g] * code + groups->offsets[g];
        mismatches += w != weights.data<float>()[r * groups->cols + i];
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST(GptqCheckpoint, StoredGroupsOnlyWhereTheKernelsTakeThem) {
  auto groups_of = [](const std::string& variant, const std::string& name,
                      const TensorSlice& slice) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(GoldenDir(variant));
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    return (*checkpoint)->ReadStoredGroups(name, slice);
  };
  // Act-order, group size 64, and inputs (64) fewer than a group of 128: dequantize instead.
  for (const auto& [variant, name] : std::vector<std::pair<std::string, std::string>>{
           {"llama_g32_act_order_sym", "model.layers.0.mlp.down_proj.weight"},
           {"llama_g64_act_order_asym_v2", "model.layers.0.mlp.up_proj.weight"},
           {"llama_g128_asym", "model.layers.0.self_attn.q_proj.weight"},
           {"llama_g32_asym_v2", "model.norm.weight"},
           {"llama_g32_asym_v2", "model.embed_tokens.weight"}}) {
    SCOPED_TRACE(variant + " " + name);
    auto groups = groups_of(variant, name, TensorSlice());
    ASSERT_TRUE(groups.ok()) << groups.status();
    EXPECT_FALSE(groups->has_value());
  }
  // A row-parallel split that cuts a group: TP 4 of down_proj's 256 inputs in groups of 128.
  EXPECT_TRUE(IsError(groups_of("llama_g128_asym", "model.layers.0.mlp.down_proj.weight",
                                TensorSlice::Columns(64, 128)),
                      absl::StatusCode::kInvalidArgument,
                      {"model.layers.0.mlp.down_proj.weight", "columns [64,128)", "128"}));
  EXPECT_TRUE(
      IsError(groups_of("llama_g32_asym_v2", "model.layers.0.nothing.weight", TensorSlice()),
              absl::StatusCode::kNotFound, {"model.layers.0.nothing.weight"}));
}

// ---------------------------------------------------------------------------------------------
// Damaged checkpoints

using TensorList = std::vector<std::pair<std::string, Tensor>>;

// The golden checkpoint's tensors as stored.
TensorList StoredTensors(const std::string& variant) {
  TensorList tensors;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(GoldenDir(variant) + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  for (const TensorInfo& info : (*file)->tensors()) {
    absl::StatusOr<Tensor> tensor = (*file)->Read(info.name);
    EXPECT_TRUE(tensor.ok()) << tensor.status();
    tensors.emplace_back(info.name, *std::move(tensor));
  }
  return tensors;
}

Tensor& Find(TensorList& tensors, const std::string& name) {
  for (auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  ADD_FAILURE() << "no " << name;
  return tensors.front().second;
}

void Remove(TensorList& tensors, const std::string& name) {
  std::erase_if(tensors, [&](const auto& entry) { return entry.first == name; });
}

// `dir` holding `tensors` as model.safetensors and the variant's config.json.
void WriteCheckpoint(const ScratchDir& dir, const TensorList& tensors, const std::string& variant,
                     const std::string& config = "") {
  ASSERT_OK(WriteSafetensors(dir.File("model.safetensors"), tensors));
  WriteBytes(dir.File("config.json"),
             config.empty() ? ReadBytes(GoldenDir(variant) + "/config.json") : config);
}

TEST(GptqCheckpoint, RefusesDamagedQuartets) {
  const std::string variant = "llama_g32_act_order_sym";
  const std::string down = "model.layers.0.mlp.down_proj";
  struct Case {
    std::string what;
    std::function<void(TensorList&)> damage;
    absl::StatusCode code;
    std::vector<std::string> message;
  };
  const std::vector<Case> cases = {
      {"qzeros short of a group",
       [&](TensorList& t) {
         Find(t, down + ".qzeros") = *Tensor::Zeros(DType::kI32, {7, 8});
       },
       absl::StatusCode::kDataLoss,
       {down + ".qzeros", "[7,8]", "[8,8]"}},
      {"scales of the wrong width",
       [&](TensorList& t) {
         Find(t, down + ".scales") = *Tensor::Zeros(DType::kF16, {8, 60});
       },
       absl::StatusCode::kDataLoss,
       {down + ".scales", "[8,60]", "[8,64]"}},
      {"g_idx out of range",
       [&](TensorList& t) { Find(t, down + ".g_idx").data<int32_t>()[5] = 99; },
       absl::StatusCode::kDataLoss,
       {down + ".g_idx", "input 5", "group 99", "[0, 8)"}},
      {"negative g_idx",
       [&](TensorList& t) { Find(t, down + ".g_idx").data<int32_t>()[0] = -1; },
       absl::StatusCode::kDataLoss,
       {down + ".g_idx", "group -1"}},
      {"g_idx of the wrong length",
       [&](TensorList& t) { Find(t, down + ".g_idx") = *Tensor::Zeros(DType::kI32, {128}); },
       absl::StatusCode::kDataLoss,
       {down + ".g_idx", "128 inputs"}},
      {"qweight not i32",
       [&](TensorList& t) {
         Find(t, down + ".qweight") = *Tensor::Zeros(DType::kF32, {32, 64});
       },
       absl::StatusCode::kDataLoss,
       {down + ".qweight", "f32", "i32"}},
      {"no scales",
       [&](TensorList& t) { Remove(t, down + ".scales"); },
       absl::StatusCode::kDataLoss,
       {down + ".qweight", down + ".scales"}},
      {"qzeros without qweight",
       [&](TensorList& t) { Remove(t, down + ".qweight"); },
       absl::StatusCode::kDataLoss,
       {down + ".qweight", "has no"}},
      {"a float weight beside the quantized one",
       [&](TensorList& t) {
         t.emplace_back(down + ".weight", *Tensor::Zeros(DType::kF16, {64, 256}));
       },
       absl::StatusCode::kInvalidArgument,
       {down + ".weight", down + ".qweight"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ScratchDir dir;
    TensorList tensors = StoredTensors(variant);
    c.damage(tensors);
    WriteCheckpoint(dir, tensors, variant);
    std::vector<std::string> parts = c.message;
    parts.push_back("model.safetensors");
    auto checkpoint = Checkpoint::Open(dir.path());
    ASSERT_FALSE(checkpoint.ok());
    EXPECT_EQ(checkpoint.status().code(), c.code) << checkpoint.status();
    for (const std::string& part : parts) {
      EXPECT_TRUE(Contains(std::string(checkpoint.status().message()), part));
    }
  }
}

TEST(GptqCheckpoint, RefusesAConfigThatDisagreesWithTheFile) {
  const std::string variant = "llama_g32_act_order_sym";
  Json config = ReadJson(GoldenDir(variant) + "/config.json");
  {
    // The file's groups are of 32 inputs; config.json says 64.
    config["quantization_config"]["group_size"] = 64;
    ScratchDir dir;
    WriteCheckpoint(dir, StoredTensors(variant), variant, config.dump());
    EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss,
                        {".qzeros", "group_size 64", "config.json"}));
  }
  {
    config["quantization_config"]["group_size"] = 32;
    config["quantization_config"]["bits"] = 8;
    ScratchDir dir;
    WriteCheckpoint(dir, StoredTensors(variant), variant, config.dump());
    EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument,
                        {"config.json", "quantization_config.bits", "8"}));
  }
}

// AutoGPTQ stores an all-zero f16 bias beside every projection it quantizes; a Llama without
// biases does not show them (and the weight plan accepts the checkpoint). A bias with values
// stays, for the weight plan to refuse.
TEST(GptqCheckpoint, HidesTheZeroBiasesAutoGptqWrites) {
  const std::string variant = "llama_g32_asym_v2";
  ASSERT_OK_AND_ASSIGN(ModelConfig config, LoadModelConfig(GoldenDir(variant)));
  ASSERT_OK_AND_ASSIGN(WeightPlan plan, PlanWeights(config, 2, 1));
  const std::vector<std::string> projections = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  TensorList tensors = StoredTensors(variant);
  for (const std::string& projection : projections) {
    const std::string prefix = "model.layers.0." + projection;
    const int64_t out = Find(tensors, prefix + ".scales").dim(1);
    tensors.emplace_back(prefix + ".bias", *Tensor::Zeros(DType::kF16, {out}));
  }
  {
    ScratchDir dir;
    WriteCheckpoint(dir, tensors, variant);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir.path()));
    EXPECT_FALSE(checkpoint->Contains("model.layers.0.self_attn.q_proj.bias"));
    EXPECT_FALSE(checkpoint->Contains("model.layers.0.mlp.down_proj.bias"));
    EXPECT_OK(CheckCheckpoint(*checkpoint, plan));
  }
  {
    Find(tensors, "model.layers.0.mlp.down_proj.bias") =
        *Tensor::FromValues<float>(std::vector<float>(64, 0.5f), Shape{64});
    ScratchDir dir;
    WriteCheckpoint(dir, tensors, variant);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir.path()));
    EXPECT_TRUE(checkpoint->Contains("model.layers.0.mlp.down_proj.bias"));
    EXPECT_FALSE(checkpoint->Contains("model.layers.0.mlp.up_proj.bias"));
    EXPECT_TRUE(IsError(CheckCheckpoint(*checkpoint, plan), absl::StatusCode::kInvalidArgument,
                        {"unexpected", "model.layers.0.mlp.down_proj.bias"}));
  }
}

// A projection's four tensors split over two shards read as from one file.
TEST(GptqCheckpoint, ReadsAQuartetSplitOverShards) {
  const std::string variant = "llama_g128_asym";
  TensorList tensors = StoredTensors(variant);
  TensorList first, second;
  Json weight_map = Json::object();
  for (auto& [name, tensor] : tensors) {
    const bool later = name.find(".scales") != std::string::npos ||
                       name.find("down_proj.g_idx") != std::string::npos;
    weight_map[name] =
        later ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    (later ? second : first).emplace_back(name, tensor);
  }
  ScratchDir dir;
  ASSERT_OK(WriteSafetensors(dir.File("model-00001-of-00002.safetensors"), first));
  ASSERT_OK(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"), second));
  WriteBytes(dir.File("model.safetensors.index.json"),
             Json{{"metadata", Json::object()}, {"weight_map", weight_map}}.dump());
  WriteBytes(dir.File("config.json"), ReadBytes(GoldenDir(variant) + "/config.json"));

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> sharded, Checkpoint::Open(dir.path()));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> single, Checkpoint::Open(GoldenDir(variant)));
  EXPECT_EQ(sharded->TensorNames(), single->TensorNames());
  for (const std::string& name : single->TensorNames()) {
    SCOPED_TRACE(name);
    ASSERT_OK_AND_ASSIGN(Tensor a, sharded->Read(name, TensorSlice(), DType::kF32));
    ASSERT_OK_AND_ASSIGN(Tensor b, single->Read(name, TensorSlice(), DType::kF32));
    EXPECT_EQ(Values(a), Values(b));
  }
}

}  // namespace
}  // namespace tessera::model
