// The CUDA int8 KV cache kernels (kernels/cuda/kv_cache_int8.h) against the CPU ones
// (kernels/cpu/kv_cache_int8.h) on fresh random inputs: the codes and scales bitwise, the
// attention within f32 rounding (1e-5 relative, as the f32 kernels of kernels_cuda_test).
// Each run draws a new seed and prints it; TESSERA_TEST_SEED=<seed> replays a run.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_cache_int8.h"
#include "kernels/cuda/kv_cache_int8.h"
#include "kernels/ops/attention.h"
#include "runtime/core/gpu_info.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

using ::tessera::testing::IsError;

constexpr Device kGpu = Device::Cuda(0);

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

// Element-wise |actual - expected| <= atol + rtol * |expected| over two host f32 tensors;
// NaN matches only NaN. Names the first mismatches and the count.
::testing::AssertionResult AllClose(const Tensor& actual, const Tensor& expected, double rtol,
                                    double atol) {
  if (actual.numel() != expected.numel()) {
    return ::testing::AssertionFailure()
           << actual.DebugString() << " vs expected " << expected.DebugString();
  }
  int64_t wrong = 0;
  std::string first;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double a = ElementAsDouble(actual, i), e = ElementAsDouble(expected, i);
    const bool ok = std::isnan(e) ? std::isnan(a) : std::abs(a - e) <= atol + rtol * std::abs(e);
    if (ok) continue;
    if (++wrong <= 5) {
      first +=
          " [" + std::to_string(i) + "] " + std::to_string(a) + " vs " + std::to_string(e) + ";";
    }
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

// One layer's int8 cache: four tensors on `device`, the keys in that device's layout.
struct Int8Cache {
  Tensor k, v, k_scale, v_scale;
};

Int8Cache ZeroCache(int64_t blocks, int64_t block_size, int64_t kv_heads, int64_t head_dim,
                    Device device) {
  const Shape rows = {blocks, block_size, kv_heads, head_dim};
  const Shape keys = device.is_cpu() ? KeyCacheShape(blocks, block_size, kv_heads, head_dim) : rows;
  const Shape scales = KvScaleShape(blocks, block_size, kv_heads);
  return {Must(Tensor::Zeros(DType::kI8, keys, device)),
          Must(Tensor::Zeros(DType::kI8, rows, device)),
          Must(Tensor::Zeros(DType::kF32, scales, device)),
          Must(Tensor::Zeros(DType::kF32, scales, device))};
}

// The CPU's key codes (KeyCacheShape) as rows (num_blocks, block_size, kv_heads, head_dim).
Tensor KeyRows(const Tensor& cpu_keys, int64_t block_size) {
  const int64_t blocks = cpu_keys.dim(0), kv_heads = cpu_keys.dim(1), head_dim = cpu_keys.dim(2);
  Tensor rows = Must(Tensor::Empty(DType::kI8, {blocks, block_size, kv_heads, head_dim}));
  const int64_t row = kv_heads * head_dim;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t o = 0; o < block_size; ++o) {
      for (int64_t e = 0; e < row; ++e) {
        rows.data<int8_t>()[(b * block_size + o) * row + e] =
            cpu_keys.data<int8_t>()[(b * row + e) * block_size + o];
      }
    }
  }
  return rows;
}

class KvCacheInt8CudaTest : public ::testing::Test {
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

