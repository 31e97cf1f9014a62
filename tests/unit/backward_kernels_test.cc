// The CPU kernels of fine-tuning (kernels/cpu: the backward of every layer kernel, causal
// attention over packed documents, vocab-parallel cross-entropy), each checked two ways:
// against a plain double-precision implementation written out here from the definitions, and
// against central finite differences of the f32 forward kernel it is the backward of. Sizes
// include the odd ones (one token, head sizes off the vector width, 7 query heads per kv head,
// several documents, sliding windows), and every kernel's bad arguments.
//
// BackwardKernelsTiming.* (disabled; --gtest_also_run_disabled_tests) prints the speed of
// the attention and linear backward at a Qwen2-0.5B layer's shapes.

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/training_attention.h"
#include "runtime/core/check.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/random_tensor.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::IsError;

// ---- Helpers ---------------------------------------------------------------------------------

Tensor Random(Shape shape, uint32_t seed, DType dtype = DType::kF32) {
  return ::tessera::testing::RandomTensor(dtype, std::move(shape), seed);
}

Tensor Zeros(Shape shape, DType dtype = DType::kF32) {
  absl::StatusOr<Tensor> t = Tensor::Zeros(dtype, std::move(shape));
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

Tensor I32(const std::vector<int32_t>& values) {
  absl::StatusOr<Tensor> t = Tensor::FromValues(absl::Span<const int32_t>(values));
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

Tensor F32(const std::vector<float>& values, Shape shape) {
  absl::StatusOr<Tensor> t = Tensor::FromValues(absl::Span<const float>(values), std::move(shape));
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

Tensor Copy(const Tensor& t) {
  absl::StatusOr<Tensor> copy = Tensor::Empty(t.dtype(), t.shape());
  TESSERA_CHECK(copy.ok(), "allocation");
  std::copy_n(static_cast<const char*>(t.data()), t.nbytes(), static_cast<char*>(copy->data()));
  return *copy;
}

std::vector<double> Values(const Tensor& t) {
  std::vector<double> values(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) values[i] = ElementAsDouble(t, i);
  return values;
}

double Dot(const Tensor& a, const Tensor& b) {
  double sum = 0;
  for (int64_t i = 0; i < a.numel(); ++i) sum += ElementAsDouble(a, i) * ElementAsDouble(b, i);
  return sum;
}

// ||got - want|| / ||want|| (the absolute error when want is 0).
double RelativeError(const Tensor& got, const std::vector<double>& want) {
  TESSERA_CHECK(got.numel() == static_cast<int64_t>(want.size()), "sizes differ");
  double error = 0, norm = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double diff = ElementAsDouble(got, i) - want[i];
    error += diff * diff;
    norm += want[i] * want[i];
  }
  return norm == 0 ? std::sqrt(error) : std::sqrt(error / norm);
}

// ||got - want|| / max(||want||, floor): the relative error, for gradients that may
// vanish (by cancellation of terms of size about floor) measured against the floor instead.
double ErrorVersus(const Tensor& got, const std::vector<double>& want, double floor) {
  double want_norm = 0;
  for (double w : want) want_norm += w * w;
  want_norm = std::sqrt(want_norm);
  return RelativeError(got, want) * (want_norm == 0 ? 1 : want_norm) / std::max(want_norm, floor);
}

// The Euclidean norm of a tensor's elements.
double Norm(const Tensor& t) { return std::sqrt(Dot(t, t)); }

bool BitwiseEqual(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::equal(static_cast<const char*>(a.data()),
                                                static_cast<const char*>(a.data()) + a.nbytes(),
                                                static_cast<const char*>(b.data()));
}

// Central differences of loss() with respect to every element of the f32 tensor x, which is
// perturbed in place and restored; the step actually taken (after f32 rounding) divides.
std::vector<double> NumericGradient(Tensor& x, const std::function<double()>& loss,
                                    float step = 1e-2f) {
  std::vector<double> gradient(x.numel());
  float* data = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float saved = data[i];
    const float up = saved + step, down = saved - step;
    data[i] = up;
    const double loss_up = loss();
    data[i] = down;
    const double loss_down = loss();
    data[i] = saved;
    gradient[i] = (loss_up - loss_down) / (static_cast<double>(up) - static_cast<double>(down));
  }
  return gradient;
}

// ---- Linear ----------------------------------------------------------------------------------

struct LinearShape {
  int64_t m, n, k;
};

TEST(LinearBackward, MatchesTheDoubleProductsAtOddShapes) {
  for (const LinearShape& s : std::vector<LinearShape>{
           {1, 1, 1}, {3, 17, 5}, {7, 33, 129}, {64, 96, 48}, {130, 70, 300}}) {
    for (DType wtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(::testing::Message()
                   << s.m << "x" << s.n << "x" << s.k << " w " << NameOf(wtype));
      Tensor dy = Random({s.m, s.n}, 1), x = Random({s.m, s.k}, 2);
      Tensor w = Random({s.n, s.k}, 3, wtype);
      Tensor dx = Random({s.m, s.k}, 4);  // overwritten
      ASSERT_OK(LinearBackwardInput(dy, w, dx));
      // w packed as the forward takes it gives the same bits.
      ASSERT_OK_AND_ASSIGN(Tensor packed, PackLinearWeight(w));
      Tensor dx_of_packed = Random({s.m, s.k}, 7);
      ASSERT_OK(LinearBackwardInput(dy, packed, dx_of_packed));
      for (int64_t i = 0; i < s.m * s.k; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(dx_of_packed.data<float>()[i]),
                  std::bit_cast<uint32_t>(dx.data<float>()[i]))
            << "dx[" << i << "] of the packed w";
      }
      std::vector<double> want_dx(s.m * s.k, 0.0);
      for (int64_t i = 0; i < s.m; ++i) {
        for (int64_t j = 0; j < s.n; ++j) {
          for (int64_t c = 0; c < s.k; ++c) {
            want_dx[i * s.k + c] +=
                ElementAsDouble(dy, i * s.n + j) * ElementAsDouble(w, j * s.k + c);
          }
        }
      }
      EXPECT_LT(RelativeError(dx, want_dx), 1e-6);

      // dw and dbias accumulate onto what they hold.
      Tensor dw = Random({s.n, s.k}, 5), dbias = Random({s.n}, 6);
      std::vector<double> want_dw = Values(dw), want_db = Values(dbias);
      ASSERT_OK(LinearBackwardWeight(dy, x, dw, &dbias));
      for (int64_t i = 0; i < s.m; ++i) {
        for (int64_t j = 0; j < s.n; ++j) {
          want_db[j] += ElementAsDouble(dy, i * s.n + j);
          for (int64_t c = 0; c < s.k; ++c) {
            want_dw[j * s.k + c] +=
                ElementAsDouble(dy, i * s.n + j) * ElementAsDouble(x, i * s.k + c);
          }
        }
      }
      EXPECT_LT(RelativeError(dw, want_dw), 1e-6);
      EXPECT_LT(RelativeError(dbias, want_db), 1e-6);
    }
  }
}

