// Tests of runtime/model/safetensors.h: round trips per dtype, slices checked element by
// element, dtype conversions, corrupt and truncated files, and sharded checkpoints.

#include "runtime/model/safetensors.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/core/half.h"
#include "runtime/core/tensor_values.h"
#include "tests/model/model_test_util.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::model::testing::PatternTensor;
using ::tessera::model::testing::PatternValue;
using ::tessera::model::testing::RawSafetensors;
using ::tessera::model::testing::ReadBytes;
using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::IsError;

using Named = std::vector<std::pair<std::string, Tensor>>;

// Whether two host tensors have the same dtype, shape and bytes.
::testing::AssertionResult SameTensor(const Tensor& actual, const Tensor& expected) {
  if (actual.dtype() != expected.dtype() || actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure()
           << actual.DebugString() << " vs expected " << expected.DebugString();
  }
  if (std::memcmp(actual.data(), expected.data(), expected.nbytes()) != 0) {
    for (int64_t i = 0; i < expected.numel(); ++i) {
      if (ElementAsDouble(actual, i) != ElementAsDouble(expected, i)) {
        return ::testing::AssertionFailure()
               << "element " << i << " is " << ElementAsDouble(actual, i) << ", expected "
               << ElementAsDouble(expected, i);
      }
    }
    return ::testing::AssertionFailure() << "bytes differ";
  }
  return ::testing::AssertionSuccess();
}

TEST(SafetensorsTest, RoundTripsEveryDType) {
  ScratchDir dir;
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16,
                          DType::kI8,  DType::kI32,  DType::kI64};
  Named tensors;
  int tag = 0;
  for (DType dtype : dtypes) {
    tensors.emplace_back(absl::StrCat("t.", NameOf(dtype)),
                         PatternTensor(dtype, {3, 5}, dtype == DType::kI8 ? 0 : ++tag));
  }
  // Integers of every width, with negative values.
  FillWith(tensors[3].second, [](int64_t i) { return static_cast<double>(i * 17 % 256) - 128; });
  FillWith(tensors[5].second, [](int64_t i) { return -3e15 + static_cast<double>(i); });
  ASSERT_OK_AND_ASSIGN(Tensor scalar, Tensor::FromValues(absl::Span<const float>({2.5f}), {}));
  tensors.emplace_back("scalar", scalar);
  ASSERT_OK_AND_ASSIGN(Tensor empty, Tensor::Empty(DType::kBF16, {0, 4}));
  tensors.emplace_back("empty", empty);

  const std::string path = dir.File("model.safetensors");
  ASSERT_OK(WriteSafetensors(path, tensors, {{"format", "pt"}}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->tensors().size(), tensors.size());
  for (const auto& [name, tensor] : tensors) {
    const TensorInfo* info = file->Find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, tensor.dtype()) << name;
    EXPECT_EQ(info->shape, tensor.shape()) << name;
    EXPECT_EQ(info->nbytes, tensor.nbytes()) << name;
    ASSERT_OK_AND_ASSIGN(Tensor read, file->Read(name));
    EXPECT_TRUE(SameTensor(read, tensor)) << name;
    absl::Span<const uint8_t> bytes = file->Bytes(*info);
    EXPECT_EQ(std::memcmp(bytes.data(), tensor.data(), tensor.nbytes()), 0) << name;
  }
  EXPECT_EQ(file->Find("nope"), nullptr);
  EXPECT_TRUE(IsError(file->Read("nope"), absl::StatusCode::kNotFound, {"nope", path}));
}

