#include "kernels/cpu/quantized_linear.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/half.h"
#include "runtime/core/status_macros.h"

#if TESSERA_CPU_X86
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace tessera::kernels {
namespace {

constexpr int64_t kLanes = kQuantizedPanel;
// Rows of x in one tile: each decoded code feeds this many rows. Four rows of two panels keep
// 8 accumulators, the codes and their widened lanes within AVX2's sixteen registers; one row
// takes six panels (decode: more independent chains, and memory streams, in flight).
constexpr int kTileRows = 4;
// With f32 activations on AVX-512 (thirty-two registers), eight rows of four panels: sixteen
// accumulators, and two fused multiply-adds for each widened register of codes instead of one.
constexpr int kWideTileRows = 8;
// Rows of x taken in one pass over a group of panels; a large M reads the codes once a pass.
constexpr int64_t kRowsPerPass = 15 * kTileRows;
// Panels a work item covers at most.
constexpr int64_t kPanelsPerItem = 6;
// Inputs taken at a time when an item has several row tiles: the item's codes for them
// (6 KiB int4, 12 KiB int8) stay in L1 while every row tile reads them.
constexpr int64_t kInputsPerBlock = 256;
// int4 takes activations quantized to int8 in blocks of this many inputs.
constexpr int64_t kActivationBlock = 32;

// Where input c's int4 code sits in its word: byte j (0..3) holds inputs 8 t + j (low nibble)
// and 8 t + 4 + j (high nibble), so that one AND, or a shift and an AND, of a register of words
// gives four consecutive inputs' codes as bytes in each lane.
inline int NibbleShift(int64_t c) {
  const int i = static_cast<int>(c % 8);
  return i < 4 ? 8 * i : 8 * (i - 4) + 4;
}

// One group a row: int8 with group_size = K keeps an f32 scale, unless K is itself a group
// size (32 or 128): the groups of a weight split over ranks must not change with the split.
bool OneGroupARow(WeightQuant quant, int64_t cols, int64_t group_size) {
  return quant == WeightQuant::kInt8 && group_size == cols && group_size != 32 && group_size != 128;
}

absl::Status CheckGroupSize(absl::string_view kernel, WeightQuant quant, int64_t cols,
                            int64_t group_size) {
  const bool row = OneGroupARow(quant, cols, group_size);
  if (!(group_size == 32 || group_size == 128 || (row && group_size > 0))) {
    return absl::InvalidArgumentError(absl::StrCat(
        kernel, ": ", WeightQuantName(quant), " group size ", group_size, ", expected ",
        quant == WeightQuant::kInt8 ? absl::StrCat("32, 128 or K = ", cols) : "32 or 128"));
  }
  if (cols % group_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": K = ", cols, " is not a multiple of the group size ", group_size));
  }
  return absl::OkStatus();
}

// The f16 nearest `value`; INVALID_ARGUMENT naming it if it is not finite or rounds past
// f16's range.
absl::StatusOr<Half> ToHalf(absl::string_view kernel, absl::string_view what, int64_t row,
                            int64_t group, float value) {
  const Half half = Half::FromFloat(value);
  if (!std::isfinite(value) || (half.bits & 0x7c00u) == 0x7c00u) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": ", what, " of row ", row, " group ",
                                                   group, " is ", value, ", not finite in f16"));
  }
  return half;
}

// The packed weight from validated row-major groups: codes (rows * cols), scales and offsets
// (rows * groups), scales and offsets already f16 values where they are stored as f16.
absl::StatusOr<QuantizedWeight> Pack(WeightQuant quant, int64_t rows, int64_t cols,
                                     int64_t group_size, absl::Span<const int8_t> codes,
                                     absl::Span<const float> scales,
                                     absl::Span<const float> offsets) {
  const int64_t panels = (rows + kLanes - 1) / kLanes;
  const int64_t groups = cols / group_size;
  const bool row_scale = OneGroupARow(quant, cols, group_size);
  QuantizedWeight w;
  w.quant = quant;
  w.rows = rows;
  w.cols = cols;
  w.group_size = group_size;
  TESSERA_ASSIGN_OR_RETURN(w.codes, quant == WeightQuant::kInt8
                                        ? Tensor::Zeros(DType::kI8, {panels, cols, kLanes})
                                        : Tensor::Zeros(DType::kI32, {panels, cols / 8, kLanes}));
  if (row_scale) {
    TESSERA_ASSIGN_OR_RETURN(w.scales, Tensor::Zeros(DType::kF32, {panels, 1, kLanes}));
    std::copy_n(scales.data(), rows, w.scales.data<float>());
  } else {
    TESSERA_ASSIGN_OR_RETURN(w.scales, Tensor::Zeros(DType::kF16, {panels, groups, kLanes}));
    if (quant == WeightQuant::kInt4) {
      TESSERA_ASSIGN_OR_RETURN(w.offsets, Tensor::Zeros(DType::kF16, {panels, groups, kLanes}));
    }
  }
  ParallelFor(panels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t r = p * kLanes; r < std::min(rows, (p + 1) * kLanes); ++r) {
        const int64_t l = r % kLanes;
        const int8_t* from = codes.data() + r * cols;
        if (quant == WeightQuant::kInt8) {
          int8_t* to = w.codes.data<int8_t>() + p * cols * kLanes;
          for (int64_t c = 0; c < cols; ++c) to[c * kLanes + l] = from[c];
        } else {
          uint32_t* to = reinterpret_cast<uint32_t*>(w.codes.data<int32_t>()) + p * cols;
          for (int64_t c = 0; c < cols; ++c) {
            to[(c / 8) * kLanes + l] |= static_cast<uint32_t>(from[c]) << NibbleShift(c);
          }
        }
        if (row_scale) continue;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t at = (p * groups + g) * kLanes + l;
          w.scales.data<Half>()[at] = Half::FromFloat(scales[r * groups + g]);
          if (w.offsets.defined()) {
            w.offsets.data<Half>()[at] = Half::FromFloat(offsets[r * groups + g]);
          }
        }
      }
    }
  });
  return w;
}

constexpr char kQuantizeWeight[] = "QuantizeWeight";

// QuantizeWeight for row r of w: its codes (cols), scales and offsets (groups) row-major.
absl::Status QuantizeRow(const Tensor& w, WeightQuant quant, int64_t group_size, int64_t r,
                         int8_t* codes, float* scales, float* offsets) {
  const int64_t cols = w.dim(1), groups = cols / group_size;
  const bool row_scale = OneGroupARow(quant, cols, group_size);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = r * cols + g * group_size;
    float low = 0.0f, high = 0.0f, largest = 0.0f;
    for (int64_t c = 0; c < group_size; ++c) {
      const float v = internal::LoadFloat(w, first + c);
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(kQuantizeWeight, ": w[", r, "][", g * group_size + c, "] is ", v));
      }
      low = c == 0 ? v : std::min(low, v);
      high = c == 0 ? v : std::max(high, v);
      largest = std::max(largest, std::abs(v));
    }
    int8_t* q = codes + g * group_size;
    if (quant == WeightQuant::kInt8) {
      float scale = largest / 127.0f;
      if (!row_scale) {
        TESSERA_ASSIGN_OR_RETURN(Half half, ToHalf(kQuantizeWeight, "the scale", r, g, scale));
        scale = half.ToFloat();
      }
      scales[g] = scale;
      for (int64_t c = 0; c < group_size; ++c) {
        const float v = internal::LoadFloat(w, first + c);
        q[c] = scale == 0.0f
                   ? 0
                   : static_cast<int8_t>(std::clamp(std::round(v / scale), -127.0f, 127.0f));
      }
    } else {
      TESSERA_ASSIGN_OR_RETURN(Half scale_half,
                               ToHalf(kQuantizeWeight, "the scale", r, g, (high - low) / 15.0f));
      TESSERA_ASSIGN_OR_RETURN(Half offset_half, ToHalf(kQuantizeWeight, "the offset", r, g, low));
      const float scale = scale_half.ToFloat(), offset = offset_half.ToFloat();
      scales[g] = scale;
      offsets[g] = offset;
      for (int64_t c = 0; c < group_size; ++c) {
        const float v = internal::LoadFloat(w, first + c);
        q[c] = scale == 0.0f
                   ? 0
                   : static_cast<int8_t>(std::clamp(std::round((v - offset) / scale), 0.0f, 15.0f));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckPacked(absl::string_view kernel, const QuantizedWeight& w, Device device) {
  if (!w.defined()) return absl::InvalidArgumentError(absl::StrCat(kernel, ": w is undefined"));
  TESSERA_RETURN_IF_ERROR(CheckGroupSize(kernel, w.quant, w.cols, w.group_size));
  const int64_t panels = (w.rows + kLanes - 1) / kLanes;
  const int64_t groups = w.cols / w.group_size;
  const bool row_scale = OneGroupARow(w.quant, w.cols, w.group_size);
  const bool int8 = w.quant == WeightQuant::kInt8;
  const bool q8 = w.activations == ActivationQuant::kInt8;
  if (q8 && w.cols % kActivationBlock != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kernel, ": w has ", w.cols, " inputs; int8 activations take blocks of ", kActivationBlock));
  }
  const Shape codes_shape = !int8 ? Shape({panels, w.cols / 8, kLanes})
                            : q8  ? Shape({panels, w.cols / 4, kLanes, 4})
                                  : Shape({panels, w.cols, kLanes});
  const bool ok = w.rows >= 0 && w.codes.device() == device && w.scales.device() == device &&
                  w.codes.dtype() == (int8 ? DType::kI8 : DType::kI32) &&
                  w.codes.shape() == codes_shape &&
                  w.scales.dtype() == (row_scale ? DType::kF32 : DType::kF16) &&
                  w.scales.shape() == Shape({panels, row_scale ? 1 : groups, kLanes}) &&
                  (int8 ? !w.offsets.defined()
                        : w.offsets.dtype() == DType::kF16 && w.offsets.device() == device &&
                              w.offsets.shape() == w.scales.shape());
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": w (", WeightQuantName(w.quant), ", ", w.rows, " x ", w.cols,
                     ", group size ", w.group_size, ") has codes ", w.codes.DebugString(),
                     ", scales ", w.scales.DebugString(), " and offsets ", w.offsets.DebugString(),
                     ", not the packing QuantizeWeight makes on ", device.ToString()));
  }
  return absl::OkStatus();
}

