// Tests of kernels/cpu/quantized_linear.h: QuantizedLinear against a plain multiply by the
// dequantized weight (f64 sums) and against the header's arithmetic written out here, its
// row invariance, QuantizeWeight's error bounds, QuantizedWeightFromGroups' exact groups, and
// the refusals. The binary runs again on each narrower vector path (TESSERA_CPU_VECTOR), so
// the bitwise tests also hold every path to the same bits.

#include "kernels/cpu/quantized_linear.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/core/half.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/random_tensor.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::IsError;

Tensor Random(DType dtype, Shape shape, uint32_t seed) {
  return ::tessera::testing::RandomTensor(dtype, std::move(shape), seed);
}

Tensor Zeros(DType dtype, Shape shape) {
  absl::StatusOr<Tensor> t = Tensor::Zeros(dtype, std::move(shape));
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

float RoundToHalf(float value) { return Half::FromFloat(value).ToFloat(); }

// A format: the quant, its group size (0: one group a row, group_size = K) and how products
// take the activations.
struct Format {
  WeightQuant quant;
  int64_t group_size;
  ActivationQuant activations = ActivationQuant::kF32;

  int64_t GroupSize(int64_t k) const { return group_size == 0 ? k : group_size; }
  bool Int8Activations() const { return activations == ActivationQuant::kInt8; }
  std::string Name() const {
    return absl::StrCat(WeightQuantName(quant),
                        group_size == 0 ? std::string(" per row") : absl::StrCat(" g", group_size),
                        Int8Activations() ? " int8 activations" : "");
  }
};

constexpr Format kFormats[] = {{WeightQuant::kInt8, 0},
                               {WeightQuant::kInt8, 32},
                               {WeightQuant::kInt8, 128},
                               {WeightQuant::kInt4, 32},
                               {WeightQuant::kInt4, 128},
                               {WeightQuant::kInt8, 0, ActivationQuant::kInt8},
                               {WeightQuant::kInt8, 32, ActivationQuant::kInt8},
                               {WeightQuant::kInt4, 32, ActivationQuant::kInt8},
                               {WeightQuant::kInt4, 128, ActivationQuant::kInt8}};

// QuantizeWeight, products taking the format's activations.
absl::StatusOr<QuantizedWeight> Quantize(const Tensor& w, const Format& format) {
  absl::StatusOr<QuantizedWeight> q = QuantizeWeight(w, format.quant, format.GroupSize(w.dim(1)));
  if (!q.ok()) return q;
  return WithActivations(*q, format.activations);
}

// Row-major groups as a checkpoint holds them, and the values the weight stores: scales and
// offsets rounded to f16 except int8's one scale a row.
struct Groups {
  int64_t rows = 0, cols = 0, group_size = 0;
  std::vector<int8_t> codes;
  std::vector<float> scales, offsets;  // as given
  std::vector<float> stored_scales, stored_offsets;

  int64_t groups() const { return cols / group_size; }
  float Scale(int64_t r, int64_t c) const { return stored_scales[r * groups() + c / group_size]; }
  float Offset(int64_t r, int64_t c) const {
    return stored_offsets.empty() ? 0.0f : stored_offsets[r * groups() + c / group_size];
  }
};

// Random groups of `format`: codes over their whole range, scales about 0.02 of either sign
// (GPTQ's may be negative), int4 offsets about -8 scales as Q4_0's and Q4_1's are.
Groups RandomGroups(Format format, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  Groups g;
  g.rows = rows;
  g.cols = cols;
  g.group_size = format.GroupSize(cols);
  const bool int4 = format.quant == WeightQuant::kInt4;
  std::uniform_int_distribution<int> code(int4 ? 0 : -128, int4 ? 15 : 127);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < rows * cols; ++i) g.codes.push_back(static_cast<int8_t>(code(rng)));
  for (int64_t i = 0; i < rows * g.groups(); ++i) {
    const float scale = 0.02f * normal(rng);
    g.scales.push_back(scale);
    g.stored_scales.push_back(format.group_size == 0 ? scale : RoundToHalf(scale));
    if (int4) {
      const float offset = -8.0f * scale + 0.01f * normal(rng);
      g.offsets.push_back(offset);
      g.stored_offsets.push_back(RoundToHalf(offset));
    }
  }
  return g;
}

absl::StatusOr<QuantizedWeight> FromGroups(Format format, const Groups& g) {
  absl::StatusOr<QuantizedWeight> w = QuantizedWeightFromGroups(
      format.quant, g.rows, g.cols, g.group_size, g.codes, g.scales, g.offsets);
  if (!w.ok()) return w;
  return WithActivations(*w, format.activations);
}

