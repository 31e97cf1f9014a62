// Every CUDA kernel (kernels/cuda) against its CPU reference (kernels/cpu) on fresh random
// inputs at several shapes, dtypes and layouts, including views that are not 16-byte aligned
// (the kernels' unvectorized paths) and outputs that alias inputs. Each run draws a new seed
// and prints it; TESSERA_TEST_SEED=<seed> replays a run.
//
// Tolerances: 1e-5 relative for f32 kernels, widened by the error the CPU reference's own
// sequential sums carry (about 2^-24 * sqrt(n) for n terms); Linear with 16-bit weights by
// the rounding of x to that type, 2^-8 (bf16) or 2^-11 (f16) times sum_k |x_k * w_k|.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise_reduce.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/quantized_linear.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/row_ops.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/elementwise_reduce.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/norm_activation.h"
#include "kernels/cuda/quantized_linear.h"
#include "kernels/cuda/rotary.h"
#include "kernels/cuda/row_ops.h"
#include "kernels/cuda/sampling.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

constexpr Device kGpu = Device::Cuda(0);
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

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

// The CPU's relative tolerance for a result built from a sum of n terms.
double SumTolerance(int64_t n) {
  return 1e-5 + 4 * 0x1p-24 * std::sqrt(static_cast<double>(std::max<int64_t>(n, 1)));
}

// f32 element i of a host tensor of f32, bf16 or f16.
float At(const Tensor& t, int64_t i) { return static_cast<float>(ElementAsDouble(t, i)); }

// `value` rounded to nearest-even through `dtype` and widened back.
float RoundThrough(DType dtype, float value) {
  switch (dtype) {
    case DType::kBF16:
      return BFloat16::FromFloat(value).ToFloat();
    case DType::kF16:
      return Half::FromFloat(value).ToFloat();
    default:
      return value;
  }
}

// Element-wise |actual - expected| <= atol + rtol * |expected| over two host f32 tensors of
// the same size; NaN matches only NaN. Names the first mismatches and the count.
::testing::AssertionResult AllClose(const Tensor& actual, const Tensor& expected, double rtol,
                                    double atol) {
  if (actual.numel() != expected.numel()) {
    return ::testing::AssertionFailure()
           << actual.DebugString() << " vs expected " << expected.DebugString();
  }
  int64_t wrong = 0;
  std::string first;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    double a = At(actual, i), e = At(expected, i);
    bool ok = std::isnan(e) ? std::isnan(a) : std::abs(a - e) <= atol + rtol * std::abs(e);
    if (ok) continue;
    if (++wrong <= 5)
      first +=
          " [" + std::to_string(i) + "] " + std::to_string(a) + " vs " + std::to_string(e) + ";";
  }
  if (wrong == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << wrong << " of " << actual.numel() << " elements differ:" << first;
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

class KernelsCudaTest : public ::testing::Test {
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

  // A host tensor of normal values times `scale` (rounded to the dtype).
  Tensor Random(DType dtype, Shape shape, double scale = 1.0) {
    Tensor t = Must(Tensor::Empty(dtype, std::move(shape)));
    std::normal_distribution<double> normal(0.0, scale);
    FillWith(t, [&](int64_t) { return normal(rng_); });
    return t;
  }

  Tensor HostI32(const std::vector<int32_t>& values, Shape shape = {}) {
    if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
    return Must(Tensor::FromValues(absl::Span<const int32_t>(values), shape));
  }
  Tensor HostI64(const std::vector<int64_t>& values) {
    return Must(Tensor::FromValues(absl::Span<const int64_t>(values)));
  }

  // Device tensors made by the helpers below stay allocated until the test ends, so that a
  // temporary passed to a kernel is not freed while the kernel may still be reading it.
  Tensor KeepAlive(Tensor t) {
    device_tensors_.push_back(t);
    return t;
  }

  Tensor OnGpu(const Tensor& host) { return KeepAlive(Must(host.To(kGpu, stream()))); }

  // A device copy whose first element sits one element past a 16-byte boundary, so that the
  // kernels take their unvectorized paths.
  Tensor OnGpuMisaligned(const Tensor& host) {
    Tensor buffer = Must(Tensor::Empty(host.dtype(), {host.numel() + 1}, kGpu));
    Tensor view = Must(Must(buffer.Slice(1, host.numel() + 1)).Reshape(host.shape()));
    TESSERA_CHECK(view.CopyFrom(host, stream()).ok(), "copy to the GPU");
    return KeepAlive(view);
  }

  Tensor GpuZeros(DType dtype, Shape shape) {
    return KeepAlive(Must(Tensor::Zeros(dtype, shape, kGpu)));
  }

  // The device tensor's values on the host, once the stream has finished.
  Tensor ToHost(const Tensor& device) {
    Tensor host = Must(device.To(Device::Cpu(), stream()));
    absl::Status synced = stream().Synchronize();
    TESSERA_CHECK(synced.ok(), std::string(synced.message()));
    return host;
  }

  // A host copy (f32 when `t` is f16, which the CPU kernels do not take).
  Tensor ForCpu(const Tensor& t) {
    Tensor copy =
        Must(Tensor::Empty(t.dtype() == DType::kF16 ? DType::kF32 : t.dtype(), t.shape()));
    FillWith(copy, [&](int64_t i) { return ElementAsDouble(t, i); });
    return copy;
  }

  std::mt19937 rng_;

 private:
  std::unique_ptr<Stream> stream_;
  std::vector<Tensor> device_tensors_;
};

// --- norm_activation -------------------------------------------------------------------

TEST_F(KernelsCudaTest, EmbeddingLookupMatchesCpuOnEveryShard) {
  const int64_t vocab = 1000;
  for (int64_t hidden : {8, 37, 4096}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(std::string(NameOf(dtype)) + " hidden " + std::to_string(hidden));
      Tensor table = Random(dtype, {vocab, hidden});
      Tensor cpu_table = ForCpu(table);
      std::uniform_int_distribution<int32_t> id(0, vocab - 1);
      std::vector<int32_t> ids(17);
      for (int32_t& i : ids) i = id(rng_);
      ids[0] = 0;
      ids[1] = vocab - 1;
      Tensor host_ids = HostI32(ids);
      Tensor gpu_ids = OnGpu(host_ids);
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, vocab}, {0, 400}, {400, 1000}}) {
        Tensor shard = Must(table.Slice(begin, end));
        Tensor cpu_shard = Must(cpu_table.Slice(begin, end));
        Tensor expected = Must(Tensor::Empty(DType::kF32, {17, hidden}));
        ASSERT_OK(EmbeddingLookup(host_ids, cpu_shard, begin, vocab, expected));
        Tensor out = GpuZeros(DType::kF32, {17, hidden});
        ASSERT_OK(cuda::EmbeddingLookup(gpu_ids, OnGpu(shard), begin, vocab, out, stream()));
        EXPECT_TRUE(AllClose(ToHost(out), expected, 0, 0)) << "shard " << begin;
      }
    }
  }
}

