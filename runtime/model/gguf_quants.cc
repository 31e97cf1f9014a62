#include "runtime/model/gguf_quants.h"

#include <array>
#include <bit>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/core/half.h"

namespace tessera::model {
namespace {

// ggml's names, indexed by type number; empty for the numbers it does not define (removed
// types included).
// clang-format off
constexpr std::array<const char*, 42> kTypeNames = {
    "F32",     "F16",    "Q4_0",    "Q4_1",  "",       "",      "Q5_0",  "Q5_1",    //  0 -  7
    "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",    //  8 - 15
    "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",  // 16 - 23
    "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16",  "",        // 24 - 31
    "",        "",       "TQ1_0",   "TQ2_0", "",       "",      "",      "MXFP4",   // 32 - 39
    "NVFP4",   "Q1_0"};                                                             // 40 - 41
// clang-format on

inline uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));
}
inline uint32_t LoadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
inline float LoadHalf(const uint8_t* p) { return Half::FromBits(LoadU16(p)).ToFloat(); }

// Each decodes one block at `b` into its elements at `y`.

void DecodeF32(const uint8_t* b, float* y) { *y = std::bit_cast<float>(LoadU32(b)); }
void DecodeF16(const uint8_t* b, float* y) { *y = LoadHalf(b); }
void DecodeBF16(const uint8_t* b, float* y) { *y = BFloat16::FromBits(LoadU16(b)).ToFloat(); }

// The 32 4-bit codes of Q4_0, Q4_1 (and the low bits of Q5_0, Q5_1): the low nibbles of 16
// bytes, then their high nibbles.
inline int Nibble32(const uint8_t* qs, int e) { return e < 16 ? qs[e] & 0xF : qs[e - 16] >> 4; }

void DecodeQ4_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (int e = 0; e < 32; ++e) y[e] = d * static_cast<float>(Nibble32(qs, e) - 8);
}

void DecodeQ4_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (int e = 0; e < 32; ++e) y[e] = d * static_cast<float>(Nibble32(qs, e)) + m;
}

inline int Q5Code(uint32_t qh, const uint8_t* qs, int e) {
  return Nibble32(qs, e) | static_cast<int>(((qh >> e) & 1u) << 4);
}

void DecodeQ5_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const uint32_t qh = LoadU32(b + 2);
  const uint8_t* qs = b + 6;
  for (int e = 0; e < 32; ++e) y[e] = d * static_cast<float>(Q5Code(qh, qs, e) - 16);
}

void DecodeQ5_1(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint32_t qh = LoadU32(b + 4);
  const uint8_t* qs = b + 8;
  for (int e = 0; e < 32; ++e) y[e] = d * static_cast<float>(Q5Code(qh, qs, e)) + m;
}

void DecodeQ8_0(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  for (int e = 0; e < 32; ++e) y[e] = static_cast<float>(static_cast<int8_t>(b[2 + e])) * d;
}

// The 2-bit codes of Q2_K and Q3_K: in each half of 128 elements, four groups of 32 take bit
// pairs 0-1, 2-3, 4-5, 6-7 of the same 32 bytes.
inline int Crumb256(const uint8_t* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
}

void DecodeQ2_K(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = LoadHalf(b + 80);
  const float dmin = LoadHalf(b + 82);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(scales[s] & 0xF);
    const float ml = dmin * static_cast<float>(scales[s] >> 4);
    for (int e = 16 * s; e < 16 * s + 16; ++e) {
      y[e] = dl * static_cast<float>(Crumb256(qs, e)) - ml;
    }
  }
}

void DecodeQ3_K(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* scales = b + 96;
  const float d = LoadHalf(b + 108);
  for (int s = 0; s < 16; ++s) {
    const int low = s < 8 ? scales[s] & 0xF : scales[s - 8] >> 4;
    const int high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = d * static_cast<float>((low | high << 4) - 32);
    for (int e = 16 * s; e < 16 * s + 16; ++e) {
      const int hbit = (hmask[e % 32] >> (e / 32)) & 1;
      y[e] = dl * static_cast<float>(Crumb256(qs, e) - (hbit ? 0 : 4));
    }
  }
}

