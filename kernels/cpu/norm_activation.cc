#include "kernels/cpu/norm_activation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "kernels/cpu/parallel.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::LoadFloat;

// 1 / sqrt(mean(x^2) + eps) of a row of h (the forward's and the backward's alike).
float InverseRms(const float* x, int64_t h, float eps) {
  float sum_squares = 0.0f;
  for (int64_t i = 0; i < h; ++i) sum_squares += x[i] * x[i];
  return 1.0f / std::sqrt(sum_squares / static_cast<float>(h) + eps);
}

// One normalized row: out = x * inverse_rms * weight. weight is f32 or bf16.
void NormalizeRow(const float* x, const Tensor& weight, float eps, int64_t h, float* out) {
  float inverse_rms = InverseRms(x, h, eps);
  if (weight.dtype() == DType::kF32) {
    const float* w = weight.data<float>();
    for (int64_t i = 0; i < h; ++i) out[i] = w[i] * (x[i] * inverse_rms);
  } else {
    const BFloat16* w = weight.data<BFloat16>();
    for (int64_t i = 0; i < h; ++i) out[i] = w[i].ToFloat() * (x[i] * inverse_rms);
  }
}

absl::Status CheckNorm(const char* kernel, const Tensor& x, const Tensor& weight,
                       const Tensor& out) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "weight", weight, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "weight", weight, {x.dim(1)}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "out", out, {DType::kF32}));
  return ExpectShape(kernel, "out", out, x.shape());
}

}  // namespace

absl::Status EmbeddingLookup(const Tensor& ids, const Tensor& table, int64_t vocab_begin,
                             int64_t vocab_size, Tensor& out) {
  constexpr char kKernel[] = "EmbeddingLookup";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "ids", ids, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "ids", ids, 1));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "table", table, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "table", table, 2));
  int64_t tokens = ids.dim(0), hidden = table.dim(1), shard = table.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {tokens, hidden}));
  const int32_t* id = ids.data<int32_t>();
  float* o = out.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (id[t] < 0 || id[t] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(kKernel, ": token id ", id[t], " at position ",
                                                     t, " is outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
    float* row = o + t * hidden;
    int64_t local = id[t] - vocab_begin;
    if (local < 0 || local >= shard) {
      std::fill(row, row + hidden, 0.0f);
      continue;
    }
    for (int64_t i = 0; i < hidden; ++i) row[i] = LoadFloat(table, local * hidden + i);
  }
  return absl::OkStatus();
}

absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  TESSERA_RETURN_IF_ERROR(CheckNorm("RmsNorm", x, weight, out));
  int64_t rows = x.dim(0), h = x.dim(1);
  for (int64_t t = 0; t < rows; ++t) {
    NormalizeRow(x.data<float>() + t * h, weight, eps, h, out.data<float>() + t * h);
  }
  return absl::OkStatus();
}

absl::Status AddRmsNorm(Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                        Tensor& out) {
  TESSERA_RETURN_IF_ERROR(CheckNorm("AddRmsNorm", x, weight, out));
  TESSERA_RETURN_IF_ERROR(ExpectDType("AddRmsNorm", "residual", residual, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape("AddRmsNorm", "residual", residual, x.shape()));
  int64_t rows = x.dim(0), h = x.dim(1);
  float* r = residual.data<float>();
  const float* in = x.data<float>();
  for (int64_t t = 0; t < rows; ++t) {
    float* row = r + t * h;
    for (int64_t i = 0; i < h; ++i) row[i] += in[t * h + i];
    NormalizeRow(row, weight, eps, h, out.data<float>() + t * h);
  }
  return absl::OkStatus();
}

#if TESSERA_CPU_X86
namespace {

// out[i] = gate[i] * sigmoid(gate[i]) * up[i] for the whole groups of eight in [0, n);
// returns how many it did. A column always takes the same path, whatever the rows.
__attribute__((target("avx2,fma"))) int64_t SiluMulAvx2(const float* gate, const float* up,
                                                        float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    _mm256_storeu_ps(out + i,
                     _mm256_mul_ps(_mm256_mul_ps(g, Sigmoid8(g)), _mm256_loadu_ps(up + i)));
  }
  return i;
}

}  // namespace
#endif  // TESSERA_CPU_X86

