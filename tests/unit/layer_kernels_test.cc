// The CPU kernels of a transformer layer against closed forms and against plain
// implementations written out here from the definitions (contiguous attention, complex
// rotation, explicit softmax sums), at several shapes.

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cpu/sampling.h"
#include "runtime/core/half.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor_values.h"
#include "tests/unit/random_tensor.h"
#include "tests/unit/status_test_util.h"

namespace tessera::kernels {
namespace {

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

TEST(EmbeddingLookup, ShardsSumToTheFullTable) {
  const int64_t vocab = 10, hidden = 4;
  Tensor table = Random(DType::kF32, {vocab, hidden}, 1);
  Tensor ids = I32({0, 9, 4, 5, 3});
  Tensor full = Zeros(DType::kF32, {5, hidden});
  ASSERT_OK(EmbeddingLookup(ids, table, 0, vocab, full));
  for (int64_t t = 0; t < 5; ++t) {
    for (int64_t i = 0; i < hidden; ++i) {
      EXPECT_EQ(full.data<float>()[t * hidden + i],
                table.data<float>()[ids.data<int32_t>()[t] * hidden + i]);
    }
  }
  // Two shards of 5 rows: each fills its own ids and zeros the rest; the sum is the table.
  Tensor sum = Zeros(DType::kF32, {5, hidden});
  for (int64_t begin : {0, 5}) {
    ASSERT_OK_AND_ASSIGN(Tensor shard, table.Slice(begin, begin + 5));
    Tensor part = Zeros(DType::kF32, {5, hidden});
    ASSERT_OK(EmbeddingLookup(ids, shard, begin, vocab, part));
    ASSERT_OK(AddInPlace(sum, part));
  }
  for (int64_t i = 0; i < sum.numel(); ++i) EXPECT_EQ(sum.data<float>()[i], full.data<float>()[i]);

  Tensor bad = I32({3, 10});
  Tensor bad_out = Zeros(DType::kF32, {2, hidden});
  absl::Status status = EmbeddingLookup(bad, table, 0, vocab, bad_out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("token id 10 at position 1"), absl::string_view::npos) << status;
}

TEST(RmsNorm, MatchesTheDefinitionForBothWeightTypes) {
  const int64_t rows = 3, hidden = 37;
  Tensor x = Random(DType::kF32, {rows, hidden}, 2);
  for (DType wtype : {DType::kF32, DType::kBF16}) {
    Tensor w = Random(wtype, {hidden}, 3);
    Tensor out = Zeros(DType::kF32, {rows, hidden});
    ASSERT_OK(RmsNorm(x, w, 1e-6f, out));
    for (int64_t r = 0; r < rows; ++r) {
      double mean_square = 0;
      for (int64_t i = 0; i < hidden; ++i) {
        double v = ElementAsDouble(x, r * hidden + i);
        mean_square += v * v / hidden;
      }
      for (int64_t i = 0; i < hidden; ++i) {
        double expected = ElementAsDouble(x, r * hidden + i) / std::sqrt(mean_square + 1e-6) *
                          ElementAsDouble(w, i);
        EXPECT_NEAR(out.data<float>()[r * hidden + i], expected, 1e-5 * (1 + std::abs(expected)));
      }
    }
  }
}

TEST(RmsNorm, AddRmsNormUpdatesTheResidualThenNormalizes) {
  Tensor residual = Random(DType::kF32, {2, 8}, 4);
  Tensor x = Random(DType::kF32, {2, 8}, 5);
  Tensor w = Random(DType::kF32, {8}, 6);
  Tensor expected_residual = Zeros(DType::kF32, {2, 8});
  for (int64_t i = 0; i < 16; ++i) {
    expected_residual.data<float>()[i] = residual.data<float>()[i] + x.data<float>()[i];
  }
  Tensor expected = Zeros(DType::kF32, {2, 8});
  ASSERT_OK(RmsNorm(expected_residual, w, 1e-5f, expected));
  Tensor out = Zeros(DType::kF32, {2, 8});
  ASSERT_OK(AddRmsNorm(residual, x, w, 1e-5f, out));
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_FLOAT_EQ(residual.data<float>()[i], expected_residual.data<float>()[i]);
    EXPECT_FLOAT_EQ(out.data<float>()[i], expected.data<float>()[i]);
  }
  EXPECT_EQ(RmsNorm(x, Random(DType::kF32, {7}, 1), 1e-5f, out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SiluMul, StaysAccurateAndFiniteFarFromZero) {
  std::vector<float> gates = {0.0f,  1e-8f,  -1e-8f, 0.5f,    -0.5f, 3.0f,  -3.0f, 20.0f, -20.0f,
                              88.0f, -88.0f, 100.0f, -100.0f, 1e4f,  -1e4f, 3e38f, -3e38f};
  const int64_t n = static_cast<int64_t>(gates.size());
  std::vector<float> values(gates);
  values.insert(values.end(), gates.size(), 1.0f);  // up = 1
  ASSERT_OK_AND_ASSIGN(Tensor gate_up,
                       Tensor::FromValues(absl::Span<const float>(values), Shape{1, 2 * n}));
  Tensor out = Zeros(DType::kF32, {1, n});
  ASSERT_OK(SiluMul(gate_up, out));
  for (int64_t i = 0; i < n; ++i) {
    const double g = gates[i];
    const double expected = g / (1.0 + std::exp(-g));
    const float got = out.data<float>()[i];
    ASSERT_TRUE(std::isfinite(got)) << "gate " << g;
    EXPECT_NEAR(got, expected, 1e-6 * std::abs(expected) + 1e-30) << "gate " << g;
  }
}

TEST(SiluMul, GatesTheUpHalf) {
  Tensor gate_up = Random(DType::kF32, {3, 10}, 7);
  Tensor out = Zeros(DType::kF32, {3, 5});
  ASSERT_OK(SiluMul(gate_up, out));
  for (int64_t t = 0; t < 3; ++t) {
    for (int64_t i = 0; i < 5; ++i) {
      double g = gate_up.data<float>()[t * 10 + i], u = gate_up.data<float>()[t * 10 + 5 + i];
      EXPECT_NEAR(out.data<float>()[t * 5 + i], g / (1 + std::exp(-g)) * u, 1e-6);
    }
  }
}

TEST(SoftmaxRows, RowsSumToOneAndKeepOrder) {
  Tensor x = Random(DType::kF32, {4, 33}, 8);
  x.data<float>()[0] = 80.0f;  // large values must not overflow
  Tensor before = Zeros(DType::kF32, {4, 33});
  Stream cpu = Stream::Cpu();
  ASSERT_OK(before.CopyFrom(x, cpu));
  ASSERT_OK(SoftmaxRows(x));
  for (int64_t r = 0; r < 4; ++r) {
    double sum = 0, denominator = 0, max = -1e30;
    for (int64_t c = 0; c < 33; ++c) max = std::max<double>(max, before.data<float>()[r * 33 + c]);
    for (int64_t c = 0; c < 33; ++c)
      denominator += std::exp(before.data<float>()[r * 33 + c] - max);
    for (int64_t c = 0; c < 33; ++c) {
      double expected = std::exp(before.data<float>()[r * 33 + c] - max) / denominator;
      EXPECT_NEAR(x.data<float>()[r * 33 + c], expected, 1e-6);
      sum += x.data<float>()[r * 33 + c];
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST(Rotary, InverseFrequenciesMatchTransformersFormulas) {
  RotaryConfig plain{.rotary_dim = 128, .theta = 500000.0f};
  std::vector<float> inv = RotaryInverseFrequencies(plain);
  ASSERT_EQ(inv.size(), 64u);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  EXPECT_NEAR(inv[1], 0.8146172338565447, 1e-6);
  EXPECT_NEAR(inv[40], 0.0002742481756762073, 1e-9);

  // Llama 3.1's published scaling: factor 8, low 1, high 4, original context 8192. Values
  // from the formula of transformers' _compute_llama3_parameters evaluated in double.
  RotaryConfig llama3 = plain;
  llama3.scaling = {RotaryScaling::Type::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  std::vector<float> scaled = RotaryInverseFrequencies(llama3);
  const std::map<int, double> expected = {{20, 0.016560440080994446},    // high: unchanged
                                          {29, 0.002166570763503359},    // blended
                                          {32, 0.0005248461609929547},   // blended
                                          {34, 0.00017850781276799638},  // blended
                                          {35, 9.556212353964683e-05},   // low: / 8
                                          {63, 3.068925988914511e-07}};
  for (auto [j, value] : expected) EXPECT_NEAR(scaled[j], value, 2e-6 * value + 1e-12) << j;

  RotaryConfig linear = plain;
  linear.scaling = {RotaryScaling::Type::kLinear, 4.0f};
  std::vector<float> slowed = RotaryInverseFrequencies(linear);
  for (size_t j = 0; j < inv.size(); ++j) EXPECT_FLOAT_EQ(slowed[j], inv[j] / 4.0f);
}

// Rotation of the pair (a, b) by angle: (a cos - b sin, b cos + a sin), for each layout's
// pairing; dimensions past rotary_dim pass through.
TEST(Rotary, RotatesThePairsOfEachLayout) {
  const int64_t tokens = 3, heads = 2, head_dim = 8;
  for (RotaryLayout layout : {RotaryLayout::kHalfSplit, RotaryLayout::kInterleaved}) {
    for (int rotary_dim : {8, 4}) {
      RotaryConfig config{.rotary_dim = rotary_dim, .theta = 10000.0f, .layout = layout};
      std::vector<float> inv = RotaryInverseFrequencies(config);
      Tensor x = Random(DType::kF32, {tokens, heads, head_dim}, 9);
      Tensor original = Random(DType::kF32, {tokens, heads, head_dim}, 9);
      Tensor positions = I32({0, 5, 1000});
      ASSERT_OK(ApplyRotary(x, positions, inv, config));
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          const float* in = original.data<float>() + (t * heads + h) * head_dim;
          const float* out = x.data<float>() + (t * heads + h) * head_dim;
          for (int j = 0; j < rotary_dim / 2; ++j) {
            int a = layout == RotaryLayout::kHalfSplit ? j : 2 * j;
            int b = layout == RotaryLayout::kHalfSplit ? j + rotary_dim / 2 : 2 * j + 1;
            double angle = positions.data<int32_t>()[t] * static_cast<double>(inv[j]);
            EXPECT_NEAR(out[a], in[a] * std::cos(angle) - in[b] * std::sin(angle), 2e-4);
            EXPECT_NEAR(out[b], in[b] * std::cos(angle) + in[a] * std::sin(angle), 2e-4);
          }
          for (int64_t d = rotary_dim; d < head_dim; ++d) EXPECT_EQ(out[d], in[d]);
        }
      }
    }
  }
}

// Attention written out over contiguous keys and values: the reference for the paged kernel.
std::vector<float> ContiguousAttention(const std::vector<float>& q, const std::vector<float>& k,
                                       const std::vector<float>& v, int64_t queries,
                                       int64_t context, int64_t heads, int64_t kv_heads,
                                       int64_t dim, float scale, int window) {
  std::vector<float> out(queries * heads * dim, 0.0f);
  for (int64_t i = 0; i < queries; ++i) {
    int64_t p = context - queries + i;
    for (int64_t h = 0; h < heads; ++h) {
      int64_t g = h / (heads / kv_heads);
      std::vector<double> w;
      std::vector<int64_t> keys;
      for (int64_t j = 0; j <= p; ++j) {
        if (window > 0 && p - j >= window) continue;
        double dot = 0;
        for (int64_t d = 0; d < dim; ++d) {
          dot += q[(i * heads + h) * dim + d] * k[(j * kv_heads + g) * dim + d];
        }
        w.push_back(dot * scale);
        keys.push_back(j);
      }
      double max = *std::max_element(w.begin(), w.end()), total = 0;
      for (double& x : w) total += (x = std::exp(x - max));
      for (size_t n = 0; n < keys.size(); ++n) {
        for (int64_t d = 0; d < dim; ++d) {
          out[(i * heads + h) * dim + d] += w[n] / total * v[(keys[n] * kv_heads + g) * dim + d];
        }
      }
    }
  }
  return out;
}

TEST(PagedAttention, MatchesContiguousAttentionForPrefillDecodeGqaAndWindows) {
  // Three sequences in one batch: one prefilling 6 tokens on top of 3 cached, one decoding
  // its 11th token, one prefilling 5 on top of 32 (spans beyond eight positions). Their
  // blocks are scattered through the cache. Blocks of 4, 16 and 20 tokens: runs shorter
  // than a vector, whole vectors, and a vector and a part.
  struct Seq {
    int64_t context, queries;
  };
  const std::vector<Seq> seqs = {{9, 6}, {11, 1}, {37, 5}};
  for (int64_t block_size : {4, 16, 20}) {
    // 1 to 4, 7 (Qwen2-0.5B) and 9 (past a tile of 8) query heads per kv head.
    for (int64_t heads : {2, 4, 6, 8, 14, 18}) {
      const int64_t kv_heads = 2, max_blocks = 10, blocks = 3 * max_blocks;
      std::vector<int32_t> permutation(blocks);
      std::iota(permutation.begin(), permutation.end(), 0);
      std::shuffle(permutation.begin(), permutation.end(), std::mt19937(block_size));
      std::vector<int32_t> table_values(permutation.begin(), permutation.end());
      // head_dim 8 to 136: every split of a head into 64-, 32-, 16- and 8-float pieces; the
      // cache in f32 and in bf16 (the values rounded to it on the way in).
      for (int64_t dim : {8, 16, 24, 64, 72, 136}) {
        for (auto [window, cache_type] :
             {std::pair{0, DType::kF32}, std::pair{4, DType::kF32}, std::pair{13, DType::kF32},
              std::pair{0, DType::kBF16}, std::pair{13, DType::kBF16}}) {
          Tensor k_cache = Zeros(cache_type, KeyCacheShape(blocks, block_size, kv_heads, dim));
          Tensor v_cache = Zeros(cache_type, {blocks, block_size, kv_heads, dim});
          std::vector<std::vector<float>> ks, vs;
          std::mt19937 rng(11);
          for (size_t s = 0; s < seqs.size(); ++s) {
            // Write the whole context through WriteKvCache, slot by slot.
            const int64_t context = seqs[s].context;
            Tensor k = Random(DType::kF32, {context, kv_heads, dim}, rng());
            Tensor v = Random(DType::kF32, {context, kv_heads, dim}, rng());
            std::vector<int64_t> slots(context);
            for (int64_t p = 0; p < context; ++p) {
              slots[p] =
                  table_values[s * max_blocks + p / block_size] * block_size + p % block_size;
            }
            ASSERT_OK_AND_ASSIGN(Tensor slot_mapping,
                                 Tensor::FromValues(absl::Span<const int64_t>(slots)));
            ASSERT_OK(WriteKvCache(k, v, slot_mapping, k_cache, v_cache));
            ks.emplace_back(k.data<float>(), k.data<float>() + k.numel());
            vs.emplace_back(v.data<float>(), v.data<float>() + v.numel());
            if (cache_type == DType::kBF16) {
              for (auto* values : {&ks.back(), &vs.back()}) {
                for (float& value : *values) value = BFloat16::FromFloat(value).ToFloat();
              }
            }
          }
          const int64_t total_queries = 12;
          Tensor q = Random(DType::kF32, {total_queries, heads, dim}, 12);
          Tensor out = Zeros(DType::kF32, {total_queries, heads, dim});
          Tensor tables = I32(table_values, {3, max_blocks});
          float scale = 1.0f / std::sqrt(static_cast<float>(dim));
          ASSERT_OK(PagedAttention(q, k_cache, v_cache, I32({0, 6, 7, 12}), I32({9, 11, 37}),
                                   tables, {scale, window}, out));
          int64_t row = 0;
          for (size_t s = 0; s < seqs.size(); ++s) {
            std::vector<float> qs(q.data<float>() + row * heads * dim,
                                  q.data<float>() + (row + seqs[s].queries) * heads * dim);
            std::vector<float> expected =
                ContiguousAttention(qs, ks[s], vs[s], seqs[s].queries, seqs[s].context, heads,
                                    kv_heads, dim, scale, window);
            for (size_t e = 0; e < expected.size(); ++e) {
              ASSERT_NEAR(out.data<float>()[row * heads * dim + e], expected[e], 1e-5)
                  << "sequence " << s << " element " << e << " window " << window << " dim " << dim
                  << " block " << block_size << " heads " << heads;
            }
            row += seqs[s].queries;
          }
        }
      }
    }
  }
}

// What batching invariance rests on: a query row's output is bitwise the same whether it is
// computed alone (a decode step) or among other rows of its prompt (a prefill chunk).
TEST(PagedAttention, EachRowIsRightAndBitwiseTheSameAloneAndInAPrefillChunk) {
  // Many blocks of context, and 7 query heads per kv head (as Qwen2-0.5B).
  const int64_t heads = 14, kv_heads = 2, block_size = 16, context = 150, queries = 11;
  for (int64_t dim : {16, 64}) {
    for (DType cache_type : {DType::kF32, DType::kBF16}) {
      Tensor k_cache = Zeros(cache_type, KeyCacheShape(12, block_size, kv_heads, dim));
      Tensor v_cache = Zeros(cache_type, {12, block_size, kv_heads, dim});
      std::vector<int64_t> slots(context);
      const std::vector<int32_t> table = {2, 0, 3, 11, 5, 7, 1, 9, 4, 10};
      for (int64_t p = 0; p < context; ++p) {
        slots[p] = table[p / block_size] * block_size + p % block_size;
      }
      ASSERT_OK_AND_ASSIGN(Tensor slot_mapping,
                           Tensor::FromValues(absl::Span<const int64_t>(slots)));
      Tensor k = Random(DType::kF32, {context, kv_heads, dim}, 41);
      Tensor v = Random(DType::kF32, {context, kv_heads, dim}, 42);
      ASSERT_OK(WriteKvCache(k, v, slot_mapping, k_cache, v_cache));
      std::vector<float> ks(k.data<float>(), k.data<float>() + k.numel());
      std::vector<float> vs(v.data<float>(), v.data<float>() + v.numel());
      if (cache_type == DType::kBF16) {
        for (auto* values : {&ks, &vs}) {
          for (float& value : *values) value = BFloat16::FromFloat(value).ToFloat();
        }
      }
      Tensor q = Random(DType::kF32, {queries, heads, dim}, 43);
      const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
      Tensor chunk = Zeros(DType::kF32, {queries, heads, dim});
      ASSERT_OK(PagedAttention(q, k_cache, v_cache, I32({0, static_cast<int32_t>(queries)}),
                               I32({static_cast<int32_t>(context)}), I32(table, {1, 10}),
                               {scale, 0}, chunk));
      const int64_t row_floats = heads * dim;
      const std::vector<float> expected =
          ContiguousAttention(std::vector<float>(q.data<float>(), q.data<float>() + q.numel()), ks,
                              vs, queries, context, heads, kv_heads, dim, scale, 0);
      for (size_t e = 0; e < expected.size(); ++e) {
        ASSERT_NEAR(chunk.data<float>()[e], expected[e], 1e-5) << "element " << e;
      }
      for (int64_t i = 0; i < queries; ++i) {
        ASSERT_OK_AND_ASSIGN(Tensor one_q, q.Slice(i, i + 1));
        Tensor alone = Zeros(DType::kF32, {1, heads, dim});
        const int32_t row_context = static_cast<int32_t>(context - queries + i + 1);
        ASSERT_OK(PagedAttention(one_q, k_cache, v_cache, I32({0, 1}), I32({row_context}),
                                 I32(table, {1, 10}), {scale, 0}, alone));
        for (int64_t e = 0; e < row_floats; ++e) {
          ASSERT_EQ(std::bit_cast<uint32_t>(alone.data<float>()[e]),
                    std::bit_cast<uint32_t>(chunk.data<float>()[i * row_floats + e]))
              << "row " << i << " element " << e << " dim " << dim << " " << NameOf(cache_type);
        }
      }
    }
  }
}

TEST(PagedAttention, RejectsBlocksOutsideTheCache) {
  Tensor k_cache = Zeros(DType::kF32, KeyCacheShape(2, 4, 1, 8));
  Tensor v_cache = Zeros(DType::kF32, {2, 4, 1, 8});
  Tensor q = Random(DType::kF32, {1, 1, 8}, 1);
  Tensor out = Zeros(DType::kF32, {1, 1, 8});
  absl::Status status = PagedAttention(q, k_cache, v_cache, I32({0, 1}), I32({5}),
                                       I32({0, 7}, {1, 2}), {1.0f, 0}, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
}

TEST(Linear, Float32AndBFloat16WeightsMatchTheDefinition) {
  for (int64_t m : {1, 3, 8, 9, 40}) {
    const int64_t k = 70, n = 300;
    Tensor x = Random(DType::kF32, {m, k}, 13);
    for (DType wtype : {DType::kF32, DType::kBF16}) {
      Tensor w = Random(wtype, {n, k}, 14);
      Tensor bias = Random(wtype, {n}, 15);
      Tensor out = Zeros(DType::kF32, {m, n});
      ASSERT_OK(Linear(x, w, bias, out));
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double expected = ElementAsDouble(bias, j);
          for (int64_t c = 0; c < k; ++c) {
            expected += ElementAsDouble(x, i * k + c) * ElementAsDouble(w, j * k + c);
          }
          ASSERT_NEAR(out.data<float>()[i * n + j], expected, 1e-4 * (1 + std::abs(expected)))
              << NameOf(wtype) << " m=" << m << " (" << i << "," << j << ")";
        }
      }
    }
  }
  Tensor x = Random(DType::kF32, {2, 5}, 1);
  Tensor w = Random(DType::kF32, {3, 4}, 1);
  Tensor out = Zeros(DType::kF32, {2, 3});
  EXPECT_EQ(Linear(x, w, Tensor(), out).code(), absl::StatusCode::kInvalidArgument);
}

// What batching invariance in the engine rests on: a row of out is bitwise the same whether
// it is computed alone or among any number of other rows.
TEST(Linear, EachRowIsBitwiseTheSameAloneAndInAnyBatch) {
  for (int64_t k : {7, 64, 70, 300}) {
    const int64_t n = 101, rows = 130;
    Tensor x = Random(DType::kF32, {rows, k}, 21);
    for (DType wtype : {DType::kF32, DType::kBF16}) {
      Tensor w = Random(wtype, {n, k}, 22);
      std::vector<float> alone(rows * n);
      for (int64_t i = 0; i < rows; ++i) {
        ASSERT_OK_AND_ASSIGN(Tensor row, x.Slice(i, i + 1));
        Tensor out = Zeros(DType::kF32, {1, n});
        ASSERT_OK(Linear(row, w, Tensor(), out));
        std::copy_n(out.data<float>(), n, alone.data() + i * n);
      }
      for (int64_t m : {2, 3, 4, 5, 9, 64, 65, 130}) {
        ASSERT_OK_AND_ASSIGN(Tensor batch, x.Slice(rows - m, rows));
        Tensor out = Zeros(DType::kF32, {m, n});
        ASSERT_OK(Linear(batch, w, Tensor(), out));
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            ASSERT_EQ(std::bit_cast<uint32_t>(out.data<float>()[i * n + j]),
                      std::bit_cast<uint32_t>(alone[(rows - m + i) * n + j]))
                << NameOf(wtype) << " k=" << k << " m=" << m << " (" << i << "," << j << ")";
          }
        }
      }
    }
  }
}

// Every vector path (this binary runs under each, TESSERA_CPU_VECTOR) computes an output as
// one fused multiply-add chain over k in index order from 0, so all give the same bits, and
// a model's packed weights give those of the unpacked ones. k = 300 spans two blocks of
// inputs; n = 37 ends in a part panel.
TEST(Linear, EveryOutputIsTheFusedChainOverKInOrderPackedOrNot) {
  const int64_t m = 13, n = 37, k = 300;
  Tensor x = Random(DType::kF32, {m, k}, 31);
  for (DType wtype : {DType::kF32, DType::kBF16}) {
    Tensor w = Random(wtype, {n, k}, 32);
    ASSERT_OK_AND_ASSIGN(Tensor packed, PackLinearWeight(w));
    EXPECT_EQ(packed.shape(), Shape({3, k, kLinearPanel}));
    Tensor out = Zeros(DType::kF32, {m, n});
    Tensor out_packed = Zeros(DType::kF32, {m, n});
    ASSERT_OK(Linear(x, w, Tensor(), out));
    ASSERT_OK(Linear(x, packed, Tensor(), out_packed));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float chain = 0.0f;
        for (int64_t c = 0; c < k; ++c) {
          chain = std::fma(x.data<float>()[i * k + c],
                           static_cast<float>(ElementAsDouble(w, j * k + c)), chain);
        }
        ASSERT_EQ(std::bit_cast<uint32_t>(out.data<float>()[i * n + j]),
                  std::bit_cast<uint32_t>(chain))
            << NameOf(wtype) << " (" << i << "," << j << ")";
        ASSERT_EQ(std::bit_cast<uint32_t>(out_packed.data<float>()[i * n + j]),
                  std::bit_cast<uint32_t>(chain))
            << "packed " << NameOf(wtype) << " (" << i << "," << j << ")";
      }
    }
  }
  // A packed weight must match out's width and x's inputs.
  ASSERT_OK_AND_ASSIGN(Tensor packed, PackLinearWeight(Random(DType::kF32, {37, 300}, 1)));
  Tensor wide = Zeros(DType::kF32, {m, 49});
  absl::Status status = Linear(x, packed, Tensor(), wide);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("packed"), std::string::npos) << status;
}

