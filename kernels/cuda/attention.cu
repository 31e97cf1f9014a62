#include <cuda_runtime.h>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::DispatchFloat;
using internal::ExpectAtMost;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::FromFloat;
using internal::kWarpSize;
using internal::LaunchStream;
using internal::ToFloat;
using internal::WarpSum;

constexpr int kWriteThreads = 128;
// PagedAttention: warps per block, each walking its own share of the keys.
constexpr int kAttentionWarps = 4;
constexpr int kAttentionThreads = kAttentionWarps * kWarpSize;

// Grid (T), block kWriteThreads: block t stores k[t] and v[t] (kv_heads * head_dim = `row`
// floats each) into slot slot_mapping[t] of k_cache and v_cache (capacity slots of `row`
// elements of C), rounded to C. Negative slots and slots beyond the cache are skipped.
template <typename C>
__global__ void WriteKvKernel(const float* k, const float* v, const int64_t* slot_mapping,
                              int64_t capacity, int64_t row, C* k_cache, C* v_cache) {
  int64_t t = blockIdx.x;
  int64_t slot = slot_mapping[t];
  if (slot < 0 || slot >= capacity) return;
  const float* k_row = k + t * row;
  const float* v_row = v + t * row;
  C* k_slot = k_cache + slot * row;
  C* v_slot = v_cache + slot * row;
  for (int64_t i = threadIdx.x; i < row; i += blockDim.x) {
    k_slot[i] = FromFloat<C>(k_row[i]);
    v_slot[i] = FromFloat<C>(v_row[i]);
  }
}

// Everything PagedAttentionKernel needs besides the pointers.
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

// Grid (T, heads), block kAttentionThreads. Block (r, h) computes out[r, h, :] (head_dim f32)
// for query row r of q (T, heads, head_dim) and query head h, which reads kv head
// h / (heads / kv_heads) of the caches (num_blocks, block_size, kv_heads, head_dim) of C.
//
// Lane `lane` of every warp holds dimensions d = lane + 32 * i, i < kDimsPerLane, of the
// query and of its warp's output accumulator (so head_dim <= 32 * kDimsPerLane). Warp w walks
// the keys j = first + w, first + w + kAttentionWarps, ... up to the row's position: a
// warp-shuffle sum gives the score q . k_j * scale, and an online softmax (running maximum m,
// running sum l of exp(score - m), accumulator rescaled whenever m grows) folds v_j in. At the
// end the warps' (m, l, accumulator) are merged through shared memory and every thread writes
// some of the head_dim outputs.
//
// The row's sequence is the last s with query_starts[s] <= r; a row that sequence does not
// claim, or an inconsistent sequence, makes the output NaN (see attention.h).
template <typename C, int kDimsPerLane>
__global__ void __launch_bounds__(kAttentionThreads)
    PagedAttentionKernel(const float* q, const C* k_cache, const C* v_cache,
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
    int64_t d = lane + kWarpSize * i;
    q_reg[i] = d < head_dim ? query[d] : 0.0f;
  }

  // Upper bound over query_starts[0, S): the first sequence that starts after this row.
  int64_t lo = 0, hi = shape.sequences;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
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
    int64_t end = query_starts[s + 1];
    new_tokens = end - begin;
    context = context_lens[s];
    valid = row < end && new_tokens <= context && context <= shape.max_blocks * shape.block_size;
  }
  // With begin <= row < end and new_tokens <= context: 0 <= position < context.
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
      int64_t block = table[j / shape.block_size];
      if (block < 0 || block >= shape.num_blocks) {  // the same j, so the same branch, warp-wide
        bad_block = true;
        continue;
      }
      int64_t offset =
          (block * shape.block_size + j % shape.block_size) * kv_row + kv_head * head_dim;
      const C* key = k_cache + offset;
      const C* value = v_cache + offset;
      float partial = 0.0f;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        int64_t d = lane + kWarpSize * i;
        if (d < head_dim) partial += q_reg[i] * ToFloat(key[d]);
      }
      float score = WarpSum(partial) * shape.scale;
      float m_new = fmaxf(m, score);
      float correction = expf(m - m_new);
      float p = expf(score - m_new);
      l = l * correction + p;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) {
        int64_t d = lane + kWarpSize * i;
        float v = d < head_dim ? ToFloat(value[d]) : 0.0f;
        acc[i] = acc[i] * correction + p * v;
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
  bool any_bad = __syncthreads_or(bad_block ? 1 : 0) != 0;

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
  float inverse = 1.0f / total;
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttentionWarps; ++w) sum += warp_acc[w][d] * weight[w];
    o[d] = sum * inverse;
  }
}

