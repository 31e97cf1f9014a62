// Tests of runtime/model/gguf_file.h, gguf_checkpoint.h and gguf_model.h: the golden GGUF
// files (tests/golden/gguf_models, written by the `gguf` package) parse; damaged and
// truncated files are refused with errors naming what is wrong; tensors read under their
// Hugging Face names, slices agreeing with whole reads; the model directory made from a file
// loads its tokenizer and configuration.

#include "runtime/model/gguf_file.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/model/gguf_checkpoint.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/model_config.h"
#include "runtime/model/stored_groups.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "tests/model/model_test_util.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::model::testing::ReadBytes;
using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::IsError;

std::string Golden(const std::string& name) {
  return absl::StrCat(TESSERA_GGUF_GOLDEN_MODELS, "/", name, "/model.gguf");
}

// Builds GGUF bytes field by field, so that each test can damage one.
class GgufBytes {
 public:
  GgufBytes& U32(uint32_t v) { return Raw(&v, 4); }
  GgufBytes& U64(uint64_t v) { return Raw(&v, 8); }
  GgufBytes& F32(float v) { return Raw(&v, 4); }
  GgufBytes& Str(const std::string& s) {
    U64(s.size());
    bytes_ += s;
    return *this;
  }
  GgufBytes& Header(uint32_t version, uint64_t tensors, uint64_t kvs) {
    bytes_ += "GGUF";
    return U32(version).U64(tensors).U64(kvs);
  }
  GgufBytes& KeyU32(const std::string& key, uint32_t v) { return Str(key).U32(4).U32(v); }
  GgufBytes& KeyStr(const std::string& key, const std::string& v) { return Str(key).U32(8).Str(v); }
  // name, n_dims, dims, type, offset
  GgufBytes& Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                    uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    return U32(type).U64(offset);
  }
  GgufBytes& AlignTo(size_t alignment) {
    bytes_.append((alignment - bytes_.size() % alignment) % alignment, '\0');
    return *this;
  }
  GgufBytes& Data(size_t n, char fill = '\x11') {
    bytes_.append(n, fill);
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  GgufBytes& Raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string bytes_;
};

// A small valid file: two f32 tensors of 8 and 4 elements, one metadata string.
GgufBytes SmallFile() {
  GgufBytes b;
  b.Header(3, 2, 1).KeyStr("general.architecture", "llama");
  b.Tensor("a", {8}, 0, 0).Tensor("b", {2, 2}, 0, 32);
  b.AlignTo(32).Data(32).Data(16);
  return b;
}

class GgufFileTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<GgufFile>> OpenBytes(const std::string& bytes) {
    WriteBytes(path_, bytes);
    return GgufFile::Open(path_);
  }
  ScratchDir dir_;
  std::string path_ = dir_.File("x.gguf");
};

TEST_F(GgufFileTest, ReadsTheGoldenFiles) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> file, GgufFile::Open(Golden("llama_q4_1_tied")));
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(file->alignment(), 32u);
  ASSERT_OK_AND_ASSIGN(std::string arch, file->GetString("general.architecture"));
  EXPECT_EQ(arch, "llama");
  ASSERT_OK_AND_ASSIGN(uint64_t heads, file->GetUnsigned("llama.attention.head_count"));
  EXPECT_EQ(heads, 4u);
  ASSERT_OK_AND_ASSIGN(const std::vector<GgufValue>* tokens,
                       file->GetArray("tokenizer.ggml.tokens", GgufValueType::kString));
  EXPECT_EQ(tokens->size(), 256u);
  const GgufTensorInfo* q = file->FindTensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgmlType::kQ4_1);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(q->shape(), (Shape{64, 64}));
  EXPECT_EQ(q->nbytes, 64u * 2 * 20);                     // 64 rows of two 20-byte blocks
  EXPECT_EQ(file->FindTensor("output.weight"), nullptr);  // tied
  EXPECT_EQ(file->FindTensor("token_embd.weight")->type, GgmlType::kQ8_0);
  // Typed reads name the key and what it is.
  EXPECT_TRUE(IsError(file->GetString("llama.block_count"), absl::StatusCode::kInvalidArgument,
                      {"llama.block_count", "u32", "expected a string"}));
  EXPECT_TRUE(
      IsError(file->GetUnsigned("no.such.key"), absl::StatusCode::kNotFound, {"no.such.key"}));
}

