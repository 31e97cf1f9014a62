// The CUDA kernels of fine-tuning (kernels/cuda: the backward of every layer kernel, causal
// attention over packed documents, vocab-parallel cross-entropy) against their CPU references
// (kernels/cpu), on random inputs (RandomNormalTensor) at several shapes: odd sizes, one
// token, grouped-query heads, several documents with an empty one, sliding windows, several
// vocabulary shards with padding. Outputs that are overwritten start as random values, and
// outputs that accumulate start as random values too, so that both contracts are checked.
// Also: the ops of kernels/ops/training.h dispatch to the same kernels by device, and values
// that the GPU cannot report (bad ids, targets, document boundaries) are skipped or poisoned
// as documented. Each run draws a new seed and prints it; TESSERA_TEST_SEED=<seed> replays it.
//
// Tolerances are relative to tensor norms, ||gpu - cpu|| <= tol * ||cpu||: the two backends
// sum in different orders (and the GPU's expf, sincosf differ from the CPU's by a few ulp), so
// each element carries rounding error of order 2^-24 * sqrt(terms) relative to the size of its
// terms. kGemmTolerance (1e-5) for the pure sums of products, kTolerance (1e-4) for kernels
// with exponentials and cancellation. EmbeddingBackward adds the same f32 values in the same
// (token) order on both and must match bit for bit.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/training_attention.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/norm_activation.h"
#include "kernels/cuda/rotary.h"
#include "kernels/cuda/training_attention.h"
#include "kernels/ops/training.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::IsError;

constexpr Device kGpu = Device::Cuda(0);
constexpr double kGemmTolerance = 1e-5;
constexpr double kTolerance = 1e-4;

template <typename T>
T Must(absl::StatusOr<T> value) {
  TESSERA_CHECK(value.ok(), std::string(value.status().message()));
  return *std::move(value);
}

uint32_t SeedOfThisRun() {
  static const uint32_t seed = [] {
    const char* fixed = std::getenv("TESSERA_TEST_SEED");
    return fixed != nullptr ? static_cast<uint32_t>(std::strtoul(fixed, nullptr, 10))
                            : std::random_device{}();
  }();
  return seed;
}

// f32 element i of a host tensor of any float dtype.
double At(const Tensor& t, int64_t i) { return ElementAsDouble(t, i); }

// ||actual - expected|| <= rtol * ||expected|| (+ a floor of 1e-30 for all-zero tensors) over
// two host tensors of the same size, where NaN must meet NaN: a NaN in only one of them fails.
::testing::AssertionResult NormClose(const Tensor& actual, const Tensor& expected, double rtol) {
  if (actual.numel() != expected.numel()) {
    return ::testing::AssertionFailure()
           << actual.DebugString() << " vs expected " << expected.DebugString();
  }
  double error = 0.0, norm = 0.0, worst = 0.0;
  int64_t worst_at = -1;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double a = At(actual, i), e = At(expected, i);
    if (std::isnan(a) || std::isnan(e)) {
      if (std::isnan(a) && std::isnan(e)) continue;
      return ::testing::AssertionFailure() << "element " << i << " is " << a << ", expected " << e;
    }
    const double diff = a == e ? 0.0 : a - e;  // equal infinities match
    if (std::isnan(diff) || std::isinf(diff)) {
      return ::testing::AssertionFailure() << "element " << i << " is " << a << ", expected " << e;
    }
    error += diff * diff;
    if (!std::isinf(e)) norm += e * e;
    if (std::abs(diff) > worst) {
      worst = std::abs(diff);
      worst_at = i;
    }
  }
  error = std::sqrt(error);
  norm = std::sqrt(norm);
  if (error <= rtol * norm + 1e-30) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "||actual - expected|| = " << error << " > " << rtol << " * ||expected|| = " << norm
         << "; the largest difference is at element " << worst_at << ": " << At(actual, worst_at)
         << " vs " << At(expected, worst_at);
}