TEST(LinearBackward, IsTheGradientOfLinear) {
  const int64_t m = 5, n = 7, k = 19;
  Tensor x = Random({m, k}, 10), w = Random({n, k}, 11), bias = Random({n}, 12);
  Tensor cotangent = Random({m, n}, 13);
  Tensor out = Zeros({m, n});
  auto loss = [&] {
    TESSERA_CHECK(Linear(x, w, bias, out).ok(), "Linear");
    return Dot(out, cotangent);
  };
  Tensor dx = Zeros({m, k}), dw = Zeros({n, k}), dbias = Zeros({n});
  ASSERT_OK(LinearBackwardInput(cotangent, w, dx));
  ASSERT_OK(LinearBackwardWeight(cotangent, x, dw, &dbias));
  EXPECT_LT(RelativeError(dx, NumericGradient(x, loss)), 1e-4);
  EXPECT_LT(RelativeError(dw, NumericGradient(w, loss)), 1e-4);
  EXPECT_LT(RelativeError(dbias, NumericGradient(bias, loss)), 1e-4);
}

TEST(LinearBackward, WeightAccumulatesOverCallsAndSkipsAMissingBias) {
  const int64_t m = 9, n = 20, k = 18;
  Tensor dy = Random({m, n}, 20), x = Random({m, k}, 21);
  Tensor once = Zeros({n, k}), twice = Zeros({n, k});
  ASSERT_OK(LinearBackwardWeight(dy, x, once, nullptr));
  Tensor undefined;
  ASSERT_OK(LinearBackwardWeight(dy, x, twice, &undefined));
  ASSERT_OK(LinearBackwardWeight(dy, x, twice, nullptr));
  std::vector<double> doubled = Values(once);
  for (double& value : doubled) value *= 2;
  EXPECT_LT(RelativeError(twice, doubled), 1e-6);
  EXPECT_FALSE(undefined.defined());

  // No rows: nothing to add; no inner dimension: dx is zero.
  Tensor dw = Random({n, k}, 22);
  const std::vector<double> before = Values(dw);
  ASSERT_OK(LinearBackwardWeight(Zeros({0, n}), Zeros({0, k}), dw, nullptr));
  EXPECT_EQ(Values(dw), before);
  Tensor dx = Random({m, k}, 23);
  ASSERT_OK(LinearBackwardInput(Zeros({m, 0}), Zeros({0, k}), dx));
  EXPECT_EQ(Values(dx), std::vector<double>(m * k, 0.0));
}

TEST(LinearBackward, RefusesMismatchedShapes) {
  Tensor dy = Random({4, 6}, 1), w = Random({6, 5}, 2), x = Random({4, 5}, 3);
  Tensor dx = Zeros({4, 5}), dw = Zeros({6, 5}), dbias = Zeros({6});
  EXPECT_TRUE(IsError(LinearBackwardInput(dy, Random({5, 5}, 4), dx),
                      absl::StatusCode::kInvalidArgument, {"LinearBackwardInput", "w"}));
  Tensor wrong_dx = Zeros({4, 6});
  EXPECT_TRUE(IsError(LinearBackwardInput(dy, w, wrong_dx), absl::StatusCode::kInvalidArgument,
                      {"LinearBackwardInput", "dx"}));
  EXPECT_TRUE(IsError(LinearBackwardInput(Zeros({4, 6}, DType::kBF16), w, dx),
                      absl::StatusCode::kInvalidArgument, {"LinearBackwardInput", "dy"}));
  EXPECT_TRUE(IsError(LinearBackwardWeight(dy, Random({3, 5}, 5), dw, &dbias),
                      absl::StatusCode::kInvalidArgument, {"LinearBackwardWeight", "x"}));
  Tensor wrong_dw = Zeros({5, 6});
  EXPECT_TRUE(IsError(LinearBackwardWeight(dy, x, wrong_dw, &dbias),
                      absl::StatusCode::kInvalidArgument, {"LinearBackwardWeight", "dw"}));
  Tensor wrong_bias = Zeros({5});
  EXPECT_TRUE(IsError(LinearBackwardWeight(dy, x, dw, &wrong_bias),
                      absl::StatusCode::kInvalidArgument, {"LinearBackwardWeight", "dbias"}));
}

// ---- RmsNorm, SiluMul, Embedding -------------------------------------------------------------

TEST(RmsNormBackward, MatchesTheDoubleGradientAndTheForwardsDifferences) {
  const float eps = 1e-5f;
  for (int64_t rows : {1, 3, 70}) {
    for (int64_t hidden : {1, 5, 37, 300}) {
      for (DType wtype : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(::testing::Message() << rows << "x" << hidden << " " << NameOf(wtype));
        Tensor x = Random({rows, hidden}, 30), w = Random({hidden}, 31, wtype);
        Tensor dy = Random({rows, hidden}, 32);
        Tensor dx = Zeros({rows, hidden}), dweight = Random({hidden}, 33);
        std::vector<double> want_dw = Values(dweight), want_dx(rows * hidden);
        ASSERT_OK(RmsNormBackward(x, w, eps, dy, dx, dweight));
        for (int64_t t = 0; t < rows; ++t) {
          double mean_square = 0, dot = 0;
          for (int64_t i = 0; i < hidden; ++i) {
            const double xi = ElementAsDouble(x, t * hidden + i);
            mean_square += xi * xi / hidden;
            dot += ElementAsDouble(w, i) * ElementAsDouble(dy, t * hidden + i) * xi;
          }
          const double r = 1 / std::sqrt(mean_square + eps);
          for (int64_t i = 0; i < hidden; ++i) {
            const double xi = ElementAsDouble(x, t * hidden + i);
            const double gi = ElementAsDouble(dy, t * hidden + i);
            want_dx[t * hidden + i] =
                r * ElementAsDouble(w, i) * gi - xi * r * r * r * dot / hidden;
            want_dw[i] += gi * xi * r;
          }
        }
        // With one column, dx cancels to about eps: measure against dy's scale.
        EXPECT_LT(ErrorVersus(dx, want_dx, Norm(dy)), 1e-6);
        EXPECT_LT(RelativeError(dweight, want_dw), 1e-6);

        // Differences need the output smooth at the step: not so with one column, where
        // out = w * x / sqrt(x^2 + eps) turns within sqrt(eps) of 0.
        if (wtype == DType::kF32 && hidden > 1 && rows * hidden <= 200) {
          Tensor out = Zeros({rows, hidden});
          auto loss = [&] {
            TESSERA_CHECK(RmsNorm(x, w, eps, out).ok(), "RmsNorm");
            return Dot(out, dy);
          };
          Tensor only_dw = Zeros({hidden});
          ASSERT_OK(RmsNormBackward(x, w, eps, dy, dx, only_dw));
          EXPECT_LT(ErrorVersus(dx, NumericGradient(x, loss, 1e-3f), Norm(dy)), 1e-3);
          EXPECT_LT(RelativeError(only_dw, NumericGradient(w, loss, 1e-3f)), 1e-3);
        }
      }
    }
  }
}

TEST(RmsNormBackward, DxMayBeDy) {
  Tensor x = Random({6, 40}, 34), w = Random({40}, 35), dy = Random({6, 40}, 36);
  Tensor dx = Zeros({6, 40}), dweight = Zeros({40}), dweight_aliased = Zeros({40});
  ASSERT_OK(RmsNormBackward(x, w, 1e-6f, dy, dx, dweight));
  ASSERT_OK(RmsNormBackward(x, w, 1e-6f, dy, dy, dweight_aliased));
  EXPECT_TRUE(BitwiseEqual(dy, dx));
  EXPECT_TRUE(BitwiseEqual(dweight, dweight_aliased));
}

