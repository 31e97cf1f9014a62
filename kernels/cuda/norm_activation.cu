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

// ---- Backward ---------------------------------------------------------------------------

namespace {

// Threads of the backward's column kernels (a thread per column of a chunk of rows).
constexpr int kColumnThreads = 256;
// Rows a thread sums before its partial sum is stored (RmsNormBackward's dweight); the chunks
// of one column are then added in order by a second kernel.
constexpr int64_t kRowsPerChunk = 128;
// The most chunks: gridDim.y's limit.
constexpr int64_t kMaxChunks = 65535;
// EmbeddingBackward: the most groups of table rows, each scanned for by its own threads.
constexpr int64_t kEmbeddingRowGroups = 64;

// sigmoid(g) as the CPU's Sigmoid (exp_approx.h) computes it, with CUDA's expf: e^-|g| (0
// below e^-87), so that the exponent never overflows.
__device__ __forceinline__ float StableSigmoid(float g) {
  float t = -fabsf(g);
  float e = t < -87.0f ? 0.0f : expf(t);
  return (g >= 0.0f ? 1.0f : e) / (1.0f + e);
}

// Grid (T), block kRowThreads: block t reduces row t of x (T, H) and dy (T, H) f32 with weight
// (H) to rstd[t] = 1 / sqrt(mean(x[t]^2) + eps) (as RmsNormKernel computes it) and
// coefficient[t] = rstd[t]^3 / H * sum_i weight[i] * dy[t, i] * x[t, i]. Only reads x and dy.
template <typename W>
__global__ void RmsNormBackwardRowKernel(const float* x, const W* weight, const float* dy,
                                         float eps, int64_t hidden, float* rstd,
                                         float* coefficient) {
  __shared__ float scratch[32];
  int64_t t = blockIdx.x;
  const float* x_row = x + t * hidden;
  const float* dy_row = dy + t * hidden;
  float sum_squares = 0.0f, dot = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = x_row[i];
    sum_squares += v * v;
    dot += (ToFloat(weight[i]) * dy_row[i]) * v;
  }
  float total = BlockSum(sum_squares, scratch);
  float total_dot = BlockSum(dot, scratch);
  float r = 1.0f / sqrtf(total / static_cast<float>(hidden) + eps);
  if (threadIdx.x == 0) {
    rstd[t] = r;
    coefficient[t] = total_dot * r * r * r / static_cast<float>(hidden);
  }
}

// Grid (ceil(H / kColumnThreads), chunks), block kColumnThreads: thread (column c, chunk p)
// stores partial[p, c] (chunks, H) = sum over rows t of [p * rows_per_chunk, (p + 1) *
// rows_per_chunk) within T, in order, of dy[t, c] * (x[t, c] * rstd[t]); x, dy (T, H) f32.
__global__ void RmsNormWeightPartialKernel(const float* x, const float* dy, const float* rstd,
                                           int64_t rows, int64_t hidden, int64_t rows_per_chunk,
                                           float* partial) {
  int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= hidden) return;
  int64_t begin = blockIdx.y * rows_per_chunk;
  int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  float sum = 0.0f;
  for (int64_t t = begin; t < end; ++t) sum += dy[t * hidden + c] * (x[t * hidden + c] * rstd[t]);
  partial[blockIdx.y * hidden + c] = sum;
}

// Grid-stride over the H columns: out (H) f32 [c] += the sum of partial (chunks, H) f32 [:, c]
// in chunk order.
__global__ void AddPartialsKernel(const float* partial, int64_t chunks, int64_t hidden,
                                  float* out) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < hidden;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t p = 0; p < chunks; ++p) sum += partial[p * hidden + c];
    out[c] += sum;
  }
}

// Grid-stride over the T*H elements of dx (T, H) f32: dx[t, i] = rstd[t] * (weight[i] *
// dy[t, i]) - x[t, i] * coefficient[t]. Each element reads only its own dy, so dx may be dy.
template <typename W>
__global__ void RmsNormInputGradientKernel(const float* x, const W* weight, const float* dy,
                                           const float* rstd, const float* coefficient,
                                           int64_t rows, int64_t hidden, float* dx) {
  int64_t count = rows * hidden;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = e / hidden, i = e % hidden;
    dx[e] = rstd[t] * (ToFloat(weight[i]) * dy[e]) - x[e] * coefficient[t];
  }
}

// Grid-stride over the T*I elements of dout (T, I) f32, with gate_up and dgate_up (T, 2I) f32:
// with g = gate[t, i], u = up[t, i], s = sigmoid(g), d = dout[t, i],
//   dgate[t, i] = (d * u) * (s * (g * (1 - s) + 1)),   dup[t, i] = d * (g * s).
// A thread reads its g and u before writing their gradients, so dgate_up may be gate_up.
__global__ void SiluMulBackwardKernel(const float* gate_up, const float* dout, int64_t rows,
                                      int64_t inner, float* dgate_up) {
  int64_t count = rows * inner;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = e / inner, i = e % inner;
    int64_t gate_at = t * 2 * inner + i, up_at = gate_at + inner;
    float g = gate_up[gate_at], u = gate_up[up_at], d = dout[e];
    float s = StableSigmoid(g);
    dgate_up[gate_at] = (d * u) * (s * (g * (1.0f - s) + 1.0f));
    dgate_up[up_at] = d * (g * s);
  }
}