// The 6-bit scale and min of sub-block s (0..7) of Q4_K and Q5_K, packed in 12 bytes.
struct ScaleMin {
  int scale;
  int min;
};
inline ScaleMin KScaleMin(const uint8_t* scales, int s) {
  if (s < 4) return {scales[s] & 63, scales[s + 4] & 63};
  return {(scales[s + 4] & 0xF) | ((scales[s - 4] >> 6) << 4),
          (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4)};
}

// The 4-bit codes of Q4_K and Q5_K: each 64 elements are the low nibbles of 32 bytes, then
// their high nibbles.
inline int Nibble256(const uint8_t* qs, int e) {
  const uint8_t byte = qs[32 * (e / 64) + e % 32];
  return (e / 32) % 2 == 0 ? byte & 0xF : byte >> 4;
}

void DecodeQ4_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int s = 0; s < 8; ++s) {
    const ScaleMin sm = KScaleMin(scales, s);
    const float dl = d * static_cast<float>(sm.scale);
    const float ml = dmin * static_cast<float>(sm.min);
    for (int e = 32 * s; e < 32 * s + 32; ++e) {
      y[e] = dl * static_cast<float>(Nibble256(qs, e)) - ml;
    }
  }
}

void DecodeQ5_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int s = 0; s < 8; ++s) {
    const ScaleMin sm = KScaleMin(scales, s);
    const float dl = d * static_cast<float>(sm.scale);
    const float ml = dmin * static_cast<float>(sm.min);
    for (int e = 32 * s; e < 32 * s + 32; ++e) {
      const int q = Nibble256(qs, e) | (((qh[e % 32] >> s) & 1) << 4);
      y[e] = dl * static_cast<float>(q) - ml;
    }
  }
}

void DecodeQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const uint8_t* scales = b + 192;
  const float d = LoadHalf(b + 208);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(static_cast<int8_t>(scales[s]));
    for (int e = 16 * s; e < 16 * s + 16; ++e) {
      const int h = e / 128;
      const int p = e % 128 / 32;
      const int l = e % 32;
      const int low = (ql[64 * h + 32 * (p & 1) + l] >> (4 * (p >> 1))) & 0xF;
      const int high = (qh[32 * h + l] >> (2 * p)) & 3;
      y[e] = dl * static_cast<float>((low | high << 4) - 32);
    }
  }
}

// Decodes `blocks` consecutive blocks, the block decoder inlined.
template <void (*kDecodeBlock)(const uint8_t*, float*), int64_t kElements, int64_t kBytes>
void DecodeBlocks(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t i = 0; i < blocks; ++i) kDecodeBlock(src + i * kBytes, dst + i * kElements);
}

struct TypeTraits {
  GgmlBlockLayout layout;
  void (*decode)(const uint8_t* src, int64_t blocks, float* dst);
};

template <void (*kDecodeBlock)(const uint8_t*, float*), int64_t kElements, int64_t kBytes>
constexpr TypeTraits Traits() {
  return {{kElements, kBytes}, DecodeBlocks<kDecodeBlock, kElements, kBytes>};
}