TEST(RmsNormBackward, RefusesMismatchedShapes) {
  Tensor x = Random({2, 8}, 1), w = Random({8}, 2), dy = Random({2, 8}, 3);
  Tensor dx = Zeros({2, 8}), dweight = Zeros({8});
  EXPECT_TRUE(IsError(RmsNormBackward(x, Random({7}, 4), 1e-6f, dy, dx, dweight),
                      absl::StatusCode::kInvalidArgument, {"RmsNormBackward", "weight"}));
  EXPECT_TRUE(IsError(RmsNormBackward(x, w, 1e-6f, Random({2, 7}, 5), dx, dweight),
                      absl::StatusCode::kInvalidArgument, {"RmsNormBackward", "dy"}));
  Tensor wrong_dx = Zeros({3, 8}), wrong_dweight = Zeros({8}, DType::kBF16);
  EXPECT_TRUE(IsError(RmsNormBackward(x, w, 1e-6f, dy, wrong_dx, dweight),
                      absl::StatusCode::kInvalidArgument, {"RmsNormBackward", "out"}));
  EXPECT_TRUE(IsError(RmsNormBackward(x, w, 1e-6f, dy, dx, wrong_dweight),
                      absl::StatusCode::kInvalidArgument, {"RmsNormBackward", "dweight"}));
}

TEST(SiluMulBackward, MatchesTheDoubleGradientAndTheForwardsDifferences) {
  for (int64_t rows : {1, 4, 33}) {
    for (int64_t inner : {1, 7, 8, 29, 100}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << inner);
      Tensor gate_up = Random({rows, 2 * inner}, 40);
      for (int64_t i = 0; i < gate_up.numel(); ++i) gate_up.data<float>()[i] *= 3.0f;
      Tensor dout = Random({rows, inner}, 41);
      Tensor grad = Random({rows, 2 * inner}, 42);  // overwritten
      ASSERT_OK(SiluMulBackward(gate_up, dout, grad));
      std::vector<double> want(rows * 2 * inner);
      for (int64_t t = 0; t < rows; ++t) {
        for (int64_t i = 0; i < inner; ++i) {
          const double g = ElementAsDouble(gate_up, t * 2 * inner + i);
          const double u = ElementAsDouble(gate_up, t * 2 * inner + inner + i);
          const double d = ElementAsDouble(dout, t * inner + i);
          const double s = 1 / (1 + std::exp(-g));
          want[t * 2 * inner + i] = d * u * s * (1 + g * (1 - s));
          want[t * 2 * inner + inner + i] = d * g * s;
        }
      }
      EXPECT_LT(RelativeError(grad, want), 2e-6);

      if (rows * inner <= 200) {
        Tensor out = Zeros({rows, inner});
        auto loss = [&] {
          TESSERA_CHECK(SiluMul(gate_up, out).ok(), "SiluMul");
          return Dot(out, dout);
        };
        EXPECT_LT(RelativeError(grad, NumericGradient(gate_up, loss, 1e-3f)), 1e-3);
      }
      // In place.
      ASSERT_OK(SiluMulBackward(gate_up, dout, gate_up));
      EXPECT_TRUE(BitwiseEqual(gate_up, grad));
    }
  }
}

TEST(SiluMulBackward, StaysFiniteFarFromZero) {
  const std::vector<float> gates = {0.0f, 20.0f, -20.0f, 88.0f, -88.0f, 1e4f, -1e4f, 3e38f};
  const int64_t n = static_cast<int64_t>(gates.size());
  std::vector<float> values(gates);
  values.insert(values.end(), gates.size(), 1.0f);
  Tensor gate_up = F32(values, {1, 2 * n});
  Tensor dout = F32(std::vector<float>(n, 1.0f), {1, n});
  Tensor grad = Zeros({1, 2 * n});
  ASSERT_OK(SiluMulBackward(gate_up, dout, grad));
  for (int64_t i = 0; i < 2 * n; ++i) EXPECT_TRUE(std::isfinite(grad.data<float>()[i])) << i;
  EXPECT_NEAR(grad.data<float>()[0], 0.5f, 1e-7);       // silu'(0) = 1/2
  EXPECT_NEAR(grad.data<float>()[1], 1.0f, 1e-6);       // silu'(20) ~ 1
  EXPECT_NEAR(grad.data<float>()[2], 0.0f, 1e-6);       // silu'(-20) ~ 0
  EXPECT_NEAR(grad.data<float>()[n + 1], 20.0f, 1e-5);  // silu(20)
}

TEST(SiluMulBackward, RefusesMismatchedShapes) {
  Tensor gate_up = Random({2, 8}, 1), dout = Random({2, 4}, 2), grad = Zeros({2, 8});
  EXPECT_TRUE(IsError(SiluMulBackward(Random({2, 7}, 3), dout, grad),
                      absl::StatusCode::kInvalidArgument, {"SiluMulBackward", "gate_up"}));
  EXPECT_TRUE(IsError(SiluMulBackward(gate_up, Random({2, 5}, 4), grad),
                      absl::StatusCode::kInvalidArgument, {"SiluMulBackward", "dout"}));
  Tensor wrong = Zeros({2, 4});
  EXPECT_TRUE(IsError(SiluMulBackward(gate_up, dout, wrong), absl::StatusCode::kInvalidArgument,
                      {"SiluMulBackward", "dgate_up"}));
}

TEST(EmbeddingBackward, ScattersRowsIntoTheShardInTokenOrder) {
  const int64_t vocab = 10, hidden = 300;  // two column blocks
  // Repeated ids add up; the shards [0, 6) and [6, 10) together hold the whole gradient.
  Tensor ids = I32({3, 9, 3, 0, 6, 3, 9});
  const int64_t tokens = ids.dim(0);
  Tensor dout = Random({tokens, hidden}, 50);
  std::vector<double> want(vocab * hidden, 0.0);
  Tensor start = Random({vocab, hidden}, 51);
  for (int64_t i = 0; i < vocab * hidden; ++i) want[i] = ElementAsDouble(start, i);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < hidden; ++c) {
      want[ids.data<int32_t>()[t] * hidden + c] += ElementAsDouble(dout, t * hidden + c);
    }
  }
  Tensor full = Copy(start);
  ASSERT_OK(EmbeddingBackward(ids, dout, 0, vocab, full));
  EXPECT_LT(RelativeError(full, want), 1e-7);
  for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 6}, {6, 10}}) {
    ASSERT_OK_AND_ASSIGN(Tensor initial, start.Slice(begin, end));
    Tensor shard = Copy(initial);
    ASSERT_OK(EmbeddingBackward(ids, dout, begin, vocab, shard));
    for (int64_t i = 0; i < shard.numel(); ++i) {
      ASSERT_EQ(shard.data<float>()[i], full.data<float>()[begin * hidden + i]) << i;
    }
  }

  // The gradient of <EmbeddingLookup(ids, table), dout> by differences (a linear map).
  Tensor small_ids = I32({1, 4, 1});
  Tensor table = Random({5, 3}, 52), small_dout = Random({3, 3}, 53), looked_up = Zeros({3, 3});
  auto loss = [&] {
    TESSERA_CHECK(EmbeddingLookup(small_ids, table, 0, 5, looked_up).ok(), "EmbeddingLookup");
    return Dot(looked_up, small_dout);
  };
  Tensor dtable = Zeros({5, 3});
  ASSERT_OK(EmbeddingBackward(small_ids, small_dout, 0, 5, dtable));
  EXPECT_LT(RelativeError(dtable, NumericGradient(table, loss)), 1e-5);
}