::testing::AssertionResult BitEqual(const Tensor& actual, const Tensor& expected) {
  if (actual.nbytes() != expected.nbytes() || actual.dtype() != expected.dtype()) {
    return ::testing::AssertionFailure()
           << actual.DebugString() << " vs expected " << expected.DebugString();
  }
  const auto* a = static_cast<const uint8_t*>(actual.data());
  const auto* e = static_cast<const uint8_t*>(expected.data());
  for (size_t i = 0; i < actual.nbytes(); ++i) {
    if (a[i] != e[i]) {
      return ::testing::AssertionFailure()
             << "byte " << i << " differs (element " << i * 8 / BitsOf(actual.dtype()) << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

std::string ShapeName(std::initializer_list<int64_t> dims) {
  std::string name;
  for (int64_t d : dims) name += (name.empty() ? "" : "x") + std::to_string(d);
  return name;
}

class BackwardKernelsCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ListGpus().empty()) GTEST_SKIP() << "no GPU";
    stream_ = Must(Stream::Create(kGpu));
    std::cout << "seed " << SeedOfThisRun() << " (replay with TESSERA_TEST_SEED)\n";
    rng_.seed(SeedOfThisRun() +
              static_cast<uint32_t>(std::hash<std::string>{}(
                  ::testing::UnitTest::GetInstance()->current_test_info()->name())));
  }

  Stream& stream() { return *stream_; }

  // A host tensor of standard-normal values times `scale` (rounded to the dtype), from
  // RandomNormalTensor with the next seed of this test's generator.
  Tensor Random(DType dtype, Shape shape, double scale = 1.0) {
    Tensor t = Must(RandomNormalTensor(dtype, std::move(shape), static_cast<uint32_t>(rng_())));
    if (scale != 1.0) FillWith(t, [&](int64_t i) { return ElementAsDouble(t, i) * scale; });
    return t;
  }

  Tensor HostI32(const std::vector<int32_t>& values) {
    return Must(Tensor::FromValues(absl::Span<const int32_t>(values)));
  }

  // A host copy (f32 when `t` is f16, which the CPU kernels do not take).
  Tensor ForCpu(const Tensor& t) {
    Tensor copy =
        Must(Tensor::Empty(t.dtype() == DType::kF16 ? DType::kF32 : t.dtype(), t.shape()));
    FillWith(copy, [&](int64_t i) { return ElementAsDouble(t, i); });
    return copy;
  }

  Tensor Copy(const Tensor& t) {
    Tensor copy = Must(Tensor::Empty(t.dtype(), t.shape()));
    FillWith(copy, [&](int64_t i) { return ElementAsDouble(t, i); });
    return copy;
  }

  // Device tensors made here stay allocated until the test ends, so that a temporary passed to
  // a kernel is not freed while the kernel may still be reading it.
  Tensor KeepAlive(Tensor t) {
    device_tensors_.push_back(t);
    return t;
  }

  Tensor OnGpu(const Tensor& host) { return KeepAlive(Must(host.To(kGpu, stream()))); }

  Tensor GpuZeros(DType dtype, Shape shape) {
    return KeepAlive(Must(Tensor::Zeros(dtype, std::move(shape), kGpu)));
  }

  // A device tensor of random values, for outputs the kernel must overwrite entirely.
  Tensor GpuGarbage(Shape shape) { return OnGpu(Random(DType::kF32, std::move(shape), 100.0)); }

  // The device tensor's values on the host, once the stream has finished.
  Tensor ToHost(const Tensor& device) {
    Tensor host = Must(device.To(Device::Cpu(), stream()));
    absl::Status synced = stream().Synchronize();
    TESSERA_CHECK(synced.ok(), std::string(synced.message()));
    return host;
  }

  std::mt19937 rng_;

 private:
  std::unique_ptr<Stream> stream_;
  std::vector<Tensor> device_tensors_;
};

// --- linear ----------------------------------------------------------------------------

TEST_F(BackwardKernelsCudaTest, LinearBackwardInputMatchesCpu) {
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                         {3, 5, 7},
                         {17, 64, 33},
                         {64, 257, 129},
                         {5, 896, 4864}}) {
    for (DType wtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(std::string(NameOf(wtype)) + " " + ShapeName({m, n, k}));
      Tensor dy = Random(DType::kF32, {m, n});
      Tensor w = Random(wtype, {n, k});
      Tensor expected = Must(Tensor::Empty(DType::kF32, {m, k}));
      ASSERT_OK(LinearBackwardInput(dy, ForCpu(w), expected));
      Tensor dx = GpuGarbage({m, k});
      ASSERT_OK(cuda::LinearBackwardInput(OnGpu(dy), OnGpu(w), dx, stream()));
      EXPECT_TRUE(NormClose(ToHost(dx), expected, kGemmTolerance));
    }
  }
}

TEST_F(BackwardKernelsCudaTest, LinearBackwardWeightAccumulatesAsCpu) {
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                         {3, 5, 7},
                         {33, 64, 17},
                         {300, 129, 257},
                         {1000, 7, 3}}) {
    for (bool with_bias : {false, true}) {
      SCOPED_TRACE(ShapeName({m, n, k}) + (with_bias ? " with bias" : ""));
      Tensor dy = Random(DType::kF32, {m, n});
      Tensor x = Random(DType::kF32, {m, k});
      Tensor dw = Random(DType::kF32, {n, k});  // accumulated into
      Tensor dbias = Random(DType::kF32, {n});
      Tensor gpu_dw = OnGpu(dw), gpu_dbias = OnGpu(dbias);
      Tensor undefined;
      ASSERT_OK(LinearBackwardWeight(dy, x, dw, with_bias ? &dbias : &undefined));
      ASSERT_OK(cuda::LinearBackwardWeight(OnGpu(dy), OnGpu(x), gpu_dw,
                                           with_bias ? &gpu_dbias : nullptr, stream()));
      EXPECT_TRUE(NormClose(ToHost(gpu_dw), dw, kGemmTolerance)) << "dw";
      EXPECT_TRUE(NormClose(ToHost(gpu_dbias), dbias, kGemmTolerance)) << "dbias";
    }
  }
}

