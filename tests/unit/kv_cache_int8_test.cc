// The int8 KV cache kernels (kernels/cpu/kv_cache_int8.h): quantization against its
// definition, PagedAttentionInt8 against the f32 PagedAttention run over a cache that holds
// the dequantized values code * scale, the batch invariance of its rows, and its checks.

#include "kernels/cpu/kv_cache_int8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/ops/attention.h"
#include "runtime/core/stream.h"
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

Tensor I32(std::vector<int32_t> values, Shape shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
  absl::StatusOr<Tensor> t = Tensor::FromValues(absl::Span<const int32_t>(values), shape);
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

Tensor I64(std::vector<int64_t> values) {
  absl::StatusOr<Tensor> t = Tensor::FromValues(absl::Span<const int64_t>(values));
  TESSERA_CHECK(t.ok(), "allocation");
  return *t;
}

// One layer's int8 cache on the CPU, and the f32 cache of its dequantized values.
struct Int8Cache {
  Int8Cache(int64_t num_blocks, int64_t positions, int64_t heads, int64_t dims)
      : blocks(num_blocks),
        block_size(positions),
        kv_heads(heads),
        head_dim(dims),
        k(Zeros(DType::kI8, KeyCacheShape(blocks, block_size, kv_heads, head_dim))),
        v(Zeros(DType::kI8, {blocks, block_size, kv_heads, head_dim})),
        k_scale(Zeros(DType::kF32, KvScaleShape(blocks, block_size, kv_heads))),
        v_scale(Zeros(DType::kF32, KvScaleShape(blocks, block_size, kv_heads))) {}

  absl::Status Write(const Tensor& keys, const Tensor& values, const Tensor& slots) {
    return WriteKvCacheInt8(keys, values, slots, k, v, k_scale, v_scale);
  }

  // The scale of kv head g at `slot`.
  float KeyScale(int64_t slot, int64_t g) const {
    return k_scale.data<float>()[ScaleIndex(slot, g)];
  }
  float ValueScale(int64_t slot, int64_t g) const {
    return v_scale.data<float>()[ScaleIndex(slot, g)];
  }
  // The code of dimension d of kv head g at `slot`.
  int KeyCode(int64_t slot, int64_t g, int64_t d) const {
    const int64_t block = slot / block_size, offset = slot % block_size;
    return k.data<int8_t>()[((block * kv_heads + g) * head_dim + d) * block_size + offset];
  }
  int ValueCode(int64_t slot, int64_t g, int64_t d) const {
    return v.data<int8_t>()[(slot * kv_heads + g) * head_dim + d];
  }

  // f32 caches in PagedAttention's layouts holding code * scale (exact in f32).
  std::pair<Tensor, Tensor> Dequantized() const {
    Tensor k_f32 = Zeros(DType::kF32, KeyCacheShape(blocks, block_size, kv_heads, head_dim));
    Tensor v_f32 = Zeros(DType::kF32, {blocks, block_size, kv_heads, head_dim});
    for (int64_t slot = 0; slot < blocks * block_size; ++slot) {
      const int64_t block = slot / block_size, offset = slot % block_size;
      for (int64_t g = 0; g < kv_heads; ++g) {
        for (int64_t d = 0; d < head_dim; ++d) {
          k_f32.data<float>()[((block * kv_heads + g) * head_dim + d) * block_size + offset] =
              static_cast<float>(KeyCode(slot, g, d)) * KeyScale(slot, g);
          v_f32.data<float>()[(slot * kv_heads + g) * head_dim + d] =
              static_cast<float>(ValueCode(slot, g, d)) * ValueScale(slot, g);
        }
      }
    }
    return {k_f32, v_f32};
  }

  int64_t ScaleIndex(int64_t slot, int64_t g) const {
    const int64_t block = slot / block_size, offset = slot % block_size;
    return (block * kv_heads + g) * block_size + offset;
  }

  int64_t blocks, block_size, kv_heads, head_dim;
  Tensor k, v, k_scale, v_scale;
};

TEST(KvCacheInt8, BytesPerTokenCountsCodesAndScales) {
  // Eight kv heads of 128: 2 * 8 * (128 + 4) bytes, against 4 * 8 * 128 for bf16.
  EXPECT_EQ(KvCacheInt8BytesPerToken(8, 128), 2112);
  for (int64_t head_dim : {64, 80, 96, 128, 256}) {
    const double ratio = static_cast<double>(4 * 2 * head_dim) /
                         static_cast<double>(KvCacheInt8BytesPerToken(2, head_dim));
    EXPECT_DOUBLE_EQ(ratio, 2.0 * head_dim / (head_dim + 4.0));
    EXPECT_GE(ratio, 1.88) << "head_dim " << head_dim;
  }
  // What the four tensors of a cache take, a token at a time.
  const Int8Cache cache(7, 16, 3, 72);
  EXPECT_EQ(cache.k.nbytes() + cache.v.nbytes() + cache.k_scale.nbytes() + cache.v_scale.nbytes(),
            static_cast<size_t>(7 * 16 * KvCacheInt8BytesPerToken(3, 72)));
}

TEST(WriteKvCacheInt8, RoundTripsWithinHalfAScale) {
  for (int64_t head_dim : {9, 64, 128}) {
    const int64_t kv_heads = 3, block_size = 16, blocks = 6, tokens = 40;
    Int8Cache cache(blocks, block_size, kv_heads, head_dim);
    Tensor k = Random(DType::kF32, {tokens, kv_heads, head_dim}, 1);
    Tensor v = Random(DType::kF32, {tokens, kv_heads, head_dim}, 2);
    // Token 0's first head is zero; token 1's first head has an outlier.
    for (int64_t d = 0; d < head_dim; ++d) k.data<float>()[d] = 0.0f;
    v.data<float>()[kv_heads * head_dim + 3] = 1000.0f;
    std::vector<int64_t> slots(tokens);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937(3));
    ASSERT_OK(cache.Write(k, v, I64(slots)));
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t g = 0; g < kv_heads; ++g) {
        for (bool key : {true, false}) {
          const float* x = (key ? k : v).data<float>() + (t * kv_heads + g) * head_dim;
          const float scale = key ? cache.KeyScale(slots[t], g) : cache.ValueScale(slots[t], g);
          float max = 0.0f;
          for (int64_t d = 0; d < head_dim; ++d) max = std::max(max, std::abs(x[d]));
          ASSERT_EQ(scale, max / 127.0f) << "token " << t << " head " << g;
          int largest = 0;
          for (int64_t d = 0; d < head_dim; ++d) {
            const int code = key ? cache.KeyCode(slots[t], g, d) : cache.ValueCode(slots[t], g, d);
            ASSERT_LE(std::abs(code), 127);
            largest = std::max(largest, std::abs(code));
            // Within half a scale, up to the rounding of x / scale.
            ASSERT_LE(std::abs(static_cast<float>(code) * scale - x[d]), scale * (0.5f + 1e-5f))
                << "token " << t << " head " << g << " dim " << d << " key " << key;
          }
          EXPECT_EQ(largest, max == 0.0f ? 0 : 127) << "token " << t << " head " << g;
        }
      }
    }
  }
}