TEST(EmbeddingBackward, RefusesIdsOutsideTheVocabularyAndLeavesTheTable) {
  Tensor dout = Random({3, 4}, 1);
  Tensor dtable = Random({5, 4}, 2);
  const std::vector<double> before = Values(dtable);
  EXPECT_TRUE(IsError(EmbeddingBackward(I32({1, 2, 10}), dout, 0, 10, dtable),
                      absl::StatusCode::kInvalidArgument,
                      {"EmbeddingBackward", "token id 10 at position 2"}));
  EXPECT_TRUE(IsError(EmbeddingBackward(I32({-1, 2, 3}), dout, 0, 10, dtable),
                      absl::StatusCode::kInvalidArgument, {"position 0"}));
  EXPECT_EQ(Values(dtable), before);
  EXPECT_TRUE(IsError(EmbeddingBackward(I32({1, 2}), dout, 0, 10, dtable),
                      absl::StatusCode::kInvalidArgument, {"EmbeddingBackward", "dout"}));
  Tensor wrong = Zeros({5, 3});
  EXPECT_TRUE(IsError(EmbeddingBackward(I32({1, 2, 3}), dout, 0, 10, wrong),
                      absl::StatusCode::kInvalidArgument, {"EmbeddingBackward", "dout"}));
}

// ---- Rotary ----------------------------------------------------------------------------------

TEST(RotaryBackward, IsTheTransposeOfTheForwardInBothLayouts) {
  const Tensor positions = I32({0, 1, 7, 300, 4095, 65000});
  const int64_t tokens = positions.dim(0), heads = 3;
  struct Case {
    RotaryLayout layout;
    int rotary_dim;
    int64_t head_dim;
  };
  for (const Case& c :
       {Case{RotaryLayout::kHalfSplit, 64, 64}, Case{RotaryLayout::kHalfSplit, 6, 6},
        Case{RotaryLayout::kInterleaved, 32, 64}, Case{RotaryLayout::kInterleaved, 10, 14}}) {
    SCOPED_TRACE(::testing::Message()
                 << "rotary_dim " << c.rotary_dim << " of " << c.head_dim
                 << (c.layout == RotaryLayout::kHalfSplit ? " half-split" : " interleaved"));
    RotaryConfig config{.rotary_dim = c.rotary_dim, .theta = 10000.0f, .layout = c.layout};
    const std::vector<float> inv_freq = RotaryInverseFrequencies(config);
    Tensor a = Random({tokens, heads, c.head_dim}, 60), b = Random({tokens, heads, c.head_dim}, 61);

    // Backward after forward gives the input back (rotations are orthogonal).
    Tensor round_trip = Copy(a);
    ASSERT_OK(ApplyRotary(round_trip, positions, inv_freq, config));
    ASSERT_OK(ApplyRotaryBackward(round_trip, positions, inv_freq, config));
    EXPECT_LT(RelativeError(round_trip, Values(a)), 1e-6);

    // <R a, b> = <a, R^T b>.
    Tensor rotated = Copy(a), back = Copy(b);
    ASSERT_OK(ApplyRotary(rotated, positions, inv_freq, config));
    ASSERT_OK(ApplyRotaryBackward(back, positions, inv_freq, config));
    const double forward = Dot(rotated, b), transposed = Dot(a, back);
    EXPECT_NEAR(forward, transposed, 1e-5 * (std::abs(forward) + 1));

    // Against the rotation by the negative angle in double (the angle itself in f32, as the
    // forward takes it), and against differences of <ApplyRotary(x), b>.
    std::vector<double> want = Values(b);
    const int half = c.rotary_dim / 2;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int j = 0; j < half; ++j) {
        const double angle = static_cast<float>(positions.data<int32_t>()[t]) * inv_freq[j];
        const int i0 = c.layout == RotaryLayout::kHalfSplit ? j : 2 * j;
        const int i1 = c.layout == RotaryLayout::kHalfSplit ? j + half : 2 * j + 1;
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t base = (t * heads + h) * c.head_dim;
          const double g0 = want[base + i0], g1 = want[base + i1];
          want[base + i0] = g0 * std::cos(angle) + g1 * std::sin(angle);
          want[base + i1] = g1 * std::cos(angle) - g0 * std::sin(angle);
        }
      }
    }
    EXPECT_LT(RelativeError(back, want), 1e-6);
    Tensor x = Copy(a), rotated_x = Copy(a);
    auto loss = [&] {
      std::copy_n(x.data<float>(), x.numel(), rotated_x.data<float>());
      TESSERA_CHECK(ApplyRotary(rotated_x, positions, inv_freq, config).ok(), "ApplyRotary");
      return Dot(rotated_x, b);
    };
    EXPECT_LT(RelativeError(back, NumericGradient(x, loss)), 1e-4);

    // Dimensions past rotary_dim pass through, bit for bit.
    for (int64_t row = 0; row < tokens * heads; ++row) {
      for (int64_t e = c.rotary_dim; e < c.head_dim; ++e) {
        ASSERT_EQ(back.data<float>()[row * c.head_dim + e], b.data<float>()[row * c.head_dim + e]);
      }
    }
  }
}

TEST(RotaryBackward, RefusesMismatchedArguments) {
  RotaryConfig config{.rotary_dim = 8};
  const std::vector<float> inv_freq = RotaryInverseFrequencies(config);
  Tensor dx = Random({2, 1, 8}, 1);
  EXPECT_TRUE(IsError(ApplyRotaryBackward(dx, I32({0, 1, 2}), inv_freq, config),
                      absl::StatusCode::kInvalidArgument, {"ApplyRotaryBackward", "positions"}));
  RotaryConfig too_wide{.rotary_dim = 10};
  EXPECT_TRUE(
      IsError(ApplyRotaryBackward(dx, I32({0, 1}), RotaryInverseFrequencies(too_wide), too_wide),
              absl::StatusCode::kInvalidArgument, {"ApplyRotaryBackward", "rotary_dim"}));
  Tensor flat = Random({2, 8}, 2);
  EXPECT_TRUE(IsError(ApplyRotaryBackward(flat, I32({0, 1}), inv_freq, config),
                      absl::StatusCode::kInvalidArgument, {"ApplyRotaryBackward", "dx"}));
}

// ---- Causal attention ------------------------------------------------------------------------

struct AttentionCase {
  std::vector<int32_t> starts;  // sequence_starts
  int64_t heads, kv_heads, head_dim;
  int window;
};

std::string Describe(const AttentionCase& c) {
  std::string text = "starts";
  for (int32_t s : c.starts) text += " " + std::to_string(s);
  return text + ", " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " heads of " +
         std::to_string(c.head_dim) + ", window " + std::to_string(c.window);
}

// Attention in double from the definitions: out, lse, and given dout, dq, dk, dv.
struct ReferenceAttention {
  std::vector<double> out, lse, dq, dk, dv;
};