// What a trainer sharing a serving model's packed weights multiplies by in its backward.
TEST(Linear, UnpackingAPackedWeightGivesItBackBitForBit) {
  for (DType wtype : {DType::kF32, DType::kBF16}) {
    Tensor w = Random(wtype, {37, 300}, 33);
    ASSERT_OK_AND_ASSIGN(Tensor packed, PackLinearWeight(w));
    ASSERT_OK_AND_ASSIGN(Tensor back, UnpackLinearWeight(packed, 37));
    ASSERT_EQ(back.shape(), w.shape());
    ASSERT_EQ(back.dtype(), wtype);
    EXPECT_EQ(std::memcmp(back.data(), w.data(), w.nbytes()), 0) << NameOf(wtype);
  }
  ASSERT_OK_AND_ASSIGN(Tensor packed, PackLinearWeight(Random(DType::kF32, {37, 300}, 1)));
  EXPECT_EQ(UnpackLinearWeight(packed, 49).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnpackLinearWeight(Random(DType::kF32, {37, 300}, 1), 37).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Sampling, ShardArgmaxCombinesToTheFullArgmaxWithLowestIndexOnTies) {
  std::vector<float> row = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 3.0f, 0.0f, 1.0f};
  ASSERT_OK_AND_ASSIGN(Tensor full, Tensor::FromValues(absl::Span<const float>(row), Shape{1, 8}));
  std::vector<ArgmaxResult> whole;
  ASSERT_OK(ShardArgmax(full, 0, &whole));
  EXPECT_EQ(whole[0].index, 1);
  for (int shards : {2, 4, 8}) {
    int64_t width = 8 / shards;
    ArgmaxResult combined;
    for (int s = shards - 1; s >= 0; --s) {  // any order
      ASSERT_OK_AND_ASSIGN(
          Tensor part, Tensor::FromValues(absl::Span<const float>(row).subspan(s * width, width),
                                          Shape{1, width}));
      std::vector<ArgmaxResult> local;
      ASSERT_OK(ShardArgmax(part, s * width, &local));
      combined = CombineArgmax(combined, local[0]);
    }
    EXPECT_EQ(combined.index, 1) << shards << " shards";
    EXPECT_EQ(combined.value, 3.0f);
  }
  EXPECT_EQ(SampleToken(row, {}, 0), 1);  // temperature 0 is greedy
}

