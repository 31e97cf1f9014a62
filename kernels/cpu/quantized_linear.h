#ifndef TESSERA_KERNELS_CPU_QUANTIZED_LINEAR_H_
#define TESSERA_KERNELS_CPU_QUANTIZED_LINEAR_H_

// Linear (kernels/cpu/linear.h) with a weight-only quantized weight:
//   out (M, N) = x (M, K) . dequant(w)^T + bias,   w (N, K) in Hugging Face's Linear layout.
// x and out are f32. Decode (M = 1 to a few rows) reads every weight byte once a call and is
// bound by memory bandwidth, so fewer bytes a weight is fewer microseconds. The codes are
// widened in registers, never to memory.
//
// Formats, by group of `group_size` consecutive inputs (along K) of one output row:
//   int8: symmetric, w = scale * q, q in [-128, 127] (QuantizeWeight makes [-127, 127]); one
//         group a row (group_size = K, the scale stored as f32) or groups of 32 or 128 (the
//         scales stored as f16).
//   int4: w = scale * code + offset, code in 0..15, groups of 32 or 128, scale and offset
//         stored as f16 as GGUF stores them: GGUF's Q4_0 (offset = -8 scale) and Q4_1 exactly;
//         GPTQ's (offset = -scale * zero) exactly where that product is an f16, else rounded
//         once to f16.
// K must be a multiple of the group size.
//
// The arithmetic, the same on the AVX-512, AVX2 and portable paths
// (kernels/cpu/cpu_features.h), so all give the same bits. The AVX-512 path takes int8
// activations with AVX-512 VNNI where the processor has it (else AVX2's tiles). For output (i, j),
// over the groups of inputs g in order, with out starting from 0:
//   f32 activations (the default):
//     dot = fma(x[i][c_last], code[j][c_last], ... fma(x[i][c_first], code[j][c_first], 0))
//                                                      over the inputs c of g in index order
//     (code: q for int8), every product of an activation and a code exact (int4: for
//     activations of magnitude 2^-102 or more, which the kernel scales by up to 2^-24 first),
//       out = fma(dot, scale[j][g], out)
//       out = fma(sum[i][g], offset[j][g], out)                                (int4)
//   int8 activations (ActivationQuant::kInt8; K a multiple of 32), llama.cpp's Q8 blocks:
//   for each block b of 32 inputs of row i, d[i][b] = max |x[i][c]| / 127 over b
//   and xq[i][c] = x[i][c] * (1 / d[i][b]) rounded to nearest, ties to even (0 where d is 0),
//   in [-127, 127] (a block with an activation that is not finite gets d = NaN, so its
//   outputs are NaN); then for each block b of g in order
//       out = fma(float(sum over c in b of code[j][c] * xq[i][c]), scale[j][g] * d[i][b], out)
//     (code: q for int8; the integer sum exact, the product of the two scales rounded to f32),
//     and, int4 only, at the end of the group
//       out = fma(sum[i][g], offset[j][g], out)
// where sum[i][g] is x[i]'s own sum over g (never quantized), taken as eight running sums
// (input c into sum c % 8, each in index order from 0) added in order 0..7. Then
// out += bias[j]. Row i of out therefore depends only on row i of x, bitwise, whatever M,
// the number of threads and the tiles a path takes: the row invariance that Linear promises.
// Neither is the same bits as x . DequantizeWeight(w)^T (which rounds each weight to f32
// first). With f32 activations the difference is f32 rounding; with int8 activations it is
// also the activations' rounding, up to d[i][b] / 2 for each x[i][c], times |scale * code|,
// as in llama.cpp's Q4 x Q8 products: for random weights and activations about 1e-2 of the
// outputs (root mean square, relative), 3e-2 where one activation in 97 is twenty times the
// others; f32 activations stay within 1e-6.
//
// Why int8 activations: widening codes to f32 costs about three instructions per eight
// weights, which on a machine of few cores keeps decode short of the bytes per second memory
// delivers (int4 most: it holds two weights a byte), while _mm256_maddubs_epi16 takes 32 int4 x
// int8 products an instruction (decode takes about two thirds of the time) and AVX-512 VNNI's
// _mm512_dpbusd_epi32 64, and adds them. int8 codes take _mm256_madd_epi16 (16 products) or
// _mm512_dpbusd_epi32, stored as q + 128 (unsigned) in an order of their own
// (WithActivations), the 128 x the block's sum of xq taken off each integer sum.
//
// Thread safety: all functions are safe to call concurrently; a product runs on the shared
// kernel thread pool (kernels/cpu/parallel.h), split over output columns, so decode (M = 1)
// uses every kernel thread.

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/core/device.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

enum class WeightQuant { kInt8, kInt4 };

// "int8", "int4".
absl::string_view WeightQuantName(WeightQuant quant);

// How QuantizedLinear takes the activations: kF32 exactly, kInt8 rounded to int8 in blocks of
// 32 (faster; the arithmetic above).
enum class ActivationQuant { kF32, kInt8 };

// Output rows a panel of the packed codes holds: one AVX2 register of f32 lanes.
inline constexpr int64_t kQuantizedPanel = 8;

