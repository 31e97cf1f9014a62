// Tests of runtime/model/gguf_quants.h: every type against the gguf Python package's
// dequantize, bit for bit (tests/golden/gguf, made by its make_quant_goldens.py), the groups
// of 32 against DequantizeGgmlRow, and the errors.

#include "runtime/model/gguf_quants.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "tests/unit/status_test_util.h"

namespace tessera::model {
namespace {

using ::tessera::testing::IsError;

constexpr GgmlType kSupported[] = {
    GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0, GgmlType::kQ4_1,
    GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0, GgmlType::kQ2_K, GgmlType::kQ3_K,
    GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct Golden {
  std::vector<uint8_t> blocks;
  std::vector<float> values;
};

// tests/golden/gguf/<name>.blocks and <name>.f32 (little-endian, as this host is).
Golden ReadGolden(GgmlType type) {
  const std::string base =
      absl::StrCat(TESSERA_GGUF_GOLDEN_DIR, "/", absl::AsciiStrToLower(GgmlTypeName(type)));
  Golden golden;
  golden.blocks = ReadFile(base + ".blocks");
  const std::vector<uint8_t> f32 = ReadFile(base + ".f32");
  golden.values.resize(f32.size() / sizeof(float));
  std::memcpy(golden.values.data(), f32.data(), golden.values.size() * sizeof(float));
  return golden;
}

// Whether two float sequences hold the same bits (NaN payloads and zero signs included).
::testing::AssertionResult SameBits(absl::Span<const float> actual,
                                    absl::Span<const float> expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << actual.size() << " elements, expected " << expected.size();
  }
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto a = std::bit_cast<uint32_t>(actual[i]);
    const auto e = std::bit_cast<uint32_t>(expected[i]);
    if (a != e) {
      return ::testing::AssertionFailure()
             << "element " << i << " is " << actual[i] << " (0x" << std::hex << a << "), expected "
             << expected[i] << " (0x" << e << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(GgufQuantsTest, NamesEveryGgmlType) {
  EXPECT_EQ(GgmlTypeName(GgmlType::kF32), "F32");
  EXPECT_EQ(GgmlTypeName(GgmlType::kF16), "F16");
  EXPECT_EQ(GgmlTypeName(GgmlType::kBF16), "BF16");
  EXPECT_EQ(GgmlTypeName(GgmlType::kQ4_0), "Q4_0");
  EXPECT_EQ(GgmlTypeName(GgmlType::kQ5_1), "Q5_1");
  EXPECT_EQ(GgmlTypeName(GgmlType::kQ8_1), "Q8_1");
  EXPECT_EQ(GgmlTypeName(GgmlType::kQ4_K), "Q4_K");
  EXPECT_EQ(GgmlTypeName(GgmlType::kQ8_K), "Q8_K");
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(17)), "IQ2_XS");
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(35)), "TQ2_0");
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(4)), "type 4");  // removed Q4_2
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(31)), "type 31");
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(99)), "type 99");
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(0xffffffffu)), "type 4294967295");
  // The text of an unknown value stays where it is.
  EXPECT_EQ(GgmlTypeName(static_cast<GgmlType>(99)).data(),
            GgmlTypeName(static_cast<GgmlType>(99)).data());
}

TEST(GgufQuantsTest, BlockLayoutsAreGgmls) {
  struct Expected {
    GgmlType type;
    int64_t elements;
    int64_t bytes;
  };
  // gguf's GGML_QUANT_SIZES.
  const Expected expected[] = {
      {GgmlType::kF32, 1, 4},      {GgmlType::kF16, 1, 2},      {GgmlType::kBF16, 1, 2},
      {GgmlType::kQ4_0, 32, 18},   {GgmlType::kQ4_1, 32, 20},   {GgmlType::kQ5_0, 32, 22},
      {GgmlType::kQ5_1, 32, 24},   {GgmlType::kQ8_0, 32, 34},   {GgmlType::kQ2_K, 256, 84},
      {GgmlType::kQ3_K, 256, 110}, {GgmlType::kQ4_K, 256, 144}, {GgmlType::kQ5_K, 256, 176},
      {GgmlType::kQ6_K, 256, 210},
  };
  for (const Expected& e : expected) {
    ASSERT_OK_AND_ASSIGN(GgmlBlockLayout layout, GgmlBlockLayoutOf(e.type));
    EXPECT_EQ(layout.block_elements, e.elements) << GgmlTypeName(e.type);
    EXPECT_EQ(layout.block_bytes, e.bytes) << GgmlTypeName(e.type);
    ASSERT_OK_AND_ASSIGN(uint64_t bytes, GgmlRowBytes(e.type, 3 * e.elements));
    EXPECT_EQ(bytes, static_cast<uint64_t>(3 * e.bytes)) << GgmlTypeName(e.type);
  }
}