namespace {

// n values of the calling thread's scratch slot kSlot; kept between calls (it grows to the
// largest call's need).
template <typename T, int kSlot>
T* ThreadScratch(int64_t n) {
  thread_local std::vector<T> data;
  if (static_cast<int64_t>(data.size()) < n) data.resize(static_cast<size_t>(n));
  return data.data();
}

// sum[i][g] = the sum of x[i] over group g as the header defines it: eight running sums,
// input c into sum c % 8, then those in order.
void GroupSums(const float* x, int64_t m, int64_t k, int64_t group_size, float* sums) {
  const int64_t groups = k / group_size;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* from = x + i * k + g * group_size;
      float lanes[8] = {};
      for (int64_t c = 0; c < group_size; c += 8) {
        for (int l = 0; l < 8; ++l) lanes[l] += from[c + l];
      }
      float sum = 0.0f;
      for (float lane : lanes) sum += lane;
      sums[i * groups + g] = sum;
    }
  }
}

// int8 activations as the header defines them: for each block of 32 inputs of each row,
// d = max |x| / 127 and q = x (1 / d) rounded to nearest even (0 where d = 0; a block with a
// value that is not finite gets d = NaN), and q_sum the block's sum of q. The rounding
// converts the product itself (SSE2's cvtps2dq under the default rounding mode on x86,
// std::nearbyint elsewhere), so that no compiler can fuse it with anything and every build
// rounds the same products.
void QuantizeActivations(const float* x, int64_t m, int64_t k, int8_t* q, float* d,
                         int32_t* q_sum) {
  for (int64_t b = 0; b < m * k / kActivationBlock; ++b) {
    const float* from = x + b * kActivationBlock;
    int8_t* to = q + b * kActivationBlock;
    // The largest |x| by its bits, ordered as the values are (infinity and NaN above all).
    int32_t largest_bits = 0;
    for (int64_t c = 0; c < kActivationBlock; ++c) {
      largest_bits = std::max(largest_bits, std::bit_cast<int32_t>(from[c]) & 0x7fffffff);
    }
    if (largest_bits >= 0x7f800000) {
      d[b] = std::numeric_limits<float>::quiet_NaN();
      std::fill(to, to + kActivationBlock, int8_t{0});
      q_sum[b] = 0;
      continue;
    }
    const float largest = std::bit_cast<float>(largest_bits);
    d[b] = largest / 127.0f;
    const float inverse = largest == 0.0f ? 0.0f : 1.0f / d[b];
    // |x (1 / d)| <= 127 and a hair: no clamp needed.
    alignas(16) int32_t rounded[kActivationBlock];
#if TESSERA_CPU_X86
    const __m128 scale = _mm_set1_ps(inverse);
    for (int64_t c = 0; c < kActivationBlock; c += 4) {
      _mm_store_si128(reinterpret_cast<__m128i*>(rounded + c),
                      _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(from + c), scale)));
    }
#else
    for (int64_t c = 0; c < kActivationBlock; ++c) {
      rounded[c] = static_cast<int32_t>(std::nearbyint(from[c] * inverse));
    }
#endif
    int32_t sum = 0;
    for (int64_t c = 0; c < kActivationBlock; ++c) {
      to[c] = static_cast<int8_t>(rounded[c]);
      sum += rounded[c];
    }
    q_sum[b] = sum;
  }
}

// What a tile reads and writes: rows [0, rows) of x from `x` (row stride k; int4 with f32
// activations: x'; with int8 activations: xq, row stride k, and their block scales xd and sums
// xq_sum, row stride k / 32, instead), panels [0, panels) of the codes, scales and offsets from
// the given ones (panel strides: codes k values (int8) or k words' worth (int4: k / 8 * 8),
// scales groups * 8), inputs [k_begin, k_end). acc holds the outputs' chains (row stride
// acc_stride, panel p at 8 p); carry the dots of a group that k_end cuts, to go on from when the
// next block starts inside that group (int8 with one group a row only: kInputsPerBlock is a
// multiple of 32 and 128).
struct TileArgs {
  const float* x;
  const int8_t* xq;
  const float* xd;
  const int32_t* xq_sum;
  const float* sums;  // int4: sum[r][g] at sums[r * groups + g]
  const void* codes;
  const void* scales;
  const Half* offsets;
  float* acc;
  float* carry;
  int64_t acc_stride;
  int64_t k, groups, group_size;
  int64_t k_begin, k_end;
  int rows, panels;  // the portable tile's; the vector tiles have theirs built in
};

inline float ScaleValue(float s) { return s; }
inline float ScaleValue(Half s) { return s.ToFloat(); }

// The arithmetic of a product (the header's): int8 or int4 weights, with f32 activations or
// with activations quantized to int8 (Q8).
enum class Arithmetic { kInt8, kInt4, kInt8Q8, kInt4Q8 };

constexpr bool TakesInt8Activations(Arithmetic a) {
  return a == Arithmetic::kInt8Q8 || a == Arithmetic::kInt4Q8;
}

template <Arithmetic A>
inline int Code(const void* codes, int64_t k, int p, int64_t c, int l) {
  if constexpr (A == Arithmetic::kInt8) {
    return static_cast<const int8_t*>(codes)[(p * k + c) * kLanes + l];
  } else if constexpr (A == Arithmetic::kInt8Q8) {
    const uint8_t* bytes = static_cast<const uint8_t*>(codes);
    return static_cast<int>(bytes[((p * (k / 4) + c / 4) * kLanes + l) * 4 + c % 4]) - 128;
  } else {
    const uint32_t word =
        static_cast<const uint32_t*>(codes)[p * k + (c / 8) * kLanes + l];  // k / 8 * 8 = k
    return static_cast<int>((word >> NibbleShift(c)) & 0xFu);
  }
}

// With f32 activations the int4 codes are read where they sit in their word: input c's code
// times 2^s, s = NibbleShift(c), exact in f32 (but the top one, input 7 of eight, shifted
// down: s = 0). The kernels multiply them by x'[c] = x[c] 2^-s (ScaleForNibbles), so that the
// products are x[c] code[c] exactly (for |x[c]| >= 2^-102, where x[c] 2^-24 is still a normal
// f32) and taking a code out of its word costs one instruction instead of two.
inline int NibbleScaleShift(int64_t c) { return c % 8 == 7 ? 0 : NibbleShift(c); }