// int8 activations, as the header defines them: for each block of 32 inputs
// of a row, d = max |x| / 127 and q = x (1 / d) rounded to nearest even.
struct QuantizedActivations {
  std::vector<int8_t> q;
  std::vector<float> d;  // one a block
};

QuantizedActivations QuantizeActivationsAsDocumented(const Tensor& x) {
  const float* xs = x.data<float>();
  QuantizedActivations a;
  for (int64_t b = 0; b < x.numel() / 32; ++b) {
    float largest = 0.0f;
    for (int64_t c = 0; c < 32; ++c) largest = std::max(largest, std::abs(xs[32 * b + c]));
    const float d = largest / 127.0f;
    a.d.push_back(d);
    for (int64_t c = 0; c < 32; ++c) {
      a.q.push_back(static_cast<int8_t>(
          largest == 0.0f
              ? 0.0f
              : std::nearbyint(std::clamp(xs[32 * b + c] * (1.0f / d), -127.0f, 127.0f))));
    }
  }
  return a;
}

// out (M, N) as the header defines the product, written out. f32 activations: per group a
// chain of fused multiply-adds over its inputs, folded into the output's chain by its scale.
// int8 activations: per block of 32 inputs the exact integer sum of codes times quantized
// activations, folded in by the scale times the block's activation scale. int4 then adds per
// group its offset times its sum of x in eight running sums.
std::vector<float> DocumentedProduct(const Groups& g, const Format& format, const Tensor& x,
                                     const Tensor& bias) {
  const int64_t m = x.dim(0), n = g.rows, k = g.cols;
  const float* xs = x.data<float>();
  const QuantizedActivations a = QuantizeActivationsAsDocumented(x);
  std::vector<float> out(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int64_t c0 = 0; c0 < k; c0 += g.group_size) {
        if (format.Int8Activations()) {
          for (int64_t b = c0; b < c0 + g.group_size; b += 32) {
            int32_t sum = 0;
            for (int64_t c = b; c < b + 32; ++c) sum += g.codes[j * k + c] * a.q[i * k + c];
            acc = std::fma(static_cast<float>(sum), g.Scale(j, c0) * a.d[(i * k + b) / 32], acc);
          }
        } else {
          float dot = 0.0f;
          for (int64_t c = c0; c < c0 + g.group_size; ++c) {
            dot = std::fma(xs[i * k + c], static_cast<float>(g.codes[j * k + c]), dot);
          }
          acc = std::fma(dot, g.Scale(j, c0), acc);
        }
        if (format.quant == WeightQuant::kInt4) {
          float lanes[8] = {};
          for (int64_t c = c0; c < c0 + g.group_size; ++c) lanes[c % 8] += xs[i * k + c];
          float sum = 0.0f;
          for (float lane : lanes) sum += lane;
          acc = std::fma(sum, g.Offset(j, c0), acc);
        }
      }
      if (bias.defined()) acc += static_cast<float>(ElementAsDouble(bias, j));
      out[i * n + j] = acc;
    }
  }
  return out;
}

TEST(WeightQuant, Names) {
  EXPECT_EQ(WeightQuantName(WeightQuant::kInt8), "int8");
  EXPECT_EQ(WeightQuantName(WeightQuant::kInt4), "int4");
}

