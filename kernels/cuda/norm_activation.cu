#include <cuda_runtime.h>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/norm_activation.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::Aligned16;
using internal::BlockMax;
using internal::BlockSum;
using internal::DispatchFloat;
using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::GridStrideBlocks;
using internal::LaunchStream;
using internal::ToFloat;

// Threads of the one-block-per-row kernels (norms, softmax, embedding rows): 8 warps, enough
// to stream a row of a few thousand floats with several loads in flight per thread.
constexpr int kRowThreads = 256;
// Threads per block of the element-wise grid-stride kernels.
constexpr int kElementThreads = 256;

// ---------------------------------------------------------------------------------------
// Kernels.

// Grid (T), block kRowThreads: block t writes out[t, :] (T, H) f32 from table row
// ids[t] - vocab_begin of table (V_shard, H); threads stride over H.
template <typename W>
__global__ void EmbeddingKernel(const int32_t* ids, const W* table, int64_t vocab_begin,
                                int64_t shard_rows, int64_t vocab_size, int64_t hidden,
                                float* out) {
  int64_t t = blockIdx.x;
  int64_t id = ids[t];
  float* row = out + t * hidden;
  int64_t local = id - vocab_begin;
  if (id < 0 || id >= vocab_size) {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = __int_as_float(0x7fc00000);
  } else if (local < 0 || local >= shard_rows) {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = 0.0f;
  } else {
    const W* src = table + local * hidden;
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = ToFloat(src[i]);
  }
}

// Grid (T), block kRowThreads: block t normalizes row t of x (T, H) f32 into out (T, H) f32
// with weight (H). With kAdd, residual (T, H) += x first and the sum is normalized (x is then
// only read in the first pass). With kVec (H % 4 == 0, rows 16-byte aligned) each thread
// moves float4s. Every thread reads and writes the same elements in both passes, so out may
// alias x or residual without a barrier between a read and the write of the same element.
template <typename W, bool kVec, bool kAdd>
__global__ void RmsNormKernel(const float* x, float* residual, const W* weight, float eps,
                              int64_t hidden, float* out) {
  __shared__ float scratch[32];
  int64_t t = blockIdx.x;
  const float* x_row = x + t * hidden;
  float* r_row = kAdd ? residual + t * hidden : nullptr;
  float* out_row = out + t * hidden;
  // The row being normalized: x, or the updated residual.
  const float* src = kAdd ? r_row : x_row;

  float sum_squares = 0.0f;
  if constexpr (kVec) {
    int64_t vectors = hidden / 4;
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
      float4 v = reinterpret_cast<const float4*>(x_row)[i];
      if constexpr (kAdd) {
        float4 r = reinterpret_cast<float4*>(r_row)[i];
        v = make_float4(r.x + v.x, r.y + v.y, r.z + v.z, r.w + v.w);
        reinterpret_cast<float4*>(r_row)[i] = v;
      }
      sum_squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      float v = x_row[i];
      if constexpr (kAdd) {
        v = r_row[i] + v;
        r_row[i] = v;
      }
      sum_squares += v * v;
    }
  }
  float total = BlockSum(sum_squares, scratch);
  float inverse_rms = 1.0f / sqrtf(total / static_cast<float>(hidden) + eps);

  if constexpr (kVec) {
    int64_t vectors = hidden / 4;
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
      float4 v = reinterpret_cast<const float4*>(src)[i];
      const W* w = weight + 4 * i;
      reinterpret_cast<float4*>(out_row)[i] =
          make_float4(ToFloat(w[0]) * (v.x * inverse_rms), ToFloat(w[1]) * (v.y * inverse_rms),
                      ToFloat(w[2]) * (v.z * inverse_rms), ToFloat(w[3]) * (v.w * inverse_rms));
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      out_row[i] = ToFloat(weight[i]) * (src[i] * inverse_rms);
    }
  }
}

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// Grid-stride over the T*I outputs of out (T, I) f32 from gate_up (T, 2I) f32: element (t, i)
// is silu(gate_up[t, i]) * gate_up[t, I + i]. With kVec (I % 4 == 0, both 16-byte aligned)
// the loop runs over float4 groups of a row.
template <bool kVec>
__global__ void SiluMulKernel(const float* gate_up, int64_t rows, int64_t inner, float* out) {
  constexpr int kWidth = kVec ? 4 : 1;
  int64_t groups = inner / kWidth;
  int64_t count = rows * groups;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = e / groups, g = e % groups;
    const float* gate = gate_up + t * 2 * inner;
    const float* up = gate + inner;
    if constexpr (kVec) {
      float4 a = reinterpret_cast<const float4*>(gate)[g];
      float4 b = reinterpret_cast<const float4*>(up)[g];
      reinterpret_cast<float4*>(out)[e] =
          make_float4(Silu(a.x) * b.x, Silu(a.y) * b.y, Silu(a.z) * b.z, Silu(a.w) * b.w);
    } else {
      out[e] = Silu(gate[g]) * up[g];
    }
  }
}