TEST(SafetensorsTest, WriterFollowsTheFormat) {
  ScratchDir dir;
  ASSERT_OK_AND_ASSIGN(Tensor b, Tensor::FromValues(absl::Span<const float>({1.f, 2.f})));
  ASSERT_OK_AND_ASSIGN(Tensor a, Tensor::FromValues(absl::Span<const int8_t>({7})));
  ASSERT_OK(WriteSafetensors(dir.File("x.safetensors"), {{"b", b}, {"a", a}}));
  std::string bytes = ReadBytes(dir.File("x.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(header % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(bytes.size(), 8 + header + 1 + 8);
  // Name order: a (1 byte) then b at offset 1.
  std::string json = bytes.substr(8, header);
  EXPECT_NE(json.find(R"("a":{"data_offsets":[0,1],"dtype":"I8","shape":[1]})"), std::string::npos)
      << json;
  EXPECT_NE(json.find(R"("b":{"data_offsets":[1,9],"dtype":"F32","shape":[2]})"), std::string::npos)
      << json;
  EXPECT_EQ(bytes[8 + header], 7);

  // Unaligned f32 data (after the 1-byte tensor) reads back correctly.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(dir.File("x.safetensors")));
  ASSERT_OK_AND_ASSIGN(Tensor read, file->Read("b", TensorSlice::Whole(), DType::kBF16));
  EXPECT_EQ(read.span<BFloat16>()[1].ToFloat(), 2.f);

  EXPECT_TRUE(IsError(WriteSafetensors(dir.File("y"), {{"a", a}, {"a", a}}),
                      absl::StatusCode::kInvalidArgument, {"a"}));
  ASSERT_OK_AND_ASSIGN(Tensor int4, Tensor::Zeros(DType::kI4, {4}));
  EXPECT_TRUE(IsError(WriteSafetensors(dir.File("y"), {{"q", int4}}),
                      absl::StatusCode::kInvalidArgument, {"i4"}));
}

class SliceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // [6, 5, 2]: dimension 0 "rows", dimension 1 "columns", with an inner block of 2.
    matrix_ = PatternTensor(DType::kF32, {6, 10}, 1);
    cube_ = PatternTensor(DType::kF32, {6, 5, 2}, 2);
    vector_ = PatternTensor(DType::kF32, {12}, 3);
    ASSERT_OK(WriteSafetensors(dir_.File("s.safetensors"),
                               {{"matrix", matrix_}, {"cube", cube_}, {"vector", vector_}}));
    ASSERT_OK_AND_ASSIGN(file_, SafetensorsFile::Open(dir_.File("s.safetensors")));
  }

  ScratchDir dir_;
  Tensor matrix_, cube_, vector_;
  std::unique_ptr<SafetensorsFile> file_;
};

TEST_F(SliceTest, Rows) {
  ASSERT_OK_AND_ASSIGN(Tensor rows, file_->Read("matrix", TensorSlice::Rows(2, 5)));
  ASSERT_EQ(rows.shape(), (Shape{3, 10}));
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 10; ++c) {
      EXPECT_EQ(rows.span<float>()[r * 10 + c], PatternValue(1, (r + 2) * 10 + c)) << r << "," << c;
    }
  }
  ASSERT_OK_AND_ASSIGN(Tensor bias, file_->Read("vector", TensorSlice::Rows(4, 8)));
  ASSERT_EQ(bias.shape(), (Shape{4}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(bias.span<float>()[i], PatternValue(3, i + 4));
}

TEST_F(SliceTest, SeveralRowRangesConcatenate) {
  const TensorSlice fused{TensorSlice::Kind::kRows, {{0, 1}, {3, 5}}, 0};
  ASSERT_OK_AND_ASSIGN(Tensor rows, file_->Read("matrix", fused));
  ASSERT_EQ(rows.shape(), (Shape{3, 10}));
  const int64_t source_rows[] = {0, 3, 4};
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 10; ++c) {
      EXPECT_EQ(rows.span<float>()[r * 10 + c], PatternValue(1, source_rows[r] * 10 + c));
    }
  }
  EXPECT_EQ(fused.ToString(), "rows [0,1)+[3,5)");
}

TEST_F(SliceTest, PaddedRowsAreZero) {
  TensorSlice padded = TensorSlice::Rows(4, 6);
  padded.padded_size = 4;
  ASSERT_OK_AND_ASSIGN(Tensor rows, file_->Read("matrix", padded));
  ASSERT_EQ(rows.shape(), (Shape{4, 10}));
  for (int64_t i = 0; i < 40; ++i) {
    EXPECT_EQ(rows.span<float>()[i], i < 20 ? PatternValue(1, 40 + i) : 0.0) << i;
  }
  // An empty range padded: all zeros.
  TensorSlice none = TensorSlice::Rows(6, 6);
  none.padded_size = 2;
  ASSERT_OK_AND_ASSIGN(Tensor zeros, file_->Read("matrix", none, DType::kBF16));
  ASSERT_EQ(zeros.shape(), (Shape{2, 10}));
  for (BFloat16 v : zeros.span<BFloat16>()) EXPECT_EQ(v.bits, 0);
}