// Against x . DequantizeWeight(w)^T + bias summed in f64: the difference is f32 rounding of
// the chains (K of them at most), bounded by the sum of |x| times |scale * code| + |offset|,
// and with int8 activations their rounding: at most half a step d of their block (and a hair
// for rounding x (1 / d)) times |scale * code|. N = 37 and 101 end in a part
// panel; K = 384 makes three groups of 128, and with more rows than one tile a block of inputs
// that ends inside a row's one group (int8 per row).
TEST(QuantizedLinear, MatchesMultiplyingByTheDequantizedWeight) {
  const int64_t k = 384;
  for (const Format& format : kFormats) {
    for (int64_t n : {37, 101}) {
      const Groups g = RandomGroups(format, n, k, 5);
      ASSERT_OK_AND_ASSIGN(QuantizedWeight w, FromGroups(format, g));
      ASSERT_OK_AND_ASSIGN(Tensor dequant, DequantizeWeight(w));
      ASSERT_EQ(dequant.shape(), Shape({n, k}));
      for (int64_t m : {1, 3, 17}) {
        Tensor x = Random(DType::kF32, {m, k}, 7);
        const QuantizedActivations a = QuantizeActivationsAsDocumented(x);
        const bool int8_activations = format.Int8Activations();
        for (int bias_kind = 0; bias_kind < 3; ++bias_kind) {
          const Tensor bias = bias_kind == 0   ? Tensor()
                              : bias_kind == 1 ? Random(DType::kF32, {n}, 8)
                                               : Random(DType::kBF16, {n}, 9);
          Tensor out = Zeros(DType::kF32, {m, n});
          ASSERT_OK(QuantizedLinear(x, w, bias, out));
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double expected = bias.defined() ? ElementAsDouble(bias, j) : 0.0;
              double magnitude = std::abs(expected), activation_error = 0;
              for (int64_t c = 0; c < k; ++c) {
                const double xv = x.data<float>()[i * k + c];
                const double weight = std::abs(g.Scale(j, c) * g.codes[j * k + c]);
                expected += xv * dequant.data<float>()[j * k + c];
                magnitude += std::abs(xv) * (weight + std::abs(g.Offset(j, c)));
                if (int8_activations) activation_error += weight * 0.5001 * a.d[(i * k + c) / 32];
              }
              ASSERT_NEAR(out.data<float>()[i * n + j], expected,
                          (k + 16) * std::ldexp(magnitude, -24) + activation_error)
                  << format.Name() << " n=" << n << " m=" << m << " bias " << bias_kind << " (" << i
                  << "," << j << ")";
            }
          }
        }
      }
    }
  }
}

// Every vector path computes the header's arithmetic, so all give the bits written out here.
// M = 13 takes tiles of 4 rows and a last of 1; K = 384 cuts int8's one group a row into
// blocks.
TEST(QuantizedLinear, EveryOutputIsTheDocumentedArithmetic) {
  const int64_t m = 13, n = 37, k = 384;
  Tensor x = Random(DType::kF32, {m, k}, 11);
  for (const Format& format : kFormats) {
    const Groups g = RandomGroups(format, n, k, 12);
    ASSERT_OK_AND_ASSIGN(QuantizedWeight w, FromGroups(format, g));
    for (const Tensor& bias : {Tensor(), Random(DType::kBF16, {n}, 13)}) {
      const std::vector<float> expected = DocumentedProduct(g, format, x, bias);
      for (int64_t rows : {int64_t{1}, m}) {
        ASSERT_OK_AND_ASSIGN(Tensor part, x.Slice(0, rows));
        Tensor out = Zeros(DType::kF32, {rows, n});
        ASSERT_OK(QuantizedLinear(part, w, bias, out));
        for (int64_t i = 0; i < rows * n; ++i) {
          ASSERT_EQ(std::bit_cast<uint32_t>(out.data<float>()[i]),
                    std::bit_cast<uint32_t>(expected[i]))
              << format.Name() << " rows=" << rows << " (" << i / n << "," << i % n << ")";
        }
      }
    }
  }
}

// The integer sums at their largest stay exact: int4's 16-bit partial sums (every code 15),
// and int8's codes at either end (-128 and 127, 255 and 0 as stored), every activation +-127
// (x of one magnitude, of each sign and alternating): the documented arithmetic's bits, and
// near x . dequant(w)^T (x's activations are exact here but for d's rounding).
TEST(QuantizedLinear, IntegerSumsAtTheirLargestStayExact) {
  const int64_t n = 9, k = 256;  // not 128: int8 would keep an f16 scale for its one group
  Tensor x = Zeros(DType::kF32, {3, k});
  for (int64_t c = 0; c < k; ++c) {
    x.data<float>()[c] = 1.5f;
    x.data<float>()[k + c] = -1.5f;
    x.data<float>()[2 * k + c] = c % 2 == 0 ? 2.0f : -2.0f;
  }
  const Format formats[] = {{WeightQuant::kInt4, 32, ActivationQuant::kInt8},
                            {WeightQuant::kInt4, 128, ActivationQuant::kInt8},
                            {WeightQuant::kInt8, 0, ActivationQuant::kInt8},
                            {WeightQuant::kInt8, 32, ActivationQuant::kInt8}};
  for (const Format& format : formats) {
    Groups g = RandomGroups(format, n, k, 15);
    for (int64_t i = 0; i < n * k; ++i) {
      g.codes[i] = format.quant == WeightQuant::kInt4 ? 15 : (i / k) % 2 == 0 ? -128 : 127;
    }
    ASSERT_OK_AND_ASSIGN(QuantizedWeight w, FromGroups(format, g));
    ASSERT_OK_AND_ASSIGN(Tensor dequant, DequantizeWeight(w));
    const std::vector<float> expected = DocumentedProduct(g, format, x, Tensor());
    Tensor out = Zeros(DType::kF32, {3, n});
    ASSERT_OK(QuantizedLinear(x, w, Tensor(), out));
    for (int64_t i = 0; i < 3 * n; ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(out.data<float>()[i]), std::bit_cast<uint32_t>(expected[i]))
          << format.Name() << " (" << i / n << "," << i % n << ")";
      double reference = 0, magnitude = 0;
      for (int64_t c = 0; c < k; ++c) {
        const double term = static_cast<double>(x.data<float>()[(i / n) * k + c]) *
                            dequant.data<float>()[(i % n) * k + c];
        reference += term;
        magnitude += std::abs(term);
      }
      EXPECT_NEAR(out.data<float>()[i], reference, 1e-5 * magnitude) << format.Name() << " " << i;
    }
  }
}