TEST_F(GgufFileTest, OpensASmallFileAndItsBytes) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> file, OpenBytes(SmallFile().bytes()));
  ASSERT_EQ(file->tensors().size(), 2u);
  const GgufTensorInfo& b = file->tensors()[1];
  EXPECT_EQ(b.name, "b");
  EXPECT_EQ(b.nbytes, 16u);
  EXPECT_EQ(b.offset % 32, 0u);
  EXPECT_EQ(file->Bytes(b).size(), 16u);
  EXPECT_EQ(file->Bytes(b)[0], 0x11);
}

TEST_F(GgufFileTest, EveryTruncationIsRefusedAsDataLoss) {
  const std::string whole = SmallFile().bytes();
  for (size_t n = 0; n < whole.size(); ++n) {
    absl::StatusOr<std::unique_ptr<GgufFile>> file = OpenBytes(whole.substr(0, n));
    EXPECT_TRUE(IsError(file, absl::StatusCode::kDataLoss, {path_})) << n << " bytes";
  }
}

TEST_F(GgufFileTest, RefusesDamagedHeaders) {
  EXPECT_TRUE(IsError(OpenBytes("GGML0000000000000000000000"), absl::StatusCode::kDataLoss,
                      {"not a GGUF file"}));
  {
    GgufBytes b;
    b.Header(1, 0, 0);
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kInvalidArgument,
                        {"version 1", "2 and 3"}));
  }
  {
    GgufBytes b;
    b.Header(3, 0, uint64_t{1} << 60);
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss,
                        {"metadata count", "more than the file can hold"}));
  }
  {
    GgufBytes b;
    b.Header(3, 0, 1).Str("k").U32(9).U32(8).U64(uint64_t{1} << 40);  // array of 2^40 strings
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss,
                        {"metadata 'k'", "runs past the end"}));
  }
  {
    GgufBytes b;
    b.Header(3, 0, 1).Str("k").U32(13).U32(0);  // value type 13 does not exist
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss,
                        {"metadata 'k'", "value type 13"}));
  }
  {
    GgufBytes b;
    b.Header(3, 0, 2).KeyU32("k", 1).KeyU32("k", 2);
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss, {"'k'", "twice"}));
  }
  {
    GgufBytes b;
    b.Header(3, 0, 1).Str("general.alignment").U32(4).U32(24);
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss,
                        {"general.alignment", "power of two"}));
  }
}

TEST_F(GgufFileTest, RefusesDamagedTensorTables) {
  auto one_tensor = [](std::vector<uint64_t> dims, uint32_t type, uint64_t offset, size_t data) {
    GgufBytes b;
    b.Header(3, 1, 0).Tensor("w", std::move(dims), type, offset);
    b.AlignTo(32).Data(data);
    return b.bytes();
  };
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({8}, 0, 0, 16)), absl::StatusCode::kDataLoss,
                      {"tensor 'w'", "32 bytes", "truncated"}));
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({8}, 0, 8, 64)), absl::StatusCode::kDataLoss,
                      {"tensor 'w'", "offset 8", "alignment"}));
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({0}, 0, 0, 64)), absl::StatusCode::kDataLoss,
                      {"tensor 'w'", "dimension 0"}));
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({1, 2, 3, 4, 5}, 0, 0, 64)), absl::StatusCode::kDataLoss,
                      {"tensor 'w'", "5 dimensions"}));
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0, 64)),
                      absl::StatusCode::kDataLoss, {"tensor 'w'", "impossibly large"}));
  // IQ2_XXS (16) is a real ggml type that Tessera does not read.
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({256}, 16, 0, 66)), absl::StatusCode::kInvalidArgument,
                      {"tensor 'w'"}));
  // Q8_0 rows must be whole blocks of 32.
  EXPECT_TRUE(IsError(OpenBytes(one_tensor({48}, 8, 0, 64)), absl::StatusCode::kInvalidArgument,
                      {"tensor 'w'", "48"}));
  {
    GgufBytes b;
    b.Header(3, 2, 0).Tensor("a", {16}, 0, 0).Tensor("b", {16}, 0, 32);
    b.AlignTo(32).Data(96);
    EXPECT_TRUE(
        IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss, {"'a'", "'b'", "overlap"}));
  }
  {
    GgufBytes b;
    b.Header(3, 2, 0).Tensor("a", {8}, 0, 0).Tensor("a", {8}, 0, 32);
    b.AlignTo(32).Data(64);
    EXPECT_TRUE(IsError(OpenBytes(b.bytes()), absl::StatusCode::kDataLoss, {"'a'", "twice"}));
  }
}