TEST(WriteKvCacheInt8, RoundsTiesToEvenAndPoisonsNonFiniteHeads) {
  const int64_t head_dim = 8;
  Int8Cache cache(1, 4, 1, head_dim);
  // Scale exactly 1: codes are x rounded, ties to even.
  Tensor k = Zeros(DType::kF32, {2, 1, head_dim});
  const float first[head_dim] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -126.5f, 3.49f};
  const float second[head_dim] = {1.0f, std::numeric_limits<float>::infinity()};
  std::copy_n(first, head_dim, k.data<float>());
  std::copy_n(second, head_dim, k.data<float>() + head_dim);
  ASSERT_OK(cache.Write(k, k, I64({0, 1})));
  EXPECT_EQ(cache.KeyScale(0, 0), 1.0f);
  const int expected[head_dim] = {127, 0, 2, 2, 0, -2, -126, 3};
  for (int64_t d = 0; d < head_dim; ++d) {
    EXPECT_EQ(cache.KeyCode(0, 0, d), expected[d]) << d;
    EXPECT_EQ(cache.ValueCode(0, 0, d), expected[d]) << d;
  }
  EXPECT_TRUE(std::isnan(cache.KeyScale(1, 0)));
  EXPECT_TRUE(std::isnan(cache.ValueScale(1, 0)));
}