// Grid (R), block kRowThreads: block r replaces row r of x (R, C) f32 by its softmax, in three
// passes over the row (maximum; exponentials stored and summed; scaling).
__global__ void SoftmaxKernel(float* x, int64_t cols) {
  __shared__ float scratch[32];
  float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  float max = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) max = fmaxf(max, row[c]);
  max = BlockMax(max, scratch);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float e = expf(row[c] - max);
    row[c] = e;
    sum += e;
  }
  float inverse = 1.0f / BlockSum(sum, scratch);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) row[c] *= inverse;
}

// Grid-stride over a (N) += b (N) f32, in float4 groups with kVec (N % 4 == 0, aligned).
template <bool kVec>
__global__ void AddKernel(float* a, const float* b, int64_t count) {
  int64_t groups = kVec ? count / 4 : count;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < groups;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (kVec) {
      float4 x = reinterpret_cast<float4*>(a)[e];
      float4 y = reinterpret_cast<const float4*>(b)[e];
      reinterpret_cast<float4*>(a)[e] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    } else {
      a[e] += b[e];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Launchers.

absl::Status CheckNorm(const char* kernel, const Tensor& x, const Tensor& weight, const Tensor& out,
                       Device device) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "x", x, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kernel, "weight", weight, {DType::kF32, DType::kBF16, DType::kF16}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "weight", weight, {x.dim(1)}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "out", out, x.shape()));
  return ExpectAtMost(kernel, "rows", x.dim(0));
}

// RmsNorm (residual null) or AddRmsNorm, after the checks.
absl::Status LaunchNorm(const char* kernel, const float* x, float* residual, const Tensor& weight,
                        float eps, int64_t rows, int64_t hidden, float* out, cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  bool vec = hidden % 4 == 0 && Aligned16(x) && Aligned16(out) &&
             (residual == nullptr || Aligned16(residual));
  DispatchFloat(weight.dtype(), [&](auto tag) {
    using W = typename decltype(tag)::type;
    const W* w = static_cast<const W*>(weight.data());
    dim3 grid(static_cast<unsigned int>(rows));
    if (residual == nullptr) {
      if (vec) {
        RmsNormKernel<W, true, false>
            <<<grid, kRowThreads, 0, stream>>>(x, nullptr, w, eps, hidden, out);
      } else {
        RmsNormKernel<W, false, false>
            <<<grid, kRowThreads, 0, stream>>>(x, nullptr, w, eps, hidden, out);
      }
    } else {
      if (vec) {
        RmsNormKernel<W, true, true>
            <<<grid, kRowThreads, 0, stream>>>(x, residual, w, eps, hidden, out);
      } else {
        RmsNormKernel<W, false, true>
            <<<grid, kRowThreads, 0, stream>>>(x, residual, w, eps, hidden, out);
      }
    }
  });
  TESSERA_RETURN_IF_LAUNCH_FAILED(kernel);
  return absl::OkStatus();
}

}  // namespace