// Reads of slices agree with the whole tensor, for quantized, permuted and plain tensors.
TEST(GgufCheckpointTest, SlicesAgreeWithWholeReads) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufCheckpointFile> file,
                       GgufCheckpointFile::Open(Golden("llama_q4_0")));
  for (const char* name :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"}) {
    SCOPED_TRACE(name);
    const TensorInfo* info = file->Find(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, DType::kF32);
    ASSERT_OK_AND_ASSIGN(Tensor whole, file->Read(name));
    ASSERT_EQ(whole.shape(), info->shape);
    const int64_t rows = info->shape[0], cols = info->shape[1];
    ASSERT_OK_AND_ASSIGN(Tensor top, file->Read(name, TensorSlice::Rows(rows / 2, rows)));
    EXPECT_EQ(std::memcmp(top.data<float>(), whole.data<float>() + rows / 2 * cols,
                          sizeof(float) * top.numel()),
              0);
    ASSERT_OK_AND_ASSIGN(Tensor right, file->Read(name, TensorSlice::Columns(cols / 4, cols)));
    for (int64_t r = 0; r < rows; ++r) {
      ASSERT_EQ(
          std::memcmp(right.data<float>() + r * (cols - cols / 4),
                      whole.data<float>() + r * cols + cols / 4, sizeof(float) * (cols - cols / 4)),
          0)
          << "row " << r;
    }
    ASSERT_OK_AND_ASSIGN(Tensor bf16, file->Read(name, TensorSlice::Whole(), DType::kBF16));
    EXPECT_EQ(bf16.dtype(), DType::kBF16);
  }
  EXPECT_TRUE(IsError(file->Read("model.layers.9.mlp.up_proj.weight"), absl::StatusCode::kNotFound,
                      {"model.layers.9.mlp.up_proj.weight"}));
  EXPECT_TRUE(IsError(file->Read("model.norm.weight", TensorSlice::Whole(), DType::kI32),
                      absl::StatusCode::kInvalidArgument, {"model.norm.weight", "i32"}));
}