// What batching invariance in the engine rests on: a row of out is bitwise the same computed
// alone or among any number of other rows, however the rows fall into tiles, passes and
// work items. (The kernel thread pool's size is fixed for a process; the test above holds
// every output to one arithmetic, which no thread count changes.)
TEST(QuantizedLinear, EachRowIsBitwiseTheSameAloneAndInAnyBatch) {
  const int64_t n = 101, k = 256, rows = 130;
  Tensor x = Random(DType::kF32, {rows, k}, 21);
  Tensor bias = Random(DType::kF32, {n}, 23);
  for (const Format& format : kFormats) {
    ASSERT_OK_AND_ASSIGN(QuantizedWeight w, Quantize(Random(DType::kBF16, {n, k}, 22), format));
    std::vector<float> alone(rows * n);
    for (int64_t i = 0; i < rows; ++i) {
      ASSERT_OK_AND_ASSIGN(Tensor row, x.Slice(i, i + 1));
      Tensor out = Zeros(DType::kF32, {1, n});
      ASSERT_OK(QuantizedLinear(row, w, bias, out));
      std::copy_n(out.data<float>(), n, alone.data() + i * n);
    }
    for (int64_t m : {2, 3, 4, 5, 9, 61, 64, 65, 130}) {
      ASSERT_OK_AND_ASSIGN(Tensor batch, x.Slice(rows - m, rows));
      Tensor out = Zeros(DType::kF32, {m, n});
      ASSERT_OK(QuantizedLinear(batch, w, bias, out));
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          ASSERT_EQ(std::bit_cast<uint32_t>(out.data<float>()[i * n + j]),
                    std::bit_cast<uint32_t>(alone[(rows - m + i) * n + j]))
              << format.Name() << " m=" << m << " (" << i << "," << j << ")";
        }
      }
    }
  }
}

// Each weight within half a step of its group's grid, plus what rounding the scale and
// offset to f16 moves the grid (the codes are computed against the rounded values), plus the
// f32 rounding of the dequantized value.
TEST(QuantizeWeight, RoundTripIsWithinHalfAStepPlusF16Rounding) {
  const int64_t n = 19, k = 256;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor w = Random(dtype, {n, k}, 31);
    for (const Format& format : kFormats) {
      const int64_t group = format.GroupSize(k);
      ASSERT_OK_AND_ASSIGN(QuantizedWeight q, QuantizeWeight(w, format.quant, group));
      EXPECT_EQ(q.rows, n);
      EXPECT_EQ(q.cols, k);
      EXPECT_EQ(q.group_size, group);
      ASSERT_OK_AND_ASSIGN(Tensor dequant, DequantizeWeight(q));
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c0 = 0; c0 < k; c0 += group) {
          double low = 0, high = 0, largest = 0;
          for (int64_t c = c0; c < c0 + group; ++c) {
            const double v = ElementAsDouble(w, r * k + c);
            low = c == c0 ? v : std::min(low, v);
            high = c == c0 ? v : std::max(high, v);
            largest = std::max(largest, std::abs(v));
          }
          double bound = 0;
          if (format.quant == WeightQuant::kInt8) {
            const double exact = static_cast<float>(largest) / 127.0f;
            const double scale = format.group_size == 0 ? exact : RoundToHalf(exact);
            // A scale rounded down moves the largest weight up to 127 |rounding| past code 127.
            bound = scale / 2 + 127 * std::abs(scale - exact);
          } else {
            const double exact = static_cast<float>(high - low) / 15.0f;
            const double scale = RoundToHalf(exact);
            const double offset = RoundToHalf(low);
            bound = scale / 2 + 15 * std::abs(scale - exact) + std::abs(offset - low);
          }
          for (int64_t c = c0; c < c0 + group; ++c) {
            const double v = ElementAsDouble(w, r * k + c);
            const double back = dequant.data<float>()[r * k + c];
            ASSERT_LE(std::abs(back - v), bound + std::ldexp(std::abs(v) + largest, -23))
                << NameOf(dtype) << " " << format.Name() << " (" << r << "," << c << ")";
          }
        }
      }
      if (format.quant == WeightQuant::kInt8) {
        for (int8_t code : q.codes.span<int8_t>()) ASSERT_GE(code, -127);
      }
    }
  }
}

