#include <cuda_runtime.h>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kv_cache_int8.h"
#include "kernels/cuda/launch.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::kWarpSize;
using internal::LaunchStream;
using internal::WarpMax;
using internal::WarpSum;

// WriteKvCacheInt8: warps per block, each quantizing its share of the kv heads of a token.
constexpr int kWriteWarps = 4;
constexpr int kWriteThreads = kWriteWarps * kWarpSize;
// PagedAttentionInt8: warps per block, each walking its own share of the keys.
constexpr int kAttentionWarps = 4;
constexpr int kAttentionThreads = kAttentionWarps * kWarpSize;

// One head vector x (n floats) -> codes (n) and *scale, by one whole warp (every lane must
// call it), as QuantizeHead of kernels/cpu/kv_cache_int8.cc: the same IEEE divisions and
// rounding to nearest even, so the same codes and scale.
__device__ void QuantizeHeadWarp(const float* x, int64_t n, int8_t* codes, float* scale, int lane) {
  float max = 0.0f;
  bool finite = true;
  for (int64_t d = lane; d < n; d += kWarpSize) {
    const float magnitude = fabsf(x[d]);
    finite = finite && isfinite(magnitude);
    max = fmaxf(max, magnitude);
  }
  max = WarpMax(max);
  finite = __all_sync(0xffffffffu, finite) != 0;
  const float s = __fdiv_rn(max, 127.0f);
  // All zeros, or so small that the scale underflows to 0.
  const bool zero = !finite || !(s > 0.0f);
  for (int64_t d = lane; d < n; d += kWarpSize) {
    const float code = zero ? 0.0f : fminf(fmaxf(rintf(__fdiv_rn(x[d], s)), -127.0f), 127.0f);
    codes[d] = static_cast<int8_t>(code);
  }
  if (lane == 0) *scale = !finite ? __int_as_float(0x7fc00000) : (zero ? 0.0f : s);
}

// Grid (T), block kWriteThreads: block t quantizes k[t] and v[t] (kv_heads vectors of
// head_dim floats each) into slot slot_mapping[t]: the code rows of k_cache and v_cache
// (capacity slots of kv_heads * head_dim codes) and the scales (num_blocks, kv_heads,
// block_size). Negative slots and slots beyond the cache are skipped.
__global__ void __launch_bounds__(kWriteThreads)
    WriteKvInt8Kernel(const float* k, const float* v, const int64_t* slot_mapping, int64_t capacity,
                      int64_t block_size, int64_t kv_heads, int64_t head_dim, int8_t* k_cache,
                      int8_t* v_cache, float* k_scale, float* v_scale) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0 || slot >= capacity) return;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t block = slot / block_size, offset = slot % block_size;
  const int64_t row = kv_heads * head_dim;
  for (int64_t g = warp; g < kv_heads; g += kWriteWarps) {
    const int64_t scale_index = (block * kv_heads + g) * block_size + offset;
    QuantizeHeadWarp(k + t * row + g * head_dim, head_dim, k_cache + slot * row + g * head_dim,
                     k_scale + scale_index, lane);
    QuantizeHeadWarp(v + t * row + g * head_dim, head_dim, v_cache + slot * row + g * head_dim,
                     v_scale + scale_index, lane);
  }
}

// Everything PagedAttentionInt8Kernel needs besides the pointers.
struct AttentionShape {
  int64_t sequences;   // S
  int64_t max_blocks;  // columns of block_tables
  int64_t num_blocks;  // blocks in the cache
  int64_t block_size;
  int64_t heads;
  int64_t kv_heads;
  int64_t head_dim;
  float scale;
  int sliding_window;
};

