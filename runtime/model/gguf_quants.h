#ifndef TESSERA_RUNTIME_MODEL_GGUF_QUANTS_H_
#define TESSERA_RUNTIME_MODEL_GGUF_QUANTS_H_

// The tensor element types of GGUF files (llama.cpp's ggml types) and their dequantization
// to f32, as pure functions over the bytes of one row.
//
// A GGUF tensor row is a sequence of blocks, each holding a fixed number of elements in a
// fixed number of bytes; a row's length is a whole number of blocks. Every field is
// little-endian; `half` is IEEE binary16, `bf16` bfloat16, both decoded exactly (NaN
// payloads, infinities and subnormals kept). Codes q are unsigned unless said otherwise.
//
//   type  elements  bytes  layout of a block; how element e (0 <= e < elements) decodes to w
//   F32       1       4    float
//   F16       1       2    half
//   BF16      1       2    bf16
//   Q4_0     32      18    half d; u8 qs[16]
//                          q = qs[e] & 0xF (e < 16) or qs[e - 16] >> 4 (e >= 16)
//                          w = d * (q - 8)
//   Q4_1     32      20    half d; half m; u8 qs[16]
//                          q as Q4_0; w = d * q + m
//   Q5_0     32      22    half d; u32 qh; u8 qs[16]
//                          q = (q of Q4_0) | ((qh >> e) & 1) << 4; w = d * (q - 16)
//   Q5_1     32      24    half d; half m; u32 qh; u8 qs[16]
//                          q as Q5_0; w = d * q + m
//   Q8_0     32      34    half d; i8 qs[32]
//                          w = qs[e] * d
//
// The K-quants are super-blocks of 256 elements in sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or
// 32 (Q4_K, Q5_K); each sub-block s has a scale (and a min) quantized against the
// super-block's half d (and dmin):
//   Q2_K    256      84    u8 scales[16]; u8 qs[64]; half d; half dmin
//                          q = (qs[32 * (e / 128) + e % 32] >> 2 * (e % 128 / 32)) & 3
//                          s = e / 16; w = (d * (scales[s] & 0xF)) * q - dmin * (scales[s] >> 4)
//   Q3_K    256     110    u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d
//                          low = q of Q2_K; high = (hmask[e % 32] >> e / 32) & 1
//                          q = low - (high ? 0 : 4); w = (d * (sc[e / 16] - 32)) * q
//                          sc[s] has 6 bits: the low 4 are scales[s] & 0xF (s < 8) or
//                          scales[s - 8] >> 4 (s >= 8); the high 2 are
//                          (scales[8 + s % 4] >> 2 * (s / 4)) & 3
//   Q4_K    256     144    half d; half dmin; u8 scales[12]; u8 qs[128]
//                          s = e / 32; b = qs[32 * (e / 64) + e % 32]
//                          q = b & 0xF (s even) or b >> 4 (s odd)
//                          w = (d * sc[s]) * q - dmin * m[s]
//                          sc[s] and m[s] have 6 bits: for s < 4, scales[s] & 63 and
//                          scales[s + 4] & 63; for s >= 4,
//                          (scales[s + 4] & 0xF) | (scales[s - 4] >> 6) << 4 and
//                          (scales[s + 4] >> 4) | (scales[s] >> 6) << 4
//   Q5_K    256     176    half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//                          q = (q of Q4_K) | ((qh[e % 32] >> e / 32) & 1) << 4; w as Q4_K
//   Q6_K    256     210    u8 ql[128]; u8 qh[64]; i8 scales[16]; half d
//                          h = e / 128; p = e % 128 / 32; l = e % 32
//                          low = (ql[64 * h + 32 * (p & 1) + l] >> 4 * (p >> 1)) & 0xF
//                          high = (qh[32 * h + l] >> 2 * p) & 3
//                          q = (low | high << 4) - 32; w = (d * scales[e / 16]) * q
//
// Arithmetic, in f32 as written above: every product is exact, since a half has at most 11
// significant bits and the integers it is multiplied by have at most 12 bits together (Q6_K:
// a scale of 7 and a code of 5), within a float's 24 and far from its range limits. The only
// rounding is that of the final + m or - dmin * m, so results equal bit for bit those of the
// gguf Python package's dequantize and of llama.cpp's dequantize_row_*, whatever the order
// of the products and whether a compiler fuses the last multiply and add or not.
//
// Not offered (INVALID_ARGUMENT): Q8_1, Q8_K (llama.cpp's intermediate formats for
// activations), the IQ*, TQ*, MXFP4, NVFP4 and Q1_0 types, the integer and f64 types, and
// numbers ggml does not define.
//
// All functions are thread safe, and pure but for GgmlTypeName's names of unknown values.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tessera::model {