TEST_F(BackwardKernelsCudaTest, LinearBackwardHandlesEmptyDimensions) {
  // No rows: dw and dbias unchanged. No inner dimension: dx is zero. No columns of x: only
  // dbias moves.
  Tensor dw = Random(DType::kF32, {4, 3});
  Tensor gpu_dw = OnGpu(dw);
  Tensor gpu_dbias = OnGpu(Random(DType::kF32, {4}));
  Tensor dbias_before = ToHost(gpu_dbias);
  ASSERT_OK(cuda::LinearBackwardWeight(GpuZeros(DType::kF32, {0, 4}), GpuZeros(DType::kF32, {0, 3}),
                                       gpu_dw, &gpu_dbias, stream()));
  EXPECT_TRUE(BitEqual(ToHost(gpu_dw), dw));
  EXPECT_TRUE(BitEqual(ToHost(gpu_dbias), dbias_before));

  Tensor dx = GpuGarbage({2, 3});
  ASSERT_OK(cuda::LinearBackwardInput(GpuZeros(DType::kF32, {2, 0}), GpuZeros(DType::kF32, {0, 3}),
                                      dx, stream()));
  EXPECT_TRUE(BitEqual(ToHost(dx), Must(Tensor::Zeros(DType::kF32, {2, 3}))));

  Tensor dy = Random(DType::kF32, {5, 4});
  Tensor dbias = Random(DType::kF32, {4});
  Tensor gpu_bias = OnGpu(dbias);
  Tensor no_columns = Must(Tensor::Zeros(DType::kF32, {4, 0}));
  Tensor gpu_no_columns = GpuZeros(DType::kF32, {4, 0});
  ASSERT_OK(LinearBackwardWeight(dy, Must(Tensor::Zeros(DType::kF32, {5, 0})), no_columns, &dbias));
  ASSERT_OK(cuda::LinearBackwardWeight(OnGpu(dy), GpuZeros(DType::kF32, {5, 0}), gpu_no_columns,
                                       &gpu_bias, stream()));
  EXPECT_TRUE(NormClose(ToHost(gpu_bias), dbias, kGemmTolerance));

  Tensor wrong = GpuGarbage({3, 3});
  EXPECT_TRUE(IsError(
      cuda::LinearBackwardInput(OnGpu(dy), OnGpu(Random(DType::kF32, {4, 2})), wrong, stream()),
      absl::StatusCode::kInvalidArgument, {"LinearBackwardInput", "dx"}));
  EXPECT_TRUE(IsError(
      cuda::LinearBackwardInput(OnGpu(dy), OnGpu(Random(DType::kF32, {5, 3})), wrong, stream()),
      absl::StatusCode::kInvalidArgument, {"LinearBackwardInput", "w"}));
}

// --- norm_activation -------------------------------------------------------------------

TEST_F(BackwardKernelsCudaTest, RmsNormBackwardMatchesCpu) {
  // 300 rows span several of the dweight kernel's chunks of 128, the last one partial.
  for (auto [rows, hidden] :
       {std::pair<int64_t, int64_t>{1, 8}, {3, 37}, {300, 64}, {5, 4096}, {129, 896}}) {
    for (DType wtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(std::string(NameOf(wtype)) + " " + ShapeName({rows, hidden}) +
                     (in_place ? " dx = dy" : ""));
        Tensor x = Random(DType::kF32, {rows, hidden}, 3.0);
        Tensor w = Random(wtype, {hidden});
        Tensor dy = Random(DType::kF32, {rows, hidden});
        Tensor dweight = Random(DType::kF32, {hidden});  // accumulated into
        Tensor gpu_dweight = OnGpu(dweight);
        Tensor expected = Must(Tensor::Empty(DType::kF32, {rows, hidden}));
        ASSERT_OK(RmsNormBackward(x, ForCpu(w), 1e-6f, dy, expected, dweight));
        Tensor gpu_dy = OnGpu(dy);
        Tensor dx = in_place ? gpu_dy : GpuGarbage({rows, hidden});
        ASSERT_OK(
            cuda::RmsNormBackward(OnGpu(x), OnGpu(w), 1e-6f, gpu_dy, dx, gpu_dweight, stream()));
        EXPECT_TRUE(NormClose(ToHost(dx), expected, kTolerance)) << "dx";
        EXPECT_TRUE(NormClose(ToHost(gpu_dweight), dweight, kTolerance)) << "dweight";
      }
    }
  }
}