TEST_F(KernelsCudaTest, EmbeddingLookupPoisonsIdsOutsideTheVocabulary) {
  Tensor table = OnGpu(Random(DType::kF32, {10, 8}));
  Tensor out = GpuZeros(DType::kF32, {3, 8});
  ASSERT_OK(cuda::EmbeddingLookup(OnGpu(HostI32({3, 10, -1})), table, 0, 10, out, stream()));
  Tensor host = ToHost(out);
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_FALSE(std::isnan(At(host, i)));
    EXPECT_TRUE(std::isnan(At(host, 8 + i)));
    EXPECT_TRUE(std::isnan(At(host, 16 + i)));
  }
}

TEST_F(KernelsCudaTest, RmsNormMatchesCpu) {
  for (auto [rows, hidden] : {std::pair<int64_t, int64_t>{1, 8}, {3, 37}, {5, 4096}, {2, 5120}}) {
    for (DType wtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (bool aligned : {true, false}) {
        SCOPED_TRACE(std::string(NameOf(wtype)) + " " + std::to_string(rows) + "x" +
                     std::to_string(hidden) + (aligned ? "" : " misaligned"));
        Tensor x = Random(DType::kF32, {rows, hidden}, 3.0);
        Tensor w = Random(wtype, {hidden});
        Tensor expected = Must(Tensor::Empty(DType::kF32, {rows, hidden}));
        ASSERT_OK(RmsNorm(x, ForCpu(w), 1e-6f, expected));
        Tensor gpu_x = aligned ? OnGpu(x) : OnGpuMisaligned(x);
        Tensor gpu_w = OnGpu(w);
        Tensor out = GpuZeros(DType::kF32, {rows, hidden});
        ASSERT_OK(cuda::RmsNorm(gpu_x, gpu_w, 1e-6f, out, stream()));
        EXPECT_TRUE(AllClose(ToHost(out), expected, SumTolerance(hidden), 1e-6));
        // In place: out is x.
        ASSERT_OK(cuda::RmsNorm(gpu_x, gpu_w, 1e-6f, gpu_x, stream()));
        EXPECT_TRUE(AllClose(ToHost(gpu_x), expected, SumTolerance(hidden), 1e-6)) << "in place";
      }
    }
  }
}

TEST_F(KernelsCudaTest, AddRmsNormMatchesCpu) {
  for (auto [rows, hidden] : {std::pair<int64_t, int64_t>{1, 8}, {4, 37}, {7, 4096}}) {
    for (DType wtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (bool aligned : {true, false}) {
        SCOPED_TRACE(std::string(NameOf(wtype)) + " " + std::to_string(rows) + "x" +
                     std::to_string(hidden) + (aligned ? "" : " misaligned"));
        Tensor residual = Random(DType::kF32, {rows, hidden});
        Tensor x = Random(DType::kF32, {rows, hidden});
        Tensor w = Random(wtype, {hidden});
        Tensor gpu_residual = aligned ? OnGpu(residual) : OnGpuMisaligned(residual);
        Tensor gpu_x = aligned ? OnGpu(x) : OnGpuMisaligned(x);
        Tensor expected = Must(Tensor::Empty(DType::kF32, {rows, hidden}));
        ASSERT_OK(AddRmsNorm(residual, x, ForCpu(w), 1e-5f, expected));  // residual updated
        // out is x, as the layer loop calls it.
        ASSERT_OK(cuda::AddRmsNorm(gpu_residual, gpu_x, OnGpu(w), 1e-5f, gpu_x, stream()));
        EXPECT_TRUE(AllClose(ToHost(gpu_residual), residual, 0, 0)) << "residual";
        EXPECT_TRUE(AllClose(ToHost(gpu_x), expected, SumTolerance(hidden), 1e-6)) << "out";
      }
    }
  }
}

TEST_F(KernelsCudaTest, SiluMulMatchesCpu) {
  for (auto [rows, inner] : {std::pair<int64_t, int64_t>{1, 8}, {3, 37}, {17, 1376}, {2, 4}}) {
    for (bool aligned : {true, false}) {
      SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(inner) +
                   (aligned ? "" : " misaligned"));
      Tensor gate_up = Random(DType::kF32, {rows, 2 * inner}, 4.0);
      Tensor expected = Must(Tensor::Empty(DType::kF32, {rows, inner}));
      ASSERT_OK(SiluMul(gate_up, expected));
      Tensor out = aligned ? GpuZeros(DType::kF32, {rows, inner})
                           : OnGpuMisaligned(Must(Tensor::Zeros(DType::kF32, {rows, inner})));
      ASSERT_OK(cuda::SiluMul(aligned ? OnGpu(gate_up) : OnGpuMisaligned(gate_up), out, stream()));
      EXPECT_TRUE(AllClose(ToHost(out), expected, 1e-5, 1e-7));
    }
  }
}