// A group of zeros comes back as zeros, and a constant int4 group as its value rounded to f16
// (its scale is 0: every code 0, the offset the value).
TEST(QuantizeWeight, ZeroAndConstantGroups) {
  const int64_t n = 2, k = 128;
  Tensor w = Zeros(DType::kF32, {n, k});
  for (int64_t c = 0; c < k; ++c) w.data<float>()[k + c] = 0.3f;
  for (const Format& format : kFormats) {
    ASSERT_OK_AND_ASSIGN(QuantizedWeight q, QuantizeWeight(w, format.quant, format.GroupSize(k)));
    ASSERT_OK_AND_ASSIGN(Tensor dequant, DequantizeWeight(q));
    for (int64_t c = 0; c < k; ++c) {
      EXPECT_EQ(dequant.data<float>()[c], 0.0f) << format.Name();
      if (format.quant == WeightQuant::kInt4) {
        EXPECT_EQ(dequant.data<float>()[k + c], RoundToHalf(0.3f)) << format.Name();
      }
    }
  }
}

// An f16 weight (a GPU keeps f16 checkpoints as they are) quantizes as its values widened to
// f32 do: the same codes, scales and offsets.
TEST(QuantizeWeight, TakesF16AsItsValuesInF32) {
  const int64_t n = 9, k = 256;
  const Tensor f16 = Random(DType::kF16, {n, k}, 31);
  Tensor f32 = Zeros(DType::kF32, {n, k});
  for (int64_t i = 0; i < n * k; ++i) f32.data<float>()[i] = f16.data<Half>()[i].ToFloat();
  for (const Format& format : kFormats) {
    ASSERT_OK_AND_ASSIGN(QuantizedWeight from_f16,
                         QuantizeWeight(f16, format.quant, format.GroupSize(k)));
    ASSERT_OK_AND_ASSIGN(QuantizedWeight from_f32,
                         QuantizeWeight(f32, format.quant, format.GroupSize(k)));
    for (const auto& [a, b] : {std::pair{&from_f16.codes, &from_f32.codes},
                               std::pair{&from_f16.scales, &from_f32.scales},
                               std::pair{&from_f16.offsets, &from_f32.offsets}}) {
      ASSERT_EQ(a->defined(), b->defined()) << format.Name();
      if (!a->defined()) continue;
      ASSERT_EQ(a->nbytes(), b->nbytes()) << format.Name();
      EXPECT_EQ(std::memcmp(a->data(), b->data(), a->nbytes()), 0) << format.Name();
    }
  }
}

// DequantizeWeight gives back exactly the given groups: scale * code + offset rounded once to
// f32, with the scales and offsets rounded to f16 (int8's one scale a row kept f32). GGUF's
// Q4_0 (offset -8 scale) stays exact. int8 codes may use -128.
TEST(QuantizedWeightFromGroups, ReproducesTheGroupsExactly) {
  const int64_t n = 11, k = 256;
  for (const Format& format : kFormats) {
    Groups g = RandomGroups(format, n, k, 41);
    if (format.quant == WeightQuant::kInt8) g.codes[5] = -128;
    ASSERT_OK_AND_ASSIGN(QuantizedWeight w, FromGroups(format, g));
    EXPECT_EQ(w.quant, format.quant);
    ASSERT_OK_AND_ASSIGN(Tensor dequant, DequantizeWeight(w));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        const float code = g.codes[r * k + c];
        const float expected = format.quant == WeightQuant::kInt8
                                   ? g.Scale(r, c) * code
                                   : std::fma(g.Scale(r, c), code, g.Offset(r, c));
        ASSERT_EQ(std::bit_cast<uint32_t>(dequant.data<float>()[r * k + c]),
                  std::bit_cast<uint32_t>(expected))
            << format.Name() << " (" << r << "," << c << ")";
      }
    }
  }
  // Q4_0: d an f16, offset -8 d: every weight d * (code - 8) exactly.
  Groups q40 = RandomGroups({WeightQuant::kInt4, 32}, 3, 64, 42);
  for (size_t i = 0; i < q40.scales.size(); ++i) {
    q40.scales[i] = RoundToHalf(q40.scales[i]);
    q40.offsets[i] = -8.0f * q40.scales[i];
  }
  ASSERT_OK_AND_ASSIGN(QuantizedWeight w, FromGroups({WeightQuant::kInt4, 32}, q40));
  ASSERT_OK_AND_ASSIGN(Tensor dequant, DequantizeWeight(w));
  for (int64_t i = 0; i < 3 * 64; ++i) {
    const double d = q40.scales[(i / 64) * 2 + (i % 64) / 32];
    EXPECT_EQ(dequant.data<float>()[i], d * (q40.codes[i] - 8)) << i;
  }
}