  Tensor Random(Shape shape) {
    Tensor t = Must(Tensor::Empty(DType::kF32, std::move(shape)));
    std::normal_distribution<double> normal(0.0, 1.0);
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

  // Device tensors stay allocated until the test ends, so that a temporary passed to a
  // kernel is not freed while the kernel may still be reading it.
  Tensor KeepAlive(Tensor t) {
    device_tensors_.push_back(t);
    return t;
  }
  Tensor OnGpu(const Tensor& host) { return KeepAlive(Must(host.To(kGpu, stream()))); }
  Int8Cache GpuCache(int64_t blocks, int64_t block_size, int64_t kv_heads, int64_t head_dim) {
    Int8Cache cache = ZeroCache(blocks, block_size, kv_heads, head_dim, kGpu);
    for (const Tensor* t : {&cache.k, &cache.v, &cache.k_scale, &cache.v_scale}) KeepAlive(*t);
    return cache;
  }
  Tensor ToHost(const Tensor& device) {
    Tensor host = Must(device.To(Device::Cpu(), stream()));
    const absl::Status synced = stream().Synchronize();
    TESSERA_CHECK(synced.ok(), std::string(synced.message()));
    return host;
  }

  std::mt19937 rng_;

 private:
  std::unique_ptr<Stream> stream_;
  std::vector<Tensor> device_tensors_;
};

TEST_F(KvCacheInt8CudaTest, WriteMatchesCpuBitwise) {
  struct Case {
    int64_t kv_heads, head_dim, block_size;
  };
  for (const Case& c :
       {Case{1, 9, 16}, Case{2, 64, 16}, Case{8, 128, 16}, Case{3, 256, 8}, Case{5, 80, 5}}) {
    SCOPED_TRACE("kv_heads " + std::to_string(c.kv_heads) + " head_dim " +
                 std::to_string(c.head_dim) + " block " + std::to_string(c.block_size));
    const int64_t blocks = 9, tokens = 40;
    Tensor k = Random({tokens, c.kv_heads, c.head_dim});
    Tensor v = Random({tokens, c.kv_heads, c.head_dim});
    // A zero head (scale 0) and an outlier.
    for (int64_t d = 0; d < c.head_dim; ++d) k.data<float>()[d] = 0.0f;
    v.data<float>()[c.head_dim / 2] = 300.0f;
    std::vector<int64_t> slots(blocks * c.block_size);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng_);
    slots.resize(tokens);
    slots[3] = -1;  // skipped
    const Tensor slot_mapping = HostI64(slots);

    Int8Cache cpu = ZeroCache(blocks, c.block_size, c.kv_heads, c.head_dim, Device::Cpu());
    ASSERT_OK(WriteKvCacheInt8(k, v, slot_mapping, cpu.k, cpu.v, cpu.k_scale, cpu.v_scale));
    Int8Cache gpu = GpuCache(blocks, c.block_size, c.kv_heads, c.head_dim);
    ASSERT_OK(cuda::WriteKvCacheInt8(OnGpu(k), OnGpu(v), OnGpu(slot_mapping), gpu.k, gpu.v,
                                     gpu.k_scale, gpu.v_scale, stream()));
    EXPECT_TRUE(BitEqual(ToHost(gpu.k), KeyRows(cpu.k, c.block_size))) << "k_cache";
    EXPECT_TRUE(BitEqual(ToHost(gpu.v), cpu.v)) << "v_cache";
    EXPECT_TRUE(BitEqual(ToHost(gpu.k_scale), cpu.k_scale)) << "k_scale";
    EXPECT_TRUE(BitEqual(ToHost(gpu.v_scale), cpu.v_scale)) << "v_scale";
  }
}

