#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/training_attention.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::kWarpSize;
using internal::LaunchStream;
using internal::WarpSum;

// Warps per block, each walking its own share (every kWarps-th) of a row's keys or queries.
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;

// The sizes and parameters the kernels need besides the pointers.
struct AttentionDims {
  int64_t tokens;     // T
  int64_t sequences;  // S
  int64_t heads;      // Hq
  int64_t kv_heads;   // Hkv
  int64_t head_dim;   // D
  float scale;
  int sliding_window;  // 0: none
};

// The document of token t: the last s in [0, S) with starts[s] <= t, as [begin, end) =
// [starts[s], starts[s+1]). False when there is no such s or the document does not hold t
// within [0, T) (sequence_starts is inconsistent around t); then begin and end are unset.
__device__ bool FindDocument(const int32_t* starts, const AttentionDims& dims, int64_t t,
                             int64_t& begin, int64_t& end) {
  // Upper bound over starts[0, S): the first document that starts after t.
  int64_t lo = 0, hi = dims.sequences;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (starts[mid] <= t) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  int64_t s = lo - 1;
  if (s < 0) return false;
  begin = starts[s];
  end = starts[s + 1];
  return 0 <= begin && begin <= t && t < end && end <= dims.tokens;
}

// The first key token t of the document [begin, ...) attends to: [KeyBegin, t].
__device__ __forceinline__ int64_t KeyBegin(const AttentionDims& dims, int64_t begin, int64_t t) {
  if (dims.sliding_window > 0 && t - dims.sliding_window + 1 > begin) {
    return t - dims.sliding_window + 1;
  }
  return begin;
}

// Lane `lane` holds dimensions d = lane + 32 * i, i < kDimsPerLane, of a row: reg[i] =
// row[d], 0 past head_dim.
template <int kDimsPerLane>
__device__ __forceinline__ void LoadRow(const float* row, int64_t head_dim, int lane,
                                        float (&reg)[kDimsPerLane]) {
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    int64_t d = lane + kWarpSize * i;
    reg[i] = d < head_dim ? row[d] : 0.0f;
  }
}

// a . row over the warp (a in registers as LoadRow leaves it), returned to every lane.
template <int kDimsPerLane>
__device__ __forceinline__ float WarpDot(const float (&a)[kDimsPerLane], const float* row,
                                         int64_t head_dim, int lane) {
  float partial = 0.0f;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    int64_t d = lane + kWarpSize * i;
    if (d < head_dim) partial += a[i] * row[d];
  }
  return WarpSum(partial);
}

__device__ __forceinline__ float NaN() { return __int_as_float(0x7fc00000); }

// ---- Forward ------------------------------------------------------------------------------

// Grid (T, Hq), block kThreads: block (t, h) computes out[t, h, :] of out (T, Hq, D) f32 and
// lse[t, h] of lse (T, Hq) f32 from q (T, Hq, D) and k, v (T, Hkv, D) f32, over the keys j in
// [KeyBegin(t), t] of t's document, kv head h / (Hq / Hkv).
//
// Warp w walks the keys first + w, first + w + kWarps, ...: a warp-shuffle sum gives the score
// scale * q . k_j, and an online softmax (running maximum m, running sum l of exp(score - m),
// accumulator rescaled whenever m grows) folds v_j in. Then the warps' (m, l, accumulator) are
// merged in warp order through shared memory. A token whose document is inconsistent gets NaN.
template <int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    CausalAttentionKernel(const float* q, const float* k, const float* v, const int32_t* starts,
                          AttentionDims dims, float* out, float* lse) {
  constexpr int kMaxDims = kDimsPerLane * kWarpSize;
  __shared__ float warp_max[kWarps];
  __shared__ float warp_sum[kWarps];
  __shared__ float warp_acc[kWarps][kMaxDims];

  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t head_dim = dims.head_dim;
  const int64_t g = h / (dims.heads / dims.kv_heads);
  const int64_t kv_row = dims.kv_heads * head_dim;

  float q_reg[kDimsPerLane];
  LoadRow<kDimsPerLane>(q + (t * dims.heads + h) * head_dim, head_dim, lane, q_reg);

  int64_t begin = 0, end = 0;
  const bool valid = FindDocument(starts, dims, t, begin, end);
  float m = -INFINITY;
  float l = 0.0f;
  float acc[kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) acc[i] = 0.0f;
  if (valid) {
    for (int64_t j = KeyBegin(dims, begin, t) + warp; j <= t; j += kWarps) {
      const float* key = k + j * kv_row + g * head_dim;
      const float* value = v + j * kv_row + g * head_dim;
      float score = WarpDot<kDimsPerLane>(q_reg, key, head_dim, lane) * dims.scale;
      float m_new = fmaxf(m, score);
      float correction = expf(m - m_new);
      float p = expf(score - m_new);
      l = l * correction + p;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        int64_t d = lane + kWarpSize * i;
        acc[i] = acc[i] * correction + p * (d < head_dim ? value[d] : 0.0f);
      }
      m = m_new;
    }
  }
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) warp_acc[warp][lane + kWarpSize * i] = acc[i];
  __syncthreads();

  float* o = out + (t * dims.heads + h) * head_dim;
  float* row_lse = lse + t * dims.heads + h;
  if (!valid) {
    for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) o[d] = NaN();
    if (threadIdx.x == 0) *row_lse = NaN();
    return;
  }
  float max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) max = fmaxf(max, warp_max[w]);
  // Each warp's share rescaled to the common maximum; a warp that saw no key has m = -inf and
  // weighs exp(-inf) = 0 (every token attends to itself, so max is finite).
  float weight[kWarps];
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = expf(warp_max[w] - max);
    total += warp_sum[w] * weight[w];
  }
  float inverse = 1.0f / total;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_acc[w][d] * weight[w];
    o[d] = sum * inverse;
  }
  if (threadIdx.x == 0) *row_lse = max + logf(total);
}