TEST(WriteKvCacheInt8, NegativeSlotsLeaveTheCacheUntouched) {
  const int64_t kv_heads = 2, head_dim = 16, block_size = 4, blocks = 3;
  Int8Cache cache(blocks, block_size, kv_heads, head_dim);
  for (Tensor* codes : {&cache.k, &cache.v}) std::memset(codes->data(), 0x55, codes->nbytes());
  for (Tensor* scales : {&cache.k_scale, &cache.v_scale}) {
    std::fill_n(scales->data<float>(), scales->numel(), 7.0f);
  }
  Tensor k = Random(DType::kF32, {3, kv_heads, head_dim}, 4);
  Tensor v = Random(DType::kF32, {3, kv_heads, head_dim}, 5);
  ASSERT_OK(cache.Write(k, v, I64({-1, 5, -3})));
  for (int64_t slot = 0; slot < blocks * block_size; ++slot) {
    for (int64_t g = 0; g < kv_heads; ++g) {
      EXPECT_EQ(cache.KeyScale(slot, g) == 7.0f, slot != 5) << slot;
      EXPECT_EQ(cache.ValueScale(slot, g) == 7.0f, slot != 5) << slot;
      if (slot == 5) continue;
      for (int64_t d = 0; d < head_dim; ++d) {
        ASSERT_EQ(cache.KeyCode(slot, g, d), 0x55) << slot;
        ASSERT_EQ(cache.ValueCode(slot, g, d), 0x55) << slot;
      }
    }
  }
  // A slot beyond the cache is an error, and nothing of the call is written.
  auto bytes = [](const Tensor& t) {
    const auto* p = static_cast<const uint8_t*>(t.data());
    return std::vector<uint8_t>(p, p + t.nbytes());
  };
  const std::vector<uint8_t> k_before = bytes(cache.k), scale_before = bytes(cache.k_scale);
  EXPECT_TRUE(IsError(cache.Write(k, v, I64({6, 7, blocks * block_size})),
                      absl::StatusCode::kOutOfRange, {"WriteKvCacheInt8", "slot"}));
  EXPECT_EQ(bytes(cache.k), k_before);
  EXPECT_EQ(bytes(cache.k_scale), scale_before);
}

// A batch of sequences over scattered blocks of one cache: the context of sequence s fills
// positions [0, context) through block table row s, and its queries are the newest tokens.
struct Sequence {
  int64_t context, queries;
};

struct Batch {
  std::vector<int32_t> starts = {0}, lens, tables;
  int64_t max_blocks = 0, rows = 0;
};

// Writes every sequence's context into `cache` from random k and v, over a random
// permutation of the cache's blocks.
Batch WriteBatch(const std::vector<Sequence>& sequences, Int8Cache& cache, uint32_t seed) {
  Batch batch;
  for (const Sequence& s : sequences) {
    batch.max_blocks =
        std::max(batch.max_blocks, (s.context + cache.block_size - 1) / cache.block_size);
  }
  std::vector<int32_t> permutation(cache.blocks);
  std::iota(permutation.begin(), permutation.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(permutation.begin(), permutation.end(), rng);
  batch.tables.assign(sequences.size() * batch.max_blocks, 0);
  size_t next = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int64_t context = sequences[s].context;
    std::vector<int64_t> slots(context);
    for (int64_t p = 0; p < context; ++p) {
      if (p % cache.block_size == 0) {
        TESSERA_CHECK(next < permutation.size(), "the test's cache is too small");
        batch.tables[s * batch.max_blocks + p / cache.block_size] = permutation[next++];
      }
      slots[p] = batch.tables[s * batch.max_blocks + p / cache.block_size] * cache.block_size +
                 p % cache.block_size;
    }
    Tensor k = Random(DType::kF32, {context, cache.kv_heads, cache.head_dim}, rng());
    Tensor v = Random(DType::kF32, {context, cache.kv_heads, cache.head_dim}, rng());
    TESSERA_CHECK(cache.Write(k, v, I64(slots)).ok(), "write");
    batch.starts.push_back(batch.starts.back() + static_cast<int32_t>(sequences[s].queries));
    batch.lens.push_back(static_cast<int32_t>(context));
  }
  batch.rows = batch.starts.back();
  return batch;
}