// nullptr for the types not dequantized.
const TypeTraits* TraitsOf(GgmlType type) {
  static constexpr TypeTraits kF32 = Traits<DecodeF32, 1, 4>();
  static constexpr TypeTraits kF16 = Traits<DecodeF16, 1, 2>();
  static constexpr TypeTraits kBF16 = Traits<DecodeBF16, 1, 2>();
  static constexpr TypeTraits kQ4_0 = Traits<DecodeQ4_0, 32, 18>();
  static constexpr TypeTraits kQ4_1 = Traits<DecodeQ4_1, 32, 20>();
  static constexpr TypeTraits kQ5_0 = Traits<DecodeQ5_0, 32, 22>();
  static constexpr TypeTraits kQ5_1 = Traits<DecodeQ5_1, 32, 24>();
  static constexpr TypeTraits kQ8_0 = Traits<DecodeQ8_0, 32, 34>();
  static constexpr TypeTraits kQ2_K = Traits<DecodeQ2_K, 256, 84>();
  static constexpr TypeTraits kQ3_K = Traits<DecodeQ3_K, 256, 110>();
  static constexpr TypeTraits kQ4_K = Traits<DecodeQ4_K, 256, 144>();
  static constexpr TypeTraits kQ5_K = Traits<DecodeQ5_K, 256, 176>();
  static constexpr TypeTraits kQ6_K = Traits<DecodeQ6_K, 256, 210>();
  switch (type) {
    case GgmlType::kF32:
      return &kF32;
    case GgmlType::kF16:
      return &kF16;
    case GgmlType::kBF16:
      return &kBF16;
    case GgmlType::kQ4_0:
      return &kQ4_0;
    case GgmlType::kQ4_1:
      return &kQ4_1;
    case GgmlType::kQ5_0:
      return &kQ5_0;
    case GgmlType::kQ5_1:
      return &kQ5_1;
    case GgmlType::kQ8_0:
      return &kQ8_0;
    case GgmlType::kQ2_K:
      return &kQ2_K;
    case GgmlType::kQ3_K:
      return &kQ3_K;
    case GgmlType::kQ4_K:
      return &kQ4_K;
    case GgmlType::kQ5_K:
      return &kQ5_K;
    case GgmlType::kQ6_K:
      return &kQ6_K;
    case GgmlType::kQ8_1:
    case GgmlType::kQ8_K:
      break;
  }
  return nullptr;
}

absl::Status Unsupported(GgmlType type) {
  return absl::InvalidArgumentError(
      absl::StrCat("GGUF tensor type ", GgmlTypeName(type), " cannot be dequantized by Tessera"));
}

absl::StatusOr<const TypeTraits*> SupportedTraits(GgmlType type) {
  const TypeTraits* traits = TraitsOf(type);
  if (traits == nullptr) return Unsupported(type);
  return traits;
}

// The traits of `type` after checking that `src` holds exactly `elements` of it.
absl::StatusOr<const TypeTraits*> CheckRow(GgmlType type, absl::Span<const uint8_t> src,
                                           int64_t elements) {
  absl::StatusOr<uint64_t> bytes = GgmlRowBytes(type, elements);
  if (!bytes.ok()) return bytes.status();
  if (src.size() != *bytes) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor type ", GgmlTypeName(type), ": ",
                                                   src.size(), " bytes for ", elements,
                                                   " elements, which take ", *bytes));
  }
  return TraitsOf(type);
}

}  // namespace

absl::string_view GgmlTypeName(GgmlType type) {
  const auto number = static_cast<uint32_t>(type);
  if (number < kTypeNames.size() && kTypeNames[number][0] != '\0') return kTypeNames[number];
  // Made once per value and kept, so that the view stays valid.
  static auto* const mutex = new std::mutex();
  static auto* const unknown = new std::map<uint32_t, std::string>();
  std::lock_guard<std::mutex> lock(*mutex);
  auto [it, inserted] = unknown->try_emplace(number);
  if (inserted) it->second = absl::StrCat("type ", number);
  return it->second;
}

absl::StatusOr<GgmlBlockLayout> GgmlBlockLayoutOf(GgmlType type) {
  absl::StatusOr<const TypeTraits*> traits = SupportedTraits(type);
  if (!traits.ok()) return traits.status();
  return (*traits)->layout;
}

absl::StatusOr<uint64_t> GgmlRowBytes(GgmlType type, int64_t elements) {
  absl::StatusOr<const TypeTraits*> traits = SupportedTraits(type);
  if (!traits.ok()) return traits.status();
  const GgmlBlockLayout layout = (*traits)->layout;
  if (elements < 0 || elements % layout.block_elements != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF tensor type ", GgmlTypeName(type), ": ", elements,
                     " elements are not a whole number of its blocks of ", layout.block_elements));
  }
  const auto blocks = static_cast<uint64_t>(elements / layout.block_elements);
  const auto block_bytes = static_cast<uint64_t>(layout.block_bytes);
  if (blocks > std::numeric_limits<uint64_t>::max() / block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor type ", GgmlTypeName(type), ": ",
                                                   elements, " elements take over 2^64 bytes"));
  }
  return blocks * block_bytes;
}

