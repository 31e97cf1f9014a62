#include "kernels/cpu/norm_activation.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/exp_approx.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {
namespace {

using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::LoadFloat;

// One normalized row: out = x * inverse_rms * weight. weight is f32 or bf16.
void NormalizeRow(const float* x, const Tensor& weight, float eps, int64_t h, float* out) {
  float sum_squares = 0.0f;
  for (int64_t i = 0; i < h; ++i) sum_squares += x[i] * x[i];
  float inverse_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(h) + eps);
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
  const bool avx2 = HasAvx2Fma();
  for (int64_t t = 0; t < rows; ++t) {
    const float* gate = in + t * 2 * inner;
    const float* up = gate + inner;
    const int64_t done = avx2 ? SiluMulAvx2(gate, up, o + t * inner, inner) : 0;
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

}  // namespace tessera::kernels