TEST(PagedAttentionInt8, MatchesTheF32KernelOverTheDequantizedCache) {
  const std::vector<std::vector<Sequence>> batches = {
      // Mixed: prefill on top of a cached prefix, decode, a long prefill, a one-token sequence.
      {{9, 6}, {11, 1}, {37, 5}, {1, 1}, {70, 3}},
      // Decode only, at contexts across several blocks.
      {{1, 1}, {16, 1}, {17, 1}, {100, 1}},
      // Prefill only, whole prompts.
      {{23, 23}, {40, 40}},
  };
  // Blocks of 4, 16 and 20 positions: runs shorter than a vector, whole vectors, and a
  // vector and a part.
  for (int64_t block_size : {16, 4, 20}) {
    // kv_heads 2: heads 1x, 2x, 4x and 7x (Qwen2-0.5B) and 9x (past a tile of 8) of them.
    for (int64_t heads : {2, 4, 8, 14, 18}) {
      // Odd and small head sizes take the portable values step, 64 and 128 the vectors.
      for (int64_t head_dim : {9, 16, 24, 64, 128}) {
        for (int window : {0, 13}) {
          for (size_t n = 0; n < batches.size(); ++n) {
            const std::vector<Sequence>& sequences = batches[n];
            const int64_t kv_heads = 2;
            Int8Cache cache(60, block_size, kv_heads, head_dim);
            const Batch batch = WriteBatch(sequences, cache, static_cast<uint32_t>(n + 1));
            const auto [k_f32, v_f32] = cache.Dequantized();
            Tensor q = Random(DType::kF32, {batch.rows, heads, head_dim}, 12);
            const Tensor starts = I32(batch.starts), lens = I32(batch.lens);
            const Tensor tables =
                I32(batch.tables, {static_cast<int64_t>(sequences.size()), batch.max_blocks});
            const AttentionParams params{1.0f / std::sqrt(static_cast<float>(head_dim)), window};
            Tensor expected = Zeros(DType::kF32, q.shape());
            ASSERT_OK(PagedAttention(q, k_f32, v_f32, starts, lens, tables, params, expected));
            Tensor out = Zeros(DType::kF32, q.shape());
            ASSERT_OK(PagedAttentionInt8(q, cache.k, cache.v, cache.k_scale, cache.v_scale, starts,
                                         lens, tables, params, out));
            for (int64_t e = 0; e < out.numel(); ++e) {
              const float want = expected.data<float>()[e];
              ASSERT_NEAR(out.data<float>()[e], want, 1e-5 * (1.0 + std::abs(want)))
                  << "element " << e << " batch " << n << " block " << block_size << " heads "
                  << heads << " head_dim " << head_dim << " window " << window;
            }
          }
        }
      }
    }
  }
}

// What batching invariance rests on: a sequence's rows are bitwise the same whether the
// sequence runs alone or among others, and a query row alone (a decode step) is bitwise the
// same row of its prefill chunk.
TEST(PagedAttentionInt8, RowsAreBitwiseTheSameAloneAndInAnyBatch) {
  const std::vector<Sequence> sequences = {{150, 11}, {37, 1}, {64, 64}, {5, 2}};
  const int64_t heads = 14, kv_heads = 2, block_size = 16;
  for (int64_t head_dim : {9, 16, 24, 64}) {
    Int8Cache cache(30, block_size, kv_heads, head_dim);
    const Batch batch = WriteBatch(sequences, cache, 7);
    Tensor q = Random(DType::kF32, {batch.rows, heads, head_dim}, 43);
    const AttentionParams params{1.0f / std::sqrt(static_cast<float>(head_dim)), 0};
    const int64_t row_floats = heads * head_dim;
    Tensor together = Zeros(DType::kF32, q.shape());
    ASSERT_OK(PagedAttentionInt8(
        q, cache.k, cache.v, cache.k_scale, cache.v_scale, I32(batch.starts), I32(batch.lens),
        I32(batch.tables, {static_cast<int64_t>(sequences.size()), batch.max_blocks}), params,
        together));
    for (size_t s = 0; s < sequences.size(); ++s) {
      const std::vector<int32_t> table(batch.tables.begin() + s * batch.max_blocks,
                                       batch.tables.begin() + (s + 1) * batch.max_blocks);
      const int64_t first_row = batch.starts[s], queries = sequences[s].queries;
      // The sequence alone.
      ASSERT_OK_AND_ASSIGN(Tensor q_alone, q.Slice(first_row, first_row + queries));
      Tensor alone = Zeros(DType::kF32, q_alone.shape());
      ASSERT_OK(PagedAttentionInt8(q_alone, cache.k, cache.v, cache.k_scale, cache.v_scale,
                                   I32({0, static_cast<int32_t>(queries)}), I32({batch.lens[s]}),
                                   I32(table, {1, batch.max_blocks}), params, alone));
      for (int64_t e = 0; e < alone.numel(); ++e) {
        ASSERT_EQ(std::bit_cast<uint32_t>(alone.data<float>()[e]),
                  std::bit_cast<uint32_t>(together.data<float>()[first_row * row_floats + e]))
            << "sequence " << s << " element " << e << " head_dim " << head_dim;
      }
      // Each of its rows alone, as a decode step over the context up to it.
      for (int64_t i = 0; i < queries; ++i) {
        ASSERT_OK_AND_ASSIGN(Tensor one_q, q.Slice(first_row + i, first_row + i + 1));
        Tensor one = Zeros(DType::kF32, {1, heads, head_dim});
        const int32_t context = static_cast<int32_t>(sequences[s].context - queries + i + 1);
        ASSERT_OK(PagedAttentionInt8(one_q, cache.k, cache.v, cache.k_scale, cache.v_scale,
                                     I32({0, 1}), I32({context}), I32(table, {1, batch.max_blocks}),
                                     params, one));
        for (int64_t e = 0; e < row_floats; ++e) {
          ASSERT_EQ(
              std::bit_cast<uint32_t>(one.data<float>()[e]),
              std::bit_cast<uint32_t>(together.data<float>()[(first_row + i) * row_floats + e]))
              << "sequence " << s << " row " << i << " element " << e << " head_dim " << head_dim;
        }
      }
    }
  }
}