TEST_F(KernelsCudaTest, SoftmaxRowsMatchesCpu) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {4, 37}, {2, 4096}, {3, 32000}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
    Tensor x = Random(DType::kF32, {rows, cols}, 3.0);
    x.data<float>()[0] = 80.0f;  // exp would overflow without the maximum subtracted
    if (cols > 2) x.data<float>()[cols - 1] = -kInf;  // a masked column
    Tensor gpu_x = OnGpu(x);
    ASSERT_OK(SoftmaxRows(x));
    ASSERT_OK(cuda::SoftmaxRows(gpu_x, stream()));
    EXPECT_TRUE(AllClose(ToHost(gpu_x), x, SumTolerance(cols), 1e-12));
  }
}

TEST_F(KernelsCudaTest, AddInPlaceMatchesCpuExactly) {
  for (int64_t n : {1, 1023, 4096 * 3 + 4}) {
    for (bool aligned : {true, false}) {
      SCOPED_TRACE(std::to_string(n) + (aligned ? "" : " misaligned"));
      Tensor a = Random(DType::kF32, {n});
      Tensor b = Random(DType::kF32, {n});
      Tensor gpu_a = aligned ? OnGpu(a) : OnGpuMisaligned(a);
      ASSERT_OK(cuda::AddInPlace(gpu_a, OnGpu(b), stream()));
      ASSERT_OK(AddInPlace(a, b));
      EXPECT_TRUE(AllClose(ToHost(gpu_a), a, 0, 0));
    }
  }
}

// --- row ops ---------------------------------------------------------------------------

TEST_F(KernelsCudaTest, AddBiasMatchesCpuBitForBit) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 8}, {7, 37}, {33, 4096}}) {
    for (DType btype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (bool aligned : {true, false}) {
        SCOPED_TRACE(std::string(NameOf(btype)) + " " + std::to_string(rows) + "x" +
                     std::to_string(cols) + (aligned ? "" : " misaligned"));
        Tensor x = Random(DType::kF32, {rows, cols}, 3.0);
        Tensor bias = Random(btype, {cols});
        Tensor gpu_x = aligned ? OnGpu(x) : OnGpuMisaligned(x);
        ASSERT_OK(cuda::AddBias(gpu_x, aligned ? OnGpu(bias) : OnGpuMisaligned(bias), stream()));
        ASSERT_OK(AddBias(x, ForCpu(bias)));
        EXPECT_TRUE(BitEqual(ToHost(gpu_x), x));
      }
    }
  }
}

TEST_F(KernelsCudaTest, FillColumnsMatchesCpuBitForBit) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 8}, {5, 37}, {64, 32000}}) {
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 0}, {0, 1}, {3, 8}, {0, 8}}) {
      const int64_t b = begin * cols / 8, e = end * cols / 8;  // the same bands, scaled
      SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " [" + std::to_string(b) +
                   ", " + std::to_string(e) + ")");
      Tensor x = Random(DType::kF32, {rows, cols});
      Tensor gpu_x = OnGpu(x);
      ASSERT_OK(cuda::FillColumns(gpu_x, b, e, -kInf, stream()));
      ASSERT_OK(FillColumns(x, b, e, -kInf));
      EXPECT_TRUE(BitEqual(ToHost(gpu_x), x));
    }
  }
  Tensor x = GpuZeros(DType::kF32, {2, 4});
  EXPECT_TRUE(IsError(cuda::FillColumns(x, 2, 5, 0.0f, stream()),
                      absl::StatusCode::kInvalidArgument, {"FillColumns: columns [2, 5)"}));
}

TEST_F(KernelsCudaTest, GatherRowsMatchesCpuAndPoisonsRowsOutsideX) {
  for (int64_t width : {8, 37, 4096}) {
    SCOPED_TRACE("width " + std::to_string(width));
    Tensor x = Random(DType::kF32, {9, width});
    Tensor rows = HostI32({8, 0, 3, 3});
    Tensor expected = Must(Tensor::Empty(DType::kF32, {4, width}));
    ASSERT_OK(GatherRows(x, rows, expected));
    Tensor out = GpuZeros(DType::kF32, {4, width});
    Tensor gpu_x = OnGpuMisaligned(x);
    ASSERT_OK(cuda::GatherRows(gpu_x, OnGpu(rows), out, stream()));
    EXPECT_TRUE(BitEqual(ToHost(out), expected));

    // A row outside x comes out as NaN, the others as asked.
    Tensor poisoned = GpuZeros(DType::kF32, {3, width});
    ASSERT_OK(cuda::GatherRows(gpu_x, OnGpu(HostI32({2, 9, -1})), poisoned, stream()));
    Tensor host = ToHost(poisoned);
    for (int64_t c = 0; c < width; ++c) {
      EXPECT_EQ(At(host, c), At(x, 2 * width + c));
      EXPECT_TRUE(std::isnan(At(host, width + c)));
      EXPECT_TRUE(std::isnan(At(host, 2 * width + c)));
    }
  }
  Tensor x = GpuZeros(DType::kF32, {3, 4});
  Tensor out = GpuZeros(DType::kF32, {2, 5});
  EXPECT_TRUE(IsError(cuda::GatherRows(x, OnGpu(HostI32({0, 1})), out, stream()),
                      absl::StatusCode::kInvalidArgument, {"GatherRows: out"}));
}