absl::Status DequantizeGgmlRow(GgmlType type, absl::Span<const uint8_t> src,
                               absl::Span<float> dst) {
  if (dst.size() > static_cast<size_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF tensor type ", GgmlTypeName(type), ": ", dst.size(), " elements"));
  }
  absl::StatusOr<const TypeTraits*> traits = CheckRow(type, src, static_cast<int64_t>(dst.size()));
  if (!traits.ok()) return traits.status();
  (*traits)->decode(src.data(), static_cast<int64_t>(dst.size()) / (*traits)->layout.block_elements,
                    dst.data());
  return absl::OkStatus();
}

absl::StatusOr<GgmlGroups> GgmlRowGroups(GgmlType type, absl::Span<const uint8_t> src,
                                         int64_t elements) {
  if (type != GgmlType::kQ4_0 && type != GgmlType::kQ4_1 && type != GgmlType::kQ8_0 &&
      type != GgmlType::kQ4_K) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF tensor type ", GgmlTypeName(type),
                     " has no groups of 32 of the form scale * code + offset (Q4_0, Q4_1, Q8_0 "
                     "and Q4_K have)"));
  }
  absl::StatusOr<const TypeTraits*> traits = CheckRow(type, src, elements);
  if (!traits.ok()) return traits.status();
  const GgmlBlockLayout layout = (*traits)->layout;
  const int64_t blocks = elements / layout.block_elements;
  const int64_t groups = elements / GgmlGroups::kGroupElements;

  GgmlGroups out;
  out.code_bits = type == GgmlType::kQ8_0 ? 8 : 4;
  out.codes.resize(static_cast<size_t>(elements));
  out.scales.resize(static_cast<size_t>(groups));
  out.offsets.resize(static_cast<size_t>(groups));
  for (int64_t i = 0; i < blocks; ++i) {
    const uint8_t* b = src.data() + i * layout.block_bytes;
    int8_t* codes = out.codes.data() + i * layout.block_elements;
    const int64_t g = i * layout.block_elements / GgmlGroups::kGroupElements;
    switch (type) {
      case GgmlType::kQ4_0: {
        const float d = LoadHalf(b);
        out.scales[g] = d;
        out.offsets[g] = -8.0f * d;
        for (int e = 0; e < 32; ++e) codes[e] = static_cast<int8_t>(Nibble32(b + 2, e));
        break;
      }
      case GgmlType::kQ4_1:
        out.scales[g] = LoadHalf(b);
        out.offsets[g] = LoadHalf(b + 2);
        for (int e = 0; e < 32; ++e) codes[e] = static_cast<int8_t>(Nibble32(b + 4, e));
        break;
      case GgmlType::kQ8_0:
        out.scales[g] = LoadHalf(b);
        out.offsets[g] = -0.0f;
        for (int e = 0; e < 32; ++e) codes[e] = static_cast<int8_t>(b[2 + e]);
        break;
      case GgmlType::kQ4_K: {
        const float d = LoadHalf(b);
        const float dmin = LoadHalf(b + 2);
        for (int s = 0; s < 8; ++s) {
          // scale * q + offset is (d * sc) * q - dmin * m bit for bit: x - y is x + (-y).
          const ScaleMin sm = KScaleMin(b + 4, s);
          out.scales[g + s] = d * static_cast<float>(sm.scale);
          out.offsets[g + s] = -(dmin * static_cast<float>(sm.min));
        }
        for (int e = 0; e < 256; ++e) codes[e] = static_cast<int8_t>(Nibble256(b + 16, e));
        break;
      }
      default:
        break;
    }
  }
  return out;
}

}  // namespace tessera::model