// One (N, K) weight, quantized, packed for QuantizedLinear in panels of 8 output rows
// (P = ceil(N / 8) panels, G = K / group_size groups a row), zero past row N:
//   int8 codes:  i8 (P, K, 8):      codes[p][c][l] = q[8 p + l][c]
//                with int8 activations, i8 (P, K / 4, 8, 4): codes[p][t][l][j] holds
//                q[8 p + l][4 t + j] + 128 as an unsigned byte, so that a 32-bit lane holds four
//                consecutive inputs of one row
//   int4 codes:  i32 (P, K / 8, 8), eight codes of row 8 p + l a word: byte j (0..3) of
//                codes[p][t][l] holds code[8 p + l][8 t + j] in its low nibble and
//                code[8 p + l][8 t + 4 + j] in its high one
//   scales:      f16 (P, G, 8), scales[p][g][l] the scale of row 8 p + l's group g;
//                f32 (P, 1, 8) for int8 with one group a row (group_size = K)
//   offsets:     f16 (P, G, 8) as scales (int4); undefined for int8
// Made by QuantizeWeight or QuantizedWeightFromGroups; immutable once made (its tensors share
// storage when copied).
struct QuantizedWeight {
  WeightQuant quant = WeightQuant::kInt8;
  int64_t rows = 0;  // N, output features
  int64_t cols = 0;  // K, input features
  int64_t group_size = 0;
  Tensor codes, scales, offsets;
  // Not part of the weight's values: how a product takes x, and for int8 the order of the
  // codes. QuantizeWeight and QuantizedWeightFromGroups make kF32; WithActivations changes it.
  ActivationQuant activations = ActivationQuant::kF32;

  // The bytes a product reads: codes + scales + offsets (as packed, with the last panel's
  // padding).
  uint64_t nbytes() const;
  // False for a default-constructed QuantizedWeight.
  bool defined() const { return codes.defined(); }
};

// The bytes QuantizedWeight::nbytes() gives for an (rows, cols) weight in `quant` with
// `group_size` (cols for one group a row), without making it: for memory plans.
uint64_t QuantizedWeightBytes(WeightQuant quant, int64_t rows, int64_t cols, int64_t group_size);

// Quantizes w (N, K) f32, bf16 or f16 (a GPU's checkpoint), each group rounded to nearest:
//   int8: scale = max |w| / 127, q = round(w / scale) in [-127, 127];
//   int4: scale = (max - min) / 15, offset = min, code = round((w - offset) / scale) clamped
//         to 0..15.
// Grouped scales and offsets are rounded to f16 first and the codes computed against the
// rounded values (a group of zeros, or whose scale rounds to 0, gets codes 0). group_size:
// int8 32, 128 or K (one group a row, f32 scale; when K is 32 or 128 itself, those groups,
// f16, so that a weight's groups do not depend on how its inputs are split); int4 32 or 128.
// INVALID_ARGUMENT for another dtype or rank, another group size, K not a multiple of it, a value
// that is not finite, or a scale or offset beyond f16's range.
absl::StatusOr<QuantizedWeight> QuantizeWeight(const Tensor& w, WeightQuant quant,
                                               int64_t group_size);

// A weight from its groups as a checkpoint that is already quantized stores them:
//   codes (rows * cols), row-major: int8 -128..127, int4 0..15;
//   scales (rows * cols / group_size), row-major by row then group; rounded to f16 for
//   storage (to nearest, ties to even) except int8's one scale a row, kept f32;
//   offsets as scales for int4, rounded to f16; empty for int8.
// INVALID_ARGUMENT for a group size QuantizeWeight does not take, cols not a multiple of it,
// spans of other lengths, an int4 code outside 0..15, or a scale or offset that is not finite
// or rounds beyond f16's range.
absl::StatusOr<QuantizedWeight> QuantizedWeightFromGroups(WeightQuant quant, int64_t rows,
                                                          int64_t cols, int64_t group_size,
                                                          absl::Span<const int8_t> codes,
                                                          absl::Span<const float> scales,
                                                          absl::Span<const float> offsets);

// w, the same values, with its products taking x as `activations` says: int8 codes are
// reordered for it (the packing above), int4's stay as they are (and are shared). INVALID_ARGUMENT
// for int8 activations where K is not a multiple of 32, or an undefined w.
absl::StatusOr<QuantizedWeight> WithActivations(const QuantizedWeight& w,
                                                ActivationQuant activations);

// OK when w's tensors are the ones QuantizeWeight packs for its quant, shape and activations
// and live on `device`; INVALID_ARGUMENT naming `kernel` and what differs otherwise. The
// check of every device's product.
absl::Status CheckPacked(absl::string_view kernel, const QuantizedWeight& w, Device device);

// w with its tensors copied to `device`, ordered on `stream` (a GPU's product reads the same
// packing: kernels/cuda/quantized_linear.h).
absl::StatusOr<QuantizedWeight> QuantizedWeightTo(const QuantizedWeight& w, Device device,
                                                  Stream& stream);

// w as f32 (N, K), each weight the f32 nearest scale * code + offset (int8: scale * q)
// computed with the stored scale and offset: the weight the product multiplies by. The
// reference its tests check it against.
absl::StatusOr<Tensor> DequantizeWeight(const QuantizedWeight& w);

// out (M, N) f32 = x (M, K) f32 . dequant(w)^T + bias, overwritten; bias f32 or bf16 (N), or
// a default-constructed (undefined) Tensor for none. The arithmetic is the one above, with x
// taken as w.activations says. INVALID_ARGUMENT naming the argument for another dtype or
// shape, or an undefined w.
absl::Status QuantizedLinear(const Tensor& x, const QuantizedWeight& w, const Tensor& bias,
                             Tensor& out);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_QUANTIZED_LINEAR_H_