// x' (m, k), k a multiple of 8.
void ScaleForNibbles(const float* x, int64_t m, int64_t k, float* scaled) {
  float factors[8];
  for (int i = 0; i < 8; ++i) factors[i] = std::ldexp(1.0f, -NibbleScaleShift(i));
  for (int64_t i = 0; i < m * k; i += 8) {
    for (int l = 0; l < 8; ++l) scaled[i + l] = x[i + l] * factors[l];
  }
}

// Code<kInt4> times 2^NibbleScaleShift(c): the factor x' undoes.
inline float ScaledNibble(const void* codes, int64_t k, int p, int64_t c, int l) {
  const uint32_t word = static_cast<const uint32_t*>(codes)[p * k + (c / 8) * kLanes + l];
  return static_cast<float>(c % 8 == 7 ? word >> 28 : word & (0xFu << NibbleShift(c)));
}

// The portable path: every output's chains one at a time, by std::fma (int8 activations:
// exact integer sums over each block of 32).
template <Arithmetic A, typename S>
void TilePortable(const TileArgs& a) {
  const S* scales = static_cast<const S*>(a.scales);
  for (int r = 0; r < a.rows; ++r) {
    for (int p = 0; p < a.panels; ++p) {
      for (int l = 0; l < kLanes; ++l) {
        float& acc = a.acc[r * a.acc_stride + p * kLanes + l];
        if constexpr (TakesInt8Activations(A)) {
          for (int64_t c = a.k_begin; c < a.k_end; c += kActivationBlock) {
            const int64_t g = c / a.group_size;
            const int64_t at = (p * a.groups + g) * kLanes + l;
            int32_t sum = 0;
            for (int64_t e = c; e < c + kActivationBlock; ++e) {
              sum += Code<A>(a.codes, a.k, p, e, l) * a.xq[r * a.k + e];
            }
            const float scale =
                ScaleValue(scales[at]) * a.xd[r * (a.k / kActivationBlock) + c / kActivationBlock];
            acc = std::fma(static_cast<float>(sum), scale, acc);
            if (A == Arithmetic::kInt4Q8 && (c + kActivationBlock) % a.group_size == 0) {
              acc = std::fma(a.sums[r * a.groups + g], a.offsets[at].ToFloat(), acc);
            }
          }
          continue;
        }
        float& carry = a.carry[r * a.acc_stride + p * kLanes + l];
        float dot = a.k_begin % a.group_size != 0 ? carry : 0.0f;
        for (int64_t c = a.k_begin; c < a.k_end;) {
          const int64_t g = c / a.group_size;
          const int64_t end = std::min(a.k_end, (g + 1) * a.group_size);
          for (; c < end; ++c) {
            const float code = A == Arithmetic::kInt8
                                   ? static_cast<float>(Code<A>(a.codes, a.k, p, c, l))
                                   : ScaledNibble(a.codes, a.k, p, c, l);
            dot = std::fma(a.x[r * a.k + c], code, dot);
          }
          if (end % a.group_size != 0) break;
          const int64_t at = (p * a.groups + g) * kLanes + l;
          acc = std::fma(dot, ScaleValue(scales[at]), acc);
          if constexpr (A == Arithmetic::kInt4) {
            acc = std::fma(a.sums[r * a.groups + g], a.offsets[at].ToFloat(), acc);
          }
          dot = 0.0f;
        }
        if (a.k_end % a.group_size != 0) carry = dot;
      }
    }
  }
}

#if TESSERA_CPU_X86
#define TESSERA_AVX2 __attribute__((target("avx2,fma,f16c")))

// f(<0>), f(<1>), ... f(<N - 1>): loops over registers written out, so that every array of
// registers is indexed by constants and the compiler keeps it in registers (a loop over an
// array of accumulators, unrolled only after its scalar replacement, leaves them in memory
// and stores every one every iteration).
template <typename F, int... I>
[[gnu::always_inline]] inline void ForEachImpl(F&& f, std::integer_sequence<int, I...>) {
  (f.template operator()<I>(), ...);
}
template <int N, typename F>
[[gnu::always_inline]] inline void ForEach(F&& f) {
  ForEachImpl(f, std::make_integer_sequence<int, N>());
}

TESSERA_AVX2 inline __m256 LoadScales(const float* s) { return _mm256_loadu_ps(s); }
TESSERA_AVX2 inline __m256 LoadScales(const Half* s) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
}

// Input I of the eight packed in each lane's word as f32, times 2^NibbleScaleShift(I), as
// ScaledNibble: one AND (a shift for the top one) and one conversion.
template <int I>
TESSERA_AVX2 inline __m256 Nibble(__m256i packed) {
  if constexpr (I == 7) {
    return _mm256_cvtepi32_ps(_mm256_srli_epi32(packed, 28));
  } else {
    constexpr int kShift = I < 4 ? 8 * I : 8 * (I - 4) + 4;
    return _mm256_cvtepi32_ps(_mm256_and_si256(packed, _mm256_set1_epi32(0xF << kShift)));
  }
}

// f32 activations (int8 weights, or int4 with x'), AVX2 + FMA (+ F16C for f16 scales): a
// panel is one register of eight outputs; one broadcast of x[r][c] feeds NP panels' fused
// multiply-adds. The dots live within one group (or the part of it in [k_begin, k_end)) at a
// time.
template <Arithmetic A, typename S, int MR, int NP>
TESSERA_AVX2 void TileF32Avx2(const TileArgs& a) {
  const S* scales = static_cast<const S*>(a.scales);
  for (int64_t c = a.k_begin; c < a.k_end;) {
    const int64_t g = c / a.group_size;
    const int64_t end = std::min(a.k_end, (g + 1) * a.group_size);
    __m256 dot[MR][NP];
    const bool resume = c % a.group_size != 0;
    ForEach<MR * NP>([&]<int I>() TESSERA_AVX2 {
      dot[I / NP][I % NP] =
          resume ? _mm256_loadu_ps(a.carry + (I / NP) * a.acc_stride + (I % NP) * kLanes)
                 : _mm256_setzero_ps();
    });
    if constexpr (A == Arithmetic::kInt8) {
      const int8_t* codes = static_cast<const int8_t*>(a.codes);
      for (; c < end; ++c) {
        __m256 wv[NP];
        ForEach<NP>([&]<int P>() TESSERA_AVX2 {
          const __m128i q =
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + (P * a.k + c) * kLanes));
          wv[P] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
        });
        ForEach<MR>([&]<int R>() TESSERA_AVX2 {
          const __m256 xv = _mm256_broadcast_ss(a.x + R * a.k + c);
          ForEach<NP>([&]<int P>()
                          TESSERA_AVX2 { dot[R][P] = _mm256_fmadd_ps(xv, wv[P], dot[R][P]); });
        });
      }
    } else {
      const int32_t* words = static_cast<const int32_t*>(a.codes);
      for (; c < end; c += 8) {
        __m256i packed[NP];
        ForEach<NP>([&]<int P>() TESSERA_AVX2 {
          packed[P] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + P * a.k + c));
        });
        ForEach<8>([&]<int I>() TESSERA_AVX2 {
          __m256 wv[NP];
          ForEach<NP>([&]<int P>() TESSERA_AVX2 { wv[P] = Nibble<I>(packed[P]); });
          ForEach<MR>([&]<int R>() TESSERA_AVX2 {
            const __m256 xv = _mm256_broadcast_ss(a.x + R * a.k + c + I);
            ForEach<NP>([&]<int P>()
                            TESSERA_AVX2 { dot[R][P] = _mm256_fmadd_ps(xv, wv[P], dot[R][P]); });
          });
        });
      }
    }
    if (end % a.group_size != 0) {
      ForEach<MR * NP>([&]<int I>() TESSERA_AVX2 {
        _mm256_storeu_ps(a.carry + (I / NP) * a.acc_stride + (I % NP) * kLanes,
                         dot[I / NP][I % NP]);
      });
      break;
    }
    ForEach<NP>([&]<int P>() TESSERA_AVX2 {
      const int64_t at = (P * a.groups + g) * kLanes;
      const __m256 scale = LoadScales(scales + at);
      [[maybe_unused]] __m256 offset;
      if constexpr (A == Arithmetic::kInt4) offset = LoadScales(a.offsets + at);
      ForEach<MR>([&]<int R>() TESSERA_AVX2 {
        float* acc = a.acc + R * a.acc_stride + P * kLanes;
        __m256 out = _mm256_fmadd_ps(dot[R][P], scale, _mm256_loadu_ps(acc));
        if constexpr (A == Arithmetic::kInt4) {
          out = _mm256_fmadd_ps(_mm256_broadcast_ss(a.sums + R * a.groups + g), offset, out);
        }
        _mm256_storeu_ps(acc, out);
      });
    });
  }
}