ReferenceAttention AttendInDouble(const AttentionCase& c, const Tensor& q, const Tensor& k,
                                  const Tensor& v, float scale, const Tensor* dout) {
  const int64_t tokens = c.starts.back(), hq = c.heads, hkv = c.kv_heads, d = c.head_dim;
  const int64_t group = hq / hkv;
  ReferenceAttention r;
  r.out.assign(tokens * hq * d, 0.0);
  r.lse.assign(tokens * hq, 0.0);
  r.dq.assign(tokens * hq * d, 0.0);
  r.dk.assign(tokens * hkv * d, 0.0);
  r.dv.assign(tokens * hkv * d, 0.0);
  auto at = [](const Tensor& t, int64_t i) { return static_cast<double>(t.data<float>()[i]); };
  for (size_t s = 0; s + 1 < c.starts.size(); ++s) {
    for (int64_t t = c.starts[s]; t < c.starts[s + 1]; ++t) {
      const int64_t first =
          c.window > 0 ? std::max<int64_t>(c.starts[s], t - c.window + 1) : c.starts[s];
      for (int64_t h = 0; h < hq; ++h) {
        const int64_t g = h / group;
        std::vector<double> score(t - first + 1);
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t j = first; j <= t; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e) {
            dot += at(q, (t * hq + h) * d + e) * at(k, (j * hkv + g) * d + e);
          }
          score[j - first] = scale * dot;
          max = std::max(max, score[j - first]);
        }
        double sum = 0;
        for (double sj : score) sum += std::exp(sj - max);
        const double lse = max + std::log(sum);
        r.lse[t * hq + h] = lse;
        for (int64_t j = first; j <= t; ++j) {
          const double p = std::exp(score[j - first] - lse);
          for (int64_t e = 0; e < d; ++e) {
            r.out[(t * hq + h) * d + e] += p * at(v, (j * hkv + g) * d + e);
          }
        }
        if (dout == nullptr) continue;
        double delta = 0;
        for (int64_t e = 0; e < d; ++e) {
          delta += at(*dout, (t * hq + h) * d + e) * r.out[(t * hq + h) * d + e];
        }
        for (int64_t j = first; j <= t; ++j) {
          const double p = std::exp(score[j - first] - lse);
          double dp = 0;
          for (int64_t e = 0; e < d; ++e) {
            dp += at(*dout, (t * hq + h) * d + e) * at(v, (j * hkv + g) * d + e);
            r.dv[(j * hkv + g) * d + e] += p * at(*dout, (t * hq + h) * d + e);
          }
          const double ds = p * (dp - delta);
          for (int64_t e = 0; e < d; ++e) {
            r.dq[(t * hq + h) * d + e] += scale * ds * at(k, (j * hkv + g) * d + e);
            r.dk[(j * hkv + g) * d + e] += scale * ds * at(q, (t * hq + h) * d + e);
          }
        }
      }
    }
  }
  return r;
}

struct AttentionTensors {
  Tensor q, k, v, starts, out, lse, dout, dq, dk, dv;
};

AttentionTensors MakeAttention(const AttentionCase& c, uint32_t seed) {
  const int64_t tokens = c.starts.back();
  AttentionTensors a;
  a.q = Random({tokens, c.heads, c.head_dim}, seed);
  a.k = Random({tokens, c.kv_heads, c.head_dim}, seed + 1);
  a.v = Random({tokens, c.kv_heads, c.head_dim}, seed + 2);
  a.dout = Random({tokens, c.heads, c.head_dim}, seed + 3);
  a.starts = I32(c.starts);
  // Outputs start as garbage: every element must be written.
  a.out = Random({tokens, c.heads, c.head_dim}, seed + 4);
  a.lse = Random({tokens, c.heads}, seed + 5);
  a.dq = Random({tokens, c.heads, c.head_dim}, seed + 6);
  a.dk = Random({tokens, c.kv_heads, c.head_dim}, seed + 7);
  a.dv = Random({tokens, c.kv_heads, c.head_dim}, seed + 8);
  return a;
}

absl::Status Forward(AttentionTensors& a, const AttentionParams& params) {
  return CausalAttention(a.q, a.k, a.v, a.starts, params, a.out, a.lse);
}

absl::Status Backward(AttentionTensors& a, const AttentionParams& params) {
  return CausalAttentionBackward(a.q, a.k, a.v, a.out, a.lse, a.dout, a.starts, params, a.dq, a.dk,
                                 a.dv);
}

AttentionParams ParamsFor(const AttentionCase& c) {
  return {.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)), .sliding_window = c.window};
}

// Shapes across the blocks of 64: one token; a document longer than two blocks; windows
// smaller than, equal to and larger than a block; head sizes off the vector widths; one,
// two and seven query heads a kv head; documents of one token between longer ones.
const std::vector<AttentionCase>& AttentionCases() {
  static const std::vector<AttentionCase> cases = {
      {{0, 1}, 1, 1, 1, 0},
      {{0, 5}, 2, 2, 5, 0},
      {{0, 150}, 2, 1, 64, 0},
      {{0, 40, 41, 100, 230}, 7, 1, 24, 0},
      {{0, 70, 71, 200}, 4, 2, 80, 3},
      {{0, 200}, 2, 2, 16, 64},
      {{0, 130, 260}, 14, 2, 64, 100},
      {{0, 17, 19}, 7, 7, 128, 1},
      {{0, 0, 66, 66, 67}, 2, 1, 33, 0},  // empty documents
  };
  return cases;
}

TEST(CausalAttention, ForwardAndBackwardMatchTheDoubleDefinitions) {
  uint32_t seed = 100;
  for (const AttentionCase& c : AttentionCases()) {
    SCOPED_TRACE(Describe(c));
    AttentionTensors a = MakeAttention(c, seed += 10);
    const AttentionParams params = ParamsFor(c);
    ASSERT_OK(Forward(a, params));
    const ReferenceAttention want = AttendInDouble(c, a.q, a.k, a.v, params.scale, &a.dout);
    EXPECT_LT(RelativeError(a.out, want.out), 2e-6);
    EXPECT_LT(RelativeError(a.lse, want.lse), 2e-6);
    ASSERT_OK(Backward(a, params));
    // dq and dk vanish where a token attends to itself alone (their terms cancel): measure
    // those against dout's scale.
    EXPECT_LT(ErrorVersus(a.dq, want.dq, Norm(a.dout)), 1e-5);
    EXPECT_LT(ErrorVersus(a.dk, want.dk, Norm(a.dout)), 1e-5);
    EXPECT_LT(RelativeError(a.dv, want.dv), 1e-5);
  }
}

TEST(CausalAttention, BackwardIsTheGradientOfTheForward) {
  // Small enough for a forward per element: two documents, a window inside the longer one.
  for (const AttentionCase& c :
       {AttentionCase{{0, 3, 12}, 2, 1, 4, 0}, AttentionCase{{0, 9, 10}, 3, 3, 5, 4},
        AttentionCase{{0, 1}, 2, 2, 3, 0}}) {
    SCOPED_TRACE(Describe(c));
    AttentionTensors a = MakeAttention(c, 7);
    const AttentionParams params = ParamsFor(c);
    ASSERT_OK(Forward(a, params));
    ASSERT_OK(Backward(a, params));
    AttentionTensors probe = a;  // shares q, k, v: NumericGradient perturbs them in place
    probe.out = Zeros(a.out.shape());
    probe.lse = Zeros(a.lse.shape());
    auto loss = [&] {
      TESSERA_CHECK(Forward(probe, params).ok(), "CausalAttention");
      return Dot(probe.out, a.dout);
    };
    EXPECT_LT(ErrorVersus(a.dq, NumericGradient(a.q, loss), Norm(a.dout)), 2e-3);
    EXPECT_LT(ErrorVersus(a.dk, NumericGradient(a.k, loss), Norm(a.dout)), 2e-3);
    EXPECT_LT(RelativeError(a.dv, NumericGradient(a.v, loss)), 2e-3);
  }
}