absl::Status SiluMul(const Tensor& gate_up, Tensor& out) {
  constexpr char kKernel[] = "SiluMul";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "gate_up", gate_up, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "gate_up", gate_up, 2));
  if (gate_up.dim(1) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": gate_up is ", gate_up.DebugString(),
                                                   ", expected an even number of columns"));
  }
  int64_t rows = gate_up.dim(0), inner = gate_up.dim(1) / 2;
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {rows, inner}));
  const float* in = gate_up.data<float>();
  float* o = out.data<float>();
#if TESSERA_CPU_X86
  const bool avx2 = HasAvx2Fma();
#endif
  for (int64_t t = 0; t < rows; ++t) {
    const float* gate = in + t * 2 * inner;
    const float* up = gate + inner;
#if TESSERA_CPU_X86
    const int64_t done = avx2 ? SiluMulAvx2(gate, up, o + t * inner, inner) : 0;
#else
    const int64_t done = 0;
#endif
    for (int64_t i = done; i < inner; ++i) {
      o[t * inner + i] = gate[i] * Sigmoid(gate[i]) * up[i];
    }
  }
  return absl::OkStatus();
}

absl::Status SoftmaxRows(Tensor& x) {
  TESSERA_RETURN_IF_ERROR(ExpectDType("SoftmaxRows", "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank("SoftmaxRows", "x", x, 2));
  int64_t rows = x.dim(0), cols = x.dim(1);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data<float>() + r * cols;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < cols; ++c) max = std::max(max, row[c]);
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      row[c] = std::exp(row[c] - max);
      sum += row[c];
    }
    float inverse = 1.0f / sum;
    for (int64_t c = 0; c < cols; ++c) row[c] *= inverse;
  }
  return absl::OkStatus();
}

absl::Status AddInPlace(Tensor& a, const Tensor& b) {
  TESSERA_RETURN_IF_ERROR(ExpectDType("AddInPlace", "a", a, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectDType("AddInPlace", "b", b, {DType::kF32}));
  if (a.numel() != b.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddInPlace: ", a.DebugString(), " and ", b.DebugString(), " differ in size"));
  }
  float* x = a.data<float>();
  const float* y = b.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) x[i] += y[i];
  return absl::OkStatus();
}

namespace {

// Columns [0, n) of a (rows, n) matrix in blocks of this many, one block an item: a kernel
// that sums over rows column by column splits its work this way, so that every sum is one
// thread's, in row order.
constexpr int64_t kColumnBlock = 256;

}  // namespace

absl::Status RmsNormBackward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                             Tensor& dx, Tensor& dweight) {
  constexpr char kKernel[] = "RmsNormBackward";
  TESSERA_RETURN_IF_ERROR(CheckNorm(kKernel, x, weight, dx));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dy", dy, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dy", dy, x.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dweight", dweight, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dweight", dweight, {x.dim(1)}));
  const int64_t rows = x.dim(0), h = x.dim(1);
  if (rows == 0 || h == 0) return absl::OkStatus();
  const float* in = x.data<float>();
  const float* g = dy.data<float>();
  std::vector<float> w(h);
  for (int64_t i = 0; i < h; ++i) w[i] = LoadFloat(weight, i);
  // With y = x * r * w and r = (mean(x^2) + eps)^-1/2:
  //   dx = r * (w * dy) - x * r^3 / H * sum(w * dy * x).
  // rstd[t] = r, coefficient[t] = r^3 / H * sum(w * dy * x), from dy before dx overwrites it.
  std::vector<float> rstd(rows), coefficient(rows);
  const int64_t min_rows = rows * h < 65536 ? rows : 1;
  ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = in + t * h;
      const float* gr = g + t * h;
      const float r = InverseRms(xr, h, eps);
      double dot = 0.0;
      for (int64_t i = 0; i < h; ++i) dot += static_cast<double>(w[i] * gr[i]) * xr[i];
      rstd[t] = r;
      coefficient[t] = static_cast<float>(dot * r * r * r / static_cast<double>(h));
    }
  });
  const int64_t blocks = (h + kColumnBlock - 1) / kColumnBlock;
  float* dw = dweight.data<float>();
  ParallelFor(blocks, min_rows == rows ? blocks : 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kColumnBlock, c1 = std::min(h, c0 + kColumnBlock);
      float sum[kColumnBlock] = {};
      for (int64_t t = 0; t < rows; ++t) {
        const float r = rstd[t];
        for (int64_t c = c0; c < c1; ++c) sum[c - c0] += g[t * h + c] * (in[t * h + c] * r);
      }
      for (int64_t c = c0; c < c1; ++c) dw[c] += sum[c - c0];
    }
  });
  float* out = dx.data<float>();
  ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float r = rstd[t], c = coefficient[t];
      for (int64_t i = 0; i < h; ++i) {
        out[t * h + i] = r * (w[i] * g[t * h + i]) - in[t * h + i] * c;
      }
    }
  });
  return absl::OkStatus();
}