// Four int8 activations (bytes) in every 32-bit lane.
TESSERA_AVX2 inline __m256i BroadcastFour(const int8_t* q) {
  int32_t four;
  std::memcpy(&four, q, sizeof(four));
  return _mm256_set1_epi32(four);
}

// int4 weights and int8 activations, AVX2 (+ FMA, F16C): per octet of inputs, a panel's register of
// words gives, by one AND and by a shift and an AND, the codes of inputs 0..3 and 4..7 as bytes,
// four of a lane; _mm256_maddubs_epi16 multiplies them by four int8 activations broadcast to every
// lane and adds pairs. A 16-bit sum takes 16 products of a block of 32 inputs, at most 16 x 15 x
// 127 = 30480 in magnitude, so it neither saturates nor overflows; _mm256_madd_epi16 then adds each
// lane's two.
template <int MR, int NP>
TESSERA_AVX2 void TileQ8Avx2(const TileArgs& a) {
  const Half* scales = static_cast<const Half*>(a.scales);
  const int32_t* words = static_cast<const int32_t*>(a.codes);
  const int64_t blocks = a.k / kActivationBlock;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int64_t c = a.k_begin; c < a.k_end; c += kActivationBlock) {
    __m256i sum[MR][NP];
    ForEach<MR * NP>([&]<int I>() TESSERA_AVX2 { sum[I / NP][I % NP] = _mm256_setzero_si256(); });
    // A loop, not unrolled: unrolled, the compiler computes every product of the block before
    // it adds them and keeps them on the stack.
#pragma GCC unroll 1
    for (int64_t e = c; e < c + kActivationBlock; e += 8) {
      ForEach<NP>([&]<int P>() TESSERA_AVX2 {
        const __m256i packed =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + P * a.k + e));
        const __m256i low = _mm256_and_si256(packed, low4);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
        ForEach<MR>([&]<int R>() TESSERA_AVX2 {
          const int8_t* xq = a.xq + R * a.k + e;
          sum[R][P] = _mm256_add_epi16(sum[R][P], _mm256_maddubs_epi16(low, BroadcastFour(xq)));
          sum[R][P] =
              _mm256_add_epi16(sum[R][P], _mm256_maddubs_epi16(high, BroadcastFour(xq + 4)));
        });
      });
    }
    const int64_t g = c / a.group_size;
    const bool group_ends = (c + kActivationBlock) % a.group_size == 0;
    ForEach<NP>([&]<int P>() TESSERA_AVX2 {
      const int64_t at = (P * a.groups + g) * kLanes;
      const __m256 scale = LoadScales(scales + at);
      ForEach<MR>([&]<int R>() TESSERA_AVX2 {
        float* acc = a.acc + R * a.acc_stride + P * kLanes;
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[R][P], _mm256_set1_epi16(1)));
        const __m256 both =
            _mm256_mul_ps(scale, _mm256_broadcast_ss(a.xd + R * blocks + c / kActivationBlock));
        __m256 out = _mm256_fmadd_ps(dot, both, _mm256_loadu_ps(acc));
        if (group_ends) {
          out = _mm256_fmadd_ps(_mm256_broadcast_ss(a.sums + R * a.groups + g),
                                LoadScales(a.offsets + at), out);
        }
        _mm256_storeu_ps(acc, out);
      });
    });
  }
}

// Four int8 activations as 16-bit values, the four repeated in each 64-bit quarter.
TESSERA_AVX2 inline __m256i BroadcastFourWide(const int8_t* q) {
  int32_t four;
  std::memcpy(&four, q, sizeof(four));
  return _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(four)));
}

// int8 weights and int8 activations, AVX2 (+ FMA, F16C): a panel's 32 bytes for four inputs
// hold four consecutive codes (+ 128) of each row; widened to 16 bits by halves (rows 0..3,
// 4..7), _mm256_madd_epi16 multiplies them by the four activations and adds pairs (exact:
// at most 2 x 255 x 127), and _mm256_hadd_epi32 the pairs of the two halves, leaving rows
// 0 1 4 5 | 2 3 6 7 in the lanes. Over a block the sums are exact; taking 128 x the block's
// sum of xq off leaves the header's integer sum.
template <typename S, int MR, int NP>
TESSERA_AVX2 void TileQ8Int8Avx2(const TileArgs& a) {
  const S* scales = static_cast<const S*>(a.scales);
  const uint8_t* bytes = static_cast<const uint8_t*>(a.codes);
  const int64_t blocks = a.k / kActivationBlock;
  for (int64_t c = a.k_begin; c < a.k_end; c += kActivationBlock) {
    __m256i sum[MR][NP];
    ForEach<MR * NP>([&]<int I>() TESSERA_AVX2 { sum[I / NP][I % NP] = _mm256_setzero_si256(); });
#pragma GCC unroll 1
    for (int64_t e = c; e < c + kActivationBlock; e += 4) {
      __m256i xv[MR];
      ForEach<MR>([&]<int R>() TESSERA_AVX2 { xv[R] = BroadcastFourWide(a.xq + R * a.k + e); });
      ForEach<NP>([&]<int P>() TESSERA_AVX2 {
        const uint8_t* four = bytes + P * a.k * kLanes + e * kLanes;  // (e / 4) * 8 lanes * 4
        const __m256i low =
            _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(four)));
        const __m256i high =
            _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(four + 16)));
        ForEach<MR>([&]<int R>() TESSERA_AVX2 {
          sum[R][P] = _mm256_add_epi32(
              sum[R][P],
              _mm256_hadd_epi32(_mm256_madd_epi16(low, xv[R]), _mm256_madd_epi16(high, xv[R])));
        });
      });
    }
    const int64_t g = c / a.group_size;
    ForEach<NP>([&]<int P>() TESSERA_AVX2 {
      const __m256 scale = LoadScales(scales + (P * a.groups + g) * kLanes);
      ForEach<MR>([&]<int R>() TESSERA_AVX2 {
        float* acc = a.acc + R * a.acc_stride + P * kLanes;
        const int64_t b = R * blocks + c / kActivationBlock;
        const __m256i rows = _mm256_permute4x64_epi64(sum[R][P], 0xD8);  // rows 0..7
        const __m256 dot =
            _mm256_cvtepi32_ps(_mm256_sub_epi32(rows, _mm256_set1_epi32(128 * a.xq_sum[b])));
        const __m256 both = _mm256_mul_ps(scale, _mm256_broadcast_ss(a.xd + b));
        _mm256_storeu_ps(acc, _mm256_fmadd_ps(dot, both, _mm256_loadu_ps(acc)));
      });
    });
  }
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define TESSERA_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define TESSERA_AVX512_VNNI __attribute__((target("avx512f,avx512vnni,avx2,fma,f16c")))

// Eight scales of one panel (lanes 0..7) and eight of another (8..15), as f32.
TESSERA_AVX512 inline __m512 LoadScalePair(const float* first, const float* second) {
  return _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(first))),
                         _mm256_castps_pd(_mm256_loadu_ps(second)), 1));
}
TESSERA_AVX512 inline __m512 LoadScalePair(const Half* first, const Half* second) {
  return _mm512_cvtph_ps(_mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(first))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(second)), 1));
}