TEST(CausalAttention, DocumentsNeverSeeEachOther) {
  // Changing every token of document 0 leaves document 1's outputs and gradients bitwise
  // unchanged (and the gradients of document 0's inputs take nothing from document 1).
  for (const AttentionCase& c :
       {AttentionCase{{0, 100, 230}, 4, 2, 64, 0}, AttentionCase{{0, 65, 70}, 7, 1, 20, 8}}) {
    SCOPED_TRACE(Describe(c));
    const AttentionParams params = ParamsFor(c);
    AttentionTensors a = MakeAttention(c, 20);
    ASSERT_OK(Forward(a, params));
    ASSERT_OK(Backward(a, params));
    AttentionTensors b = MakeAttention(c, 20);
    const int64_t split = c.starts[1];
    for (Tensor* t : {&b.q, &b.k, &b.v, &b.dout}) {
      const int64_t row = t->numel() / t->dim(0);
      for (int64_t i = 0; i < split * row; ++i) t->data<float>()[i] = 3.0f * std::sin(i * 1.0f);
    }
    ASSERT_OK(Forward(b, params));
    ASSERT_OK(Backward(b, params));
    for (auto [x, y] :
         {std::pair{&a.out, &b.out}, std::pair{&a.lse, &b.lse}, std::pair{&a.dq, &b.dq},
          std::pair{&a.dk, &b.dk}, std::pair{&a.dv, &b.dv}}) {
      ASSERT_OK_AND_ASSIGN(Tensor tail_a, x->Slice(split, x->dim(0)));
      ASSERT_OK_AND_ASSIGN(Tensor tail_b, y->Slice(split, y->dim(0)));
      EXPECT_TRUE(BitwiseEqual(tail_a, tail_b));
    }
  }
}

TEST(CausalAttention, RepeatedCallsAreBitwiseEqual) {
  const AttentionCase c{{0, 300, 333}, 14, 2, 64, 0};
  const AttentionParams params = ParamsFor(c);
  AttentionTensors a = MakeAttention(c, 30), b = MakeAttention(c, 30);
  ASSERT_OK(Forward(a, params));
  ASSERT_OK(Backward(a, params));
  ASSERT_OK(Forward(b, params));
  ASSERT_OK(Backward(b, params));
  for (auto [x, y] : {std::pair{&a.out, &b.out}, std::pair{&a.lse, &b.lse}, std::pair{&a.dq, &b.dq},
                      std::pair{&a.dk, &b.dk}, std::pair{&a.dv, &b.dv}}) {
    EXPECT_TRUE(BitwiseEqual(*x, *y));
  }
}

TEST(CausalAttention, OneAndTwoPassBackwardsAgreeBitwise) {
  // The backward picks one pass or two by the number of threads; either must give the same
  // bits, so that results never depend on the machine's thread count.
  uint32_t seed = 200;
  for (const AttentionCase& c : AttentionCases()) {
    SCOPED_TRACE(Describe(c));
    const AttentionParams params = ParamsFor(c);
    AttentionTensors one = MakeAttention(c, seed += 10);
    ASSERT_OK(Forward(one, params));
    AttentionTensors two = one;  // the same inputs, out and lse
    two.dq = Random(one.dq.shape(), 1);
    two.dk = Random(one.dk.shape(), 2);
    two.dv = Random(one.dv.shape(), 3);
    TEST_SetCausalAttentionBackwardPasses(1);
    absl::Status status_one = Backward(one, params);
    TEST_SetCausalAttentionBackwardPasses(2);
    absl::Status status_two = Backward(two, params);
    TEST_SetCausalAttentionBackwardPasses(0);
    ASSERT_OK(status_one);
    ASSERT_OK(status_two);
    EXPECT_TRUE(BitwiseEqual(one.dq, two.dq));
    EXPECT_TRUE(BitwiseEqual(one.dk, two.dk));
    EXPECT_TRUE(BitwiseEqual(one.dv, two.dv));
  }
}

TEST(CausalAttention, RefusesMismatchedArguments) {
  const AttentionCase c{{0, 4, 6}, 4, 2, 8, 0};
  const AttentionParams params = ParamsFor(c);
  AttentionTensors a = MakeAttention(c, 40);
  const auto invalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(
      IsError(CausalAttention(a.q, Random({6, 3, 8}, 1), a.v, a.starts, params, a.out, a.lse),
              invalid, {"CausalAttention", "k"}));
  EXPECT_TRUE(
      IsError(CausalAttention(a.q, a.k, Random({6, 2, 7}, 1), a.starts, params, a.out, a.lse),
              invalid, {"CausalAttention", "v"}));
  Tensor no_heads = Zeros({6, 0, 8}), no_heads_lse = Zeros({6, 0});  // fewer than kv heads
  EXPECT_TRUE(IsError(CausalAttention(no_heads, a.k, a.v, a.starts, params, no_heads, no_heads_lse),
                      invalid, {"CausalAttention", "k"}));
  EXPECT_TRUE(IsError(CausalAttention(a.q, a.k, a.v, Zeros({3}), params, a.out, a.lse), invalid,
                      {"CausalAttention", "sequence_starts"}));
  EXPECT_TRUE(IsError(CausalAttention(a.q, a.k, a.v, I32({0, 4, 5}), params, a.out, a.lse), invalid,
                      {"CausalAttention", "sequence_starts"}));
  EXPECT_TRUE(IsError(CausalAttention(a.q, a.k, a.v, I32({0, 5, 4, 6}), params, a.out, a.lse),
                      invalid, {"CausalAttention", "sequence_starts[2]"}));
  AttentionParams negative = params;
  negative.sliding_window = -1;
  EXPECT_TRUE(IsError(CausalAttention(a.q, a.k, a.v, a.starts, negative, a.out, a.lse), invalid,
                      {"CausalAttention", "sliding_window"}));
  Tensor wrong_lse = Zeros({6, 2});
  EXPECT_TRUE(IsError(CausalAttention(a.q, a.k, a.v, a.starts, params, a.out, wrong_lse), invalid,
                      {"CausalAttention", "lse"}));
  Tensor wrong_dk = Zeros({6, 4, 8}), wrong_dq = Zeros({6, 4, 7});
  EXPECT_TRUE(IsError(CausalAttentionBackward(a.q, a.k, a.v, a.out, a.lse, a.dout, a.starts, params,
                                              a.dq, wrong_dk, a.dv),
                      invalid, {"CausalAttentionBackward", "dk"}));
  EXPECT_TRUE(IsError(CausalAttentionBackward(a.q, a.k, a.v, a.out, a.lse, a.dout, a.starts, params,
                                              wrong_dq, a.dk, a.dv),
                      invalid, {"CausalAttentionBackward", "dq"}));
  EXPECT_TRUE(IsError(CausalAttentionBackward(a.q, a.k, a.v, a.out, wrong_lse, a.dout, a.starts,
                                              params, a.dq, a.dk, a.dv),
                      invalid, {"CausalAttentionBackward", "lse"}));
}