// int8 activations reorder int8 codes, never their values: the same weight dequantized, the
// same bytes read, and back to f32 activations the very codes QuantizeWeight packed.
TEST(WithActivations, ReordersInt8CodesAndKeepsTheirValues) {
  for (int64_t group : {32, 0}) {
    const Format format{WeightQuant::kInt8, group};
    ASSERT_OK_AND_ASSIGN(QuantizedWeight plain,
                         Quantize(Random(DType::kF32, {37, 96}, 53), format));
    ASSERT_OK_AND_ASSIGN(QuantizedWeight q8, WithActivations(plain, ActivationQuant::kInt8));
    EXPECT_EQ(q8.activations, ActivationQuant::kInt8);
    EXPECT_EQ(q8.nbytes(), plain.nbytes());
    ASSERT_OK_AND_ASSIGN(Tensor plain_values, DequantizeWeight(plain));
    ASSERT_OK_AND_ASSIGN(Tensor q8_values, DequantizeWeight(q8));
    ASSERT_EQ(q8_values.span<float>().size(), plain_values.span<float>().size());
    for (size_t i = 0; i < plain_values.span<float>().size(); ++i) {
      ASSERT_EQ(q8_values.span<float>()[i], plain_values.span<float>()[i]) << format.Name() << i;
    }
    ASSERT_OK_AND_ASSIGN(QuantizedWeight back, WithActivations(q8, ActivationQuant::kF32));
    ASSERT_EQ(back.codes.shape(), plain.codes.shape());
    EXPECT_TRUE(std::equal(back.codes.span<int8_t>().begin(), back.codes.span<int8_t>().end(),
                           plain.codes.span<int8_t>().begin()))
        << format.Name();
  }
}

TEST(QuantizedWeight, BytesAreCodesScalesAndOffsets) {
  Tensor w = Random(DType::kF32, {64, 256}, 51);
  ASSERT_OK_AND_ASSIGN(QuantizedWeight int4, QuantizeWeight(w, WeightQuant::kInt4, 32));
  EXPECT_EQ(int4.nbytes(), 64 * 256 / 2 + 2 * (64 * 8 * 2));
  ASSERT_OK_AND_ASSIGN(QuantizedWeight int8, QuantizeWeight(w, WeightQuant::kInt8, 256));
  EXPECT_EQ(int8.nbytes(), 64 * 256 + 64 * 4);
  EXPECT_TRUE(int8.defined());
  EXPECT_FALSE(QuantizedWeight().defined());
  // QuantizedWeightBytes foretells nbytes(), the last panel's padding included (N = 37).
  for (const Format& format : kFormats) {
    const int64_t group = format.GroupSize(256);
    ASSERT_OK_AND_ASSIGN(QuantizedWeight q,
                         QuantizeWeight(Random(DType::kF32, {37, 256}, 52), format.quant, group));
    EXPECT_EQ(q.nbytes(), QuantizedWeightBytes(format.quant, 37, 256, group)) << format.Name();
  }
}