TEST(GgufQuantsTest, MatchesGgufPythonBitForBit) {
  for (GgmlType type : kSupported) {
    SCOPED_TRACE(GgmlTypeName(type));
    const Golden golden = ReadGolden(type);
    ASSERT_FALSE(golden.values.empty());
    std::vector<float> values(golden.values.size());
    ASSERT_OK(DequantizeGgmlRow(type, golden.blocks, absl::MakeSpan(values)));
    EXPECT_TRUE(SameBits(values, golden.values));

    // From an address of any alignment, and block by block.
    std::vector<uint8_t> shifted(golden.blocks.size() + 1);
    std::memcpy(shifted.data() + 1, golden.blocks.data(), golden.blocks.size());
    std::vector<float> unaligned(golden.values.size());
    ASSERT_OK(DequantizeGgmlRow(type, absl::MakeConstSpan(shifted).subspan(1),
                                absl::MakeSpan(unaligned)));
    EXPECT_TRUE(SameBits(unaligned, golden.values));

    ASSERT_OK_AND_ASSIGN(GgmlBlockLayout layout, GgmlBlockLayoutOf(type));
    std::vector<float> one_block(static_cast<size_t>(layout.block_elements));
    ASSERT_OK(DequantizeGgmlRow(type,
                                absl::MakeConstSpan(golden.blocks)
                                    .subspan(static_cast<size_t>(layout.block_bytes),
                                             static_cast<size_t>(layout.block_bytes)),
                                absl::MakeSpan(one_block)));
    EXPECT_TRUE(SameBits(
        one_block, absl::MakeConstSpan(golden.values)
                       .subspan(static_cast<size_t>(layout.block_elements), one_block.size())));
  }
}

TEST(GgufQuantsTest, GoldensHoldTheSpecialFloats) {
  // The goldens must exercise what they claim to: NaNs, infinities and subnormals for the
  // float types, and some zero elements for the quantized ones.
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16}) {
    const Golden golden = ReadGolden(type);
    int nans = 0, infinities = 0, subnormals = 0;
    for (float v : golden.values) {
      nans += v != v;
      infinities += v == std::numeric_limits<float>::infinity() ||
                    v == -std::numeric_limits<float>::infinity();
      subnormals += std::fpclassify(v) == FP_SUBNORMAL;
    }
    EXPECT_GE(nans, 4) << GgmlTypeName(type);
    EXPECT_GE(infinities, 2) << GgmlTypeName(type);
    if (type != GgmlType::kF16) {
      EXPECT_GE(subnormals, 2) << GgmlTypeName(type);
    }
  }
}

// A Q4_0 block written by hand: d = -2, codes 0..15 in the low nibbles and 15..0 in the high.
TEST(GgufQuantsTest, Q4_0ByHand) {
  std::vector<uint8_t> block = {0x00, 0xc0};  // half -2.0
  for (int j = 0; j < 16; ++j) block.push_back(static_cast<uint8_t>(j | (15 - j) << 4));
  std::vector<float> values(32);
  ASSERT_OK(DequantizeGgmlRow(GgmlType::kQ4_0, block, absl::MakeSpan(values)));
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(values[j], -2.0f * static_cast<float>(j - 8)) << j;
    EXPECT_EQ(values[16 + j], -2.0f * static_cast<float>(7 - j)) << j;
  }
  EXPECT_TRUE(std::signbit(values[8]));  // -2 * 0 is -0, as gguf and llama.cpp compute it
}

