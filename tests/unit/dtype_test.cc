// Tests of runtime/core/dtype.h and runtime/core/half.h: element sizes, names, the 16-bit
// float conversions against known bit patterns, and packed int4 access.

#include "runtime/core/dtype.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/core/half.h"

namespace tessera {
namespace {

float FloatFromBits(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t BitsOfFloat(float value) { return std::bit_cast<uint32_t>(value); }

uint16_t Bf16Bits(float value) { return BFloat16::FromFloat(value).bits; }
uint16_t HalfBits(float value) { return Half::FromFloat(value).bits; }

bool IsHalfNaN(uint16_t bits) { return (bits & 0x7c00u) == 0x7c00u && (bits & 0x03ffu) != 0; }
bool IsBf16NaN(uint16_t bits) { return (bits & 0x7f80u) == 0x7f80u && (bits & 0x007fu) != 0; }

TEST(DTypeTest, BitsOfEveryDType) {
  EXPECT_EQ(BitsOf(DType::kF32), 32);
  EXPECT_EQ(BitsOf(DType::kBF16), 16);
  EXPECT_EQ(BitsOf(DType::kF16), 16);
  EXPECT_EQ(BitsOf(DType::kI8), 8);
  EXPECT_EQ(BitsOf(DType::kI32), 32);
  EXPECT_EQ(BitsOf(DType::kI64), 64);
  EXPECT_EQ(BitsOf(DType::kI4), 4);
}

TEST(DTypeTest, StorageBytes) {
  EXPECT_EQ(StorageBytes(DType::kF32, 0), 0u);
  EXPECT_EQ(StorageBytes(DType::kF32, 5), 20u);
  EXPECT_EQ(StorageBytes(DType::kBF16, 3), 6u);
  EXPECT_EQ(StorageBytes(DType::kF16, 1), 2u);
  EXPECT_EQ(StorageBytes(DType::kI8, 7), 7u);
  EXPECT_EQ(StorageBytes(DType::kI32, 2), 8u);
  EXPECT_EQ(StorageBytes(DType::kI64, 3), 24u);
  // int4 packs two elements per byte and rounds up.
  EXPECT_EQ(StorageBytes(DType::kI4, 0), 0u);
  EXPECT_EQ(StorageBytes(DType::kI4, 1), 1u);
  EXPECT_EQ(StorageBytes(DType::kI4, 2), 1u);
  EXPECT_EQ(StorageBytes(DType::kI4, 3), 2u);
  EXPECT_EQ(StorageBytes(DType::kI4, 4), 2u);
  EXPECT_EQ(StorageBytes(DType::kI4, 1023), 512u);
}

TEST(DTypeTest, NamesOfEveryDType) {
  EXPECT_EQ(NameOf(DType::kF32), "f32");
  EXPECT_EQ(NameOf(DType::kBF16), "bf16");
  EXPECT_EQ(NameOf(DType::kF16), "f16");
  EXPECT_EQ(NameOf(DType::kI8), "i8");
  EXPECT_EQ(NameOf(DType::kI32), "i32");
  EXPECT_EQ(NameOf(DType::kI64), "i64");
  EXPECT_EQ(NameOf(DType::kI4), "i4");
}

TEST(DTypeTest, ParseDTypeRoundTripsEveryName) {
  for (DType dtype : kAllDTypes) {
    absl::StatusOr<DType> parsed = ParseDType(NameOf(dtype));
    ASSERT_TRUE(parsed.ok()) << NameOf(dtype) << ": " << parsed.status();
    EXPECT_EQ(*parsed, dtype) << NameOf(dtype);
  }
}

TEST(DTypeTest, ParseDTypeRejectsUnknownName) {
  for (const char* bad : {"float32", "", "F32", "bf16 ", "int4"}) {
    absl::StatusOr<DType> parsed = ParseDType(bad);
    ASSERT_FALSE(parsed.ok()) << "'" << bad << "' was accepted";
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    std::string message(parsed.status().message());
    EXPECT_NE(message.find(absl::StrCat("'", bad, "'")), std::string::npos) << message;
    EXPECT_NE(message.find("f32, bf16, f16, i8, i32, i64, i4"), std::string::npos) << message;
  }
}

TEST(DTypeTest, IsFloatingPoint) {
  EXPECT_TRUE(IsFloatingPoint(DType::kF32));
  EXPECT_TRUE(IsFloatingPoint(DType::kBF16));
  EXPECT_TRUE(IsFloatingPoint(DType::kF16));
  EXPECT_FALSE(IsFloatingPoint(DType::kI8));
  EXPECT_FALSE(IsFloatingPoint(DType::kI32));
  EXPECT_FALSE(IsFloatingPoint(DType::kI64));
  EXPECT_FALSE(IsFloatingPoint(DType::kI4));
}

TEST(DTypeTest, DTypeOfMapsCppTypes) {
  EXPECT_EQ(DTypeOf<float>::value, DType::kF32);
  EXPECT_EQ(DTypeOf<BFloat16>::value, DType::kBF16);
  EXPECT_EQ(DTypeOf<Half>::value, DType::kF16);
  EXPECT_EQ(DTypeOf<int8_t>::value, DType::kI8);
  EXPECT_EQ(DTypeOf<int32_t>::value, DType::kI32);
  EXPECT_EQ(DTypeOf<int64_t>::value, DType::kI64);
}

// ---- bfloat16 -------------------------------------------------------------------------

TEST(BFloat16Test, ExactValues) {
  EXPECT_EQ(Bf16Bits(0.0f), 0x0000);
  EXPECT_EQ(Bf16Bits(-0.0f), 0x8000);
  EXPECT_EQ(Bf16Bits(1.0f), 0x3F80);
  EXPECT_EQ(Bf16Bits(-2.0f), 0xC000);
  EXPECT_EQ(Bf16Bits(0.5f), 0x3F00);
  EXPECT_EQ(Bf16Bits(3.0f), 0x4040);
}

TEST(BFloat16Test, RoundsToNearestEven) {
  // Exactly halfway between 0x3F80 and 0x3F81: stays on the even 0x3F80.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x3F808000u)), 0x3F80);
  // Halfway between 0x3F81 and 0x3F82: goes to the even 0x3F82.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x3F818000u)), 0x3F82);
  // Just above halfway rounds up; just below rounds down.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x3F808001u)), 0x3F81);
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x3F807FFFu)), 0x3F80);
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x3F81FFFFu)), 0x3F82);
  // Negative values round the magnitude the same way.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0xBF808000u)), 0xBF80);
  EXPECT_EQ(Bf16Bits(FloatFromBits(0xBF818000u)), 0xBF82);
  // A carry out of the mantissa moves into the exponent: 1.99999988 -> 2.0.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x3FFFFFFFu)), 0x4000);
}