// --- rotary ----------------------------------------------------------------------------

TEST_F(KernelsCudaTest, ApplyRotaryMatchesCpuForEveryLayout) {
  struct Case {
    int64_t heads, head_dim;
    RotaryConfig config;
  };
  RotaryConfig llama3{.rotary_dim = 128, .theta = 500000.0f};
  llama3.scaling = {RotaryScaling::Type::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  RotaryConfig linear{.rotary_dim = 80, .theta = 10000.0f};
  linear.scaling = {RotaryScaling::Type::kLinear, 4.0f};
  const std::vector<Case> cases = {
      {4, 64, {.rotary_dim = 64, .theta = 10000.0f}},
      {2, 128, {.rotary_dim = 64, .theta = 10000.0f, .layout = RotaryLayout::kInterleaved}},
      {8, 128, llama3},
      {3, 80, linear},
      {5, 96, {.rotary_dim = 32, .theta = 1000000.0f, .layout = RotaryLayout::kHalfSplit}},
  };
  for (const Case& c : cases) {
    for (int64_t tokens : {1, 19}) {
      SCOPED_TRACE("heads " + std::to_string(c.heads) + " head_dim " + std::to_string(c.head_dim) +
                   " rotary_dim " + std::to_string(c.config.rotary_dim) + " tokens " +
                   std::to_string(tokens));
      std::vector<float> inv_freq = RotaryInverseFrequencies(c.config);
      Tensor x = Random(DType::kF32, {tokens, c.heads, c.head_dim});
      std::uniform_int_distribution<int32_t> position(0, 32767);
      std::vector<int32_t> positions(tokens);
      for (int32_t& p : positions) p = position(rng_);
      positions[0] = 0;
      Tensor host_positions = HostI32(positions);
      Tensor gpu_x = OnGpu(x);
      ASSERT_OK(cuda::ApplyRotary(gpu_x, OnGpu(host_positions), inv_freq, c.config, stream()));
      ASSERT_OK(ApplyRotary(x, host_positions, inv_freq, c.config));
      EXPECT_TRUE(AllClose(ToHost(gpu_x), x, 1e-5, 1e-5));
    }
  }
}

// --- attention -------------------------------------------------------------------------

TEST_F(KernelsCudaTest, WriteKvCacheAndPagedAttentionMatchCpu) {
  struct Case {
    int64_t heads, kv_heads, head_dim, block_size;
    int window;
    DType cache;
  };
  const std::vector<Case> cases = {
      {4, 4, 64, 16, 0, DType::kF32},   {8, 2, 128, 16, 0, DType::kF32},
      {8, 2, 128, 16, 0, DType::kBF16}, {8, 1, 80, 8, 7, DType::kF16},
      {2, 2, 256, 32, 0, DType::kF32},  {6, 2, 32, 4, 3, DType::kBF16},
      {4, 2, 20, 5, 0, DType::kF32},
  };
  // Prefill, chunked prefill, decode, an idle sequence, a one-token sequence.
  struct Sequence {
    int64_t context, queries;
  };
  const std::vector<Sequence> sequences = {{37, 37}, {50, 10}, {129, 1}, {5, 0}, {1, 1}, {64, 2}};
  for (const Case& c : cases) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
                 " head_dim " + std::to_string(c.head_dim) + " block " +
                 std::to_string(c.block_size) + " window " + std::to_string(c.window) + " " +
                 std::string(NameOf(c.cache)));
    // Block tables: a random permutation of the cache's blocks, handed out in order, with a
    // spare column of -1 that no valid position reaches.
    int64_t needed = 0, max_blocks = 0;
    for (const auto& s : sequences) {
      int64_t blocks = (s.context + c.block_size - 1) / c.block_size;
      needed += blocks;
      max_blocks = std::max(max_blocks, blocks + 1);
    }
    int64_t num_blocks = needed + 3;
    std::vector<int32_t> permutation(num_blocks);
    std::iota(permutation.begin(), permutation.end(), 0);
    std::shuffle(permutation.begin(), permutation.end(), rng_);
    std::vector<int32_t> tables(sequences.size() * max_blocks, -1);
    std::vector<int32_t> starts = {0}, lens;
    std::vector<int64_t> slots;
    size_t next = 0;
    for (size_t s = 0; s < sequences.size(); ++s) {
      int64_t blocks = (sequences[s].context + c.block_size - 1) / c.block_size;
      for (int64_t b = 0; b < blocks; ++b) tables[s * max_blocks + b] = permutation[next++];
      for (int64_t p = 0; p < sequences[s].context; ++p) {
        slots.push_back(int64_t{tables[s * max_blocks + p / c.block_size]} * c.block_size +
                        p % c.block_size);
      }
      starts.push_back(starts.back() + static_cast<int32_t>(sequences[s].queries));
      lens.push_back(static_cast<int32_t>(sequences[s].context));
    }
    // Two tokens whose slot is negative: skipped.
    slots.push_back(-1);
    slots.push_back(-7);
    int64_t tokens = static_cast<int64_t>(slots.size());
    int64_t rows = starts.back();
    Tensor k = Random(DType::kF32, {tokens, c.kv_heads, c.head_dim});
    Tensor v = Random(DType::kF32, {tokens, c.kv_heads, c.head_dim});
    Tensor slot_mapping = HostI64(slots);
    Shape cache_shape = {num_blocks, c.block_size, c.kv_heads, c.head_dim};

    // The cache: f32 on the CPU; on the GPU in c.cache, which must hold the CPU's values
    // rounded to it.
    // The CPU keeps keys along the positions of a block (KeyCacheShape), the GPU as rows.
    Tensor k_cache = Must(Tensor::Zeros(
        DType::kF32, KeyCacheShape(num_blocks, c.block_size, c.kv_heads, c.head_dim)));
    Tensor v_cache = Must(Tensor::Zeros(DType::kF32, cache_shape));
    ASSERT_OK(WriteKvCache(k, v, slot_mapping, k_cache, v_cache));
    Tensor k_rows = Must(Tensor::Empty(DType::kF32, cache_shape));
    for (int64_t b = 0; b < num_blocks; ++b) {
      for (int64_t o = 0; o < c.block_size; ++o) {
        for (int64_t e = 0; e < c.kv_heads * c.head_dim; ++e) {
          k_rows.data<float>()[(b * c.block_size + o) * c.kv_heads * c.head_dim + e] =
              k_cache.data<float>()[(b * c.kv_heads * c.head_dim + e) * c.block_size + o];
        }
      }
    }
    Tensor gpu_k_cache = GpuZeros(c.cache, cache_shape);
    Tensor gpu_v_cache = GpuZeros(c.cache, cache_shape);
    ASSERT_OK(cuda::WriteKvCache(OnGpu(k), OnGpu(v), OnGpu(slot_mapping), gpu_k_cache, gpu_v_cache,
                                 stream()));
    for (Tensor* cache : {&k_cache, &k_rows, &v_cache}) {
      for (int64_t i = 0; i < cache->numel(); ++i) {
        cache->data<float>()[i] = RoundThrough(c.cache, cache->data<float>()[i]);
      }
    }
    EXPECT_TRUE(AllClose(ToHost(gpu_k_cache), k_rows, 0, 0)) << "k_cache";
    EXPECT_TRUE(AllClose(ToHost(gpu_v_cache), v_cache, 0, 0)) << "v_cache";

    Tensor q = Random(DType::kF32, {rows, c.heads, c.head_dim});
    Tensor host_starts = HostI32(starts);
    Tensor host_lens = HostI32(lens);
    Tensor host_tables = HostI32(tables, {static_cast<int64_t>(sequences.size()), max_blocks});
    AttentionParams params{1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.window};
    Tensor expected = Must(Tensor::Empty(DType::kF32, q.shape()));
    ASSERT_OK(
        PagedAttention(q, k_cache, v_cache, host_starts, host_lens, host_tables, params, expected));
    Tensor gpu_q = OnGpu(q);
    Tensor gpu_starts = OnGpu(host_starts), gpu_lens = OnGpu(host_lens);
    Tensor gpu_tables = OnGpu(host_tables);
    Tensor out = GpuZeros(DType::kF32, q.shape());
    ASSERT_OK(cuda::PagedAttention(gpu_q, gpu_k_cache, gpu_v_cache, gpu_starts, gpu_lens,
                                   gpu_tables, params, out, stream()));
    EXPECT_TRUE(AllClose(ToHost(out), expected, 1e-5, 1e-5));
    // In place: out is q.
    ASSERT_OK(cuda::PagedAttention(gpu_q, gpu_k_cache, gpu_v_cache, gpu_starts, gpu_lens,
                                   gpu_tables, params, gpu_q, stream()));
    EXPECT_TRUE(AllClose(ToHost(gpu_q), expected, 1e-5, 1e-5)) << "in place";
  }
}