TEST_F(KvCacheInt8CudaTest, PagedAttentionInt8MatchesCpu) {
  struct Case {
    int64_t heads, kv_heads, head_dim, block_size;
    int window;
  };
  const std::vector<Case> cases = {
      {4, 4, 64, 16, 0},  {8, 2, 128, 16, 0}, {32, 8, 128, 16, 0}, {8, 1, 80, 8, 7},
      {2, 2, 256, 32, 0}, {6, 2, 32, 4, 3},   {4, 2, 20, 5, 0},    {8, 2, 9, 16, 0},
  };
  // Prefill, chunked prefill, decode, an idle sequence, a one-token sequence.
  struct Sequence {
    int64_t context, queries;
  };
  const std::vector<Sequence> sequences = {{37, 37}, {50, 10}, {129, 1}, {5, 0}, {1, 1}, {64, 2}};
  for (const Case& c : cases) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
                 " head_dim " + std::to_string(c.head_dim) + " block " +
                 std::to_string(c.block_size) + " window " + std::to_string(c.window));
    int64_t needed = 0, max_blocks = 0;
    for (const auto& s : sequences) {
      const int64_t blocks = (s.context + c.block_size - 1) / c.block_size;
      needed += blocks;
      max_blocks = std::max(max_blocks, blocks + 1);
    }
    const int64_t num_blocks = needed + 3;
    std::vector<int32_t> permutation(num_blocks);
    std::iota(permutation.begin(), permutation.end(), 0);
    std::shuffle(permutation.begin(), permutation.end(), rng_);
    std::vector<int32_t> tables(sequences.size() * max_blocks, -1);
    std::vector<int32_t> starts = {0}, lens;
    std::vector<int64_t> slots;
    size_t next = 0;
    for (size_t s = 0; s < sequences.size(); ++s) {
      const int64_t blocks = (sequences[s].context + c.block_size - 1) / c.block_size;
      for (int64_t b = 0; b < blocks; ++b) tables[s * max_blocks + b] = permutation[next++];
      for (int64_t p = 0; p < sequences[s].context; ++p) {
        slots.push_back(int64_t{tables[s * max_blocks + p / c.block_size]} * c.block_size +
                        p % c.block_size);
      }
      starts.push_back(starts.back() + static_cast<int32_t>(sequences[s].queries));
      lens.push_back(static_cast<int32_t>(sequences[s].context));
    }
    const int64_t tokens = static_cast<int64_t>(slots.size()), rows = starts.back();
    Tensor k = Random({tokens, c.kv_heads, c.head_dim});
    Tensor v = Random({tokens, c.kv_heads, c.head_dim});
    const Tensor slot_mapping = HostI64(slots);
    Int8Cache cpu = ZeroCache(num_blocks, c.block_size, c.kv_heads, c.head_dim, Device::Cpu());
    ASSERT_OK(WriteKvCacheInt8(k, v, slot_mapping, cpu.k, cpu.v, cpu.k_scale, cpu.v_scale));
    Int8Cache gpu = GpuCache(num_blocks, c.block_size, c.kv_heads, c.head_dim);
    ASSERT_OK(cuda::WriteKvCacheInt8(OnGpu(k), OnGpu(v), OnGpu(slot_mapping), gpu.k, gpu.v,
                                     gpu.k_scale, gpu.v_scale, stream()));

    Tensor q = Random({rows, c.heads, c.head_dim});
    const Tensor host_starts = HostI32(starts), host_lens = HostI32(lens);
    const Tensor host_tables =
        HostI32(tables, {static_cast<int64_t>(sequences.size()), max_blocks});
    const AttentionParams params{1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.window};
    Tensor expected = Must(Tensor::Empty(DType::kF32, q.shape()));
    ASSERT_OK(PagedAttentionInt8(q, cpu.k, cpu.v, cpu.k_scale, cpu.v_scale, host_starts, host_lens,
                                 host_tables, params, expected));
    Tensor gpu_q = OnGpu(q);
    const Tensor gpu_starts = OnGpu(host_starts), gpu_lens = OnGpu(host_lens);
    const Tensor gpu_tables = OnGpu(host_tables);
    Tensor out = KeepAlive(Must(Tensor::Zeros(DType::kF32, q.shape(), kGpu)));
    ASSERT_OK(cuda::PagedAttentionInt8(gpu_q, gpu.k, gpu.v, gpu.k_scale, gpu.v_scale, gpu_starts,
                                       gpu_lens, gpu_tables, params, out, stream()));
    EXPECT_TRUE(AllClose(ToHost(out), expected, 1e-5, 1e-5));
    // Through the op, which dispatches on out's device.
    Tensor through_op = KeepAlive(Must(Tensor::Zeros(DType::kF32, q.shape(), kGpu)));
    ASSERT_OK(ops::PagedAttentionInt8(gpu_q, gpu.k, gpu.v, gpu.k_scale, gpu.v_scale, gpu_starts,
                                      gpu_lens, gpu_tables, params, through_op, stream()));
    EXPECT_TRUE(BitEqual(ToHost(through_op), ToHost(out))) << "ops";
    // In place: out is q.
    ASSERT_OK(cuda::PagedAttentionInt8(gpu_q, gpu.k, gpu.v, gpu.k_scale, gpu.v_scale, gpu_starts,
                                       gpu_lens, gpu_tables, params, gpu_q, stream()));
    EXPECT_TRUE(AllClose(ToHost(gpu_q), expected, 1e-5, 1e-5)) << "in place";
  }
}