// Grid (T, heads), block kAttentionThreads: PagedAttentionKernel of kernels/cuda/attention.cu
// over int8 codes. Block (r, h) computes out[r, h, :] for query row r and query head h, which
// reads kv head h / (heads / kv_heads).
//
// Lane `lane` of every warp holds dimensions d = lane + 32 * i, i < kDimsPerLane, of the
// query and of its warp's output accumulator. Warp w walks the keys j = first + w,
// first + w + kAttentionWarps, ...: a warp-shuffle sum of q_d * code_d gives the score times
// the position's k_scale * params.scale, and an online softmax folds in the value codes with
// weight p * v_scale (the scales once a position, never per dimension). The warps' (m, l,
// accumulator) are merged through shared memory at the end.
//
// The row's sequence is the last s with query_starts[s] <= r; a row that sequence does not
// claim, or an inconsistent sequence, makes the output NaN.
template <int kDimsPerLane>
__global__ void __launch_bounds__(kAttentionThreads)
    PagedAttentionInt8Kernel(const float* q, const int8_t* k_cache, const int8_t* v_cache,
                             const float* k_scale, const float* v_scale,
                             const int32_t* query_starts, const int32_t* context_lens,
                             const int32_t* block_tables, AttentionShape shape, float* out) {
  constexpr int kMaxDims = kDimsPerLane * kWarpSize;
  __shared__ float warp_max[kAttentionWarps];
  __shared__ float warp_sum[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][kMaxDims];

  const int64_t row = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t head_dim = shape.head_dim;
  const int64_t kv_head = h / (shape.heads / shape.kv_heads);

  // The query, read before anything is written: out may be q.
  const float* query = q + (row * shape.heads + h) * head_dim;
  float q_reg[kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int64_t d = lane + kWarpSize * i;
    q_reg[i] = d < head_dim ? query[d] : 0.0f;
  }

  // Upper bound over query_starts[0, S): the first sequence that starts after this row.
  int64_t lo = 0, hi = shape.sequences;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (query_starts[mid] <= row) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int64_t s = lo - 1;
  bool valid = s >= 0;
  int64_t begin = 0, new_tokens = 0, context = 0;
  if (valid) {
    begin = query_starts[s];
    const int64_t end = query_starts[s + 1];
    new_tokens = end - begin;
    context = context_lens[s];
    valid = row < end && new_tokens <= context && context <= shape.max_blocks * shape.block_size;
  }
  const int64_t position = context - new_tokens + (row - begin);
  int64_t first = 0;
  if (shape.sliding_window > 0 && position - shape.sliding_window + 1 > 0) {
    first = position - shape.sliding_window + 1;
  }

  float m = -INFINITY;  // running maximum of this warp's scores
  float l = 0.0f;       // running sum of exp(score - m)
  float acc[kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) acc[i] = 0.0f;
  bool bad_block = false;
  if (valid) {
    const int32_t* table = block_tables + s * shape.max_blocks;
    const int64_t kv_row = shape.kv_heads * head_dim;
    for (int64_t j = first + warp; j <= position; j += kAttentionWarps) {
      const int64_t block = table[j / shape.block_size];
      if (block < 0 || block >= shape.num_blocks) {  // the same j, so the same branch, warp-wide
        bad_block = true;
        continue;
      }
      const int64_t in_block = j % shape.block_size;
      const int64_t offset = (block * shape.block_size + in_block) * kv_row + kv_head * head_dim;
      const int64_t scale_index = (block * shape.kv_heads + kv_head) * shape.block_size + in_block;
      const int8_t* key = k_cache + offset;
      const int8_t* value = v_cache + offset;
      float partial = 0.0f;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        const int64_t d = lane + kWarpSize * i;
        if (d < head_dim) partial = fmaf(q_reg[i], static_cast<float>(key[d]), partial);
      }
      const float score = WarpSum(partial) * (k_scale[scale_index] * shape.scale);
      const float m_new = fmaxf(m, score);
      const float correction = expf(m - m_new);
      const float p = expf(score - m_new);
      l = l * correction + p;
      const float weight = p * v_scale[scale_index];
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        const int64_t d = lane + kWarpSize * i;
        const float code = d < head_dim ? static_cast<float>(value[d]) : 0.0f;
        acc[i] = acc[i] * correction + weight * code;
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
  const bool any_bad = __syncthreads_or(bad_block ? 1 : 0) != 0;

  float* o = out + (row * shape.heads + h) * head_dim;
  if (!valid || any_bad) {
    for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) o[d] = __int_as_float(0x7fc00000);
    return;
  }
  float max = -INFINITY;
#pragma unroll
  for (int w = 0; w < kAttentionWarps; ++w) max = fmaxf(max, warp_max[w]);
  // Each warp's share rescaled to the common maximum; a warp that saw no key has m = -inf
  // and weighs exp(-inf) = 0.
  float weight[kAttentionWarps];
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kAttentionWarps; ++w) {
    weight[w] = expf(warp_max[w] - max);
    total += warp_sum[w] * weight[w];
  }
  const float inverse = 1.0f / total;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttentionWarps; ++w) sum += warp_acc[w][d] * weight[w];
    o[d] = sum * inverse;
  }
}

// The four tensors of the cache (layouts in kv_cache_int8.h).
absl::Status CheckCache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& k_scale, const Tensor& v_scale, Device device) {
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_cache", k_cache, {DType::kI8}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k_cache", k_cache, 4));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_cache", v_cache, {DType::kI8}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "v_cache", v_cache, k_cache.shape()));
  const Shape scales = KvScaleShape(k_cache.dim(0), k_cache.dim(1), k_cache.dim(2));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "k_scale", k_scale, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kernel, "k_scale", k_scale, scales));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_scale", v_scale, {DType::kF32}, device));
  return ExpectShape(kernel, "v_scale", v_scale, scales);
}