TEST_F(KernelsCudaTest, PagedAttentionPoisonsInconsistentSequencesOnly) {
  const int64_t heads = 2, head_dim = 16, block_size = 4, blocks = 4;
  Tensor k_cache = OnGpu(Random(DType::kF32, {blocks, block_size, heads, head_dim}));
  Tensor v_cache = OnGpu(Random(DType::kF32, {blocks, block_size, heads, head_dim}));
  // Sequence 0 is sound; 1 names block 9 of a 4-block cache; 2 has more context than its
  // table holds; 3 has more queries than context.
  Tensor tables = OnGpu(HostI32({0, 1, 2, 9, 3, 0, 1, 2}, {4, 2}));
  Tensor starts = OnGpu(HostI32({0, 1, 2, 3, 6}));
  Tensor lens = OnGpu(HostI32({6, 7, 9, 2}));
  Tensor q = OnGpu(Random(DType::kF32, {6, heads, head_dim}));
  Tensor out = GpuZeros(DType::kF32, {6, heads, head_dim});
  ASSERT_OK(
      cuda::PagedAttention(q, k_cache, v_cache, starts, lens, tables, {0.25f, 0}, out, stream()));
  Tensor host = ToHost(out);
  for (int64_t row = 0; row < 6; ++row) {
    bool poisoned = std::isnan(At(host, row * heads * head_dim));
    EXPECT_EQ(poisoned, row != 0) << "row " << row;
  }

  // A slot beyond the cache is skipped, like a negative one.
  Tensor kv = OnGpu(Random(DType::kF32, {2, heads, head_dim}));
  Tensor k_before = ToHost(k_cache);
  ASSERT_OK(cuda::WriteKvCache(kv, kv, OnGpu(HostI64({blocks * block_size, -1})), k_cache, v_cache,
                               stream()));
  EXPECT_TRUE(AllClose(ToHost(k_cache), k_before, 0, 0));
}

// --- linear ----------------------------------------------------------------------------