TEST_F(BackwardKernelsCudaTest, SiluMulBackwardMatchesCpu) {
  for (auto [rows, inner] : {std::pair<int64_t, int64_t>{1, 1}, {3, 37}, {17, 1376}, {2, 4}}) {
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(ShapeName({rows, inner}) + (in_place ? " dgate_up = gate_up" : ""));
      // Wide gates, so that the sigmoid's tails (and its e^-87 floor) are reached.
      Tensor gate_up = Random(DType::kF32, {rows, 2 * inner}, 4.0);
      if (inner > 2) {
        gate_up.data<float>()[0] = 100.0f;
        gate_up.data<float>()[1] = -100.0f;
      }
      Tensor dout = Random(DType::kF32, {rows, inner});
      Tensor expected = Must(Tensor::Empty(DType::kF32, {rows, 2 * inner}));
      ASSERT_OK(SiluMulBackward(gate_up, dout, expected));
      Tensor gpu_gate_up = OnGpu(gate_up);
      Tensor dgate_up = in_place ? gpu_gate_up : GpuGarbage({rows, 2 * inner});
      ASSERT_OK(cuda::SiluMulBackward(gpu_gate_up, OnGpu(dout), dgate_up, stream()));
      EXPECT_TRUE(NormClose(ToHost(dgate_up), expected, kTolerance));
    }
  }
}

TEST_F(BackwardKernelsCudaTest, EmbeddingBackwardMatchesCpuBitForBitOnEveryShard) {
  const int64_t vocab = 1000, tokens = 67;
  for (int64_t hidden : {8, 37, 300}) {
    SCOPED_TRACE("hidden " + std::to_string(hidden));
    std::uniform_int_distribution<int32_t> id(0, vocab - 1);
    std::vector<int32_t> ids(tokens);
    for (int32_t& i : ids) i = id(rng_);
    // Repeats, in and out of order, and both ends of the vocabulary.
    ids[0] = 0;
    ids[1] = vocab - 1;
    ids[2] = ids[5] = ids[40] = 395;
    ids[3] = ids[66] = 995;
    Tensor host_ids = HostI32(ids);
    Tensor gpu_ids = OnGpu(host_ids);
    Tensor dout = Random(DType::kF32, {tokens, hidden});
    Tensor gpu_dout = OnGpu(dout);
    // The whole vocabulary, two shards, and a shard of fewer rows than the kernel's row groups.
    for (auto [begin, end] :
         {std::pair<int64_t, int64_t>{0, vocab}, {0, 400}, {400, 1000}, {990, 1000}}) {
      SCOPED_TRACE("shard [" + std::to_string(begin) + ", " + std::to_string(end) + ")");
      Tensor dtable = Random(DType::kF32, {end - begin, hidden});  // accumulated into
      Tensor gpu_dtable = OnGpu(dtable);
      ASSERT_OK(EmbeddingBackward(host_ids, dout, begin, vocab, dtable));
      ASSERT_OK(cuda::EmbeddingBackward(gpu_ids, gpu_dout, begin, vocab, gpu_dtable, stream()));
      EXPECT_TRUE(BitEqual(ToHost(gpu_dtable), dtable));
    }
  }
}

TEST_F(BackwardKernelsCudaTest, EmbeddingBackwardSkipsIdsOutsideTheVocabulary) {
  const int64_t hidden = 16;
  Tensor dout = Random(DType::kF32, {4, hidden});
  Tensor dtable = Random(DType::kF32, {10, hidden});
  Tensor gpu_dtable = OnGpu(dtable);
  ASSERT_OK(cuda::EmbeddingBackward(OnGpu(HostI32({3, 10, -1, 3})), OnGpu(dout), 0, 10, gpu_dtable,
                                    stream()));
  // As the CPU with the bad tokens' gradients zeroed.
  for (int64_t t : {1, 2}) {
    for (int64_t c = 0; c < hidden; ++c) dout.data<float>()[t * hidden + c] = 0.0f;
  }
  ASSERT_OK(EmbeddingBackward(HostI32({3, 0, 0, 3}), dout, 0, 10, dtable));
  EXPECT_TRUE(BitEqual(ToHost(gpu_dtable), dtable));
}

// --- rotary ----------------------------------------------------------------------------