absl::Status EmbeddingLookup(const Tensor& ids, const Tensor& table, int64_t vocab_begin,
                             int64_t vocab_size, Tensor& out, Stream& stream) {
  constexpr char kKernel[] = "EmbeddingLookup";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "ids", ids, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "ids", ids, 1));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "table", table, {DType::kF32, DType::kBF16, DType::kF16}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "table", table, 2));
  int64_t tokens = ids.dim(0), hidden = table.dim(1), shard = table.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {tokens, hidden}));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "tokens", tokens));
  if (tokens == 0) return absl::OkStatus();
  const int32_t* id = ids.data<int32_t>();
  float* o = out.data<float>();
  DispatchFloat(table.dtype(), [&](auto tag) {
    using W = typename decltype(tag)::type;
    EmbeddingKernel<W><<<static_cast<unsigned int>(tokens), kRowThreads, 0, cuda_stream>>>(
        id, static_cast<const W*>(table.data()), vocab_begin, shard, vocab_size, hidden, o);
  });
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out,
                     Stream& stream) {
  constexpr char kKernel[] = "RmsNorm";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(CheckNorm(kKernel, x, weight, out, stream.device()));
  return LaunchNorm(kKernel, x.data<float>(), nullptr, weight, eps, x.dim(0), x.dim(1),
                    out.data<float>(), cuda_stream);
}

absl::Status AddRmsNorm(Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                        Tensor& out, Stream& stream) {
  constexpr char kKernel[] = "AddRmsNorm";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(CheckNorm(kKernel, x, weight, out, stream.device()));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "residual", residual, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "residual", residual, x.shape()));
  return LaunchNorm(kKernel, x.data<float>(), residual.data<float>(), weight, eps, x.dim(0),
                    x.dim(1), out.data<float>(), cuda_stream);
}

absl::Status SiluMul(const Tensor& gate_up, Tensor& out, Stream& stream) {
  constexpr char kKernel[] = "SiluMul";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "gate_up", gate_up, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "gate_up", gate_up, 2));
  if (gate_up.dim(1) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": gate_up is ", gate_up.DebugString(),
                                                   ", expected an even number of columns"));
  }
  int64_t rows = gate_up.dim(0), inner = gate_up.dim(1) / 2;
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {rows, inner}));
  int64_t count = rows * inner;
  if (count == 0) return absl::OkStatus();
  const float* in = gate_up.data<float>();
  float* o = out.data<float>();
  if (inner % 4 == 0 && Aligned16(in) && Aligned16(o)) {
    SiluMulKernel<true>
        <<<GridStrideBlocks(count / 4, kElementThreads), kElementThreads, 0, cuda_stream>>>(
            in, rows, inner, o);
  } else {
    SiluMulKernel<false>
        <<<GridStrideBlocks(count, kElementThreads), kElementThreads, 0, cuda_stream>>>(in, rows,
                                                                                        inner, o);
  }
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status SoftmaxRows(Tensor& x, Stream& stream) {
  constexpr char kKernel[] = "SoftmaxRows";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "rows", x.dim(0)));
  if (x.dim(0) == 0) return absl::OkStatus();
  SoftmaxKernel<<<static_cast<unsigned int>(x.dim(0)), kRowThreads, 0, cuda_stream>>>(
      x.data<float>(), x.dim(1));
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status AddInPlace(Tensor& a, const Tensor& b, Stream& stream) {
  constexpr char kKernel[] = "AddInPlace";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "a", a, {DType::kF32}, stream.device()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "b", b, {DType::kF32}, stream.device()));
  if (a.numel() != b.numel()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": ", a.DebugString(), " and ", b.DebugString(), " differ in size"));
  }
  int64_t count = a.numel();
  if (count == 0) return absl::OkStatus();
  float* x = a.data<float>();
  const float* y = b.data<float>();
  if (count % 4 == 0 && Aligned16(x) && Aligned16(y)) {
    AddKernel<true>
        <<<GridStrideBlocks(count / 4, kElementThreads), kElementThreads, 0, cuda_stream>>>(x, y,
                                                                                            count);
  } else {
    AddKernel<false><<<GridStrideBlocks(count, kElementThreads), kElementThreads, 0, cuda_stream>>>(
        x, y, count);
  }
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