TEST_F(KernelsCudaTest, LinearMatchesCpuForEveryWeightType) {
  struct Shape3 {
    int64_t m, k, n;
  };
  for (Shape3 s : {Shape3{1, 64, 32},
                   {3, 37, 129},
                   {8, 4096, 512},
                   {33, 1024, 1000},
                   {128, 512, 768},
                   {5, 0, 7}}) {
    for (DType wtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(std::string(NameOf(wtype)) + " m " + std::to_string(s.m) + " k " +
                     std::to_string(s.k) + " n " + std::to_string(s.n) +
                     (with_bias ? " bias" : ""));
        Tensor x = Random(DType::kF32, {s.m, s.k});
        Tensor w = Random(wtype, {s.n, s.k}, 0.05);
        Tensor bias = with_bias ? Random(wtype, {s.n}) : Tensor();
        Tensor expected = Must(Tensor::Empty(DType::kF32, {s.m, s.n}));
        ASSERT_OK(Linear(x, ForCpu(w), with_bias ? ForCpu(bias) : Tensor(), expected));
        Tensor out = GpuZeros(DType::kF32, {s.m, s.n});
        ASSERT_OK(
            cuda::Linear(OnGpu(x), OnGpu(w), with_bias ? OnGpu(bias) : Tensor(), out, stream()));
        Tensor actual = ToHost(out);
        // Each element's bound: the rounding of x to the weight type (none for f32) plus f32
        // summation, over the scale sum_k |x w| + |bias|.
        double unit = wtype == DType::kF32 ? 0.0 : RoundingUnit(wtype);
        Tensor wide_w = ForCpu(w);
        if (wide_w.dtype() != DType::kF32) {
          wide_w = Must(Tensor::Empty(DType::kF32, w.shape()));
          FillWith(wide_w, [&](int64_t e) { return ElementAsDouble(w, e); });
        }
        const float* xs = x.data<float>();
        const float* ws = wide_w.data<float>();
        const float* got = actual.data<float>();
        const float* want = expected.data<float>();
        int64_t wrong = 0;
        double error_squares = 0, expected_squares = 0;
        for (int64_t i = 0; i < s.m; ++i) {
          for (int64_t j = 0; j < s.n; ++j) {
            double scale = with_bias ? std::abs(At(bias, j)) : 0.0;
            for (int64_t c = 0; c < s.k; ++c) {
              scale += std::abs(static_cast<double>(xs[i * s.k + c]) * ws[j * s.k + c]);
            }
            double error = std::abs(static_cast<double>(got[i * s.n + j]) - want[i * s.n + j]);
            error_squares += error * error;
            expected_squares += static_cast<double>(want[i * s.n + j]) * want[i * s.n + j];
            if (error > (unit + 1e-5) * scale + 1e-7 && ++wrong <= 5) {
              ADD_FAILURE() << "(" << i << "," << j << "): " << got[i * s.n + j] << " vs "
                            << want[i * s.n + j] << ", scale " << scale;
            }
          }
        }
        EXPECT_EQ(wrong, 0);
        // Over the whole output the rounding errors of x average out: their RMS is about
        // unit / sqrt(3) of the result's (2.3e-3 for bf16, 2.8e-4 for f16). A few times that
        // catches a GEMM that is wrong by less than the per-element worst case allows.
        double rms_limit = wtype == DType::kF32 ? 1e-5 : (wtype == DType::kBF16 ? 1e-2 : 2e-3);
        EXPECT_LE(std::sqrt(error_squares), rms_limit * std::sqrt(expected_squares) + 1e-6);
      }
    }
  }
}

// Each weight format's product against the CPU's (f32 activations), decode rows (the codes
// widened in registers) and prefill rows (widened to bf16, then the tensor cores), with and
// without bias. Bounds, over the scale sum_k |x w| + |bias| of each element: decode 1e-5
// (f32 rounding); prefill the two bf16 roundings, of w and of x, 2^-7.
TEST_F(KernelsCudaTest, QuantizedLinearMatchesCpuForEveryFormat) {
  struct Format {
    WeightQuant quant;
    int64_t group;  // 0: one group a row
  };
  struct Shape3 {
    int64_t m, k, n;
  };
  for (Format f : {Format{WeightQuant::kInt8, 0}, Format{WeightQuant::kInt8, 32},
                   Format{WeightQuant::kInt4, 32}, Format{WeightQuant::kInt4, 128}}) {
    for (Shape3 s :
         {Shape3{1, 256, 40}, {3, 1024, 517}, {8, 128, 64}, {9, 512, 100}, {40, 256, 24}}) {
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(std::string(WeightQuantName(f.quant)) + " group " + std::to_string(f.group) +
                     " m " + std::to_string(s.m) + " k " + std::to_string(s.k) + " n " +
                     std::to_string(s.n) + (with_bias ? " bias" : ""));
        Tensor x = Random(DType::kF32, {s.m, s.k});
        const QuantizedWeight w = Must(QuantizeWeight(Random(DType::kF32, {s.n, s.k}, 0.05),
                                                      f.quant, f.group == 0 ? s.k : f.group));
        Tensor bias = with_bias ? Random(DType::kBF16, {s.n}) : Tensor();
        Tensor expected = Must(Tensor::Empty(DType::kF32, {s.m, s.n}));
        ASSERT_OK(QuantizedLinear(x, w, bias, expected));
        Tensor out = GpuZeros(DType::kF32, {s.m, s.n});
        const QuantizedWeight on_gpu = Must(QuantizedWeightTo(w, kGpu, stream()));
        ASSERT_OK(cuda::QuantizedLinear(OnGpu(x), on_gpu, with_bias ? OnGpu(bias) : Tensor(), out,
                                        stream()));
        Tensor actual = ToHost(out);
        const Tensor dequantized = Must(DequantizeWeight(w));
        const double unit = s.m <= cuda::kQuantizedDecodeRows ? 0.0 : 0x1p-7;
        int64_t wrong = 0;
        for (int64_t i = 0; i < s.m; ++i) {
          for (int64_t j = 0; j < s.n; ++j) {
            double scale = with_bias ? std::abs(At(bias, j)) : 0.0;
            for (int64_t c = 0; c < s.k; ++c) {
              scale += std::abs(static_cast<double>(x.data<float>()[i * s.k + c]) *
                                dequantized.data<float>()[j * s.k + c]);
            }
            const float got = actual.data<float>()[i * s.n + j];
            const float want = expected.data<float>()[i * s.n + j];
            if (std::abs(static_cast<double>(got) - want) > (unit + 1e-5) * scale + 1e-7 &&
                ++wrong <= 5) {
              ADD_FAILURE() << "(" << i << "," << j << "): " << got << " vs " << want << ", scale "
                            << scale;
            }
          }
        }
        EXPECT_EQ(wrong, 0);
      }
    }
  }
}