TEST_F(SliceTest, Columns) {
  ASSERT_OK_AND_ASSIGN(Tensor cols, file_->Read("matrix", TensorSlice::Columns(3, 7)));
  ASSERT_EQ(cols.shape(), (Shape{6, 4}));
  for (int64_t r = 0; r < 6; ++r) {
    for (int64_t c = 0; c < 4; ++c) {
      EXPECT_EQ(cols.span<float>()[r * 4 + c], PatternValue(1, r * 10 + c + 3)) << r << "," << c;
    }
  }
  // Rank 3: dimension 1 sliced, the inner block kept whole.
  ASSERT_OK_AND_ASSIGN(Tensor cube, file_->Read("cube", TensorSlice::Columns(1, 3)));
  ASSERT_EQ(cube.shape(), (Shape{6, 2, 2}));
  for (int64_t a = 0; a < 6; ++a) {
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t k = 0; k < 2; ++k) {
        EXPECT_EQ(cube.span<float>()[(a * 2 + b) * 2 + k],
                  PatternValue(2, (a * 5 + b + 1) * 2 + k));
      }
    }
  }
}

TEST_F(SliceTest, WholeEqualsTheSource) {
  ASSERT_OK_AND_ASSIGN(Tensor whole, file_->Read("cube"));
  EXPECT_TRUE(SameTensor(whole, cube_));
}

TEST_F(SliceTest, SlicesThatDoNotFit) {
  EXPECT_TRUE(IsError(file_->Read("matrix", TensorSlice::Rows(4, 7)),
                      absl::StatusCode::kInvalidArgument, {"matrix", "rows [4,7)"}));
  EXPECT_TRUE(IsError(file_->Read("matrix", TensorSlice::Rows(3, 2)),
                      absl::StatusCode::kInvalidArgument, {"matrix"}));
  EXPECT_TRUE(IsError(file_->Read("matrix", TensorSlice::Columns(-1, 2)),
                      absl::StatusCode::kInvalidArgument, {"matrix"}));
  EXPECT_TRUE(IsError(file_->Read("vector", TensorSlice::Columns(0, 1)),
                      absl::StatusCode::kInvalidArgument, {"vector", "columns"}));
  TensorSlice short_pad = TensorSlice::Rows(0, 4);
  short_pad.padded_size = 3;
  EXPECT_TRUE(
      IsError(file_->Read("matrix", short_pad), absl::StatusCode::kInvalidArgument, {"padded"}));
  EXPECT_TRUE(IsError(file_->Read("matrix", TensorSlice{TensorSlice::Kind::kRows, {}, 0}),
                      absl::StatusCode::kInvalidArgument, {"no ranges"}));
}

TEST(ConversionTest, SixteenBitFloatsWidenExactly) {
  ScratchDir dir;
  Tensor bf16 = PatternTensor(DType::kBF16, {4, 8}, 0);
  Tensor f16 = PatternTensor(DType::kF16, {4, 8}, 0);
  // Include values that exercise signs, subnormals and infinities.
  bf16.span<BFloat16>()[0] = BFloat16::FromFloat(-1.5e-40f);
  bf16.span<BFloat16>()[1] = BFloat16::FromBits(0xff80);  // -inf
  f16.span<Half>()[0] = Half::FromBits(0x0001);           // smallest subnormal
  f16.span<Half>()[1] = Half::FromBits(0xfbff);           // -65504
  ASSERT_OK(WriteSafetensors(dir.File("c.safetensors"), {{"bf16", bf16}, {"f16", f16}}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(dir.File("c.safetensors")));
  ASSERT_OK_AND_ASSIGN(Tensor from_bf16, file->Read("bf16", TensorSlice::Rows(1, 3), DType::kF32));
  ASSERT_OK_AND_ASSIGN(Tensor from_f16, file->Read("f16", TensorSlice::Whole(), DType::kF32));
  ASSERT_EQ(from_bf16.shape(), (Shape{2, 8}));
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_EQ(from_bf16.span<float>()[i], bf16.span<BFloat16>()[8 + i].ToFloat()) << i;
  }
  for (int64_t i = 0; i < 32; ++i) {
    EXPECT_EQ(from_f16.span<float>()[i], f16.span<Half>()[i].ToFloat()) << i;
  }
  EXPECT_EQ(from_f16.span<float>()[0], 0x1p-24f);
  EXPECT_EQ(from_f16.span<float>()[1], -65504.f);
}