absl::Status CheckCache(const char* kernel, const Tensor& k_cache, const Tensor& v_cache,
                        Device device) {
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kernel, "k_cache", k_cache, {DType::kF32, DType::kBF16, DType::kF16}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kernel, "k_cache", k_cache, 4));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kernel, "v_cache", v_cache, {k_cache.dtype()}, device));
  return ExpectShape(kernel, "v_cache", v_cache, k_cache.shape());
}

template <typename C, int kDimsPerLane>
void LaunchAttention(dim3 grid, cudaStream_t stream, const Tensor& q, const Tensor& k_cache,
                     const Tensor& v_cache, const Tensor& query_starts, const Tensor& context_lens,
                     const Tensor& block_tables, const AttentionShape& shape, Tensor& out) {
  PagedAttentionKernel<C, kDimsPerLane><<<grid, kAttentionThreads, 0, stream>>>(
      q.data<float>(), static_cast<const C*>(k_cache.data()), static_cast<const C*>(v_cache.data()),
      query_starts.data<int32_t>(), context_lens.data<int32_t>(), block_tables.data<int32_t>(),
      shape, out.data<float>());
}

}  // namespace

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache, Stream& stream) {
  constexpr char kKernel[] = "WriteKvCache";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache, device));
  int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "k", k, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "k", k, 3));
  int64_t tokens = k.dim(0);
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "k", k, {tokens, kv_heads, head_dim}));
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "v", v, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "v", v, k.shape()));
  TESSERA_RETURN_IF_ERROR(
      ExpectDType(kKernel, "slot_mapping", slot_mapping, {DType::kI64}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "slot_mapping", slot_mapping, {tokens}));
  TESSERA_RETURN_IF_ERROR(ExpectAtMost(kKernel, "tokens", tokens));
  int64_t row = kv_heads * head_dim;
  if (tokens == 0 || row == 0) return absl::OkStatus();
  DispatchFloat(k_cache.dtype(), [&](auto tag) {
    using C = typename decltype(tag)::type;
    WriteKvKernel<C><<<static_cast<unsigned int>(tokens), kWriteThreads, 0, cuda_stream>>>(
        k.data<float>(), v.data<float>(), slot_mapping.data<int64_t>(), blocks * block_size, row,
        static_cast<C*>(k_cache.data()), static_cast<C*>(v_cache.data()));
  });
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params, Tensor& out,
                            Stream& stream) {
  constexpr char kKernel[] = "PagedAttention";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckCache(kKernel, k_cache, v_cache, device));
  int64_t blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  int64_t kv_heads = k_cache.dim(2), head_dim = k_cache.dim(3);
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "q", q, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "q", q, 3));
  int64_t tokens = q.dim(0), heads = q.dim(1);
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
  int64_t sequences = context_lens.dim(0);
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

  AttentionShape shape{
      sequences,    block_tables.dim(1),  blocks, block_size, heads, kv_heads, head_dim,
      params.scale, params.sliding_window};
  dim3 grid(static_cast<unsigned int>(tokens), static_cast<unsigned int>(heads));
  DispatchFloat(k_cache.dtype(), [&](auto tag) {
    using C = typename decltype(tag)::type;
    if (head_dim <= 32) {
      LaunchAttention<C, 1>(grid, cuda_stream, q, k_cache, v_cache, query_starts, context_lens,
                            block_tables, shape, out);
    } else if (head_dim <= 64) {
      LaunchAttention<C, 2>(grid, cuda_stream, q, k_cache, v_cache, query_starts, context_lens,
                            block_tables, shape, out);
    } else if (head_dim <= 128) {
      LaunchAttention<C, 4>(grid, cuda_stream, q, k_cache, v_cache, query_starts, context_lens,
                            block_tables, shape, out);
    } else {
      LaunchAttention<C, 8>(grid, cuda_stream, q, k_cache, v_cache, query_starts, context_lens,
                            block_tables, shape, out);
    }
  });
  TESSERA_RETURN_IF_LAUNCH_FAILED(kKernel);
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cuda