TEST(PagedAttentionInt8, OpsRunTheCpuKernelsOnTheCpuStream) {
  const int64_t heads = 8, kv_heads = 2, head_dim = 32, block_size = 16;
  Int8Cache direct(8, block_size, kv_heads, head_dim),
      through_ops(8, block_size, kv_heads, head_dim);
  Tensor k = Random(DType::kF32, {40, kv_heads, head_dim}, 8);
  Tensor v = Random(DType::kF32, {40, kv_heads, head_dim}, 9);
  std::vector<int64_t> slots(40);
  std::iota(slots.begin(), slots.end(), 24);
  const Tensor slot_mapping = I64(slots);
  Stream cpu = Stream::Cpu();
  ASSERT_OK(direct.Write(k, v, slot_mapping));
  ASSERT_OK(ops::WriteKvCacheInt8(k, v, slot_mapping, through_ops.k, through_ops.v,
                                  through_ops.k_scale, through_ops.v_scale, cpu));
  for (auto [a, b] : {std::pair{&direct.k, &through_ops.k},
                      {&direct.v, &through_ops.v},
                      {&direct.k_scale, &through_ops.k_scale},
                      {&direct.v_scale, &through_ops.v_scale}}) {
    ASSERT_EQ(std::memcmp(a->data(), b->data(), a->nbytes()), 0);
  }
  Tensor q = Random(DType::kF32, {3, heads, head_dim}, 10);
  const Tensor starts = I32({0, 1, 3}), lens = I32({20, 40});
  const Tensor tables = I32({1, 2, 0, 1, 2, 3}, {2, 3});
  Tensor expected = Zeros(DType::kF32, q.shape()), out = Zeros(DType::kF32, q.shape());
  ASSERT_OK(PagedAttentionInt8(q, direct.k, direct.v, direct.k_scale, direct.v_scale, starts, lens,
                               tables, {0.2f, 0}, expected));
  ASSERT_OK(ops::PagedAttentionInt8(q, direct.k, direct.v, direct.k_scale, direct.v_scale, starts,
                                    lens, tables, {0.2f, 0}, out, cpu));
  EXPECT_EQ(std::memcmp(out.data(), expected.data(), out.nbytes()), 0);
}