// The product is exact (see the header), so fused with the sum or not, this is one rounding.
float GroupValue(float scale, int code, float offset) {
  return scale * static_cast<float>(code) + offset;
}

TEST(GgufQuantsTest, GroupsReproduceDequantization) {
  for (GgmlType type : {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ4_K}) {
    SCOPED_TRACE(GgmlTypeName(type));
    const Golden golden = ReadGolden(type);
    const auto elements = static_cast<int64_t>(golden.values.size());
    ASSERT_OK_AND_ASSIGN(GgmlGroups groups, GgmlRowGroups(type, golden.blocks, elements));
    EXPECT_EQ(groups.code_bits, type == GgmlType::kQ8_0 ? 8 : 4);
    ASSERT_EQ(groups.codes.size(), golden.values.size());
    ASSERT_EQ(groups.scales.size(), golden.values.size() / 32);
    ASSERT_EQ(groups.offsets.size(), golden.values.size() / 32);

    std::vector<float> rebuilt(golden.values.size());
    for (size_t i = 0; i < rebuilt.size(); ++i) {
      const int code = groups.codes[i];
      if (groups.code_bits == 4) {
        ASSERT_TRUE(code >= 0 && code <= 15) << code;
      }
      rebuilt[i] = GroupValue(groups.scales[i / 32], code, groups.offsets[i / 32]);
      if (type == GgmlType::kQ4_0 && rebuilt[i] == 0.0f && golden.values[i] == 0.0f) {
        rebuilt[i] = golden.values[i];  // the sign of a zero may differ (see the header)
      }
    }
    EXPECT_TRUE(SameBits(rebuilt, golden.values));
  }
}

TEST(GgufQuantsTest, GroupsOnlyForTheAffineFourAndEightBitTypes) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kQ5_0, GgmlType::kQ5_K, GgmlType::kQ6_K,
                        GgmlType::kQ8_K, static_cast<GgmlType>(99)}) {
    EXPECT_TRUE(IsError(GgmlRowGroups(type, {}, 0), absl::StatusCode::kInvalidArgument,
                        {std::string(GgmlTypeName(type))}));
  }
  const Golden golden = ReadGolden(GgmlType::kQ4_K);
  EXPECT_TRUE(IsError(GgmlRowGroups(GgmlType::kQ4_K, golden.blocks, 512),
                      absl::StatusCode::kInvalidArgument, {"Q4_K", "512"}));
  EXPECT_TRUE(IsError(GgmlRowGroups(GgmlType::kQ4_K, golden.blocks, 100),
                      absl::StatusCode::kInvalidArgument, {"Q4_K", "100", "256"}));
}

TEST(GgufQuantsTest, UnsupportedTypesAreNamed) {
  std::vector<float> values(256);
  std::vector<uint8_t> bytes(1024);
  for (uint32_t number : {9u, 15u, 17u, 24u, 28u, 99u, 4u}) {
    const auto type = static_cast<GgmlType>(number);
    const std::string name(GgmlTypeName(type));
    EXPECT_TRUE(IsError(GgmlBlockLayoutOf(type), absl::StatusCode::kInvalidArgument, {name}));
    EXPECT_TRUE(IsError(GgmlRowBytes(type, 256), absl::StatusCode::kInvalidArgument, {name}));
    EXPECT_TRUE(IsError(DequantizeGgmlRow(type, bytes, absl::MakeSpan(values)),
                        absl::StatusCode::kInvalidArgument, {name}));
  }
  EXPECT_TRUE(IsError(GgmlBlockLayoutOf(static_cast<GgmlType>(99)),
                      absl::StatusCode::kInvalidArgument, {"type 99"}));
  EXPECT_TRUE(
      IsError(GgmlBlockLayoutOf(GgmlType::kQ8_K), absl::StatusCode::kInvalidArgument, {"Q8_K"}));
}