template <int kDimsPerLane>
void LaunchAttention(dim3 grid, cudaStream_t stream, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const Tensor& k_scale, const Tensor& v_scale,
                     const Tensor& query_starts, const Tensor& context_lens,
                     const Tensor& block_tables, const AttentionShape& shape, Tensor& out) {
  PagedAttentionInt8Kernel<kDimsPerLane><<<grid, kAttentionThreads, 0, stream>>>(
      q.data<float>(), k_cache.data<int8_t>(), v_cache.data<int8_t>(), k_scale.data<float>(),
      v_scale.data<float>(), query_starts.data<int32_t>(), context_lens.data<int32_t>(),
      block_tables.data<int32_t>(), shape, out.data<float>());
}

}  // namespace

absl::Status WriteKvCacheInt8(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, Tensor& k_scale, Tensor& v_scale,
                              Stream& stream) {
  constexpr char kKernel[] = "WriteKvCacheInt8";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  const Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache, k_scale, v_scale, device));
  const int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  const int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "k", k, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "k", k, 3));
  const int64_t tokens = k.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "k", k, {tokens, kv_heads, head_dim}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "v", v, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "slot_mapping", slot_mapping, {DType::kI64}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "slot_mapping", slot_mapping, {tokens}));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "tokens", tokens));
  if (tokens == 0 || kv_heads * head_dim == 0) return absl::OkStatus();
  WriteKvInt8Kernel<<<static_cast<unsigned int>(tokens), kWriteThreads, 0, cuda_stream>>>(
      k.data<float>(), v.data<float>(), slot_mapping.data<int64_t>(), blocks * block_size,
      block_size, kv_heads, head_dim, k_cache.data<int8_t>(), v_cache.data<int8_t>(),
      k_scale.data<float>(), v_scale.data<float>());
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status PagedAttentionInt8(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& k_scale, const Tensor& v_scale,
                                const Tensor& query_starts, const Tensor& context_lens,
                                const Tensor& block_tables, const AttentionParams& params,
                                Tensor& out, Stream& stream) {
  constexpr char kKernel[] = "PagedAttentionInt8";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  const Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache, k_scale, v_scale, device));
  const int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  const int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "q", q, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "q", q, 3));
  const int64_t tokens = q.dim(0), heads = q.dim(1);
  if (q.dim(2) != head_dim || kv_heads == 0 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": q ", q.DebugString(),
                                                   " does not match a cache of ", kv_heads,
                                                   " kv heads of ", head_dim, " dimensions"));
  }
  if (head_dim > kMaxAttentionHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(kKernel, ": heads of ", head_dim,
                                                   " dimensions are beyond the ",
                                                   kMaxAttentionHeadDim, " this kernel supports"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, q.shape()));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "context_lens", context_lens, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "context_lens", context_lens, 1));
  const int64_t sequences = context_lens.dim(0);
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "query_starts", query_starts, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "query_starts", query_starts, {sequences + 1}));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "block_tables", block_tables, {DType::kI32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "block_tables", block_tables, 2));
  if (block_tables.dim(0) != sequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKernel, ": block_tables ", block_tables.DebugString(), " for ", sequences, " sequences"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "query rows", tokens));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "heads", heads, 65535));
  if (tokens == 0 || heads == 0) return absl::OkStatus();

  const AttentionShape shape{
      sequences,    block_tables.dim(1),  blocks, block_size, heads, kv_heads, head_dim,
      params.scale, params.sliding_window};
  const dim3 grid(static_cast<unsigned int>(tokens), static_cast<unsigned int>(heads));
  if (head_dim <= 32) {
    LaunchAttention<1>(grid, cuda_stream, q, k_cache, v_cache, k_scale, v_scale, query_starts,
                       context_lens, block_tables, shape, out);
  } else if (head_dim <= 64) {
    LaunchAttention<2>(grid, cuda_stream, q, k_cache, v_cache, k_scale, v_scale, query_starts,
                       context_lens, block_tables, shape, out);
  } else if (head_dim <= 128) {
    LaunchAttention<4>(grid, cuda_stream, q, k_cache, v_cache, k_scale, v_scale, query_starts,
                       context_lens, block_tables, shape, out);
  } else {
    LaunchAttention<8>(grid, cuda_stream, q, k_cache, v_cache, k_scale, v_scale, query_starts,
                       context_lens, block_tables, shape, out);
  }
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