TEST_F(BackwardKernelsCudaTest, ApplyRotaryBackwardMatchesCpuAndUndoesTheForward) {
  struct Case {
    int64_t heads, head_dim;
    RotaryConfig config;
  };
  RotaryConfig llama3{.rotary_dim = 128, .theta = 500000.0f};
  llama3.scaling = {RotaryScaling::Type::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  const std::vector<Case> cases = {
      {4, 64, {.rotary_dim = 64, .theta = 10000.0f}},
      {2, 128, {.rotary_dim = 64, .theta = 10000.0f, .layout = RotaryLayout::kInterleaved}},
      {8, 128, llama3},
      {5, 96, {.rotary_dim = 32, .theta = 1000000.0f}},
      {3, 6, {.rotary_dim = 2, .theta = 10000.0f}},
  };
  for (const Case& c : cases) {
    for (int64_t tokens : {1, 19}) {
      SCOPED_TRACE("heads " + std::to_string(c.heads) + " head_dim " + std::to_string(c.head_dim) +
                   " rotary_dim " + std::to_string(c.config.rotary_dim) + " tokens " +
                   std::to_string(tokens));
      std::vector<float> inv_freq = RotaryInverseFrequencies(c.config);
      std::uniform_int_distribution<int32_t> position(0, 32767);
      std::vector<int32_t> positions(tokens);
      for (int32_t& p : positions) p = position(rng_);
      positions[0] = 0;
      Tensor host_positions = HostI32(positions);
      Tensor gpu_positions = OnGpu(host_positions);
      Tensor dx = Random(DType::kF32, {tokens, c.heads, c.head_dim});
      Tensor gpu_dx = OnGpu(dx);
      ASSERT_OK(cuda::ApplyRotaryBackward(gpu_dx, gpu_positions, inv_freq, c.config, stream()));
      Tensor original = Copy(dx);
      ASSERT_OK(ApplyRotaryBackward(dx, host_positions, inv_freq, c.config));
      EXPECT_TRUE(NormClose(ToHost(gpu_dx), dx, kTolerance));
      // The backward is the forward's transpose, and a rotation's transpose is its inverse.
      ASSERT_OK(cuda::ApplyRotary(gpu_dx, gpu_positions, inv_freq, c.config, stream()));
      EXPECT_TRUE(NormClose(ToHost(gpu_dx), original, kTolerance)) << "forward after backward";
    }
  }
}

// --- training attention ----------------------------------------------------------------

struct AttentionCase {
  int64_t heads, kv_heads, head_dim;
  int window;
  std::vector<int32_t> documents;  // lengths, in order (0: an empty document)
};

std::string Describe(const AttentionCase& c) {
  std::string lengths;
  for (int32_t n : c.documents) lengths += (lengths.empty() ? "" : ",") + std::to_string(n);
  return "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " head_dim " +
         std::to_string(c.head_dim) + " window " + std::to_string(c.window) + " documents [" +
         lengths + "]";
}

std::vector<AttentionCase> AttentionCases() {
  return {
      {4, 4, 64, 0, {37}},
      {8, 2, 128, 0, {5, 0, 70, 1, 20}},  // an empty document, a one-token document
      {6, 2, 32, 7, {40, 13}},            // a sliding window
      {7, 1, 20, 3, {1, 9, 64}},          // 7 query heads a kv head, an odd head_dim
      {2, 2, 256, 0, {33}},
      {4, 2, 80, 16, {100, 29, 0}},  // a window, an empty document at the end
      {1, 1, 1, 0, {1}},
  };
}

TEST_F(BackwardKernelsCudaTest, CausalAttentionMatchesCpu) {
  for (const AttentionCase& c : AttentionCases()) {
    SCOPED_TRACE(Describe(c));
    std::vector<int32_t> starts = {0};
    for (int32_t n : c.documents) starts.push_back(starts.back() + n);
    const int64_t tokens = starts.back();
    Tensor q = Random(DType::kF32, {tokens, c.heads, c.head_dim}, 2.0);
    Tensor k = Random(DType::kF32, {tokens, c.kv_heads, c.head_dim});
    Tensor v = Random(DType::kF32, {tokens, c.kv_heads, c.head_dim});
    Tensor host_starts = HostI32(starts);
    AttentionParams params{1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.window};
    Tensor out = Must(Tensor::Empty(DType::kF32, q.shape()));
    Tensor lse = Must(Tensor::Empty(DType::kF32, {tokens, c.heads}));
    ASSERT_OK(CausalAttention(q, k, v, host_starts, params, out, lse));
    Tensor gpu_q = OnGpu(q), gpu_k = OnGpu(k), gpu_v = OnGpu(v), gpu_starts = OnGpu(host_starts);
    Tensor gpu_out = GpuGarbage(q.shape());
    Tensor gpu_lse = GpuGarbage({tokens, c.heads});
    ASSERT_OK(
        cuda::CausalAttention(gpu_q, gpu_k, gpu_v, gpu_starts, params, gpu_out, gpu_lse, stream()));
    EXPECT_TRUE(NormClose(ToHost(gpu_out), out, kTolerance)) << "out";
    EXPECT_TRUE(NormClose(ToHost(gpu_lse), lse, kTolerance)) << "lse";
  }
}

TEST_F(BackwardKernelsCudaTest, CausalAttentionBackwardMatchesCpu) {
  for (const AttentionCase& c : AttentionCases()) {
    SCOPED_TRACE(Describe(c));
    std::vector<int32_t> starts = {0};
    for (int32_t n : c.documents) starts.push_back(starts.back() + n);
    const int64_t tokens = starts.back();
    Tensor q = Random(DType::kF32, {tokens, c.heads, c.head_dim}, 2.0);
    Tensor k = Random(DType::kF32, {tokens, c.kv_heads, c.head_dim});
    Tensor v = Random(DType::kF32, {tokens, c.kv_heads, c.head_dim});
    Tensor dout = Random(DType::kF32, {tokens, c.heads, c.head_dim});
    Tensor host_starts = HostI32(starts);
    AttentionParams params{1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.window};
    // Both backends take the CPU forward's out and lse, so that only the backward is compared.
    Tensor out = Must(Tensor::Empty(DType::kF32, q.shape()));
    Tensor lse = Must(Tensor::Empty(DType::kF32, {tokens, c.heads}));
    ASSERT_OK(CausalAttention(q, k, v, host_starts, params, out, lse));
    Tensor dq = Must(Tensor::Empty(DType::kF32, q.shape()));
    Tensor dk = Must(Tensor::Empty(DType::kF32, k.shape()));
    Tensor dv = Must(Tensor::Empty(DType::kF32, k.shape()));
    ASSERT_OK(CausalAttentionBackward(q, k, v, out, lse, dout, host_starts, params, dq, dk, dv));
    Tensor gpu_dq = GpuGarbage(q.shape()), gpu_dk = GpuGarbage(k.shape());
    Tensor gpu_dv = GpuGarbage(k.shape());
    ASSERT_OK(cuda::CausalAttentionBackward(OnGpu(q), OnGpu(k), OnGpu(v), OnGpu(out), OnGpu(lse),
                                            OnGpu(dout), OnGpu(host_starts), params, gpu_dq, gpu_dk,
                                            gpu_dv, stream()));
    EXPECT_TRUE(NormClose(ToHost(gpu_dq), dq, kTolerance)) << "dq";
    EXPECT_TRUE(NormClose(ToHost(gpu_dk), dk, kTolerance)) << "dk";
    EXPECT_TRUE(NormClose(ToHost(gpu_dv), dv, kTolerance)) << "dv";

    // Deterministic: a second run gives the same bits.
    Tensor again = GpuGarbage(k.shape()), again_dq = GpuGarbage(q.shape());
    Tensor again_dv = GpuGarbage(k.shape());
    ASSERT_OK(cuda::CausalAttentionBackward(OnGpu(q), OnGpu(k), OnGpu(v), OnGpu(out), OnGpu(lse),
                                            OnGpu(dout), OnGpu(host_starts), params, again_dq,
                                            again, again_dv, stream()));
    EXPECT_TRUE(BitEqual(ToHost(again), ToHost(gpu_dk))) << "rerun";
  }
}

TEST_F(BackwardKernelsCudaTest, CausalAttentionPoisonsTokensNoDocumentHolds) {
  // sequence_starts ends at 6 of 8 tokens: tokens 6 and 7 belong to no document.
  const int64_t tokens = 8, heads = 2, head_dim = 16;
  Tensor q = OnGpu(Random(DType::kF32, {tokens, heads, head_dim}));
  Tensor k = OnGpu(Random(DType::kF32, {tokens, heads, head_dim}));
  Tensor v = OnGpu(Random(DType::kF32, {tokens, heads, head_dim}));
  Tensor starts = OnGpu(HostI32({0, 4, 6}));
  AttentionParams params{0.25f, 0};
  Tensor out = GpuGarbage({tokens, heads, head_dim}), lse = GpuGarbage({tokens, heads});
  ASSERT_OK(cuda::CausalAttention(q, k, v, starts, params, out, lse, stream()));
  Tensor dq = GpuGarbage({tokens, heads, head_dim}), dk = GpuGarbage({tokens, heads, head_dim});
  Tensor dv = GpuGarbage({tokens, heads, head_dim});
  ASSERT_OK(cuda::CausalAttentionBackward(q, k, v, out, lse, OnGpu(Random(DType::kF32, q.shape())),
                                          starts, params, dq, dk, dv, stream()));
  Tensor host_out = ToHost(out), host_lse = ToHost(lse);
  Tensor host_dq = ToHost(dq), host_dk = ToHost(dk), host_dv = ToHost(dv);
  const int64_t row = heads * head_dim;
  for (int64_t t = 0; t < tokens; ++t) {
    const bool poisoned = t >= 6;
    SCOPED_TRACE("token " + std::to_string(t));
    EXPECT_EQ(std::isnan(At(host_lse, t * heads)), poisoned);
    for (const Tensor* x : {&host_out, &host_dq, &host_dk, &host_dv}) {
      EXPECT_EQ(std::isnan(At(*x, t * row)), poisoned);
      EXPECT_EQ(std::isnan(At(*x, t * row + row - 1)), poisoned);
    }
  }
  EXPECT_TRUE(IsError(
      cuda::CausalAttention(q, k, v, GpuZeros(DType::kI32, {0}), params, out, lse, stream()),
      absl::StatusCode::kInvalidArgument, {"CausalAttention", "sequence_starts"}));
  Tensor wide = OnGpu(Random(DType::kF32, {1, 1, 264}));
  Tensor wide_out = GpuGarbage({1, 1, 264}), wide_lse = GpuGarbage({1, 1});
  EXPECT_TRUE(IsError(cuda::CausalAttention(wide, wide, wide, OnGpu(HostI32({0, 1})), params,
                                            wide_out, wide_lse, stream()),
                      absl::StatusCode::kInvalidArgument, {"CausalAttention", "264"}));
}

// --- cross-entropy ---------------------------------------------------------------------

TEST_F(BackwardKernelsCudaTest, CrossEntropyMatchesCpuOnEveryShard) {
  // 1001 ids over 3 ranks: shards of 334 columns, the last one with a padding column.
  const int64_t vocab = 1001, ranks = 3, rows = 19;
  const int64_t width = (vocab + ranks - 1) / ranks;
  Tensor logits = Random(DType::kF32, {rows, vocab}, 3.0);
  logits.data<float>()[7] = 80.0f;  // exp would overflow without the maximum subtracted
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  std::vector<int32_t> target(rows);
  for (int32_t& t : target) t = id(rng_);
  target[0] = 0;
  target[1] = vocab - 1;
  target[2] = target[11] = kIgnoreTarget;
  target[3] = static_cast<int32_t>(width);  // the first column of the second shard
  Tensor host_targets = HostI32(target);
  Tensor gpu_targets = OnGpu(host_targets);

  // Each rank's shard (its padding columns random: never read) and stats.
  std::vector<Tensor> shards;
  std::vector<int64_t> begins, valid;
  std::vector<Tensor> cpu_stats;
  for (int64_t r = 0; r < ranks; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    begins.push_back(r * width);
    valid.push_back(std::min(width, vocab - r * width));
    Tensor shard = Random(DType::kF32, {rows, width}, 50.0);
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t c = 0; c < valid.back(); ++c) {
        shard.data<float>()[t * width + c] = logits.data<float>()[t * vocab + begins.back() + c];
      }
    }
    shards.push_back(shard);
    Tensor stats = Must(Tensor::Empty(DType::kF32, {rows, 3}));
    ASSERT_OK(
        CrossEntropyShardStats(shard, host_targets, begins.back(), valid.back(), vocab, stats));
    cpu_stats.push_back(stats);
    Tensor gpu_stats = GpuGarbage({rows, 3});
    ASSERT_OK(cuda::CrossEntropyShardStats(OnGpu(shard), gpu_targets, begins.back(), valid.back(),
                                           vocab, gpu_stats, stream()));
    Tensor host = ToHost(gpu_stats);
    for (int64_t t = 0; t < rows; ++t) {
      SCOPED_TRACE("row " + std::to_string(t));
      EXPECT_EQ(At(host, t * 3), At(stats, t * 3)) << "maximum";
      EXPECT_NEAR(At(host, t * 3 + 1), At(stats, t * 3 + 1), kTolerance * At(stats, t * 3 + 1))
          << "sum";
      EXPECT_EQ(At(host, t * 3 + 2), At(stats, t * 3 + 2)) << "target logit";
    }
  }

  // The group's combination, on the host: each row's lse; rows that take a loss weigh 1/count.
  Tensor lse = Must(Tensor::Empty(DType::kF32, {rows}));
  Tensor row_scale = Must(Tensor::Empty(DType::kF32, {rows}));
  int64_t counted = 0;
  for (int64_t t = 0; t < rows; ++t) counted += target[t] != kIgnoreTarget ? 1 : 0;
  for (int64_t t = 0; t < rows; ++t) {
    double max = -std::numeric_limits<double>::infinity(), sum = 0.0;
    for (const Tensor& s : cpu_stats) max = std::max(max, At(s, t * 3));
    for (const Tensor& s : cpu_stats) sum += At(s, t * 3 + 1) * std::exp(At(s, t * 3) - max);
    lse.data<float>()[t] = static_cast<float>(max + std::log(sum));
    row_scale.data<float>()[t] = target[t] == kIgnoreTarget ? 0.0f : 1.0f / counted;
  }
  Tensor gpu_lse = OnGpu(lse), gpu_row_scale = OnGpu(row_scale);
  for (int64_t r = 0; r < ranks; ++r) {
    for (bool in_place : {false, true}) {
      SCOPED_TRACE("rank " + std::to_string(r) + (in_place ? " dlogits = logits" : ""));
      Tensor expected = Must(Tensor::Empty(DType::kF32, {rows, width}));
      ASSERT_OK(CrossEntropyBackward(shards[r], host_targets, begins[r], valid[r], lse, row_scale,
                                     expected));
      Tensor gpu_logits = OnGpu(shards[r]);
      Tensor dlogits = in_place ? gpu_logits : GpuGarbage({rows, width});
      ASSERT_OK(cuda::CrossEntropyBackward(gpu_logits, gpu_targets, begins[r], valid[r], gpu_lse,
                                           gpu_row_scale, dlogits, stream()));
      Tensor host = ToHost(dlogits);
      EXPECT_TRUE(NormClose(host, expected, kTolerance));
      // Padding columns and ignored rows are exactly 0.
      for (int64_t t = 0; t < rows; ++t) {
        for (int64_t c = 0; c < width; ++c) {
          if (c >= valid[r] || target[t] == kIgnoreTarget) {
            ASSERT_EQ(At(host, t * width + c), 0.0) << "row " << t << " column " << c;
          }
        }
      }
    }
  }
}