TEST(QuantizeWeight, RefusesWhatItCannotQuantize) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  Tensor w = Random(DType::kF32, {4, 96}, 61);
  EXPECT_TRUE(
      IsError(QuantizeWeight(w, WeightQuant::kInt4, 128), kInvalid, {"K = 96", "group size 128"}));
  EXPECT_TRUE(IsError(QuantizeWeight(w, WeightQuant::kInt4, 64), kInvalid,
                      {"int4 group size 64", "32 or 128"}));
  EXPECT_TRUE(IsError(QuantizeWeight(w, WeightQuant::kInt4, 96), kInvalid, {"group size 96"}));
  EXPECT_TRUE(IsError(QuantizeWeight(w, WeightQuant::kInt8, 0), kInvalid, {"group size 0"}));
  EXPECT_TRUE(IsError(QuantizeWeight(Zeros(DType::kI32, {4, 96}), WeightQuant::kInt8, 32), kInvalid,
                      {"w", "i32"}));
  EXPECT_TRUE(
      IsError(QuantizeWeight(Zeros(DType::kF32, {384}), WeightQuant::kInt8, 32), kInvalid, {"w"}));
  w.data<float>()[5] = std::nanf("");
  EXPECT_TRUE(IsError(QuantizeWeight(w, WeightQuant::kInt8, 32), kInvalid, {"w[0][5]"}));
  w.data<float>()[5] = 1e8f;  // an f16 scale cannot hold 1e8 / 127
  EXPECT_TRUE(IsError(QuantizeWeight(w, WeightQuant::kInt8, 32), kInvalid, {"scale", "f16"}));
  EXPECT_OK(QuantizeWeight(w, WeightQuant::kInt8, 96));  // one f32 scale a row holds it
}

TEST(QuantizedWeightFromGroups, RefusesMalformedGroups) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  const Format int4{WeightQuant::kInt4, 32}, int8{WeightQuant::kInt8, 32};
  Groups g = RandomGroups(int4, 2, 64, 71);
  g.codes[3] = 16;
  EXPECT_TRUE(IsError(FromGroups(int4, g), kInvalid, {"code 16", "0..15"}));
  g.codes[3] = -1;
  EXPECT_TRUE(IsError(FromGroups(int4, g), kInvalid, {"code -1"}));
  g.codes[3] = 0;
  EXPECT_OK(FromGroups(int4, g));
  EXPECT_TRUE(
      IsError(QuantizedWeightFromGroups(WeightQuant::kInt4, 2, 64, 32, g.codes, g.scales, {}),
              kInvalid, {"offsets", "expected 4"}));
  EXPECT_TRUE(IsError(
      QuantizedWeightFromGroups(WeightQuant::kInt4, 2, 64, 128, g.codes, g.scales, g.offsets),
      kInvalid, {"K = 64", "128"}));
  EXPECT_TRUE(IsError(
      QuantizedWeightFromGroups(WeightQuant::kInt4, 2, 64, 16, g.codes, g.scales, g.offsets),
      kInvalid, {"group size 16"}));
  g.offsets[1] = 1e6f;
  EXPECT_TRUE(IsError(FromGroups(int4, g), kInvalid, {"offset of row 0 group 1", "f16"}));
  Groups h = RandomGroups(int8, 2, 64, 72);
  EXPECT_TRUE(
      IsError(QuantizedWeightFromGroups(WeightQuant::kInt8, 2, 64, 32, h.codes, h.scales, h.scales),
              kInvalid, {"offsets", "expected 0"}));
  h.scales.pop_back();
  EXPECT_TRUE(IsError(FromGroups(int8, h), kInvalid, {"scales has 3 values, expected 4"}));
  h.codes.pop_back();
  EXPECT_TRUE(IsError(FromGroups(int8, h), kInvalid, {"codes has 127 values, expected 128"}));
  Groups inf = RandomGroups({WeightQuant::kInt8, 0}, 2, 64, 73);
  inf.scales[1] = INFINITY;
  EXPECT_TRUE(IsError(FromGroups({WeightQuant::kInt8, 0}, inf), kInvalid, {"scale of row 1"}));
}