// `--quantize stored` reads: the groups of Q8_0, Q4_0 and Q4_1 tensors are the values Read
// dequantizes, of Q4_K tensors the same to f16's rounding of their scales and offsets; slices
// are the slices of the whole; other types have none; a slice that cuts a group is refused.
TEST(GgufCheckpointTest, StoredGroupsHoldTheDequantizedValues) {
  struct Case {
    const char* file;
    kernels::WeightQuant quant;
    double tolerance;  // of each weight, relative to its row's largest
  };
  for (const Case& c : {Case{"llama_q8_0", kernels::WeightQuant::kInt8, 0},
                        Case{"llama_q4_0", kernels::WeightQuant::kInt4, 0},
                        Case{"llama_q4_1_tied", kernels::WeightQuant::kInt4, 0},
                        Case{"llama_k_quants", kernels::WeightQuant::kInt4, 1e-3}}) {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufCheckpointFile> file,
                         GgufCheckpointFile::Open(Golden(c.file)));
    int checked = 0;
    for (const TensorInfo& info : file->tensors()) {
      SCOPED_TRACE(absl::StrCat(c.file, " ", info.name));
      const std::optional<StoredGroupFormat> format = file->StoredFormat(info.name);
      ASSERT_OK_AND_ASSIGN(std::optional<StoredGroups> groups,
                           file->ReadStoredGroups(info.name, TensorSlice::Whole()));
      ASSERT_EQ(format.has_value(), groups.has_value());
      if (!groups.has_value()) continue;
      ++checked;
      if (absl::EndsWith(info.name, "_proj.weight") &&
          info.name.find("gate") == std::string::npos &&
          info.name.find("v_proj") == std::string::npos) {
        EXPECT_EQ(groups->quant, c.quant);
      }
      EXPECT_EQ(groups->format(), *format);
      ASSERT_EQ(groups->rows, info.shape[0]);
      ASSERT_EQ(groups->cols, info.shape[1]);
      ASSERT_OK_AND_ASSIGN(Tensor values, DequantizeStoredGroups(*groups, DType::kF32));
      ASSERT_OK_AND_ASSIGN(Tensor expected, file->Read(info.name));
      const int64_t rows = groups->rows, cols = groups->cols;
      for (int64_t r = 0; r < rows; ++r) {
        float largest = 0;
        for (int64_t i = 0; i < cols; ++i) {
          largest = std::max(largest, std::abs(expected.data<float>()[r * cols + i]));
        }
        for (int64_t i = 0; i < cols; ++i) {
          const float want = expected.data<float>()[r * cols + i];
          const float got = values.data<float>()[r * cols + i];
          ASSERT_LE(std::abs(got - want), c.tolerance * largest) << "row " << r << " input " << i;
        }
      }
      // Rows and columns of the whole, as the tensor-parallel splits read them.
      ASSERT_OK_AND_ASSIGN(std::optional<StoredGroups> bottom,
                           file->ReadStoredGroups(info.name, TensorSlice::Rows(rows / 2, rows)));
      ASSERT_OK_AND_ASSIGN(StoredGroups want_bottom, StoredGroupRows(*groups, rows / 2, rows));
      EXPECT_EQ(bottom->codes, want_bottom.codes);
      EXPECT_EQ(bottom->scales, want_bottom.scales);
      EXPECT_EQ(bottom->offsets, want_bottom.offsets);
      ASSERT_OK_AND_ASSIGN(std::optional<StoredGroups> right,
                           file->ReadStoredGroups(info.name, TensorSlice::Columns(32, cols)));
      ASSERT_EQ(right->cols, cols - 32);
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(std::equal(right->codes.begin() + r * (cols - 32),
                               right->codes.begin() + (r + 1) * (cols - 32),
                               groups->codes.begin() + r * cols + 32))
            << "row " << r;
        ASSERT_EQ(right->scales[r * (cols / 32 - 1)], groups->scales[r * (cols / 32) + 1]);
      }
      EXPECT_TRUE(IsError(file->ReadStoredGroups(info.name, TensorSlice::Columns(16, cols)),
                          absl::StatusCode::kInvalidArgument,
                          {info.name, "columns [16,", "groups of 32"}));
    }
    EXPECT_GT(checked, 0) << c.file;
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufCheckpointFile> f16,
                       GgufCheckpointFile::Open(Golden("llama_f16")));
  ASSERT_OK_AND_ASSIGN(
      std::optional<StoredGroups> none,
      f16->ReadStoredGroups("model.layers.0.self_attn.q_proj.weight", TensorSlice::Whole()));
  EXPECT_FALSE(none.has_value());
  EXPECT_FALSE(f16->StoredFormat("model.layers.0.self_attn.q_proj.weight").has_value());
}