TEST(Sampling, DrawsFollowTheDistributionAndRepeatForTheSameSeed) {
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams params{.temperature = 1.0f, .seed = 42};
  std::vector<int> counts(4, 0);
  const int draws = 20000;
  for (int d = 0; d < draws; ++d) ++counts[SampleToken(logits, params, d)];
  EXPECT_NEAR(counts[0] / static_cast<double>(draws), 0.5, 0.02);
  EXPECT_NEAR(counts[1] / static_cast<double>(draws), 0.3, 0.02);
  EXPECT_NEAR(counts[3] / static_cast<double>(draws), 0.05, 0.01);
  for (int d = 0; d < 100; ++d) {
    EXPECT_EQ(SampleToken(logits, params, d), SampleToken(logits, params, d));
  }

  // top_k = 2 keeps the two most likely, renormalized: 0.5/0.8 and 0.3/0.8.
  SamplingParams top_k = params;
  top_k.top_k = 2;
  std::vector<int> k_counts(4, 0);
  for (int d = 0; d < draws; ++d) ++k_counts[SampleToken(logits, top_k, d)];
  EXPECT_EQ(k_counts[2] + k_counts[3], 0);
  EXPECT_NEAR(k_counts[0] / static_cast<double>(draws), 0.625, 0.02);

  // top_p = 0.7: 0.5 alone does not reach it, 0.5 + 0.3 does: the first two remain.
  SamplingParams top_p = params;
  top_p.top_p = 0.7f;
  std::vector<int> p_counts(4, 0);
  for (int d = 0; d < draws; ++d) ++p_counts[SampleToken(logits, top_p, d)];
  EXPECT_EQ(p_counts[2] + p_counts[3], 0);
  EXPECT_GT(p_counts[1], 0);

  // A low temperature sharpens towards the argmax.
  SamplingParams cold = params;
  cold.temperature = 0.05f;
  int argmax = 0;
  for (int d = 0; d < 1000; ++d) argmax += SampleToken(logits, cold, d) == 0;
  EXPECT_GT(argmax, 990);

  EXPECT_FALSE(ValidateSamplingParams({.temperature = -1.0f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.top_k = -3}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.top_p = 0.0f}).ok());
  EXPECT_FALSE(ValidateSamplingParams({.top_p = 1.5f}).ok());
  EXPECT_OK(ValidateSamplingParams({.temperature = 0.7f, .top_k = 50, .top_p = 0.9f}));
}