// f32 activations on AVX-512: TileF32Avx2's arithmetic with two panels in one register (lanes
// 0..7 panel 2 Q, 8..15 panel 2 Q + 1), so that each conversion and fused multiply-add takes
// sixteen outputs; every output's chain is the same as there, so are its bits. NQ pairs of
// panels; an odd panel left over takes TileF32Avx2.
template <Arithmetic A, typename S, int MR, int NQ>
TESSERA_AVX512 void TileF32Avx512(const TileArgs& a) {
  const S* scales = static_cast<const S*>(a.scales);
  for (int64_t c = a.k_begin; c < a.k_end;) {
    const int64_t g = c / a.group_size;
    const int64_t end = std::min(a.k_end, (g + 1) * a.group_size);
    __m512 dot[MR][NQ];
    const bool resume = c % a.group_size != 0;
    ForEach<MR * NQ>([&]<int I>() TESSERA_AVX512 {
      dot[I / NQ][I % NQ] =
          resume ? _mm512_loadu_ps(a.carry + (I / NQ) * a.acc_stride + (I % NQ) * 2 * kLanes)
                 : _mm512_setzero_ps();
    });
    if constexpr (A == Arithmetic::kInt8) {
      const int8_t* codes = static_cast<const int8_t*>(a.codes);
      for (; c < end; ++c) {
        __m512 wv[NQ];
        ForEach<NQ>([&]<int Q>() TESSERA_AVX512 {
          const int8_t* first = codes + (2 * Q * a.k + c) * kLanes;
          const __m128i q = _mm_castps_si128(_mm_loadh_pi(
              _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(first))),
              reinterpret_cast<const __m64*>(first + a.k * kLanes)));
          wv[Q] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
        });
        ForEach<MR>([&]<int R>() TESSERA_AVX512 {
          const __m512 xv = _mm512_set1_ps(a.x[R * a.k + c]);
          ForEach<NQ>([&]<int Q>()
                          TESSERA_AVX512 { dot[R][Q] = _mm512_fmadd_ps(xv, wv[Q], dot[R][Q]); });
        });
      }
    } else {
      const int32_t* words = static_cast<const int32_t*>(a.codes);
      for (; c < end; c += 8) {
        __m512i packed[NQ];
        ForEach<NQ>([&]<int Q>() TESSERA_AVX512 {
          const int32_t* first = words + 2 * Q * a.k + c;
          packed[Q] = _mm512_inserti64x4(
              _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(first))),
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + a.k)), 1);
        });
        ForEach<8>([&]<int I>() TESSERA_AVX512 {
          __m512 wv[NQ];
          ForEach<NQ>([&]<int Q>() TESSERA_AVX512 {
            if constexpr (I == 7) {
              wv[Q] = _mm512_cvtepi32_ps(_mm512_srli_epi32(packed[Q], 28));
            } else {
              constexpr int kShift = I < 4 ? 8 * I : 8 * (I - 4) + 4;
              wv[Q] =
                  _mm512_cvtepi32_ps(_mm512_and_si512(packed[Q], _mm512_set1_epi32(0xF << kShift)));
            }
          });
          ForEach<MR>([&]<int R>() TESSERA_AVX512 {
            const __m512 xv = _mm512_set1_ps(a.x[R * a.k + c + I]);
            ForEach<NQ>([&]<int Q>()
                            TESSERA_AVX512 { dot[R][Q] = _mm512_fmadd_ps(xv, wv[Q], dot[R][Q]); });
          });
        });
      }
    }
    if (end % a.group_size != 0) {
      ForEach<MR * NQ>([&]<int I>() TESSERA_AVX512 {
        _mm512_storeu_ps(a.carry + (I / NQ) * a.acc_stride + (I % NQ) * 2 * kLanes,
                         dot[I / NQ][I % NQ]);
      });
      break;
    }
    ForEach<NQ>([&]<int Q>() TESSERA_AVX512 {
      const int64_t at = (2 * Q * a.groups + g) * kLanes;
      const int64_t next = at + a.groups * kLanes;  // panel 2 Q + 1's
      const __m512 scale = LoadScalePair(scales + at, scales + next);
      [[maybe_unused]] __m512 offset;
      if constexpr (A == Arithmetic::kInt4)
        offset = LoadScalePair(a.offsets + at, a.offsets + next);
      ForEach<MR>([&]<int R>() TESSERA_AVX512 {
        float* acc = a.acc + R * a.acc_stride + 2 * Q * kLanes;
        __m512 out = _mm512_fmadd_ps(dot[R][Q], scale, _mm512_loadu_ps(acc));
        if constexpr (A == Arithmetic::kInt4) {
          out = _mm512_fmadd_ps(_mm512_set1_ps(a.sums[R * a.groups + g]), offset, out);
        }
        _mm512_storeu_ps(acc, out);
      });
    });
  }
}

// int8 activations on AVX-512 VNNI: the sums of TileQ8Avx2 (int4) and TileQ8Int8Avx2 (int8)
// by _mm512_dpbusd_epi32, which takes 64 products of unsigned bytes (the codes) and signed
// bytes (the activations) an instruction, four into each 32-bit lane. One register holds a
// panel's codes of eight inputs in lanes 0..7 and of the next eight in lanes 8..15 (int4:
// octets t and t + 1 of sixteen words, their low nibbles then their high ones; int8: quads t
// and t + 1), so the activations broadcast to each half differ (a permutation of the block's
// 32 bytes gives them). A lane's sum over a block is at most 32 x 255 x 127 in magnitude and
// exact, the two halves' sums are added exactly, and from there the arithmetic is the AVX2
// tiles', two panels a register (lanes 0..7 panel 2 Q, 8..15 panel 2 Q + 1): the same bits.
// The outputs stay in registers over [k_begin, k_end). NP even; an odd panel takes AVX2's.
template <Arithmetic A, typename S, int MR, int NP>
TESSERA_AVX512_VNNI void TileQ8Avx512Vnni(const TileArgs& a) {
  static_assert(NP % 2 == 0 && TakesInt8Activations(A));
  constexpr bool kInt4 = A == Arithmetic::kInt4Q8;
  constexpr int NQ = NP / 2;
  const S* scales = static_cast<const S*>(a.scales);
  const int32_t* words = static_cast<const int32_t*>(a.codes);  // int8: four codes a word
  // A panel's words: k / 8 * 8 of eight int4 codes, or k / 4 * 8 of four int8 codes.
  const int64_t panel_words = kInt4 ? a.k : 2 * a.k;
  const int64_t blocks = a.k / kActivationBlock;
  const int64_t panel_scales = a.groups * kLanes;
  const __m512i low4 = _mm512_set1_epi32(0x0F0F0F0F);
  // For the sixteen inputs 16 j.. of a block: the activations of the low nibbles (inputs
  // 0..3 of each octet) are 32-bit words 4 j (octet 2 j) and 4 j + 2 (octet 2 j + 1) of the
  // block's bytes; of the high nibbles (inputs 4..7), words 4 j + 1 and 4 j + 3.
  const __m512i low_words[2] = {_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
                                _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4)};
  const __m512i high_words[2] = {_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 5, 5, 5, 5, 5, 5, 5, 5)};
  __m512 out[MR][NQ];
  ForEach<MR * NQ>([&]<int I>() TESSERA_AVX512_VNNI {
    out[I / NQ][I % NQ] = _mm512_loadu_ps(a.acc + (I / NQ) * a.acc_stride + (I % NQ) * 2 * kLanes);
  });
  for (int64_t c = a.k_begin, g = a.k_begin / a.group_size; c < a.k_end; ++g) {
    const int64_t group_end = (g + 1) * a.group_size;
    for (; c < std::min(a.k_end, group_end); c += kActivationBlock) {
      __m512i sum[MR][NP];
      ForEach<MR * NP>([&]<int I>()
                           TESSERA_AVX512_VNNI { sum[I / NP][I % NP] = _mm512_setzero_si512(); });
      __m512i block[MR];
      ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
        block[R] = _mm512_zextsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + R * a.k + c)));
      });
      if constexpr (kInt4) {
        ForEach<2>([&]<int J>() TESSERA_AVX512_VNNI {
          __m512i low_x[MR], high_x[MR];
          ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
            low_x[R] = _mm512_permutexvar_epi32(low_words[J], block[R]);
            high_x[R] = _mm512_permutexvar_epi32(high_words[J], block[R]);
          });
          ForEach<NP>([&]<int P>() TESSERA_AVX512_VNNI {
            const __m512i packed = _mm512_loadu_si512(words + P * panel_words + c + 16 * J);
            const __m512i low = _mm512_and_si512(packed, low4);
            const __m512i high = _mm512_and_si512(_mm512_srli_epi32(packed, 4), low4);
            ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
              sum[R][P] = _mm512_dpbusd_epi32(sum[R][P], low, low_x[R]);
              sum[R][P] = _mm512_dpbusd_epi32(sum[R][P], high, high_x[R]);
            });
          });
        });
      } else {
        // Quads 2 J and 2 J + 1 of the block: its words 2 J and 2 J + 1.
        ForEach<4>([&]<int J>() TESSERA_AVX512_VNNI {
          __m512i xv[MR];
          ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
            xv[R] = _mm512_permutexvar_epi32(
                _mm512_set_epi32(2 * J + 1, 2 * J + 1, 2 * J + 1, 2 * J + 1, 2 * J + 1, 2 * J + 1,
                                 2 * J + 1, 2 * J + 1, 2 * J, 2 * J, 2 * J, 2 * J, 2 * J, 2 * J,
                                 2 * J, 2 * J),
                block[R]);
          });
          ForEach<NP>([&]<int P>() TESSERA_AVX512_VNNI {
            const __m512i codes = _mm512_loadu_si512(words + P * panel_words + 2 * c + 16 * J);
            ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
              sum[R][P] = _mm512_dpbusd_epi32(sum[R][P], codes, xv[R]);
            });
          });
        });
      }
      const bool group_ends = c + kActivationBlock == group_end;
      ForEach<NQ>([&]<int Q>() TESSERA_AVX512_VNNI {
        const S* scale_at = scales + 2 * Q * panel_scales + g * kLanes;
        const __m512 scale = LoadScalePair(scale_at, scale_at + panel_scales);
        ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
          // Lanes 0..7: panel 2 Q's two halves added; 8..15: panel 2 Q + 1's.
          const __m512i first = sum[R][2 * Q], second = sum[R][2 * Q + 1];
          __m512i lanes = _mm512_add_epi32(_mm512_shuffle_i64x2(first, second, 0x44),
                                           _mm512_shuffle_i64x2(first, second, 0xEE));
          const int64_t b = R * blocks + c / kActivationBlock;
          if constexpr (!kInt4)
            lanes = _mm512_sub_epi32(lanes, _mm512_set1_epi32(128 * a.xq_sum[b]));
          const __m512 both = _mm512_mul_ps(scale, _mm512_set1_ps(a.xd[b]));
          out[R][Q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), both, out[R][Q]);
        });
        if (kInt4 && group_ends) {
          const Half* offset_at = a.offsets + 2 * Q * panel_scales + g * kLanes;
          const __m512 offset = LoadScalePair(offset_at, offset_at + panel_scales);
          ForEach<MR>([&]<int R>() TESSERA_AVX512_VNNI {
            out[R][Q] =
                _mm512_fmadd_ps(_mm512_set1_ps(a.sums[R * a.groups + g]), offset, out[R][Q]);
          });
        }
      });
    }
  }
  ForEach<MR * NQ>([&]<int I>() TESSERA_AVX512_VNNI {
    _mm512_storeu_ps(a.acc + (I / NQ) * a.acc_stride + (I % NQ) * 2 * kLanes, out[I / NQ][I % NQ]);
  });
}
#undef TESSERA_AVX512_VNNI
#undef TESSERA_AVX512
#pragma GCC diagnostic pop
#undef TESSERA_AVX2
#endif  // TESSERA_CPU_X86