#if TESSERA_CPU_X86
namespace {

// One row of SiluMulBackward for the whole groups of eight in [0, n); returns how many it
// did. With s = sigmoid(g): dgate = dout * up * s * (1 + g * (1 - s)), dup = dout * g * s.
__attribute__((target("avx2,fma"))) int64_t SiluMulBackwardAvx2(const float* gate, const float* up,
                                                                const float* dout, float* dgate,
                                                                float* dup, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 u = _mm256_loadu_ps(up + i);
    const __m256 d = _mm256_loadu_ps(dout + i);
    const __m256 s = Sigmoid8(g);
    const __m256 silu_slope = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
    _mm256_storeu_ps(dgate + i, _mm256_mul_ps(_mm256_mul_ps(d, u), silu_slope));
    _mm256_storeu_ps(dup + i, _mm256_mul_ps(d, _mm256_mul_ps(g, s)));
  }
  return i;
}

}  // namespace
#endif  // TESSERA_CPU_X86

absl::Status SiluMulBackward(const Tensor& gate_up, const Tensor& dout, Tensor& dgate_up) {
  constexpr char kKernel[] = "SiluMulBackward";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "gate_up", gate_up, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "gate_up", gate_up, 2));
  if (gate_up.dim(1) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": gate_up is ", gate_up.DebugString(),
                                                   ", expected an even number of columns"));
  }
  const int64_t rows = gate_up.dim(0), inner = gate_up.dim(1) / 2;
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dout", dout, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dout", dout, {rows, inner}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dgate_up", dgate_up, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dgate_up", dgate_up, gate_up.shape()));
  const float* in = gate_up.data<float>();
  const float* d = dout.data<float>();
  float* out = dgate_up.data<float>();
#if TESSERA_CPU_X86
  const bool avx2 = HasAvx2Fma();
#endif
  ParallelFor(rows, rows * inner < 65536 ? rows : 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* gate = in + t * 2 * inner;
      const float* up = gate + inner;
      const float* dy = d + t * inner;
      float* dgate = out + t * 2 * inner;
      float* dup = dgate + inner;
#if TESSERA_CPU_X86
      const int64_t done = avx2 ? SiluMulBackwardAvx2(gate, up, dy, dgate, dup, inner) : 0;
#else
      const int64_t done = 0;
#endif
      for (int64_t i = done; i < inner; ++i) {
        const float g = gate[i], u = up[i], s = Sigmoid(g);
        dgate[i] = (dy[i] * u) * (s * (g * (1.0f - s) + 1.0f));
        dup[i] = dy[i] * (g * s);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                               int64_t vocab_size, Tensor& dtable) {
  constexpr char kKernel[] = "EmbeddingBackward";
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "ids", ids, {DType::kI32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "ids", ids, 1));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dtable", dtable, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "dtable", dtable, 2));
  const int64_t tokens = ids.dim(0), shard = dtable.dim(0), hidden = dtable.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dout", dout, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dout", dout, {tokens, hidden}));
  const int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (id[t] < 0 || id[t] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(kKernel, ": token id ", id[t], " at position ",
                                                     t, " is outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
  }
  // Items are blocks of columns, each taking every token in order: no two threads ever add
  // into the same element, and an element's additions keep token order.
  const float* g = dout.data<float>();
  float* table = dtable.data<float>();
  const int64_t blocks = (hidden + kColumnBlock - 1) / kColumnBlock;
  ParallelFor(blocks, tokens * hidden < 65536 ? blocks : 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kColumnBlock, c1 = std::min(hidden, c0 + kColumnBlock);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t local = id[t] - vocab_begin;
        if (local < 0 || local >= shard) continue;
        float* row = table + local * hidden;
        const float* from = g + t * hidden;
        for (int64_t c = c0; c < c1; ++c) row[c] += from[c];
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace tessera::kernels