TEST(BFloat16Test, InfinityAndOverflow) {
  EXPECT_EQ(Bf16Bits(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(Bf16Bits(-std::numeric_limits<float>::infinity()), 0xFF80);
  // The largest float is above halfway past the largest finite bf16 (0x7F7F): infinity.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x7F7FFFFFu)), 0x7F80);
  EXPECT_EQ(Bf16Bits(-FloatFromBits(0x7F7FFFFFu)), 0xFF80);
  EXPECT_EQ(Bf16Bits(3.4e38f), 0x7F80);
  // The largest finite bf16 itself survives.
  EXPECT_EQ(Bf16Bits(FloatFromBits(0x7F7F0000u)), 0x7F7F);
}

TEST(BFloat16Test, NaNStaysNaN) {
  EXPECT_TRUE(IsBf16NaN(Bf16Bits(std::numeric_limits<float>::quiet_NaN())));
  // A NaN whose payload lies only in the dropped low bits must not become infinity.
  EXPECT_TRUE(IsBf16NaN(Bf16Bits(FloatFromBits(0x7F800001u))));
  uint16_t negative_nan = Bf16Bits(FloatFromBits(0xFF800001u));
  EXPECT_TRUE(IsBf16NaN(negative_nan));
  EXPECT_EQ(negative_nan & 0x8000u, 0x8000u) << "sign of NaN lost";
  EXPECT_TRUE(std::isnan(BFloat16::FromBits(0x7FC0).ToFloat()));
}

TEST(BFloat16Test, ToFloat) {
  EXPECT_EQ(BFloat16::FromBits(0x3F80).ToFloat(), 1.0f);
  EXPECT_EQ(BFloat16::FromBits(0xC000).ToFloat(), -2.0f);
  EXPECT_EQ(BFloat16::FromBits(0x3F82).ToFloat(), 1.015625f);
  EXPECT_EQ(BitsOfFloat(BFloat16::FromBits(0x8000).ToFloat()), 0x80000000u);
  EXPECT_EQ(BFloat16::FromBits(0x7F80).ToFloat(), std::numeric_limits<float>::infinity());
  EXPECT_EQ(BFloat16::FromBits(0xFF80).ToFloat(), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(BitsOfFloat(BFloat16::FromBits(0x7F7F).ToFloat()), 0x7F7F0000u);
  // Smallest subnormal bf16: 2^-133.
  EXPECT_EQ(BFloat16::FromBits(0x0001).ToFloat(), 0x1p-133f);
}

TEST(BFloat16Test, EveryBitPatternRoundTrips) {
  for (uint32_t b = 0; b <= 0xFFFFu; ++b) {
    BFloat16 value = BFloat16::FromBits(static_cast<uint16_t>(b));
    uint16_t back = BFloat16::FromFloat(value.ToFloat()).bits;
    if (IsBf16NaN(value.bits)) {
      ASSERT_TRUE(IsBf16NaN(back)) << std::hex << "0x" << b << " -> 0x" << back;
    } else {
      ASSERT_EQ(back, value.bits) << std::hex << "0x" << b << " -> 0x" << back;
    }
  }
}

// ---- IEEE half ------------------------------------------------------------------------

TEST(HalfTest, ExactValues) {
  EXPECT_EQ(HalfBits(0.0f), 0x0000);
  EXPECT_EQ(HalfBits(-0.0f), 0x8000);
  EXPECT_EQ(HalfBits(1.0f), 0x3C00);
  EXPECT_EQ(HalfBits(-2.0f), 0xC000);
  EXPECT_EQ(HalfBits(0.5f), 0x3800);
  EXPECT_EQ(HalfBits(65504.0f), 0x7BFF);         // largest finite half
  EXPECT_EQ(HalfBits(0x1p-14f), 0x0400);         // smallest normal half
  EXPECT_EQ(HalfBits(0x1p-24f), 0x0001);         // smallest subnormal half
  EXPECT_EQ(HalfBits(0x1p-15f), 0x0200);         // a subnormal power of two
  EXPECT_EQ(HalfBits(1023 * 0x1p-24f), 0x03FF);  // largest subnormal
}

TEST(HalfTest, RoundsToNearestEven) {
  EXPECT_EQ(HalfBits(0.1f), 0x2E66);
  EXPECT_EQ(HalfBits(-0.1f), 0xAE66);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: stays on the even 1.
  EXPECT_EQ(HalfBits(1.0f + 0x1p-11f), 0x3C00);
  // 1 + 3 * 2^-11 is halfway between 0x3C01 and 0x3C02: goes to the even 0x3C02.
  EXPECT_EQ(HalfBits(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(HalfBits(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  // 65519 is below halfway to 65536 and rounds down to the largest finite half.
  EXPECT_EQ(HalfBits(65519.0f), 0x7BFF);
  EXPECT_EQ(HalfBits(-65519.0f), 0xFBFF);
}

TEST(HalfTest, SubnormalRounding) {
  // 2^-25 is halfway between 0 and the smallest subnormal: ties to the even 0.
  EXPECT_EQ(HalfBits(0x1p-25f), 0x0000);
  EXPECT_EQ(HalfBits(-0x1p-25f), 0x8000);
  // Above halfway rounds up to the smallest subnormal.
  EXPECT_EQ(HalfBits(1.5f * 0x1p-25f), 0x0001);
  // 1.5 * 2^-24 is halfway between 0x0001 and 0x0002: ties to the even 0x0002.
  EXPECT_EQ(HalfBits(1.5f * 0x1p-24f), 0x0002);
  // 2.5 * 2^-24 is halfway between 0x0002 and 0x0003: stays on 0x0002.
  EXPECT_EQ(HalfBits(2.5f * 0x1p-24f), 0x0002);
  // Far below the smallest subnormal: zero, sign kept.
  EXPECT_EQ(HalfBits(1e-10f), 0x0000);
  EXPECT_EQ(HalfBits(-1e-10f), 0x8000);
  EXPECT_EQ(HalfBits(std::numeric_limits<float>::denorm_min()), 0x0000);
  // Just below 2^-14 rounds up across the subnormal/normal boundary.
  EXPECT_EQ(HalfBits(FloatFromBits(0x387FFFFFu)), 0x0400);
}

TEST(HalfTest, InfinityAndOverflow) {
  EXPECT_EQ(HalfBits(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(HalfBits(-std::numeric_limits<float>::infinity()), 0xFC00);
  // 65520 is halfway between 65504 (odd mantissa) and 65536: ties to even, which is infinity.
  EXPECT_EQ(HalfBits(65520.0f), 0x7C00);
  EXPECT_EQ(HalfBits(-65520.0f), 0xFC00);
  EXPECT_EQ(HalfBits(1e6f), 0x7C00);
  EXPECT_EQ(HalfBits(std::numeric_limits<float>::max()), 0x7C00);
}

TEST(HalfTest, NaNStaysNaN) {
  uint16_t nan = HalfBits(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00u, 0x7C00u);
  EXPECT_NE(nan & 0x03FFu, 0u);
  // Payload only in the bits a half drops: still NaN, not infinity.
  EXPECT_TRUE(IsHalfNaN(HalfBits(FloatFromBits(0x7F800001u))));
  uint16_t negative_nan = HalfBits(FloatFromBits(0xFFC00000u));
  EXPECT_TRUE(IsHalfNaN(negative_nan));
  EXPECT_EQ(negative_nan & 0x8000u, 0x8000u) << "sign of NaN lost";
  EXPECT_TRUE(std::isnan(Half::FromBits(0x7E00).ToFloat()));
  EXPECT_TRUE(std::isnan(Half::FromBits(0x7C01).ToFloat()));
}

TEST(HalfTest, ToFloat) {
  EXPECT_EQ(Half::FromBits(0x3C00).ToFloat(), 1.0f);
  EXPECT_EQ(Half::FromBits(0xC000).ToFloat(), -2.0f);
  EXPECT_EQ(Half::FromBits(0x7BFF).ToFloat(), 65504.0f);
  EXPECT_EQ(Half::FromBits(0xFBFF).ToFloat(), -65504.0f);
  EXPECT_EQ(Half::FromBits(0x0400).ToFloat(), 0x1p-14f);
  EXPECT_EQ(Half::FromBits(0x0001).ToFloat(), 0x1p-24f);
  EXPECT_EQ(Half::FromBits(0x8001).ToFloat(), -0x1p-24f);
  EXPECT_EQ(Half::FromBits(0x03FF).ToFloat(), 1023 * 0x1p-24f);
  EXPECT_EQ(Half::FromBits(0x2E66).ToFloat(), 0.0999755859375f);
  EXPECT_EQ(Half::FromBits(0x3555).ToFloat(), 0.333251953125f);
  EXPECT_EQ(Half::FromBits(0x7C00).ToFloat(), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Half::FromBits(0xFC00).ToFloat(), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(BitsOfFloat(Half::FromBits(0x0000).ToFloat()), 0x00000000u);
  EXPECT_EQ(BitsOfFloat(Half::FromBits(0x8000).ToFloat()), 0x80000000u);
}

TEST(HalfTest, EveryBitPatternRoundTrips) {
  for (uint32_t b = 0; b <= 0xFFFFu; ++b) {
    Half value = Half::FromBits(static_cast<uint16_t>(b));
    uint16_t back = Half::FromFloat(value.ToFloat()).bits;
    if (IsHalfNaN(value.bits)) {
      ASSERT_TRUE(IsHalfNaN(back)) << std::hex << "0x" << b << " -> 0x" << back;
      ASSERT_EQ(back & 0x8000u, value.bits & 0x8000u) << std::hex << "0x" << b;
    } else {
      ASSERT_EQ(back, value.bits) << std::hex << "0x" << b << " -> 0x" << back;
    }
  }
}

TEST(HalfTest, EqualityComparesBits) {
  EXPECT_EQ(Half::FromBits(0x3C00), Half::FromFloat(1.0f));
  EXPECT_FALSE(Half::FromBits(0x0000) == Half::FromBits(0x8000));
  EXPECT_EQ(BFloat16::FromBits(0x3F80), BFloat16::FromFloat(1.0f));
  EXPECT_FALSE(BFloat16::FromBits(0x0000) == BFloat16::FromBits(0x8000));
}

// ---- packed int4 ----------------------------------------------------------------------

TEST(Int4Test, EveryValueAtEvenAndOddIndexKeepsNeighbour) {
  for (int value = -8; value <= 7; ++value) {
    for (int neighbour = -8; neighbour <= 7; ++neighbour) {
      uint8_t packed[2] = {0, 0x5A};
      // Element 0 is the low nibble, element 1 the high nibble of byte 0.
      PackInt4(packed, 0, neighbour);
      PackInt4(packed, 1, value);
      ASSERT_EQ(UnpackInt4(packed, 0), neighbour) << "value " << value;
      ASSERT_EQ(UnpackInt4(packed, 1), value) << "neighbour " << neighbour;
      ASSERT_EQ(packed[0], static_cast<uint8_t>((neighbour & 0xf) | ((value & 0xf) << 4)));

      PackInt4(packed, 0, value);
      ASSERT_EQ(UnpackInt4(packed, 0), value);
      ASSERT_EQ(UnpackInt4(packed, 1), value);
      ASSERT_EQ(packed[1], 0x5A) << "the next byte was written";
    }
  }
}

TEST(Int4Test, OddIndexInLaterByte) {
  uint8_t packed[3] = {0xFF, 0xFF, 0xFF};
  PackInt4(packed, 3, 5);  // byte 1, high nibble
  EXPECT_EQ(packed[0], 0xFF);
  EXPECT_EQ(packed[1], 0x5F);
  EXPECT_EQ(packed[2], 0xFF);
  EXPECT_EQ(UnpackInt4(packed, 2), -1);
  EXPECT_EQ(UnpackInt4(packed, 3), 5);
  PackInt4(packed, 4, -8);  // byte 2, low nibble
  EXPECT_EQ(packed[2], 0xF8);
  EXPECT_EQ(UnpackInt4(packed, 4), -8);
  EXPECT_EQ(UnpackInt4(packed, 5), -1);
}

TEST(Int4Test, KnownNibbleEncodings) {
  const uint8_t packed[] = {0x87, 0x0F};  // elements: 7, -8, -1, 0
  EXPECT_EQ(UnpackInt4(packed, 0), 7);
  EXPECT_EQ(UnpackInt4(packed, 1), -8);
  EXPECT_EQ(UnpackInt4(packed, 2), -1);
  EXPECT_EQ(UnpackInt4(packed, 3), 0);
}

}  // namespace
}  // namespace tessera