using TileFn = void (*)(const TileArgs&);

// Whether the processor converts f16 (F16C: every AVX2 processor made has it, but the AVX2
// path checks rather than assumes). CPUID, which GCC's and clang's headers both read (clang 14's
// __builtin_cpu_supports does not know "f16c").
bool HasF16c() {
#if TESSERA_CPU_X86
  static const bool f16c = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  }();
  return f16c;
#else
  return false;
#endif
}

// Whether the processor has AVX-512 VNNI (CPUID leaf 7, ECX bit 11), for int8 activations.
bool HasAvx512Vnni() {
#if TESSERA_CPU_X86
  static const bool vnni = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 11)) != 0;
  }();
  return vnni;
#else
  return false;
#endif
}

// The tiles a product takes: every path gives the same bits (the header's arithmetic).
enum class TilePath { kPortable, kAvx2, kAvx512 };

TilePath ChooseTilePath(Arithmetic arithmetic) {
  if (!HasAvx2Fma() || !HasF16c()) return TilePath::kPortable;
  if (HasAvx512() && (!TakesInt8Activations(arithmetic) || HasAvx512Vnni())) {
    return TilePath::kAvx512;
  }
  return TilePath::kAvx2;
}

template <int MR, int NP, Arithmetic A, typename S>
TileFn VectorTile(TilePath path) {
#if TESSERA_CPU_X86
  if constexpr (TakesInt8Activations(A)) {
    if constexpr (NP % 2 == 0) {
      if (path == TilePath::kAvx512) return TileQ8Avx512Vnni<A, S, MR, NP>;
    }
    if constexpr (A == Arithmetic::kInt4Q8) return TileQ8Avx2<MR, NP>;
    return TileQ8Int8Avx2<S, MR, NP>;
  } else if constexpr (NP % 2 == 0) {
    return path == TilePath::kAvx512 ? TileF32Avx512<A, S, MR, NP / 2> : TileF32Avx2<A, S, MR, NP>;
  } else {
    return TileF32Avx2<A, S, MR, NP>;
  }
#else
  (void)path;
  return TilePortable<A, S>;
#endif
}

// The widest tile, in panels, for one row and for several (the tiles below).
int MaxTilePanels(TilePath path, int rows) {
  return rows == 1 ? 6 : path == TilePath::kAvx512 ? 4 : 2;
}

// Rows of x a tile takes at most.
int TileRows(TilePath path, Arithmetic arithmetic) {
  return path == TilePath::kAvx512 && !TakesInt8Activations(arithmetic) ? kWideTileRows : kTileRows;
}

template <int MR, Arithmetic A, typename S>
TileFn SeveralRowsTile(TilePath path, int np) {
  return np == 4   ? VectorTile<MR, 4, A, S>(path)
         : np == 2 ? VectorTile<MR, 2, A, S>(path)
                   : VectorTile<MR, 1, A, S>(path);
}

// The tile kernel for `rows` rows (1..TileRows) and np panels (1, 2, 4 or 6 for one row; 1, 2
// or 4 (AVX-512) for several).
template <Arithmetic A, typename S>
TileFn TileFor(TilePath path, int rows, int np) {
  if (path == TilePath::kPortable) return TilePortable<A, S>;
  if constexpr (!TakesInt8Activations(A)) {
    switch (rows) {
      case 5:
        return SeveralRowsTile<5, A, S>(path, np);
      case 6:
        return SeveralRowsTile<6, A, S>(path, np);
      case 7:
        return SeveralRowsTile<7, A, S>(path, np);
      case 8:
        return SeveralRowsTile<8, A, S>(path, np);
      default:
        break;
    }
  }
  switch (rows) {
    case 1:
      return np == 6   ? VectorTile<1, 6, A, S>(path)
             : np == 4 ? VectorTile<1, 4, A, S>(path)
             : np == 2 ? VectorTile<1, 2, A, S>(path)
                       : VectorTile<1, 1, A, S>(path);
    case 2:
      return SeveralRowsTile<2, A, S>(path, np);
    case 3:
      return SeveralRowsTile<3, A, S>(path, np);
    default:
      return SeveralRowsTile<4, A, S>(path, np);
  }
}

// How a product is cut into work items: passes of rows times groups of panels, many enough
// to keep every kernel thread busy where the product allows. How it is cut never changes an
// output's chains.
struct WorkSplit {
  int64_t rows_per_pass, passes;
  int64_t panels_per_item, panel_groups;
};

WorkSplit SplitWork(int64_t m, int64_t panels) {
  const int64_t wanted = 2 * CpuKernelThreads();
  WorkSplit s;
  s.panels_per_item = kPanelsPerItem;
  while (s.panels_per_item > 1 && (panels + s.panels_per_item - 1) / s.panels_per_item < wanted) {
    s.panels_per_item /= 2;
  }
  s.panel_groups = (panels + s.panels_per_item - 1) / s.panels_per_item;
  s.rows_per_pass = std::min(m, kRowsPerPass);
  if (s.panel_groups < wanted && m > kTileRows) {
    const int64_t cuts = (wanted + s.panel_groups - 1) / s.panel_groups;
    const int64_t rows = (m + cuts - 1) / cuts;
    s.rows_per_pass = std::min(s.rows_per_pass, (rows + kTileRows - 1) / kTileRows * kTileRows);
  }
  s.passes = (m + s.rows_per_pass - 1) / s.rows_per_pass;
  return s;
}