// ---- Backward -----------------------------------------------------------------------------

// Grid (T), block kThreads: block t writes delta[t, h] (T, Hq) f32 = dout[t, h] . out[t, h]
// for every head, dout and out (T, Hq, D) f32; warp w takes heads w, w + kWarps, ...
__global__ void __launch_bounds__(kThreads)
    AttentionDeltaKernel(const float* out, const float* dout, int64_t heads, int64_t head_dim,
                         float* delta) {
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  for (int64_t h = warp; h < heads; h += kWarps) {
    const float* o = out + (t * heads + h) * head_dim;
    const float* g = dout + (t * heads + h) * head_dim;
    float partial = 0.0f;
    for (int64_t d = lane; d < head_dim; d += kWarpSize) partial += g[d] * o[d];
    float sum = WarpSum(partial);
    if (lane == 0) delta[t * heads + h] = sum;
  }
}

// Grid (T, Hq), block kThreads: block (t, h) writes dq[t, h, :] of dq (T, Hq, D) f32,
//   dq_t = scale * sum over the keys j of t of P_tj (dout_t . v_j - delta_t) k_j,
// P_tj = exp(scale * q_t . k_j - lse_t), from q, dout (T, Hq, D), k, v (T, Hkv, D), lse and
// delta (T, Hq), all f32. Warp w takes the keys first + w, first + w + kWarps, ...; the warps'
// sums are added in warp order through shared memory. NaN for an inconsistent document.
template <int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    AttentionQueryGradientKernel(const float* q, const float* k, const float* v, const float* lse,
                                 const float* dout, const float* delta, const int32_t* starts,
                                 AttentionDims dims, float* dq) {
  constexpr int kMaxDims = kDimsPerLane * kWarpSize;
  __shared__ float warp_acc[kWarps][kMaxDims];

  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t head_dim = dims.head_dim;
  const int64_t g = h / (dims.heads / dims.kv_heads);
  const int64_t kv_row = dims.kv_heads * head_dim;
  const int64_t row = t * dims.heads + h;

  float q_reg[kDimsPerLane], dout_reg[kDimsPerLane], acc[kDimsPerLane];
  LoadRow<kDimsPerLane>(q + row * head_dim, head_dim, lane, q_reg);
  LoadRow<kDimsPerLane>(dout + row * head_dim, head_dim, lane, dout_reg);
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) acc[i] = 0.0f;

  int64_t begin = 0, end = 0;
  const bool valid = FindDocument(starts, dims, t, begin, end);
  if (valid) {
    const float row_lse = lse[row], row_delta = delta[row];
    for (int64_t j = KeyBegin(dims, begin, t) + warp; j <= t; j += kWarps) {
      const float* key = k + j * kv_row + g * head_dim;
      const float* value = v + j * kv_row + g * head_dim;
      float p = expf(WarpDot<kDimsPerLane>(q_reg, key, head_dim, lane) * dims.scale - row_lse);
      float ds = p * (WarpDot<kDimsPerLane>(dout_reg, value, head_dim, lane) - row_delta);
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        int64_t d = lane + kWarpSize * i;
        if (d < head_dim) acc[i] += ds * key[d];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) warp_acc[warp][lane + kWarpSize * i] = acc[i];
  __syncthreads();

  float* out = dq + row * head_dim;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_acc[w][d];
    out[d] = valid ? dims.scale * sum : NaN();
  }
}