TEST(QuantizedLinear, RefusesMismatchedArguments) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  const int64_t m = 2, n = 9, k = 64;
  ASSERT_OK_AND_ASSIGN(QuantizedWeight w,
                       QuantizeWeight(Random(DType::kF32, {n, k}, 81), WeightQuant::kInt4, 32));
  Tensor x = Random(DType::kF32, {m, k}, 82);
  Tensor out = Zeros(DType::kF32, {m, n});
  EXPECT_OK(QuantizedLinear(x, w, Tensor(), out));
  EXPECT_TRUE(IsError(QuantizedLinear(Random(DType::kF32, {m, k + 1}, 83), w, Tensor(), out),
                      kInvalid, {"x is f32[2,65]", "expected 64 inputs"}));
  EXPECT_TRUE(IsError(QuantizedLinear(Random(DType::kBF16, {m, k}, 84), w, Tensor(), out), kInvalid,
                      {"x", "bf16"}));
  Tensor narrow = Zeros(DType::kF32, {m, n - 1});
  EXPECT_TRUE(IsError(QuantizedLinear(x, w, Tensor(), narrow), kInvalid, {"out", "[2,9]"}));
  Tensor bf16_out = Zeros(DType::kBF16, {m, n});
  EXPECT_TRUE(IsError(QuantizedLinear(x, w, Tensor(), bf16_out), kInvalid, {"out", "bf16"}));
  EXPECT_TRUE(
      IsError(QuantizedLinear(x, w, Zeros(DType::kF32, {n + 1}), out), kInvalid, {"bias", "[9]"}));
  EXPECT_TRUE(
      IsError(QuantizedLinear(x, w, Zeros(DType::kI32, {n}), out), kInvalid, {"bias", "i32"}));
  EXPECT_TRUE(
      IsError(QuantizedLinear(x, QuantizedWeight(), Tensor(), out), kInvalid, {"w is undefined"}));
  ASSERT_OK_AND_ASSIGN(QuantizedWeight int8,
                       QuantizeWeight(Random(DType::kF32, {n, k}, 85), WeightQuant::kInt8, 32));
  int8.activations = ActivationQuant::kInt8;  // without WithActivations's order of the codes
  EXPECT_TRUE(IsError(QuantizedLinear(x, int8, Tensor(), out), kInvalid, {"packing"}));
  ASSERT_OK_AND_ASSIGN(QuantizedWeight int8_48,
                       QuantizeWeight(Random(DType::kF32, {n, 48}, 86), WeightQuant::kInt8, 48));
  EXPECT_TRUE(IsError(WithActivations(int8_48, ActivationQuant::kInt8), kInvalid,
                      {"48 inputs", "blocks of 32"}));
  EXPECT_TRUE(IsError(WithActivations(QuantizedWeight(), ActivationQuant::kInt8), kInvalid,
                      {"w is undefined"}));
  QuantizedWeight relabeled = w;
  relabeled.quant = WeightQuant::kInt8;
  EXPECT_TRUE(IsError(QuantizedLinear(x, relabeled, Tensor(), out), kInvalid, {"packing"}));
  EXPECT_TRUE(IsError(DequantizeWeight(relabeled), kInvalid, {"packing"}));
}

// An activation that is not finite makes its row's outputs infinite or NaN (int8
// activations: its block's d is NaN) and leaves the other rows alone.
TEST(QuantizedLinear, ActivationsThatAreNotFiniteGiveNaNInTheirRowOnly) {
  const int64_t n = 9, k = 64;
  for (const Format& format : kFormats) {
    if (format.group_size == 128) continue;  // K = 64
    ASSERT_OK_AND_ASSIGN(QuantizedWeight w, Quantize(Random(DType::kF32, {n, k}, 95), format));
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), INFINITY}) {
      Tensor x = Random(DType::kF32, {2, k}, 96);
      ASSERT_OK_AND_ASSIGN(Tensor second, x.Slice(1, 2));
      Tensor alone = Zeros(DType::kF32, {1, n});
      ASSERT_OK(QuantizedLinear(second, w, Tensor(), alone));
      x.data<float>()[40] = bad;
      Tensor out = Zeros(DType::kF32, {2, n});
      ASSERT_OK(QuantizedLinear(x, w, Tensor(), out));
      for (int64_t j = 0; j < n; ++j) {
        EXPECT_TRUE(std::isnan(out.data<float>()[j]) || std::isinf(out.data<float>()[j]))
            << format.Name() << " " << bad << " " << j;
        EXPECT_EQ(out.data<float>()[n + j], alone.data<float>()[j]) << format.Name() << " " << j;
      }
    }
  }
}

// No rows, no outputs: nothing to do; no inputs (K = 0): out is the bias.
TEST(QuantizedLinear, EmptyShapes) {
  ASSERT_OK_AND_ASSIGN(QuantizedWeight w,
                       QuantizeWeight(Random(DType::kF32, {5, 32}, 91), WeightQuant::kInt8, 32));
  Tensor none = Zeros(DType::kF32, {0, 5});
  EXPECT_OK(QuantizedLinear(Zeros(DType::kF32, {0, 32}), w, Tensor(), none));
  ASSERT_OK_AND_ASSIGN(QuantizedWeight empty,
                       QuantizeWeight(Zeros(DType::kF32, {5, 0}), WeightQuant::kInt4, 32));
  Tensor bias = Random(DType::kF32, {5}, 92);
  Tensor out = Random(DType::kF32, {2, 5}, 93);
  ASSERT_OK(QuantizedLinear(Zeros(DType::kF32, {2, 0}), empty, bias, out));
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(out.data<float>()[i], bias.data<float>()[i % 5]);
}

}  // namespace
}  // namespace tessera::kernels