// What stands for x in a product (the header's arithmetic): x itself (kInt8), x' (kInt4), or
// xq (m, k) with xd and xq_sum (m, k / 32) (QuantizeActivations); and int4's group sums of x
// (m, groups).
struct ProductInput {
  const float* x = nullptr;
  const int8_t* xq = nullptr;
  const float* xd = nullptr;
  const int32_t* xq_sum = nullptr;
  const float* sums = nullptr;
};

// out (m, n) = x (m, k) . dequant(w)^T + bias.
template <Arithmetic A, typename S>
void Product(const ProductInput& in, const QuantizedWeight& w, const Tensor& bias, float* out,
             int64_t m) {
  const int64_t n = w.rows, k = w.cols, groups = k / w.group_size;
  const int64_t panels = (n + kLanes - 1) / kLanes;
  const WorkSplit split = SplitWork(m, panels);
  const TilePath path = ChooseTilePath(A);
  const int64_t tile_rows = TileRows(path, A);
  // A panel's codes: k int8 values, or k / 8 words of eight int4 codes, for each of 8 lanes.
  const bool int8 = A == Arithmetic::kInt8 || A == Arithmetic::kInt8Q8;
  const int64_t panel_bytes = int8 ? k * kLanes : k / 8 * kLanes * 4;
  const int64_t scale_stride = w.scales.dim(1) * kLanes;
  const char* codes = static_cast<const char*>(w.codes.data());
  const S* scales = static_cast<const S*>(w.scales.data());
  const Half* offsets = w.offsets.defined() ? w.offsets.data<Half>() : nullptr;
  const int64_t items = split.passes * split.panel_groups;
  const int64_t min_items = m * n * k < 65536 ? items : 1;
  ParallelFor(
      items, min_items,
      [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t group = item / split.passes, pass = item % split.passes;
          const int64_t row_begin = pass * split.rows_per_pass;
          const int64_t row_end = std::min(m, row_begin + split.rows_per_pass);
          const int64_t panel_begin = group * split.panels_per_item;
          const int64_t panel_end = std::min(panels, panel_begin + split.panels_per_item);
          const int64_t lanes = (panel_end - panel_begin) * kLanes;
          const int64_t item_rows = row_end - row_begin;
          float* acc = ThreadScratch<float, 0>(item_rows * lanes);
          float* carry = ThreadScratch<float, 1>(item_rows * lanes);
          std::fill(acc, acc + item_rows * lanes, 0.0f);
          // One row tile reads each code once whatever the block; several read a block each.
          const int64_t block = item_rows <= tile_rows ? std::max<int64_t>(k, 1) : kInputsPerBlock;
          for (int64_t k_begin = 0; k_begin < k; k_begin += block) {
            const int64_t k_end = std::min(k, k_begin + block);
            for (int64_t row = row_begin; row < row_end; row += tile_rows) {
              const int rows = static_cast<int>(std::min<int64_t>(tile_rows, row_end - row));
              for (int64_t p = panel_begin; p < panel_end;) {
                int np = MaxTilePanels(path, rows);
                while (np > panel_end - p) np = np == 6 ? 4 : np / 2;
                const int64_t a_at = (row - row_begin) * lanes + (p - panel_begin) * kLanes;
                const bool q8 = TakesInt8Activations(A);
                const int64_t block_at = row * (k / kActivationBlock);
                const TileArgs args{in.x == nullptr ? nullptr : in.x + row * k,
                                    q8 ? in.xq + row * k : nullptr,
                                    q8 ? in.xd + block_at : nullptr,
                                    q8 ? in.xq_sum + block_at : nullptr,
                                    in.sums == nullptr ? nullptr : in.sums + row * groups,
                                    codes + p * panel_bytes,
                                    scales + p * scale_stride,
                                    offsets == nullptr ? nullptr : offsets + p * scale_stride,
                                    acc + a_at,
                                    carry + a_at,
                                    lanes,
                                    k,
                                    w.scales.dim(1),
                                    w.group_size,
                                    k_begin,
                                    k_end,
                                    rows,
                                    np};
                TileFor<A, S>(path, rows, np)(args);
                p += np;
              }
            }
          }
          for (int64_t r = 0; r < item_rows; ++r) {
            const int64_t first = panel_begin * kLanes;
            const int64_t valid = std::min(lanes, n - first);
            float* to = out + (row_begin + r) * n + first;
            const float* from = acc + r * lanes;
            if (bias.defined()) {
              for (int64_t l = 0; l < valid; ++l) {
                to[l] = from[l] + internal::LoadFloat(bias, first + l);
              }
            } else {
              std::copy_n(from, valid, to);
            }
          }
        }
      },
      /*grain=*/1);
}

}  // namespace

absl::string_view WeightQuantName(WeightQuant quant) {
  return quant == WeightQuant::kInt8 ? "int8" : "int4";
}

uint64_t QuantizedWeight::nbytes() const {
  return codes.nbytes() + scales.nbytes() + (offsets.defined() ? offsets.nbytes() : 0);
}

uint64_t QuantizedWeightBytes(WeightQuant quant, int64_t rows, int64_t cols, int64_t group_size) {
  // As packed: panels of kQuantizedPanel rows (the last one padded), a byte a code for int8
  // and half a byte for int4; f16 scales (and offsets) per group, or one f32 scale a row.
  const uint64_t padded_rows =
      static_cast<uint64_t>((rows + kQuantizedPanel - 1) / kQuantizedPanel * kQuantizedPanel);
  const uint64_t groups = static_cast<uint64_t>(cols / group_size);
  const uint64_t codes = quant == WeightQuant::kInt8
                             ? padded_rows * static_cast<uint64_t>(cols)
                             : padded_rows * static_cast<uint64_t>(cols) / 2;
  if (quant == WeightQuant::kInt8) {
    return codes +
           (OneGroupARow(quant, cols, group_size) ? 4 * padded_rows : 2 * padded_rows * groups);
  }
  return codes + 2 * 2 * padded_rows * groups;
}

absl::StatusOr<QuantizedWeight> QuantizeWeight(const Tensor& w, WeightQuant quant,
                                               int64_t group_size) {
  TESSERA_RETURN_IF_ERROR(
      internal::ExpectDType(kQuantizeWeight, "w", w, {DType::kF32, DType::kBF16, DType::kF16}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kQuantizeWeight, "w", w, 2));
  const int64_t rows = w.dim(0), cols = w.dim(1);
  TESSERA_RETURN_IF_ERROR(CheckGroupSize(kQuantizeWeight, quant, cols, group_size));
  const int64_t groups = cols / group_size;
  std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
  std::vector<float> scales(static_cast<size_t>(rows * groups));
  std::vector<float> offsets(quant == WeightQuant::kInt4 ? scales.size() : 0);
  // Rows in parallel; the first row that fails is quantized again for its error.
  std::atomic<int64_t> first_failed{rows};
  const auto quantize_row = [&](int64_t r) {
    return QuantizeRow(w, quant, group_size, r, codes.data() + r * cols, scales.data() + r * groups,
                       offsets.empty() ? nullptr : offsets.data() + r * groups);
  };
  ParallelFor(rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (quantize_row(r).ok()) continue;
      int64_t seen = first_failed.load();
      while (r < seen && !first_failed.compare_exchange_weak(seen, r)) {
      }
    }
  });
  if (first_failed.load() < rows) return quantize_row(first_failed.load());
  return Pack(quant, rows, cols, group_size, codes, scales, offsets);
}