TEST(SamplingTest, PenaltiesAndTheirLimits) {
  absl::Status status = ValidateSamplingParams({.presence_penalty = 3.0f});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "presence_penalty: must be in [-2, 2], not 3");
  status = ValidateSamplingParams({.frequency_penalty = -2.5f});
  EXPECT_EQ(status.message(), "frequency_penalty: must be in [-2, 2], not -2.5");
  EXPECT_FALSE(ValidateSamplingParams({.presence_penalty = std::nanf("")}).ok());
  EXPECT_OK(ValidateSamplingParams({.presence_penalty = -2.0f, .frequency_penalty = 2.0f}));

  // By hand: token 1 generated 3 times, token 3 once, token 0 never (the prompt's tokens are
  // not in `generated`), and an id past the vocabulary ignored.
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 0.25f};
  const std::vector<int32_t> generated = {1, 3, 1, 1, 9};
  ApplyPenalties(absl::MakeSpan(logits), {.presence_penalty = 0.5f, .frequency_penalty = 0.25f},
                 generated);
  EXPECT_EQ(logits,
            (std::vector<float>{1.0f, 2.0f - 0.75f - 0.5f, 0.5f, -1.0f - 0.25f - 0.5f, 0.25f}));
  // Negative penalties favour what was generated.
  std::vector<float> favoured = {1.0f, 0.0f};
  ApplyPenalties(absl::MakeSpan(favoured), {.presence_penalty = -1.5f}, std::vector<int32_t>{1});
  EXPECT_EQ(favoured, (std::vector<float>{1.0f, 1.5f}));

  // A greedy row whose argmax moves: 2.0 - 1.25 = 0.75 < 1.0, so token 0 wins.
  std::vector<float> row = {1.0f, 2.0f, 0.5f, -1.0f, 0.25f};
  EXPECT_EQ(SampleToken(row, {}, 0), 1);
  EXPECT_EQ(SampleToken(logits, {}, 0), 0);
}