// Grid (T, Hkv), block kThreads: block (j, g) writes dk[j, g, :] and dv[j, g, :] of dk, dv
// (T, Hkv, D) f32 from the pairs (t, h) that attend to key j through kv head g: queries t in
// [j, end) of j's document, t < j + w with a sliding window w, and query heads h in
// [g * group, (g + 1) * group), group = Hq / Hkv:
//   dv_j = sum P_tj dout_t,   dk_j = scale * sum P_tj (dout_t . v_j - delta_t) q_t,
// P_tj = exp(scale * q_t . k_j - lse_t), with q, dout (T, Hq, D), lse, delta (T, Hq) f32.
// Pair i = (t - j) * group + (h - g * group) goes to warp i % kWarps; the warps' sums are
// added in warp order through shared memory. NaN for an inconsistent document.
template <int kDimsPerLane>
__global__ void __launch_bounds__(kThreads)
    AttentionKeyValueGradientKernel(const float* q, const float* k, const float* v,
                                    const float* lse, const float* dout, const float* delta,
                                    const int32_t* starts, AttentionDims dims, float* dk,
                                    float* dv) {
  constexpr int kMaxDims = kDimsPerLane * kWarpSize;
  __shared__ float warp_dk[kWarps][kMaxDims];
  __shared__ float warp_dv[kWarps][kMaxDims];

  const int64_t j = blockIdx.x, g = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t head_dim = dims.head_dim;
  const int64_t group = dims.heads / dims.kv_heads;
  const int64_t kv_at = (j * dims.kv_heads + g) * head_dim;

  float k_reg[kDimsPerLane], v_reg[kDimsPerLane], acc_dk[kDimsPerLane], acc_dv[kDimsPerLane];
  LoadRow<kDimsPerLane>(k + kv_at, head_dim, lane, k_reg);
  LoadRow<kDimsPerLane>(v + kv_at, head_dim, lane, v_reg);
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) acc_dk[i] = acc_dv[i] = 0.0f;

  int64_t begin = 0, end = 0;
  const bool valid = FindDocument(starts, dims, j, begin, end);
  if (valid) {
    int64_t last = end;  // queries [j, last) attend to j
    if (dims.sliding_window > 0 && j + dims.sliding_window < last) {
      last = j + dims.sliding_window;
    }
    const int64_t pairs = (last - j) * group;
    for (int64_t i = warp; i < pairs; i += kWarps) {
      const int64_t t = j + i / group, h = g * group + i % group;
      const int64_t row = t * dims.heads + h;
      const float* query = q + row * head_dim;
      const float* gradient = dout + row * head_dim;
      float p = expf(WarpDot<kDimsPerLane>(k_reg, query, head_dim, lane) * dims.scale - lse[row]);
      float ds = p * (WarpDot<kDimsPerLane>(v_reg, gradient, head_dim, lane) - delta[row]);
#pragma unroll
      for (int e = 0; e < kDimsPerLane; ++e) {
        int64_t d = lane + kWarpSize * e;
        if (d < head_dim) {
          acc_dv[e] += p * gradient[d];
          acc_dk[e] += ds * query[d];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    warp_dk[warp][lane + kWarpSize * i] = acc_dk[i];
    warp_dv[warp][lane + kWarpSize * i] = acc_dv[i];
  }
  __syncthreads();

  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum_dk = 0.0f, sum_dv = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      sum_dk += warp_dk[w][d];
      sum_dv += warp_dv[w][d];
    }
    dk[kv_at + d] = valid ? dims.scale * sum_dk : NaN();
    dv[kv_at + d] = valid ? sum_dv : NaN();
  }
}

// ---- Host side ----------------------------------------------------------------------------

// The checks of both calls on q, k, v, sequence_starts and params; fills dims.
absl::Status CheckInputs(const char* kernel, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& sequence_starts, const AttentionParams& params,
                         Device device, AttentionDims& dims) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "q", q, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "q", q, 3));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k", k, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k", k, 3));
  if (k.dim(0) != q.dim(0) || k.dim(2) != q.dim(2) || k.dim(1) == 0 || q.dim(1) < k.dim(1) ||
      q.dim(1) % k.dim(1) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kernel, ": k is ", k.DebugString(), ", expected (", q.dim(0), ", kv_heads, ", q.dim(2),
        ") with kv_heads dividing the ", q.dim(1), " query heads of q ", q.DebugString()));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v", v, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kernel, "sequence_starts", sequence_starts, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "sequence_starts", sequence_starts, 1));
  if (sequence_starts.dim(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(kernel, ": sequence_starts ",
                                                   sequence_starts.DebugString(),
                                                   " must hold at least the start 0"));
  }
  if (params.sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": sliding_window is ", params.sliding_window, ", expected >= 0"));
  }
  if (q.dim(2) > kMaxTrainingAttentionHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kernel, ": heads of ", q.dim(2), " dimensions are beyond the ",
                     kMaxTrainingAttentionHeadDim, " this kernel supports"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kernel, "tokens", q.dim(0)));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kernel, "query heads", q.dim(1), 65535));
  dims = {q.dim(0),     sequence_starts.dim(0) - 1, q.dim(1), k.dim(1), q.dim(2),
          params.scale, params.sliding_window};
  return absl::OkStatus();
}