absl::StatusOr<QuantizedWeight> QuantizedWeightFromGroups(WeightQuant quant, int64_t rows,
                                                          int64_t cols, int64_t group_size,
                                                          absl::Span<const int8_t> codes,
                                                          absl::Span<const float> scales,
                                                          absl::Span<const float> offsets) {
  constexpr char kKernel[] = "QuantizedWeightFromGroups";
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": shape ", rows, " x ", cols, " is negative"));
  }
  TESSERA_RETURN_IF_ERROR(CheckGroupSize(kKernel, quant, cols, group_size));
  const int64_t groups = cols / group_size;
  const bool row_scale = OneGroupARow(quant, cols, group_size);
  const auto expect_size = [&](absl::string_view name, size_t size,
                               int64_t expected) -> absl::Status {
    if (static_cast<int64_t>(size) == expected) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": ", name, " has ", size, " values, expected ", expected, " for ",
                     WeightQuantName(quant), " ", rows, " x ", cols, " in groups of ", group_size));
  };
  TESSERA_RETURN_IF_ERROR(expect_size("codes", codes.size(), rows * cols));
  TESSERA_RETURN_IF_ERROR(expect_size("scales", scales.size(), rows * groups));
  TESSERA_RETURN_IF_ERROR(expect_size("offsets", offsets.size(),
                                      quant == WeightQuant::kInt4 ? rows * groups : int64_t{0}));
  if (quant == WeightQuant::kInt4) {
    for (size_t i = 0; i < codes.size(); ++i) {
      if (codes[i] < 0 || codes[i] > 15) {
        return absl::InvalidArgumentError(absl::StrCat(
            kKernel, ": int4 code ", codes[i], " at row ", static_cast<int64_t>(i) / cols,
            " column ", static_cast<int64_t>(i) % cols, " is outside 0..15"));
      }
    }
  }
  for (int64_t i = 0; i < rows * groups; ++i) {
    if (row_scale) {
      if (!std::isfinite(scales[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat(kKernel, ": the scale of row ", i, " is ", scales[i]));
      }
      continue;
    }
    TESSERA_RETURN_IF_ERROR(
        ToHalf(kKernel, "the scale", i / groups, i % groups, scales[i]).status());
    if (quant == WeightQuant::kInt4) {
      TESSERA_RETURN_IF_ERROR(
          ToHalf(kKernel, "the offset", i / groups, i % groups, offsets[i]).status());
    }
  }
  return Pack(quant, rows, cols, group_size, codes, scales, offsets);
}

absl::StatusOr<QuantizedWeight> WithActivations(const QuantizedWeight& w,
                                                ActivationQuant activations) {
  constexpr char kKernel[] = "WithActivations";
  TESSERA_RETURN_IF_ERROR(CheckPacked(kKernel, w, Device::Cpu()));
  QuantizedWeight to = w;
  to.activations = activations;
  if (w.quant == WeightQuant::kInt4 || w.activations == activations) return to;
  const int64_t k = w.cols, panels = w.codes.dim(0);
  const bool q8 = activations == ActivationQuant::kInt8;
  if (q8 && k % kActivationBlock != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": w (int8, ", w.rows, " x ", k, ") has ", k,
                     " inputs; int8 activations take blocks of ", kActivationBlock));
  }
  TESSERA_ASSIGN_OR_RETURN(to.codes, q8 ? Tensor::Empty(DType::kI8, {panels, k / 4, kLanes, 4})
                                        : Tensor::Empty(DType::kI8, {panels, k, kLanes}));
  // Input c of row l of panel p: at (p k + c) 8 + l as q, at ((p k / 4 + c / 4) 8 + l) 4 + c % 4
  // as q + 128; flipping the top bit converts one to the other.
  const uint8_t* from = static_cast<const uint8_t*>(w.codes.data());
  uint8_t* bytes = static_cast<uint8_t*>(to.codes.data());
  ParallelFor(panels, 4, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t c = 0; c < k; ++c) {
        for (int64_t l = 0; l < kLanes; ++l) {
          const int64_t plain = (p * k + c) * kLanes + l;
          const int64_t quads = ((p * (k / 4) + c / 4) * kLanes + l) * 4 + c % 4;
          if (q8) {
            bytes[quads] = from[plain] ^ 0x80;
          } else {
            bytes[plain] = from[quads] ^ 0x80;
          }
        }
      }
    }
  });
  return to;
}

absl::StatusOr<QuantizedWeight> QuantizedWeightTo(const QuantizedWeight& w, Device device,
                                                  Stream& stream) {
  QuantizedWeight moved = w;
  for (Tensor* t : {&moved.codes, &moved.scales, &moved.offsets}) {
    if (!t->defined()) continue;
    TESSERA_ASSIGN_OR_RETURN(*t, t->To(device, stream));
  }
  return moved;
}

absl::StatusOr<Tensor> DequantizeWeight(const QuantizedWeight& w) {
  TESSERA_RETURN_IF_ERROR(CheckPacked("DequantizeWeight", w, Device::Cpu()));
  const int64_t n = w.rows, k = w.cols, groups = w.scales.dim(1);
  TESSERA_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(DType::kF32, {n, k}));
  float* to = out.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const int p = static_cast<int>(r / kLanes), l = static_cast<int>(r % kLanes);
    for (int64_t c = 0; c < k; ++c) {
      const int64_t at = (p * groups + c / w.group_size) * kLanes + l;
      if (w.quant == WeightQuant::kInt8) {
        const float scale = w.scales.dtype() == DType::kF32 ? w.scales.data<float>()[at]
                                                            : w.scales.data<Half>()[at].ToFloat();
        const int code = w.activations == ActivationQuant::kInt8
                             ? Code<Arithmetic::kInt8Q8>(w.codes.data(), k, p, c, l)
                             : Code<Arithmetic::kInt8>(w.codes.data(), k, p, c, l);
        to[r * k + c] = scale * static_cast<float>(code);
      } else {
        to[r * k + c] =
            std::fma(w.scales.data<Half>()[at].ToFloat(),
                     static_cast<float>(Code<Arithmetic::kInt4>(w.codes.data(), k, p, c, l)),
                     w.offsets.data<Half>()[at].ToFloat());
      }
    }
  }
  return out;
}

absl::Status QuantizedLinear(const Tensor& x, const QuantizedWeight& w, const Tensor& bias,
                             Tensor& out) {
  constexpr char kKernel[] = "QuantizedLinear";
  TESSERA_RETURN_IF_ERROR(CheckPacked(kKernel, w, Device::Cpu()));
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "x", x, 2));
  const int64_t m = x.dim(0), k = w.cols, n = w.rows;
  if (x.dim(1) != k) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": x is ", x.DebugString(),
                                                   ", expected ", k, " inputs for w (", n, " x ", k,
                                                   ")"));
  }
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "out", out, {m, n}));
  if (bias.defined()) {
    TESSERA_RETURN_IF_ERROR(
        internal::ExpectDType(kKernel, "bias", bias, {DType::kF32, DType::kBF16}));
    TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "bias", bias, {n}));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  const float* xs = x.data<float>();
  float* o = out.data<float>();
  const bool int8 = w.quant == WeightQuant::kInt8;
  const bool row_scale = w.scales.dtype() == DType::kF32;
  const bool q8 = w.activations == ActivationQuant::kInt8;
  if (int8 && !q8) {
    if (row_scale) {
      Product<Arithmetic::kInt8, float>({.x = xs}, w, bias, o, m);
    } else {
      Product<Arithmetic::kInt8, Half>({.x = xs}, w, bias, o, m);
    }
    return absl::OkStatus();
  }
  // What stands for x, row by row (a prefill's rows in parallel): int4's group sums, and x' or
  // the int8 blocks.
  const int64_t groups = k / w.group_size, blocks = k / kActivationBlock;
  float* sums = int8 ? nullptr : ThreadScratch<float, 2>(m * groups);
  int8_t* xq = q8 ? ThreadScratch<int8_t, 3>(m * k) : nullptr;
  float* xd = q8 ? ThreadScratch<float, 4>(m * blocks) : nullptr;
  int32_t* xq_sum = q8 ? ThreadScratch<int32_t, 6>(m * blocks) : nullptr;
  float* scaled = q8 ? nullptr : ThreadScratch<float, 5>(m * k);
  ParallelFor(m, m * k < 65536 ? m : 8, [&](int64_t begin, int64_t end) {
    const int64_t rows = end - begin;
    if (sums != nullptr) {
      GroupSums(xs + begin * k, rows, k, w.group_size, sums + begin * groups);
    }
    if (q8) {
      QuantizeActivations(xs + begin * k, rows, k, xq + begin * k, xd + begin * blocks,
                          xq_sum + begin * blocks);
    } else {
      ScaleForNibbles(xs + begin * k, rows, k, scaled + begin * k);
    }
  });
  if (int8) {
    const ProductInput in8{.xq = xq, .xd = xd, .xq_sum = xq_sum};
    if (row_scale) {
      Product<Arithmetic::kInt8Q8, float>(in8, w, bias, o, m);
    } else {
      Product<Arithmetic::kInt8Q8, Half>(in8, w, bias, o, m);
    }
  } else if (q8) {
    Product<Arithmetic::kInt4Q8, Half>({.xq = xq, .xd = xd, .xq_sum = xq_sum, .sums = sums}, w,
                                       bias, o, m);
  } else {
    Product<Arithmetic::kInt4, Half>({.x = scaled, .sums = sums}, w, bias, o, m);
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