TEST(SamplingTest, TopLogprobsAreTheLargestOfTheLogSoftmax) {
  std::mt19937 random(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(50);
  for (float& v : logits) v = normal(random);
  logits[7] = logits[11];  // a tie: the lower id first
  logits[13] = std::nanf("");
  // The reference log-softmax, in long double, over the row without NaN.
  long double max = -INFINITY, sum = 0;
  for (float v : logits) {
    if (!std::isnan(v)) max = std::max<long double>(max, v);
  }
  for (float v : logits) {
    if (!std::isnan(v)) sum += std::exp(static_cast<long double>(v) - max);
  }
  const long double log_sum_exp = max + std::log(sum);
  std::vector<int64_t> ids;
  for (int64_t v = 0; v < 50; ++v) {
    if (v != 13) ids.push_back(v);
  }
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  std::vector<TokenLogprob> top = TopLogprobs(logits, 20, static_cast<double>(log_sum_exp));
  ASSERT_EQ(top.size(), 20u);
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_EQ(top[i].token, ids[i]) << i;
    EXPECT_NEAR(top[i].logprob, static_cast<double>(logits[ids[i]] - log_sum_exp), 1e-5) << i;
    if (i > 0) {
      EXPECT_LE(top[i].logprob, top[i - 1].logprob);
    }
  }
  EXPECT_EQ(TopLogprobs(logits, 0, 0.0).size(), 0u);
  EXPECT_EQ(TopLogprobs(std::vector<float>{0.0f, 0.0f}, 5, std::log(2.0)).size(), 2u);
}

}  // namespace
}  // namespace tessera::kernels