TEST_F(BackwardKernelsCudaTest, CrossEntropyPoisonsBadTargetsAndChecksTheShard) {
  const int64_t vocab = 10;
  Tensor logits = OnGpu(Random(DType::kF32, {4, vocab}));
  Tensor targets = OnGpu(HostI32({5, 2000, -7, kIgnoreTarget}));
  Tensor stats = GpuGarbage({4, 3});
  ASSERT_OK(cuda::CrossEntropyShardStats(logits, targets, 0, vocab, vocab, stats, stream()));
  Tensor host_stats = ToHost(stats);
  for (int64_t t = 0; t < 4; ++t) {
    const bool poisoned = t == 1 || t == 2;
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(std::isnan(At(host_stats, t * 3 + i)), poisoned);
  }
  EXPECT_EQ(At(host_stats, 3 * 3 + 2), 0.0) << "an ignored row has no target logit";

  Tensor dlogits = GpuGarbage({4, vocab});
  Tensor ones = OnGpu(Must(Tensor::FromValues(absl::Span<const float>({1.0f, 1.0f, 1.0f, 1.0f}))));
  ASSERT_OK(cuda::CrossEntropyBackward(logits, targets, 0, vocab, ones, ones, dlogits, stream()));
  Tensor host = ToHost(dlogits);
  for (int64_t c = 0; c < vocab; ++c) {
    EXPECT_FALSE(std::isnan(At(host, c)));
    EXPECT_TRUE(std::isnan(At(host, 2 * vocab + c)));  // -7: negative and not -100
  }

  // An empty shard at the end of the vocabulary: (-inf, 0, 0) a row.
  Tensor empty_stats = GpuGarbage({4, 3});
  ASSERT_OK(cuda::CrossEntropyShardStats(logits, OnGpu(HostI32({5, 1, 2, kIgnoreTarget})), vocab, 0,
                                         vocab, empty_stats, stream()));
  Tensor host_empty = ToHost(empty_stats);
  for (int64_t t = 0; t < 4; ++t) {
    EXPECT_EQ(At(host_empty, t * 3), -std::numeric_limits<double>::infinity());
    EXPECT_EQ(At(host_empty, t * 3 + 1), 0.0);
    EXPECT_EQ(At(host_empty, t * 3 + 2), 0.0);
  }

  EXPECT_TRUE(IsError(
      cuda::CrossEntropyShardStats(logits, targets, 5, vocab, vocab, stats, stream()),
      absl::StatusCode::kInvalidArgument, {"CrossEntropyShardStats", "outside the vocabulary"}));
  EXPECT_TRUE(IsError(
      cuda::CrossEntropyBackward(logits, targets, 0, vocab + 1, ones, ones, dlogits, stream()),
      absl::StatusCode::kInvalidArgument, {"CrossEntropyBackward", "shard"}));
}