// Grid (ceil(H / kColumnThreads), groups), block kColumnThreads: thread (column c, group p)
// owns the elements dtable[r, c] of dtable (V_shard, H) f32 with r % groups == p, and walks
// ids (T) i32 in token order adding dout[t, c] (T, H) f32 to dtable[ids[t] - vocab_begin, c]
// for each of its rows; ids outside [0, vocab_size) or the shard are skipped.
__global__ void EmbeddingBackwardKernel(const int32_t* ids, const float* dout, int64_t tokens,
                                        int64_t vocab_begin, int64_t shard_rows, int64_t vocab_size,
                                        int64_t hidden, float* dtable) {
  int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= hidden) return;
  int64_t group = blockIdx.y, groups = gridDim.y;
  for (int64_t t = 0; t < tokens; ++t) {
    int64_t id = ids[t];
    int64_t local = id - vocab_begin;
    if (id < 0 || id >= vocab_size || local < 0 || local >= shard_rows) continue;
    if (local % groups != group) continue;
    dtable[local * hidden + c] += dout[t * hidden + c];
  }
}

}  // namespace

absl::Status RmsNormBackward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                             Tensor& dx, Tensor& dweight, Stream& stream) {
  constexpr char kKernel[] = "RmsNormBackward";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckNorm(kKernel, x, weight, dx, device));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dy", dy, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dy", dy, x.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dweight", dweight, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dweight", dweight, {x.dim(1)}));
  int64_t rows = x.dim(0), hidden = x.dim(1);
  if (rows == 0 || hidden == 0) return absl::OkStatus();
  int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;

  // Scratch: rstd (T), coefficient (T), partial (chunks, H).
  float* scratch = nullptr;
  size_t floats = static_cast<size_t>(2 * rows + chunks * hidden);
  TESSERA_CUDA_CHECK(
      cudaMallocAsync(reinterpret_cast<void**>(&scratch), floats * sizeof(float), cuda_stream));
  float* rstd = scratch;
  float* coefficient = scratch + rows;
  float* partial = scratch + 2 * rows;
  const float* in = x.data<float>();
  const float* g = dy.data<float>();
  DispatchFloat(weight.dtype(), [&](auto tag) {
    using W = typename decltype(tag)::type;
    const W* w = static_cast<const W*>(weight.data());
    RmsNormBackwardRowKernel<W><<<static_cast<unsigned int>(rows), kRowThreads, 0, cuda_stream>>>(
        in, w, g, eps, hidden, rstd, coefficient);
    // dweight from dy before dx, which may be dy, is written.
    dim3 grid(static_cast<unsigned int>((hidden + kColumnThreads - 1) / kColumnThreads),
              static_cast<unsigned int>(chunks));
    RmsNormWeightPartialKernel<<<grid, kColumnThreads, 0, cuda_stream>>>(in, g, rstd, rows, hidden,
                                                                         rows_per_chunk, partial);
    AddPartialsKernel<<<GridStrideBlocks(hidden, kColumnThreads), kColumnThreads, 0, cuda_stream>>>(
        partial, chunks, hidden, dweight.data<float>());
    RmsNormInputGradientKernel<W>
        <<<GridStrideBlocks(rows * hidden, kElementThreads), kElementThreads, 0, cuda_stream>>>(
            in, w, g, rstd, coefficient, rows, hidden, dx.data<float>());
  });
  absl::Status launched = TESSERA_CALL_STATUS(CudaCall, cudaGetLastError());
  absl::Status freed = TESSERA_CALL_STATUS(CudaCall, cudaFreeAsync(scratch, cuda_stream));
  return launched.ok() ? freed : launched;
}

absl::Status SiluMulBackward(const Tensor& gate_up, const Tensor& dout, Tensor& dgate_up,
                             Stream& stream) {
  constexpr char kKernel[] = "SiluMulBackward";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "gate_up", gate_up, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "gate_up", gate_up, 2));
  if (gate_up.dim(1) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": gate_up is ", gate_up.DebugString(),
                                                   ", expected an even number of columns"));
  }
  int64_t rows = gate_up.dim(0), inner = gate_up.dim(1) / 2;
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dout", dout, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dout", dout, {rows, inner}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dgate_up", dgate_up, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dgate_up", dgate_up, gate_up.shape()));
  int64_t count = rows * inner;
  if (count == 0) return absl::OkStatus();
  SiluMulBackwardKernel<<<GridStrideBlocks(count, kElementThreads), kElementThreads, 0,
                          cuda_stream>>>(gate_up.data<float>(), dout.data<float>(), rows, inner,
                                         dgate_up.data<float>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                               int64_t vocab_size, Tensor& dtable, Stream& stream) {
  constexpr char kKernel[] = "EmbeddingBackward";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "ids", ids, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "ids", ids, 1));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dtable", dtable, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "dtable", dtable, 2));
  int64_t tokens = ids.dim(0), shard = dtable.dim(0), hidden = dtable.dim(1);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dout", dout, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dout", dout, {tokens, hidden}));
  int64_t column_blocks = (hidden + kColumnThreads - 1) / kColumnThreads;
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "column blocks", column_blocks));
  if (tokens == 0 || shard == 0 || hidden == 0) return absl::OkStatus();
  int64_t groups = shard < kEmbeddingRowGroups ? shard : kEmbeddingRowGroups;
  dim3 grid(static_cast<unsigned int>(column_blocks), static_cast<unsigned int>(groups));
  EmbeddingBackwardKernel<<<grid, kColumnThreads, 0, cuda_stream>>>(
      ids.data<int32_t>(), dout.data<float>(), tokens, vocab_begin, shard, vocab_size, hidden,
      dtable.data<float>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