// ---- Cross entropy ---------------------------------------------------------------------------

// A shard of a (T, V) logits matrix: columns [begin, begin + valid) in a (T, width) tensor whose
// padding columns hold NaN, so that reading them would show.
Tensor Shard(const Tensor& logits, int64_t begin, int64_t valid, int64_t width) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  Tensor shard = Zeros({rows, width});
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t c = 0; c < width; ++c) {
      shard.data<float>()[t * width + c] = c < valid ? logits.data<float>()[t * vocab + begin + c]
                                                     : std::numeric_limits<float>::quiet_NaN();
    }
  }
  return shard;
}

struct ShardSpec {
  int64_t begin, valid, width;
};

// Loss and gradient of cross entropy over the whole vocabulary, in double, weighting row t's
// loss by row_scale[t].
void CrossEntropyInDouble(const Tensor& logits, const std::vector<int32_t>& targets,
                          const std::vector<float>& row_scale, std::vector<double>& loss,
                          std::vector<double>& gradient) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  loss.assign(rows, 0.0);
  gradient.assign(rows * vocab, 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    double max = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t c = 0; c < vocab; ++c)
      max = std::max<double>(max, logits.data<float>()[t * vocab + c]);
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(logits.data<float>()[t * vocab + c] - max);
    const double lse = max + std::log(sum);
    if (targets[t] != kIgnoreTarget) loss[t] = lse - logits.data<float>()[t * vocab + targets[t]];
    if (row_scale[t] == 0) continue;
    for (int64_t c = 0; c < vocab; ++c) {
      gradient[t * vocab + c] =
          row_scale[t] *
          (std::exp(logits.data<float>()[t * vocab + c] - lse) - (c == targets[t] ? 1.0 : 0.0));
    }
  }
}

// Runs the vocab-parallel cross entropy over `shards` as the trainer would: stats per shard,
// combined by hand, then each shard's backward. Returns the per-row loss and the gradient
// gathered back into (T, V).
absl::Status ShardedCrossEntropy(const Tensor& logits, const std::vector<int32_t>& targets,
                                 const std::vector<float>& row_scale,
                                 const std::vector<ShardSpec>& shards, std::vector<double>& loss,
                                 Tensor& gradient) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  const Tensor target_tensor = I32(targets), scale_tensor = F32(row_scale, {rows});
  std::vector<Tensor> stats, parts;
  for (const ShardSpec& s : shards) {
    parts.push_back(Shard(logits, s.begin, s.valid, s.width));
    stats.push_back(Zeros({rows, 3}));
    absl::Status status =
        CrossEntropyShardStats(parts.back(), target_tensor, s.begin, s.valid, vocab, stats.back());
    if (!status.ok()) return status;
  }
  std::vector<float> lse(rows);
  loss.assign(rows, 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    double max = -std::numeric_limits<double>::infinity(), sum = 0, target_logit = 0;
    for (const Tensor& st : stats) max = std::max<double>(max, st.data<float>()[t * 3]);
    for (const Tensor& st : stats) {
      sum += st.data<float>()[t * 3 + 1] * std::exp(st.data<float>()[t * 3] - max);
      target_logit += st.data<float>()[t * 3 + 2];
    }
    lse[t] = static_cast<float>(max + std::log(sum));
    if (targets[t] != kIgnoreTarget) loss[t] = max + std::log(sum) - target_logit;
  }
  const Tensor lse_tensor = F32(lse, {rows});
  for (size_t i = 0; i < shards.size(); ++i) {
    const ShardSpec& s = shards[i];
    Tensor dlogits = Random({rows, s.width}, 99);
    absl::Status status = CrossEntropyBackward(parts[i], target_tensor, s.begin, s.valid,
                                               lse_tensor, scale_tensor, dlogits);
    if (!status.ok()) return status;
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t c = 0; c < s.width; ++c) {
        const float value = dlogits.data<float>()[t * s.width + c];
        if (c < s.valid) {
          gradient.data<float>()[t * vocab + s.begin + c] = value;
        } else if (value != 0.0f) {
          return absl::InternalError("padding gradient is not zero");
        }
      }
    }
  }
  return absl::OkStatus();
}

TEST(CrossEntropy, ShardsCombineToTheFullVocabularyLossAndGradient) {
  // 5000 columns: rows longer than the kernel's chunk of 2048, the maximum in various chunks.
  for (int64_t vocab : {37, 5000}) {
    SCOPED_TRACE(::testing::Message() << "vocab " << vocab);
    const int64_t rows = 7;
    Tensor logits = Random({rows, vocab}, 70);
    for (int64_t i = 0; i < logits.numel(); ++i) logits.data<float>()[i] *= 4.0f;
    logits.data<float>()[2 * vocab + vocab - 1] = 40.0f;  // a dominant last column
    const std::vector<int32_t> targets = {
        0, static_cast<int32_t>(vocab - 1), 5, kIgnoreTarget, static_cast<int32_t>(vocab / 2), 19,
        18};
    const std::vector<float> row_scale = {0.25f, 0.25f, 0.25f, 0.0f, 0.5f, 1.0f, 0.125f};
    std::vector<double> want_loss, want_gradient;
    CrossEntropyInDouble(logits, targets, row_scale, want_loss, want_gradient);
    const int64_t half = (vocab + 1) / 2;
    for (const std::vector<ShardSpec>& shards :
         {std::vector<ShardSpec>{{0, vocab, vocab}},
          std::vector<ShardSpec>{{0, half, half}, {half, vocab - half, half}},  // padded
          std::vector<ShardSpec>{{0, 19, 24}, {19, vocab - 19, vocab}}}) {
      SCOPED_TRACE(::testing::Message()
                   << shards.size() << " shards, the first of " << shards[0].valid);
      std::vector<double> loss;
      Tensor gradient = Zeros({rows, vocab});
      ASSERT_OK(ShardedCrossEntropy(logits, targets, row_scale, shards, loss, gradient));
      for (int64_t t = 0; t < rows; ++t) {
        EXPECT_NEAR(loss[t], want_loss[t], 2e-6 * (1 + std::abs(want_loss[t]))) << "row " << t;
      }
      EXPECT_LT(RelativeError(gradient, want_gradient), 2e-6);
      for (int64_t c = 0; c < vocab; ++c) ASSERT_EQ(gradient.data<float>()[3 * vocab + c], 0.0f);
    }
  }
}

TEST(CrossEntropy, BackwardIsTheGradientOfTheLossAndMayWorkInPlace) {
  const int64_t rows = 3, vocab = 11;
  Tensor logits = Random({rows, vocab}, 71);
  const std::vector<int32_t> targets = {4, kIgnoreTarget, 10};
  const std::vector<float> row_scale = {0.5f, 0.0f, 0.5f};
  const std::vector<ShardSpec> shards = {{0, 6, 8}, {6, 5, 8}};
  Tensor gradient = Zeros({rows, vocab});
  std::vector<double> loss;
  ASSERT_OK(ShardedCrossEntropy(logits, targets, row_scale, shards, loss, gradient));
  auto total = [&] {
    std::vector<double> row_loss;
    Tensor unused = Zeros({rows, vocab});
    TESSERA_CHECK(ShardedCrossEntropy(logits, targets, row_scale, shards, row_loss, unused).ok(),
                  "cross entropy");
    double sum = 0;
    for (int64_t t = 0; t < rows; ++t) sum += row_scale[t] * row_loss[t];
    return sum;
  };
  EXPECT_LT(RelativeError(gradient, NumericGradient(logits, total, 1e-2f)), 1e-3);

  // dlogits may be logits.
  Tensor shard = Shard(logits, 0, 6, 8);
  const Tensor lse = Random({rows}, 72), scale = F32(row_scale, {rows}), ids = I32(targets);
  Tensor separate = Zeros({rows, 8});
  ASSERT_OK(CrossEntropyBackward(shard, ids, 0, 6, lse, scale, separate));
  ASSERT_OK(CrossEntropyBackward(shard, ids, 0, 6, lse, scale, shard));
  EXPECT_TRUE(BitwiseEqual(shard, separate));
}