TEST(ConversionTest, NarrowingRoundsToNearestEven) {
  ScratchDir dir;
  Tensor f32 = PatternTensor(DType::kF32, {3, 7}, 0);
  FillWith(f32, [](int64_t i) { return 1.0 + i * 0.001953125 / 3 + (i % 2 ? -i : i) * 1e-3; });
  f32.span<float>()[0] = 1.0f + 0x1p-8f;  // exactly half-way between two bf16 values: ties even
  f32.span<float>()[1] = 70000.f;         // beyond f16: infinity
  ASSERT_OK(WriteSafetensors(dir.File("n.safetensors"), {{"w", f32}}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(dir.File("n.safetensors")));
  ASSERT_OK_AND_ASSIGN(Tensor bf16, file->Read("w", TensorSlice::Columns(0, 7), DType::kBF16));
  ASSERT_OK_AND_ASSIGN(Tensor f16, file->Read("w", TensorSlice::Whole(), DType::kF16));
  for (int64_t i = 0; i < 21; ++i) {
    EXPECT_EQ(bf16.span<BFloat16>()[i].bits, BFloat16::FromFloat(f32.span<float>()[i]).bits) << i;
    EXPECT_EQ(f16.span<Half>()[i].bits, Half::FromFloat(f32.span<float>()[i]).bits) << i;
  }
  EXPECT_EQ(bf16.span<BFloat16>()[0].bits, 0x3f80);  // 1.0: the even neighbour
  EXPECT_EQ(f16.span<Half>()[1].bits, 0x7c00);
  // bf16 -> f16 goes through f32.
  ASSERT_OK(WriteSafetensors(dir.File("b.safetensors"), {{"w", bf16}}));
  ASSERT_OK_AND_ASSIGN(file, SafetensorsFile::Open(dir.File("b.safetensors")));
  ASSERT_OK_AND_ASSIGN(Tensor half, file->Read("w", TensorSlice::Whole(), DType::kF16));
  for (int64_t i = 2; i < 21; ++i) {
    EXPECT_EQ(half.span<Half>()[i].bits, Half::FromFloat(bf16.span<BFloat16>()[i].ToFloat()).bits);
  }
}

TEST(ConversionTest, IntegersDoNotConvert) {
  ScratchDir dir;
  ASSERT_OK_AND_ASSIGN(Tensor ids, Tensor::FromValues(absl::Span<const int32_t>({1, 2, 3})));
  ASSERT_OK(WriteSafetensors(dir.File("i.safetensors"), {{"ids", ids}}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(dir.File("i.safetensors")));
  EXPECT_TRUE(IsError(file->Read("ids", TensorSlice::Whole(), DType::kF32),
                      absl::StatusCode::kInvalidArgument, {"ids", "i32", "f32"}));
  ASSERT_OK_AND_ASSIGN(Tensor same, file->Read("ids", TensorSlice::Rows(1, 3), DType::kI32));
  EXPECT_EQ(same.span<int32_t>()[1], 3);
}

// ---------------------------------------------------------------------------------------------
// Corrupt files

class CorruptFileTest : public ::testing::Test {
 protected:
  // Opens raw bytes written to a file; the status of the attempt.
  absl::Status OpenBytes(absl::string_view bytes) {
    WriteBytes(path_, bytes);
    return SafetensorsFile::Open(path_).status();
  }
  absl::Status OpenHeader(absl::string_view header, size_t data_bytes) {
    return OpenBytes(RawSafetensors(header, std::string(data_bytes, '\x11')));
  }

  ScratchDir dir_;
  std::string path_ = dir_.File("bad.safetensors");
};

TEST_F(CorruptFileTest, TooShortOrEmpty) {
  EXPECT_TRUE(IsError(OpenBytes(""), absl::StatusCode::kDataLoss, {path_, "too short"}));
  EXPECT_TRUE(IsError(OpenBytes("abc"), absl::StatusCode::kDataLoss, {path_, "too short"}));
}

TEST_F(CorruptFileTest, HeaderLengthPastTheEnd) {
  std::string bytes = RawSafetensors("{}", "");
  bytes[0] = 3;  // claims 3 header bytes, holds 2
  EXPECT_TRUE(IsError(OpenBytes(bytes), absl::StatusCode::kDataLoss,
                      {path_, "header length 3", "past the end"}));
  bytes[0] = 0;
  bytes[7] = static_cast<char>(0x80);  // 2^63
  EXPECT_TRUE(IsError(OpenBytes(bytes), absl::StatusCode::kDataLoss, {path_, "header length"}));
  std::string all_ones(8, '\xff');
  EXPECT_TRUE(IsError(OpenBytes(all_ones + "{}"), absl::StatusCode::kDataLoss, {path_}));
}

TEST_F(CorruptFileTest, HeaderNotJsonOrNotAnObject) {
  EXPECT_TRUE(
      IsError(OpenHeader("{\"a\": {", 0), absl::StatusCode::kDataLoss, {path_, "not valid JSON"}));
  EXPECT_TRUE(
      IsError(OpenHeader("\xff\xfe", 0), absl::StatusCode::kDataLoss, {path_, "not valid JSON"}));
  EXPECT_TRUE(IsError(OpenHeader("[1,2]", 0), absl::StatusCode::kDataLoss, {path_, "object"}));
  EXPECT_TRUE(IsError(OpenHeader(R"({"w": 5})", 0), absl::StatusCode::kDataLoss,
                      {path_, "'w'", "not an object"}));
  EXPECT_TRUE(IsError(OpenHeader(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4),
                      absl::StatusCode::kDataLoss, {"'w'", "dtype"}));
  EXPECT_TRUE(IsError(OpenHeader(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4),
                      absl::StatusCode::kDataLoss, {"'w'", "shape"}));
  EXPECT_TRUE(IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [1]}})", 4),
                      absl::StatusCode::kDataLoss, {"'w'", "data_offsets"}));
  EXPECT_TRUE(
      IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4),
              absl::StatusCode::kDataLoss, {"'w'", "shape"}));
  EXPECT_TRUE(
      IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
              absl::StatusCode::kDataLoss, {"'w'", "shape"}));
  EXPECT_TRUE(IsError(OpenHeader(R"({"__metadata__": {"format": 1}})", 0),
                      absl::StatusCode::kDataLoss, {"__metadata__"}));
  EXPECT_TRUE(IsError(OpenHeader(R"({"__metadata__": []})", 0), absl::StatusCode::kDataLoss,
                      {"__metadata__"}));
}