TEST(PagedAttentionInt8, RejectsBadArgumentsNamingThem) {
  const int64_t blocks = 2, block_size = 4, kv_heads = 2, head_dim = 8;
  Int8Cache cache(blocks, block_size, kv_heads, head_dim);
  Tensor k = Random(DType::kF32, {1, kv_heads, head_dim}, 1);
  const Tensor slot = I64({0});
  const Tensor f32_k_cache =
      Zeros(DType::kF32, KeyCacheShape(blocks, block_size, kv_heads, head_dim));
  const Tensor rows_k_cache = Zeros(DType::kI8, {blocks, block_size, kv_heads, head_dim});
  const Tensor bf16_scale = Zeros(DType::kBF16, KvScaleShape(blocks, block_size, kv_heads));
  const Tensor short_scale = Zeros(DType::kF32, {blocks, kv_heads, block_size - 1});
  const absl::StatusCode invalid = absl::StatusCode::kInvalidArgument;

  // The write: each tensor wrong in turn.
  {
    Tensor bad = f32_k_cache;
    EXPECT_TRUE(IsError(WriteKvCacheInt8(k, k, slot, bad, cache.v, cache.k_scale, cache.v_scale),
                        invalid, {"WriteKvCacheInt8", "k_cache", "i8"}));
    bad = rows_k_cache;
    EXPECT_TRUE(IsError(WriteKvCacheInt8(k, k, slot, bad, cache.v, cache.k_scale, cache.v_scale),
                        invalid, {"k_cache", "expected shape"}));
    bad = Zeros(DType::kBF16, {blocks, block_size, kv_heads, head_dim});
    EXPECT_TRUE(IsError(WriteKvCacheInt8(k, k, slot, cache.k, bad, cache.k_scale, cache.v_scale),
                        invalid, {"v_cache"}));
    bad = short_scale;
    EXPECT_TRUE(IsError(WriteKvCacheInt8(k, k, slot, cache.k, cache.v, bad, cache.v_scale), invalid,
                        {"k_scale", "expected shape"}));
    bad = bf16_scale;
    EXPECT_TRUE(IsError(WriteKvCacheInt8(k, k, slot, cache.k, cache.v, cache.k_scale, bad), invalid,
                        {"v_scale", "f32"}));
    EXPECT_TRUE(IsError(cache.Write(Random(DType::kF32, {1, kv_heads, head_dim + 1}, 2), k, slot),
                        invalid, {"WriteKvCacheInt8", "k"}));
    EXPECT_TRUE(IsError(cache.Write(k, Random(DType::kBF16, {1, kv_heads, head_dim}, 2), slot),
                        invalid, {"v", "f32"}));
    EXPECT_TRUE(IsError(cache.Write(k, k, I32({0})), invalid, {"slot_mapping", "i64"}));
    EXPECT_TRUE(IsError(cache.Write(k, k, I64({0, 1})), invalid, {"slot_mapping"}));
  }

  // The attention.
  Tensor q = Random(DType::kF32, {1, 2, head_dim}, 3);
  Tensor out = Zeros(DType::kF32, q.shape());
  const Tensor starts = I32({0, 1}), lens = I32({5}), tables = I32({0, 1}, {1, 2});
  auto attend = [&](const Tensor& query, const Tensor& k_cache, const Tensor& k_scale,
                    const Tensor& query_starts, const Tensor& context_lens,
                    const Tensor& block_tables, Tensor& result) {
    return PagedAttentionInt8(query, k_cache, cache.v, k_scale, cache.v_scale, query_starts,
                              context_lens, block_tables, {1.0f, 0}, result);
  };
  ASSERT_OK(attend(q, cache.k, cache.k_scale, starts, lens, tables, out));
  EXPECT_TRUE(IsError(attend(q, f32_k_cache, cache.k_scale, starts, lens, tables, out), invalid,
                      {"PagedAttentionInt8", "k_cache"}));
  EXPECT_TRUE(
      IsError(attend(q, cache.k, short_scale, starts, lens, tables, out), invalid, {"k_scale"}));
  EXPECT_TRUE(IsError(attend(Random(DType::kF32, {1, 2, head_dim + 1}, 4), cache.k, cache.k_scale,
                             starts, lens, tables, out),
                      invalid, {"q"}));
  EXPECT_TRUE(IsError(attend(Random(DType::kF32, {1, 3, head_dim}, 4), cache.k, cache.k_scale,
                             starts, lens, tables, out),
                      invalid, {"q", "kv heads"}));
  Tensor wrong_out = Zeros(DType::kF32, {1, 2, head_dim + 1});
  EXPECT_TRUE(IsError(attend(q, cache.k, cache.k_scale, starts, lens, tables, wrong_out), invalid,
                      {"out"}));
  EXPECT_TRUE(IsError(attend(q, cache.k, cache.k_scale, I32({0, 2}), lens, tables, out), invalid,
                      {"query_starts"}));
  EXPECT_TRUE(IsError(attend(q, cache.k, cache.k_scale, starts, I32({9}), tables, out), invalid,
                      {"sequence 0"}));
  EXPECT_TRUE(IsError(attend(q, cache.k, cache.k_scale, starts, lens, I64({0, 1}), out), invalid,
                      {"block_tables", "i32"}));
  EXPECT_TRUE(IsError(attend(q, cache.k, cache.k_scale, starts, lens, I32({0, 7}, {1, 2}), out),
                      absl::StatusCode::kOutOfRange, {"block 1", "7"}));
}

}  // namespace
}  // namespace tessera::kernels