TEST(CrossEntropy, StatsOfAnEmptyShardAndOfIgnoredRows) {
  Tensor logits = Random({2, 4}, 73);
  Tensor stats = Zeros({2, 3});
  ASSERT_OK(CrossEntropyShardStats(logits, I32({kIgnoreTarget, 2}), 8, 0, 8, stats));
  for (int64_t t = 0; t < 2; ++t) {
    EXPECT_EQ(stats.data<float>()[t * 3], -std::numeric_limits<float>::infinity());
    EXPECT_EQ(stats.data<float>()[t * 3 + 1], 0.0f);
    EXPECT_EQ(stats.data<float>()[t * 3 + 2], 0.0f);
  }
  ASSERT_OK(CrossEntropyShardStats(logits, I32({kIgnoreTarget, 2}), 0, 4, 8, stats));
  EXPECT_EQ(stats.data<float>()[2], 0.0f);  // ignored: no target logit
  EXPECT_EQ(stats.data<float>()[5], logits.data<float>()[6]);
  EXPECT_GE(stats.data<float>()[1], 1.0f);  // the maximum's own term
}

TEST(CrossEntropy, RefusesBadTargetsAndShapes) {
  Tensor logits = Random({3, 8}, 74), stats = Zeros({3, 3});
  const auto invalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(IsError(CrossEntropyShardStats(logits, I32({1, 2, 37}), 0, 8, 37, stats), invalid,
                      {"CrossEntropyShardStats", "target 37 of row 2"}));
  EXPECT_TRUE(IsError(CrossEntropyShardStats(logits, I32({-1, 2, 3}), 0, 8, 37, stats), invalid,
                      {"CrossEntropyShardStats", "row 0"}));
  EXPECT_TRUE(IsError(CrossEntropyShardStats(logits, I32({1, 2}), 0, 8, 37, stats), invalid,
                      {"CrossEntropyShardStats", "targets"}));
  EXPECT_TRUE(IsError(CrossEntropyShardStats(logits, I32({1, 2, 3}), 0, 9, 37, stats), invalid,
                      {"CrossEntropyShardStats", "9 columns"}));
  EXPECT_TRUE(IsError(CrossEntropyShardStats(logits, I32({1, 2, 3}), 32, 8, 37, stats), invalid,
                      {"CrossEntropyShardStats", "outside the vocabulary"}));
  Tensor wrong_stats = Zeros({3, 2});
  EXPECT_TRUE(IsError(CrossEntropyShardStats(logits, I32({1, 2, 3}), 0, 8, 37, wrong_stats),
                      invalid, {"CrossEntropyShardStats", "stats"}));
  const Tensor lse = Zeros({3}), scale = Zeros({3});
  Tensor dlogits = Zeros({3, 8});
  EXPECT_TRUE(IsError(CrossEntropyBackward(logits, I32({1, -7, 3}), 0, 8, lse, scale, dlogits),
                      invalid, {"CrossEntropyBackward", "row 1"}));
  EXPECT_TRUE(
      IsError(CrossEntropyBackward(logits, I32({1, 2, 3}), 0, 8, Zeros({2}), scale, dlogits),
              invalid, {"CrossEntropyBackward", "lse"}));
  EXPECT_TRUE(IsError(CrossEntropyBackward(logits, I32({1, 2, 3}), 0, 8, lse, Zeros({4}), dlogits),
                      invalid, {"CrossEntropyBackward", "row_scale"}));
  Tensor wrong = Zeros({3, 7});
  EXPECT_TRUE(IsError(CrossEntropyBackward(logits, I32({1, 2, 3}), 0, 8, lse, scale, wrong),
                      invalid, {"CrossEntropyBackward", "dlogits"}));
}

// ---- Timing ----------------------------------------------------------------------------------

// Best of `repeats` runs of fn, in seconds, after one warm-up run.
double BestSeconds(int repeats, const std::function<void()>& fn) {
  fn();
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

TEST(BackwardKernelsTiming, DISABLED_AttentionAndLinearAtQwen2HalfBShapes) {
  std::printf("kernel threads: %d\n", CpuKernelThreads());
  {
    const int64_t tokens = 1024;
    const AttentionCase c{{0, static_cast<int32_t>(tokens)}, 14, 2, 64, 0};
    const AttentionParams params = ParamsFor(c);
    AttentionTensors a = MakeAttention(c, 1);
    // Multiply-adds of one causal product over the heads; the forward does two, the backward
    // five (the scores again, dP, dV, dK, dQ).
    const double pairs = tokens * (tokens + 1) / 2.0 * c.heads * c.head_dim;
    const double forward = BestSeconds(5, [&] { TESSERA_CHECK(Forward(a, params).ok(), "fwd"); });
    const double backward = BestSeconds(5, [&] { TESSERA_CHECK(Backward(a, params).ok(), "bwd"); });
    std::printf(
        "CausalAttention T=%lld Hq=14 Hkv=2 D=64: forward %.2f ms (%.1f GFLOP/s), "
        "backward %.2f ms (%.1f GFLOP/s), together %.2f ms\n",
        static_cast<long long>(tokens), forward * 1e3, 4 * pairs / forward * 1e-9, backward * 1e3,
        10 * pairs / backward * 1e-9, (forward + backward) * 1e3);
  }
  {
    const int64_t m = 1024, n = 896, k = 896;
    Tensor x = Random({m, k}, 2), w = Random({n, k}, 3), dy = Random({m, n}, 4);
    Tensor out = Zeros({m, n}), dx = Zeros({m, k}), dw = Zeros({n, k}), dbias = Zeros({n});
    const double flops = 2.0 * m * n * k;
    const double forward =
        BestSeconds(5, [&] { TESSERA_CHECK(Linear(x, w, Tensor(), out).ok(), "Linear"); });
    const double input =
        BestSeconds(5, [&] { TESSERA_CHECK(LinearBackwardInput(dy, w, dx).ok(), "input"); });
    const double weight = BestSeconds(
        5, [&] { TESSERA_CHECK(LinearBackwardWeight(dy, x, dw, &dbias).ok(), "weight"); });
    std::printf(
        "Linear M=1024 N=896 K=896: forward (w packed per call) %.2f ms (%.1f GFLOP/s), "
        "LinearBackwardInput %.2f ms (%.1f GFLOP/s), LinearBackwardWeight (with dbias) "
        "%.2f ms (%.1f GFLOP/s)\n",
        forward * 1e3, flops / forward * 1e-9, input * 1e3, flops / input * 1e-9, weight * 1e3,
        flops / weight * 1e-9);
  }
}

}  // namespace
}  // namespace tessera::kernels