// Numbered as ggml's enum ggml_type (the value stored in a GGUF tensor header). Only the
// types Tessera dequantizes and Q8_1 and Q8_K are named here; a file may hold other values.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

// ggml's name of any type it defines ("F32", "Q4_K", "IQ2_XS", "BF16", ...); "type 99" for a
// value it does not define (made on first use and kept for the life of the process, one short
// string per value).
absl::string_view GgmlTypeName(GgmlType type);

struct GgmlBlockLayout {
  int64_t block_elements = 0;
  int64_t block_bytes = 0;
};

// The block of a type Tessera dequantizes; INVALID_ARGUMENT naming the type for the others.
absl::StatusOr<GgmlBlockLayout> GgmlBlockLayoutOf(GgmlType type);

// Bytes of `elements` consecutive elements of `type`. INVALID_ARGUMENT for a type not
// dequantized, a negative count, a count that is not a multiple of the block (naming both),
// or a byte count past 64 bits.
absl::StatusOr<uint64_t> GgmlRowBytes(GgmlType type, int64_t elements);

// Dequantizes dst.size() elements (a whole number of blocks) from `src`, which must hold
// exactly GgmlRowBytes(type, dst.size()) bytes, into `dst`. INVALID_ARGUMENT (naming the type)
// for the errors of GgmlRowBytes and a wrong byte count; `dst` is untouched then.
absl::Status DequantizeGgmlRow(GgmlType type, absl::Span<const uint8_t> src, absl::Span<float> dst);

// The groups of 32 elements of the formats whose dequantization is w = scale * code + offset
// with codes of 4 or 8 bits, for conversion to other integer layouts. For group g (elements
// 32g to 32g + 31) and element i: w[i] = scale[g] * code[i] + offset[g] (the product is
// exact, as above), which is what DequantizeGgmlRow computes, bit for bit, except as noted:
//   Q4_0  codes 0..15, scale d, offset -8 * d. Equal in value for a finite d (every term and
//         the sum are exact), but a zero element is +0 here, while DequantizeGgmlRow's
//         d * (q - 8) is -0 for q = 8 with d < 0, and for a zero d whose sign is not that of
//         q - 8.
//   Q4_1  codes 0..15, scale d, offset m.
//   Q8_0  codes -128..127, scale d, offset -0.0 (adding it keeps the sign of a zero product).
//   Q4_K  codes 0..15, scale d * sc[s], offset -(dmin * m[s]) for sub-block s.
// code_bits is 4 or 8. INVALID_ARGUMENT for other types and for the errors of DequantizeGgmlRow
// (`src` must hold exactly GgmlRowBytes(type, elements) bytes).
struct GgmlGroups {
  static constexpr int64_t kGroupElements = 32;
  std::vector<int8_t> codes;   // [elements]
  std::vector<float> scales;   // [elements / 32]
  std::vector<float> offsets;  // [elements / 32]
  int code_bits = 0;
};
absl::StatusOr<GgmlGroups> GgmlRowGroups(GgmlType type, absl::Span<const uint8_t> src,
                                         int64_t elements);

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_GGUF_QUANTS_H_