// --- ops dispatch ----------------------------------------------------------------------

// kernels/ops/training.h runs the CPU kernel for host tensors and the CUDA kernel for device
// tensors, and refuses a stream of the other device.
TEST_F(BackwardKernelsCudaTest, OpsDispatchByTheWrittenTensor) {
  Tensor dy = Random(DType::kF32, {6, 10});
  Tensor w = Random(DType::kBF16, {10, 12});
  Tensor cpu_dx = Must(Tensor::Empty(DType::kF32, {6, 12}));
  Stream cpu = Stream::Cpu();
  ASSERT_OK(ops::LinearBackwardInput(dy, w, cpu_dx, cpu));
  Tensor expected = Must(Tensor::Empty(DType::kF32, {6, 12}));
  ASSERT_OK(LinearBackwardInput(dy, w, expected));
  EXPECT_TRUE(BitEqual(cpu_dx, expected));
  Tensor gpu_dx = GpuGarbage({6, 12});
  ASSERT_OK(ops::LinearBackwardInput(OnGpu(dy), OnGpu(w), gpu_dx, stream()));
  EXPECT_TRUE(NormClose(ToHost(gpu_dx), expected, kGemmTolerance));
  EXPECT_TRUE(IsError(ops::LinearBackwardInput(OnGpu(dy), OnGpu(w), gpu_dx, cpu),
                      absl::StatusCode::kInvalidArgument, {"LinearBackwardInput"}));

  // One more family end to end through the ops: SiluMul's backward in place.
  Tensor gate_up = Random(DType::kF32, {3, 8});
  Tensor dout = Random(DType::kF32, {3, 4});
  Tensor gpu_gate_up = OnGpu(gate_up);
  ASSERT_OK(ops::SiluMulBackward(gpu_gate_up, OnGpu(dout), gpu_gate_up, stream()));
  ASSERT_OK(ops::SiluMulBackward(gate_up, dout, gate_up, cpu));
  EXPECT_TRUE(NormClose(ToHost(gpu_gate_up), gate_up, kTolerance));
}

}  // namespace
}  // namespace tessera::kernels