// A weight packed for int8 activations (the CPU's), or left on the host, is refused by name.
TEST_F(KernelsCudaTest, QuantizedLinearRefusesWeightsNotPackedForTheGpu) {
  const QuantizedWeight w =
      Must(QuantizeWeight(Random(DType::kF32, {16, 64}), WeightQuant::kInt4, 32));
  Tensor x = OnGpu(Random(DType::kF32, {1, 64}));
  Tensor out = GpuZeros(DType::kF32, {1, 16});
  EXPECT_TRUE(IsError(cuda::QuantizedLinear(x, w, Tensor(), out, stream()),
                      absl::StatusCode::kInvalidArgument, {"QuantizedLinear", "cuda"}));
  const QuantizedWeight int8_activations =
      Must(QuantizedWeightTo(Must(WithActivations(w, ActivationQuant::kInt8)), kGpu, stream()));
  EXPECT_TRUE(IsError(cuda::QuantizedLinear(x, int8_activations, Tensor(), out, stream()),
                      absl::StatusCode::kInvalidArgument, {"int8 activations"}));
}

// --- sampling --------------------------------------------------------------------------

TEST_F(KernelsCudaTest, ShardArgmaxMatchesCpuWithTiesNanAndEmptyRows) {
  for (int64_t width : {1, 100, 4099, 37984}) {
    SCOPED_TRACE("width " + std::to_string(width));
    const int64_t rows = 6, vocab_begin = 2 * width;
    Tensor logits = Random(DType::kF32, {rows, width}, 5.0);
    float* l = logits.data<float>();
    std::uniform_int_distribution<int64_t> column(0, width - 1);
    // Row 1: the maximum twice (the lower index wins); row 2: NaN scattered, and at the
    // front; row 3: all NaN (no winner); row 4: all -inf; row 5: +inf beside NaN.
    int64_t a = column(rng_), b = column(rng_);
    l[width + a] = 100.0f;
    l[width + b] = 100.0f;
    for (int64_t c = 0; c < width; c += 3) l[2 * width + c] = kNaN;
    for (int64_t c = 0; c < width; ++c) l[3 * width + c] = kNaN;
    for (int64_t c = 0; c < width; ++c) l[4 * width + c] = -kInf;
    l[5 * width + column(rng_)] = kInf;
    l[5 * width + column(rng_)] = kNaN;
    std::vector<ArgmaxResult> expected;
    ASSERT_OK(ShardArgmax(logits, vocab_begin, &expected));

    Tensor gpu_logits = OnGpu(logits);
    Tensor values = GpuZeros(DType::kF32, {rows});
    Tensor indices = GpuZeros(DType::kI64, {rows});
    ASSERT_OK(cuda::ShardArgmax(gpu_logits, vocab_begin, values, indices, stream()));
    Tensor host_values = ToHost(values), host_indices = ToHost(indices);
    std::vector<ArgmaxResult> synced;
    ASSERT_OK(cuda::ShardArgmax(gpu_logits, vocab_begin, &synced, stream()));
    ASSERT_EQ(synced.size(), expected.size());
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(host_indices.data<int64_t>()[r], expected[r].index) << "row " << r;
      EXPECT_EQ(host_values.data<float>()[r], expected[r].value) << "row " << r;
      EXPECT_EQ(synced[r].index, expected[r].index) << "row " << r;
      EXPECT_EQ(synced[r].value, expected[r].value) << "row " << r;
    }
    EXPECT_EQ(expected[1].index, vocab_begin + std::min(a, b));
    EXPECT_EQ(expected[3].index, -1);
  }
}

// --- elementwise_reduce ----------------------------------------------------------------