TEST_F(CorruptFileTest, OffsetsOutOfRange) {
  EXPECT_TRUE(
      IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12),
              absl::StatusCode::kDataLoss, {path_, "'w'", "outside"}));
  EXPECT_TRUE(
      IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 12),
              absl::StatusCode::kDataLoss, {"'w'", "[8, 4)"}));
  EXPECT_TRUE(
      IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 12),
              absl::StatusCode::kDataLoss, {"'w'", "data_offsets"}));
  EXPECT_TRUE(IsError(
      OpenHeader(
          R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]}})",
          12),
      absl::StatusCode::kDataLoss, {"'w'"}));
  EXPECT_TRUE(
      IsError(OpenHeader(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 12),
              absl::StatusCode::kDataLoss, {"'w'", "data_offsets"}));
}

TEST_F(CorruptFileTest, OffsetsNotMatchingDTypeTimesShape) {
  EXPECT_TRUE(IsError(
      OpenHeader(R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})", 16),
      absl::StatusCode::kDataLoss, {"'w'", "8 bytes", "needs 12"}));
  EXPECT_TRUE(IsError(
      OpenHeader(
          R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
          16),
      absl::StatusCode::kDataLoss, {"'w'"}));
}

TEST_F(CorruptFileTest, OverlappingTensors) {
  EXPECT_TRUE(IsError(OpenHeader(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                 12),
                      absl::StatusCode::kDataLoss, {path_, "'a'", "'b'", "overlap"}));
  // Identical extents overlap too; empty tensors overlap nothing.
  EXPECT_TRUE(IsError(OpenHeader(R"({"a": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]},
                                     "b": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})",
                                 4),
                      absl::StatusCode::kDataLoss, {"overlap"}));
  EXPECT_OK(OpenHeader(R"({"a": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]},
                           "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [2, 2]}})",
                       4));
}