// The f32 and f16 files hold the same model: their tensors agree to f16's rounding, which
// checks the names and the q/k reordering of each against the other's types.
TEST(GgufCheckpointTest, F16FileReadsAsTheF32FileRounded) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufCheckpointFile> f32,
                       GgufCheckpointFile::Open(Golden("llama_f32")));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufCheckpointFile> f16,
                       GgufCheckpointFile::Open(Golden("llama_f16")));
  ASSERT_EQ(f32->tensors().size(), f16->tensors().size());
  for (const TensorInfo& info : f32->tensors()) {
    ASSERT_OK_AND_ASSIGN(Tensor a, f32->Read(info.name, TensorSlice::Whole(), DType::kF16));
    ASSERT_OK_AND_ASSIGN(Tensor b, f16->Read(info.name, TensorSlice::Whole(), DType::kF16));
    ASSERT_EQ(a.shape(), b.shape()) << info.name;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << info.name;
  }
}

TEST(GgufModelTest, ConfigAndTokenizerFromMetadata) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> file, GgufFile::Open(Golden("llama_q4_1_tied")));
  ASSERT_OK_AND_ASSIGN(GgufModelFiles files, GgufModelFilesOf(*file));
  EXPECT_EQ(files.config["model_type"], "llama");
  EXPECT_EQ(files.config["hidden_size"], 64);
  EXPECT_EQ(files.config["num_key_value_heads"], 2);
  EXPECT_EQ(files.config["tie_word_embeddings"], true);
  EXPECT_EQ(files.config["vocab_size"], 256);
  EXPECT_EQ(files.config["torch_dtype"], "float32");
  EXPECT_EQ(files.generation_config["eos_token_id"], 2);
  ASSERT_OK_AND_ASSIGN(ModelConfig config, ParseModelConfig(files.config.dump(), "config.json"));
  EXPECT_EQ(config.num_attention_heads, 4);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                       tokenizer::Tokenizer::FromJson(files.tokenizer.dump()));
  // A byte-level vocabulary without merges: a token a byte.
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                       tokenizer->Encode("a t", /*add_special_tokens=*/false));
  EXPECT_EQ(ids, (std::vector<int32_t>{'a', ' ', 't'}));
}

TEST(GgufModelTest, PreTokenizersByLlamaCppName) {
  for (const char* name : {"llama3", "llama-bpe", "qwen2", "smollm", "starcoder", "gpt-2"}) {
    ASSERT_OK_AND_ASSIGN(GgufPreTokenizer pre, GgufPreTokenizerOf(name));
    EXPECT_TRUE(pre.pre_tokenizer.is_object()) << name;
  }
  EXPECT_TRUE(IsError(GgufPreTokenizerOf("deepseek-coder"), absl::StatusCode::kInvalidArgument,
                      {"deepseek-coder", "llama3"}));
}

TEST(GgufModelTest, ResolvesFilesAndDirectories) {
  ScratchDir cache;
  ::setenv("TESSERA_CACHE_DIR", cache.path().c_str(), 1);
  ASSERT_OK_AND_ASSIGN(std::string dir, ResolveModelPath(Golden("qwen2_q8_0")));
  EXPECT_TRUE(std::filesystem::exists(dir + "/config.json"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/tokenizer.json"));
  EXPECT_TRUE(std::filesystem::is_symlink(dir + "/model.gguf"));
  ASSERT_OK_AND_ASSIGN(std::string again, ResolveModelPath(Golden("qwen2_q8_0")));
  EXPECT_EQ(again, dir);
  ASSERT_OK_AND_ASSIGN(std::string same_dir, ResolveModelPath(dir));
  EXPECT_EQ(same_dir, dir);
  EXPECT_TRUE(IsError(ResolveModelPath(cache.File("absent.gguf")), absl::StatusCode::kNotFound,
                      {"absent.gguf"}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  EXPECT_TRUE(checkpoint->Contains("model.layers.1.self_attn.q_proj.bias"));
  ::unsetenv("TESSERA_CACHE_DIR");

  EXPECT_EQ(ModelName("a/b.Q4_1.gguf"), "b.Q4_1");
  EXPECT_EQ(ModelName("models/Qwen2-0.5B/"), "Qwen2-0.5B");
}

}  // namespace
}  // namespace tessera::model