TEST_F(KernelsCudaTest, ReduceMatchesCpuBitForBit) {
  for (DType dtype :
       {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kI32, DType::kI64}) {
    for (Reduction reduction : {Reduction::kSum, Reduction::kMax, Reduction::kMin}) {
      for (int64_t count : {1, 1000, 4099}) {
        SCOPED_TRACE(std::string(NameOf(dtype)) + " reduction " +
                     std::to_string(static_cast<int>(reduction)) + " count " +
                     std::to_string(count));
        Tensor a = Must(Tensor::Empty(dtype, {count}));
        Tensor b = Must(Tensor::Empty(dtype, {count}));
        // Floats: normal values; integers: their whole range, so that sums wrap.
        std::normal_distribution<double> normal(0.0, 10.0);
        std::uniform_int_distribution<int64_t> any(std::numeric_limits<int64_t>::min(),
                                                   std::numeric_limits<int64_t>::max());
        for (Tensor* t : {&a, &b}) {
          if (IsFloatingPoint(dtype)) {
            FillWith(*t, [&](int64_t) { return normal(rng_); });
          } else {
            auto* bytes = static_cast<uint8_t*>(t->data());
            for (size_t i = 0; i < t->nbytes(); ++i) bytes[i] = static_cast<uint8_t>(any(rng_));
          }
        }
        Tensor gpu_a = OnGpu(a), gpu_b = OnGpu(b);
        Tensor gpu_out = GpuZeros(dtype, {count});
        ASSERT_OK(cuda::Reduce(gpu_out.data(), gpu_a.data(), gpu_b.data(), count, dtype, reduction,
                               stream()));
        ASSERT_OK(cuda::ReduceInto(gpu_a.data(), gpu_b.data(), count, dtype, reduction, stream()));
        ASSERT_OK(ReduceInto(a.data(), b.data(), count, dtype, reduction));
        EXPECT_TRUE(BitEqual(ToHost(gpu_out), a));
        EXPECT_TRUE(BitEqual(ToHost(gpu_a), a)) << "in place";
      }
    }
  }
  Tensor host = Must(Tensor::Zeros(DType::kF32, {4}));
  Tensor device = GpuZeros(DType::kF32, {4});
  EXPECT_TRUE(IsError(cuda::Reduce(device.data(), host.data(), device.data(), 4, DType::kF32,
                                   Reduction::kSum, stream()),
                      absl::StatusCode::kInvalidArgument, {"Reduce: a is not memory of cuda:0"}));
  EXPECT_TRUE(IsError(cuda::Reduce(device.data(), device.data(), device.data(), 4, DType::kI4,
                                   Reduction::kSum, stream()),
                      absl::StatusCode::kInvalidArgument, {"i4"}));
}

// --- argument checks -------------------------------------------------------------------

TEST_F(KernelsCudaTest, RejectsHostTensorsWrongDTypesAndShapes) {
  Tensor host_x = Random(DType::kF32, {2, 8});
  Tensor x = OnGpu(host_x);
  Tensor w = OnGpu(Random(DType::kF32, {8}));
  Tensor out = GpuZeros(DType::kF32, {2, 8});
  EXPECT_TRUE(IsError(cuda::RmsNorm(host_x, w, 1e-5f, out, stream()),
                      absl::StatusCode::kInvalidArgument,
                      {"RmsNorm: x is f32[2,8] on cpu, expected memory on cuda:0"}));
  EXPECT_TRUE(IsError(cuda::RmsNorm(x, OnGpu(Random(DType::kF32, {7})), 1e-5f, out, stream()),
                      absl::StatusCode::kInvalidArgument, {"RmsNorm: weight", "shape [8]"}));
  Tensor i8_weight = GpuZeros(DType::kI8, {8});
  EXPECT_TRUE(IsError(cuda::RmsNorm(x, i8_weight, 1e-5f, out, stream()),
                      absl::StatusCode::kInvalidArgument,
                      {"weight", "expected f32 or bf16 or f16"}));
  EXPECT_TRUE(IsError(cuda::Linear(x, OnGpu(Random(DType::kF32, {3, 7})), Tensor(), out, stream()),
                      absl::StatusCode::kInvalidArgument, {"Linear", "inner dimension"}));
  Tensor cache = GpuZeros(DType::kF32, {2, 4, 1, 512});
  Tensor q = GpuZeros(DType::kF32, {1, 1, 512});
  Tensor q_out = GpuZeros(DType::kF32, {1, 1, 512});
  Tensor starts = OnGpu(HostI32({0, 1})), lens = OnGpu(HostI32({1}));
  Tensor tables = OnGpu(HostI32({0}, {1, 1}));
  EXPECT_TRUE(
      IsError(cuda::PagedAttention(q, cache, cache, starts, lens, tables, {}, q_out, stream()),
              absl::StatusCode::kInvalidArgument, {"PagedAttention", "512"}));
  Tensor bf16_cache = GpuZeros(DType::kBF16, {2, 4, 1, 512});
  EXPECT_TRUE(
      IsError(cuda::PagedAttention(q, cache, bf16_cache, starts, lens, tables, {}, q_out, stream()),
              absl::StatusCode::kInvalidArgument, {"v_cache"}));
  std::vector<float> too_many(300, 1.0f);
  Tensor rotated = GpuZeros(DType::kF32, {1, 1, 600});
  EXPECT_TRUE(IsError(
      cuda::ApplyRotary(rotated, OnGpu(HostI32({0})), too_many, {.rotary_dim = 600}, stream()),
      absl::StatusCode::kInvalidArgument, {"ApplyRotary", "600"}));
}

// Runs without a GPU: the argument checks come before any CUDA call.
TEST(KernelsCudaArguments, RefuseTheCpuStream) {
  Stream cpu = Stream::Cpu();
  Tensor x = Must(Tensor::Zeros(DType::kF32, {2, 8}));
  Tensor w = Must(Tensor::Zeros(DType::kF32, {8}));
  Tensor ids = Must(Tensor::Zeros(DType::kI32, {2}));
  std::vector<ArgmaxResult> rows;
  std::vector<absl::Status> results = {
      cuda::EmbeddingLookup(ids, x, 0, 2, x, cpu),
      cuda::RmsNorm(x, w, 1e-5f, x, cpu),
      cuda::AddRmsNorm(x, x, w, 1e-5f, x, cpu),
      cuda::SiluMul(x, x, cpu),
      cuda::SoftmaxRows(x, cpu),
      cuda::AddInPlace(x, x, cpu),
      cuda::Linear(x, x, Tensor(), x, cpu),
      cuda::ShardArgmax(x, 0, &rows, cpu),
      cuda::Reduce(x.data(), x.data(), x.data(), 16, DType::kF32, Reduction::kSum, cpu),
  };
  for (const absl::Status& status : results) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_TRUE(
        Contains(std::string(status.message()), "stream is on cpu, expected a CUDA stream"));
  }
}

}  // namespace
}  // namespace tessera::kernels