TEST_F(CorruptFileTest, UnsupportedDTypeIsNamed) {
  for (absl::string_view dtype : {"F64", "U8", "BOOL", "F8_E4M3", "Q4_K"}) {
    std::string header =
        absl::StrCat(R"({"w": {"dtype": ")", dtype, R"(", "shape": [1], "data_offsets": [0, 1]}})");
    EXPECT_TRUE(IsError(OpenHeader(header, 8), absl::StatusCode::kInvalidArgument,
                        {path_, "'w'", std::string(dtype), "BF16"}))
        << dtype;
  }
}

// Every proper prefix of a valid file is refused with an error; none crashes.
TEST_F(CorruptFileTest, EveryTruncationIsAnError) {
  Tensor a = PatternTensor(DType::kBF16, {3, 4}, 1);
  Tensor b = PatternTensor(DType::kF32, {5}, 2);
  const std::string good = dir_.File("good.safetensors");
  ASSERT_OK(WriteSafetensors(good, {{"a", a}, {"b", b}}, {{"format", "pt"}}));
  const std::string bytes = ReadBytes(good);
  ASSERT_GT(bytes.size(), 100u);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    absl::Status status = OpenBytes(bytes.substr(0, cut));
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << "cut at " << cut << ": " << status;
    EXPECT_TRUE(::tessera::testing::Contains(std::string(status.message()), path_));
  }
  EXPECT_OK(OpenBytes(bytes));
}

// Random damage to the header and the length: an error or a file whose every tensor lies
// inside it, never a crash.
TEST_F(CorruptFileTest, RandomDamageNeverCrashes) {
  Tensor a = PatternTensor(DType::kF16, {2, 3}, 1);
  Tensor b = PatternTensor(DType::kI32, {4}, 2);
  const std::string good = dir_.File("good.safetensors");
  ASSERT_OK(WriteSafetensors(good, {{"a", a}, {"b", b}}));
  const std::string bytes = ReadBytes(good);
  std::mt19937 random(1234);
  int opened = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string damaged = bytes;
    const int flips = 1 + static_cast<int>(random() % 3);
    for (int f = 0; f < flips; ++f) {
      size_t at = random() % std::min<size_t>(damaged.size(), 8 + 120);
      damaged[at] = static_cast<char>(random() % 256);
    }
    WriteBytes(path_, damaged);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path_);
    if (!file.ok()) continue;
    ++opened;
    for (const TensorInfo& info : (*file)->tensors()) {
      EXPECT_LE(info.offset + info.nbytes, damaged.size());
      EXPECT_OK((*file)->Read(info.name).status());
    }
  }
  EXPECT_GT(opened, 0) << "some damage (to data-free header bytes) leaves a readable file";
}

TEST(SafetensorsOpenTest, MissingFileAndDirectory) {
  ScratchDir dir;
  EXPECT_TRUE(IsError(SafetensorsFile::Open(dir.File("none.safetensors")),
                      absl::StatusCode::kNotFound, {"none.safetensors"}));
  EXPECT_TRUE(IsError(SafetensorsFile::Open(dir.path()), absl::StatusCode::kInvalidArgument,
                      {"not a regular file"}));
}

// ---------------------------------------------------------------------------------------------
// Checkpoint directories

TEST(CheckpointTest, SingleFile) {
  ScratchDir dir;
  Tensor w = PatternTensor(DType::kF32, {4, 2}, 1);
  ASSERT_OK(WriteSafetensors(dir.File("model.safetensors"), {{"w", w}}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir.path()));
  EXPECT_EQ(checkpoint->TensorNames(), std::vector<std::string>{"w"});
  EXPECT_TRUE(checkpoint->Contains("w"));
  ASSERT_OK_AND_ASSIGN(TensorInfo info, checkpoint->Info("w"));
  EXPECT_EQ(info.shape, (Shape{4, 2}));
  ASSERT_OK_AND_ASSIGN(Tensor rows, checkpoint->Read("w", TensorSlice::Rows(2, 4)));
  EXPECT_EQ(rows.span<float>()[0], PatternValue(1, 4));
  EXPECT_TRUE(IsError(checkpoint->Info("v"), absl::StatusCode::kNotFound, {"'v'", dir.path()}));
  EXPECT_TRUE(IsError(checkpoint->Read("v"), absl::StatusCode::kNotFound, {"'v'"}));
}