// Calls fn(std::integral_constant<int, kDimsPerLane>{}) for the smallest of 1, 2, 4, 8 lanes'
// worth of dimensions that holds head_dim (<= 256, checked).
template <typename Fn>
void DispatchHeadDim(int64_t head_dim, Fn&& fn) {
  if (head_dim <= 32) {
    fn(std::integral_constant<int, 1>{});
  } else if (head_dim <= 64) {
    fn(std::integral_constant<int, 2>{});
  } else if (head_dim <= 128) {
    fn(std::integral_constant<int, 4>{});
  } else {
    fn(std::integral_constant<int, 8>{});
  }
}

}  // namespace

absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse, Stream& stream) {
  constexpr char kKernel[] = "CausalAttention";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  AttentionDims dims;
  TESSERA_RETURN_IF_ERROR(CheckInputs(kKernel, q, k, v, sequence_starts, params, device, dims));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {dims.tokens, dims.heads}));
  if (dims.tokens == 0) return absl::OkStatus();

  dim3 grid(static_cast<unsigned int>(dims.tokens), static_cast<unsigned int>(dims.heads));
  DispatchHeadDim(dims.head_dim, [&](auto lanes) {
    CausalAttentionKernel<decltype(lanes)::value><<<grid, kThreads, 0, cuda_stream>>>(
        q.data<float>(), k.data<float>(), v.data<float>(), sequence_starts.data<int32_t>(), dims,
        out.data<float>(), lse.data<float>());
  });
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status CausalAttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& sequence_starts, const AttentionParams& params,
                                     Tensor& dq, Tensor& dk, Tensor& dv, Stream& stream) {
  constexpr char kKernel[] = "CausalAttentionBackward";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  AttentionDims dims;
  TESSERA_RETURN_IF_ERROR(CheckInputs(kKernel, q, k, v, sequence_starts, params, device, dims));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "lse", lse, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "lse", lse, {dims.tokens, dims.heads}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dout", dout, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dout", dout, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dq", dq, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dq", dq, q.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dk", dk, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dk", dk, k.shape()));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "dv", dv, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "dv", dv, k.shape()));
  if (dims.tokens == 0) return absl::OkStatus();

  float* delta = nullptr;
  size_t delta_bytes = static_cast<size_t>(dims.tokens * dims.heads) * sizeof(float);
  TESSERA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&delta), delta_bytes, cuda_stream));
  const int32_t* starts = sequence_starts.data<int32_t>();
  AttentionDeltaKernel<<<static_cast<unsigned int>(dims.tokens), kThreads, 0, cuda_stream>>>(
      out.data<float>(), dout.data<float>(), dims.heads, dims.head_dim, delta);
  dim3 query_grid(static_cast<unsigned int>(dims.tokens), static_cast<unsigned int>(dims.heads));
  dim3 key_grid(static_cast<unsigned int>(dims.tokens), static_cast<unsigned int>(dims.kv_heads));
  DispatchHeadDim(dims.head_dim, [&](auto lanes) {
    constexpr int kDimsPerLane = decltype(lanes)::value;
    AttentionQueryGradientKernel<kDimsPerLane><<<query_grid, kThreads, 0, cuda_stream>>>(
        q.data<float>(), k.data<float>(), v.data<float>(), lse.data<float>(), dout.data<float>(),
        delta, starts, dims, dq.data<float>());
    AttentionKeyValueGradientKernel<kDimsPerLane><<<key_grid, kThreads, 0, cuda_stream>>>(
        q.data<float>(), k.data<float>(), v.data<float>(), lse.data<float>(), dout.data<float>(),
        delta, starts, dims, dk.data<float>(), dv.data<float>());
  });
  absl::Status launched = TESSERA_CALL_STATUS(CudaCall, cudaGetLastError());
  absl::Status freed = TESSERA_CALL_STATUS(CudaCall, cudaFreeAsync(delta, cuda_stream));
  return launched.ok() ? freed : launched;
}

}  // namespace tessera::kernels::cuda