TEST(GgufQuantsTest, RowBytesChecksCounts) {
  EXPECT_TRUE(IsError(GgmlRowBytes(GgmlType::kQ4_K, 100), absl::StatusCode::kInvalidArgument,
                      {"Q4_K", "100", "256"}));
  EXPECT_TRUE(IsError(GgmlRowBytes(GgmlType::kQ8_0, 33), absl::StatusCode::kInvalidArgument,
                      {"Q8_0", "33", "32"}));
  EXPECT_TRUE(
      IsError(GgmlRowBytes(GgmlType::kF32, -1), absl::StatusCode::kInvalidArgument, {"F32", "-1"}));
  EXPECT_TRUE(IsError(GgmlRowBytes(GgmlType::kQ4_0, -32), absl::StatusCode::kInvalidArgument,
                      {"Q4_0", "-32"}));
  ASSERT_OK_AND_ASSIGN(uint64_t zero, GgmlRowBytes(GgmlType::kQ6_K, 0));
  EXPECT_EQ(zero, 0u);

  // The largest counts: f32 past 2^64 bytes is an error, f16 just fits, and the K-quants
  // (fewer bytes than elements) always fit.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  EXPECT_TRUE(IsError(GgmlRowBytes(GgmlType::kF32, kMax), absl::StatusCode::kInvalidArgument,
                      {"F32", "2^64"}));
  EXPECT_TRUE(IsError(GgmlRowBytes(GgmlType::kF32, uint64_t{1} << 62),
                      absl::StatusCode::kInvalidArgument, {"F32"}));
  ASSERT_OK_AND_ASSIGN(uint64_t f32_bytes, GgmlRowBytes(GgmlType::kF32, (int64_t{1} << 62) - 1));
  EXPECT_EQ(f32_bytes, ((uint64_t{1} << 62) - 1) * 4);
  ASSERT_OK_AND_ASSIGN(uint64_t f16_bytes, GgmlRowBytes(GgmlType::kF16, kMax));
  EXPECT_EQ(f16_bytes, static_cast<uint64_t>(kMax) * 2);
  const int64_t k_max = kMax / 256 * 256;
  ASSERT_OK_AND_ASSIGN(uint64_t q6_bytes, GgmlRowBytes(GgmlType::kQ6_K, k_max));
  EXPECT_EQ(q6_bytes, static_cast<uint64_t>(k_max / 256) * 210);
}

TEST(GgufQuantsTest, DequantizeChecksSizes) {
  const Golden golden = ReadGolden(GgmlType::kQ6_K);  // 8 blocks of 256
  const absl::Span<const uint8_t> blocks = golden.blocks;
  std::vector<float> values(golden.values.size(), 1.0f);
  const absl::Span<float> dst = absl::MakeSpan(values);

  EXPECT_TRUE(IsError(DequantizeGgmlRow(GgmlType::kQ6_K, blocks.subspan(1), dst),
                      absl::StatusCode::kInvalidArgument, {"Q6_K", "1679", "2048", "1680"}));
  std::vector<uint8_t> longer(golden.blocks);
  longer.push_back(0);
  EXPECT_TRUE(IsError(DequantizeGgmlRow(GgmlType::kQ6_K, longer, dst),
                      absl::StatusCode::kInvalidArgument, {"Q6_K", "1681"}));
  EXPECT_TRUE(IsError(DequantizeGgmlRow(GgmlType::kQ6_K, blocks, dst.subspan(0, 2047)),
                      absl::StatusCode::kInvalidArgument, {"Q6_K", "2047", "256"}));
  EXPECT_TRUE(IsError(DequantizeGgmlRow(GgmlType::kQ6_K, blocks, dst.subspan(0, 1792)),
                      absl::StatusCode::kInvalidArgument, {"Q6_K", "1680", "1792"}));
  // A wrong type for the bytes: Q5_K has other block sizes.
  EXPECT_TRUE(IsError(DequantizeGgmlRow(GgmlType::kQ5_K, blocks, dst),
                      absl::StatusCode::kInvalidArgument, {"Q5_K"}));
  for (float v : values) ASSERT_EQ(v, 1.0f);  // untouched on error

  EXPECT_OK(DequantizeGgmlRow(GgmlType::kQ6_K, {}, {}));
}

}  // namespace
}  // namespace tessera::model