TEST_F(KvCacheInt8CudaTest, PoisonsInconsistentSequencesAndSkipsSlotsBeyondTheCache) {
  const int64_t heads = 2, head_dim = 16, block_size = 4, blocks = 4;
  Int8Cache cache = GpuCache(blocks, block_size, heads, head_dim);
  std::vector<int64_t> all(blocks * block_size);
  std::iota(all.begin(), all.end(), 0);
  ASSERT_OK(cuda::WriteKvCacheInt8(OnGpu(Random({blocks * block_size, heads, head_dim})),
                                   OnGpu(Random({blocks * block_size, heads, head_dim})),
                                   OnGpu(HostI64(all)), cache.k, cache.v, cache.k_scale,
                                   cache.v_scale, stream()));
  // Sequence 0 is sound; 1 names block 9 of a 4-block cache; 2 has more context than its
  // table holds; 3 has more queries than context.
  const Tensor tables = OnGpu(HostI32({0, 1, 2, 9, 3, 0, 1, 2}, {4, 2}));
  const Tensor starts = OnGpu(HostI32({0, 1, 2, 3, 6}));
  const Tensor lens = OnGpu(HostI32({6, 7, 9, 2}));
  Tensor q = OnGpu(Random({6, heads, head_dim}));
  Tensor out = KeepAlive(Must(Tensor::Zeros(DType::kF32, {6, heads, head_dim}, kGpu)));
  ASSERT_OK(cuda::PagedAttentionInt8(q, cache.k, cache.v, cache.k_scale, cache.v_scale, starts,
                                     lens, tables, {0.25f, 0}, out, stream()));
  const Tensor host = ToHost(out);
  for (int64_t row = 0; row < 6; ++row) {
    const bool poisoned = std::isnan(ElementAsDouble(host, row * heads * head_dim));
    EXPECT_EQ(poisoned, row != 0) << "row " << row;
  }

  // A slot beyond the cache is skipped, like a negative one.
  const Tensor k_before = ToHost(cache.k), scale_before = ToHost(cache.k_scale);
  const Tensor kv = OnGpu(Random({2, heads, head_dim}));
  ASSERT_OK(cuda::WriteKvCacheInt8(kv, kv, OnGpu(HostI64({blocks * block_size, -1})), cache.k,
                                   cache.v, cache.k_scale, cache.v_scale, stream()));
  EXPECT_TRUE(BitEqual(ToHost(cache.k), k_before));
  EXPECT_TRUE(BitEqual(ToHost(cache.k_scale), scale_before));
}

TEST_F(KvCacheInt8CudaTest, RejectsBadArgumentsNamingThem) {
  const int64_t blocks = 2, block_size = 4, kv_heads = 2, head_dim = 8;
  Int8Cache cache = GpuCache(blocks, block_size, kv_heads, head_dim);
  const Tensor k = OnGpu(Random({1, kv_heads, head_dim}));
  const Tensor slot = OnGpu(HostI64({0}));
  const absl::StatusCode invalid = absl::StatusCode::kInvalidArgument;
  Tensor f16_cache =
      KeepAlive(Must(Tensor::Zeros(DType::kF16, {blocks, block_size, kv_heads, head_dim}, kGpu)));
  EXPECT_TRUE(IsError(cuda::WriteKvCacheInt8(k, k, slot, f16_cache, cache.v, cache.k_scale,
                                             cache.v_scale, stream()),
                      invalid, {"WriteKvCacheInt8", "k_cache", "i8"}));
  Tensor host_scale = Must(Tensor::Zeros(DType::kF32, KvScaleShape(blocks, block_size, kv_heads)));
  EXPECT_TRUE(IsError(
      cuda::WriteKvCacheInt8(k, k, slot, cache.k, cache.v, host_scale, cache.v_scale, stream()),
      invalid, {"k_scale", "expected memory on cuda:0"}));
  Tensor q = OnGpu(Random({1, 2, 512}));
  Int8Cache wide = GpuCache(blocks, block_size, 1, 512);
  EXPECT_TRUE(IsError(cuda::PagedAttentionInt8(q, wide.k, wide.v, wide.k_scale, wide.v_scale,
                                               OnGpu(HostI32({0, 1})), OnGpu(HostI32({1})),
                                               OnGpu(HostI32({0}, {1, 1})), {}, q, stream()),
                      invalid, {"PagedAttentionInt8", "512"}));
  Stream cpu = Stream::Cpu();
  EXPECT_TRUE(IsError(
      cuda::WriteKvCacheInt8(k, k, slot, cache.k, cache.v, cache.k_scale, cache.v_scale, cpu),
      invalid, {"WriteKvCacheInt8", "stream"}));
}

}  // namespace
}  // namespace tessera::kernels