// Writes a two-shard checkpoint: a, b in shard 1; c in shard 2.
void WriteShardedCheckpoint(const ScratchDir& dir) {
  ASSERT_OK(WriteSafetensors(
      dir.File("model-00001-of-00002.safetensors"),
      {{"a", PatternTensor(DType::kBF16, {2, 3}, 1)}, {"b", PatternTensor(DType::kBF16, {3}, 2)}}));
  ASSERT_OK(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"),
                             {{"c", PatternTensor(DType::kF32, {4, 4}, 3)}}));
  WriteBytes(dir.File("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 82},
    "weight_map": {
      "a": "model-00001-of-00002.safetensors",
      "b": "model-00001-of-00002.safetensors",
      "c": "model-00002-of-00002.safetensors"
    }
  })");
}

TEST(CheckpointTest, ShardedIndex) {
  ScratchDir dir;
  WriteShardedCheckpoint(dir);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir.path()));
  EXPECT_EQ(checkpoint->files().size(), 2u);
  EXPECT_EQ(checkpoint->TensorNames(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(checkpoint->FileOf("c"), checkpoint->files()[1].get());
  ASSERT_OK_AND_ASSIGN(Tensor c, checkpoint->Read("c", TensorSlice::Columns(1, 3)));
  EXPECT_EQ(c.span<float>()[2], PatternValue(3, 5));
  ASSERT_OK_AND_ASSIGN(Tensor a, checkpoint->Read("a", TensorSlice::Whole(), DType::kF32));
  EXPECT_EQ(a.span<float>()[5], BFloat16::FromFloat(PatternValue(1, 5)).ToFloat());
}

TEST(CheckpointTest, MissingShardIsNamed) {
  ScratchDir dir;
  WriteShardedCheckpoint(dir);
  std::filesystem::remove(dir.File("model-00002-of-00002.safetensors"));
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kNotFound,
                      {"model-00002-of-00002.safetensors", "index"}));
}

TEST(CheckpointTest, IndexProblems) {
  ScratchDir dir;
  WriteShardedCheckpoint(dir);
  const std::string index = dir.File("model.safetensors.index.json");
  WriteBytes(index, R"({"weight_map": {"a": "model-00002-of-00002.safetensors",
                                        "c": "model-00002-of-00002.safetensors"}})");
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument,
                      {"'a'", "does not hold it"}));
  WriteBytes(index, R"({"weight_map": {"z": "model-00001-of-00002.safetensors"}})");
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument, {"'z'"}));
  WriteBytes(index, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument,
                      {"../model-00001-of-00002.safetensors", "not a file name"}));
  WriteBytes(index, R"({"metadata": {}})");
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument,
                      {index, "weight_map"}));
  WriteBytes(index, R"({"weight_map": {"a": 3}})");
  EXPECT_TRUE(
      IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument, {index, "'a'"}));
  WriteBytes(index, "{\"weight_map\": ");
  EXPECT_TRUE(
      IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument, {index, "JSON"}));
}

TEST(CheckpointTest, TensorInTwoShards) {
  ScratchDir dir;
  WriteShardedCheckpoint(dir);
  ASSERT_OK(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"),
                             {{"a", PatternTensor(DType::kBF16, {2, 3}, 1)},
                              {"c", PatternTensor(DType::kF32, {4, 4}, 3)}}));
  EXPECT_TRUE(IsError(
      Checkpoint::Open(dir.path()), absl::StatusCode::kInvalidArgument,
      {"'a'", "twice", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
}

TEST(CheckpointTest, CorruptShardNamesItsFile) {
  ScratchDir dir;
  WriteShardedCheckpoint(dir);
  const std::string shard = dir.File("model-00002-of-00002.safetensors");
  std::string bytes = ReadBytes(shard);
  WriteBytes(shard, bytes.substr(0, bytes.size() - 1));
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss, {shard, "'c'"}));
}

TEST(CheckpointTest, NoWeightsOrNoDirectory) {
  ScratchDir dir;
  EXPECT_TRUE(IsError(Checkpoint::Open(dir.path()), absl::StatusCode::kNotFound,
                      {"model.safetensors", "model.safetensors.index.json"}));
  EXPECT_TRUE(
      IsError(Checkpoint::Open(dir.File("absent")), absl::StatusCode::kNotFound, {"absent"}));
}

}  // namespace
}  // namespace tessera::model
