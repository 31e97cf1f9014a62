#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/quantized_linear.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::DispatchFloat;
using internal::ExpectDType;
using internal::ExpectRank;
using internal::ExpectShape;
using internal::GridStrideBlocks;
using internal::kWarpSize;
using internal::LaunchStream;
using internal::ToFloat;

// Outputs a panel of the packing holds (kernels/cpu/quantized_linear.h's kQuantizedPanel).
constexpr int kPanel = 8;
// Decode: warps of a block, which split one panel's inputs, and rows of x a block takes.
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowTile = 4;
// Dequantization for prefill: threads a block.
constexpr int kDequantizeThreads = 256;

// Block (p, y) of the decode kernels writes out[row0 + r][8 p + j] for r < rows, j < 8 (and
// 8 p + j < n): the sum over the warps of partial[warp][r][j], plus bias[8 p + j].
template <typename B>
__device__ void WritePanel(const float (&partial)[kWarps][kRowTile][kPanel], int64_t p,
                           int64_t row0, int rows, int64_t n, const B* bias, float* out) {
  if (threadIdx.x >= kRowTile * kPanel) return;
  const int r = threadIdx.x / kPanel, j = threadIdx.x % kPanel;
  const int64_t col = p * kPanel + j;
  if (r >= rows || col >= n) return;
  float sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += partial[w][r][j];
  if (bias != nullptr) sum += ToFloat(bias[col]);
  out[(row0 + r) * n + col] = sum;
}

// int4, decode. Grid (P, ceil(M / kRowTile)), block kThreads. words: i32 (P, K / 8, 8), byte j
// of word [p][t][l] holding code[8 p + l][8 t + j] (low nibble) and [8 t + 4 + j] (high);
// scales S and offsets f16 (P, G, 8). Lane `lane` of warp `warp` takes row l = lane % 8 of the
// panel and octets t = 4 warp + lane / 8, 4 warp + lane / 8 + 4 kWarps, ...: each step a warp
// reads 32 consecutive words. x rows are read as float4 (K a multiple of 32).
template <typename S, typename B>
__global__ void __launch_bounds__(kThreads)
    Int4DecodeKernel(const float* x, int64_t m, int64_t k, const uint32_t* words, const S* scales,
                     const __half* offsets, int64_t groups, int64_t group_size, int64_t n,
                     const B* bias, float* out) {
  __shared__ float partial[kWarps][kRowTile][kPanel];
  const int64_t p = blockIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowTile;
  const int rows = static_cast<int>(m - row0 < kRowTile ? m - row0 : kRowTile);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int l = lane % kPanel;
  const int64_t octets = k / 8;
  const uint32_t* panel = words + p * octets * kPanel;
  float acc[kRowTile] = {};
  for (int64_t t = warp * 4 + lane / kPanel; t < octets; t += kWarps * 4) {
    const uint32_t word = panel[t * kPanel + l];
    const int64_t at = (p * groups + (t * 8) / group_size) * kPanel + l;
    const float scale = ToFloat(scales[at]);
    const float offset = __half2float(offsets[at]);
    float w[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w[j] = fmaf(scale, static_cast<float>((word >> (8 * j)) & 15u), offset);
      w[4 + j] = fmaf(scale, static_cast<float>((word >> (8 * j + 4)) & 15u), offset);
    }
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) {
      if (r >= rows) break;
      const float4* xr = reinterpret_cast<const float4*>(x + (row0 + r) * k + t * 8);
      const float4 a = xr[0], b = xr[1];
      float s = acc[r];
      s = fmaf(a.x, w[0], s);
      s = fmaf(a.y, w[1], s);
      s = fmaf(a.z, w[2], s);
      s = fmaf(a.w, w[3], s);
      s = fmaf(b.x, w[4], s);
      s = fmaf(b.y, w[5], s);
      s = fmaf(b.z, w[6], s);
      s = fmaf(b.w, w[7], s);
      acc[r] = s;
    }
  }
  // Lanes l, l + 8, l + 16, l + 24 hold the same output's parts.
#pragma unroll
  for (int r = 0; r < kRowTile; ++r) {
    acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 8);
    acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 16);
    if (lane < kPanel) partial[warp][r][l] = acc[r];
  }
  __syncthreads();
  WritePanel(partial, p, row0, rows, n, bias, out);
}

// int8, decode. Grid and block as Int4DecodeKernel. codes: i8 (P, K, 8), code[8 p + l][c] at
// [p][c][l], read as words: word 2 c + h of a panel holds input c's codes of rows 4 h .. 4 h
// + 3. Lane `lane` of warp `warp` takes h = lane % 2 and inputs c = 16 warp + lane / 2,
// + 16 kWarps, ...: each step a warp reads 128 consecutive bytes. scales S (P, G, 8) (G = 1
// with f32 scales: one a row).
template <typename S, typename B>
__global__ void __launch_bounds__(kThreads)
    Int8DecodeKernel(const float* x, int64_t m, int64_t k, const uint32_t* words, const S* scales,
                     int64_t groups, int64_t group_size, int64_t n, const B* bias, float* out) {
  __shared__ float partial[kWarps][kRowTile][kPanel];
  const int64_t p = blockIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowTile;
  const int rows = static_cast<int>(m - row0 < kRowTile ? m - row0 : kRowTile);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int h = lane % 2;
  const uint32_t* panel = words + p * k * 2;
  float acc[kRowTile][4] = {};
  for (int64_t c = warp * 16 + lane / 2; c < k; c += kWarps * 16) {
    const uint32_t word = panel[c * 2 + h];
    const int64_t at = (p * groups + c / group_size) * kPanel + 4 * h;
    float w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int8_t code = static_cast<int8_t>((word >> (8 * i)) & 0xFFu);
      w[i] = ToFloat(scales[at + i]) * static_cast<float>(code);
    }
#pragma unroll
    for (int r = 0; r < kRowTile; ++r) {
      if (r >= rows) break;
      const float xv = x[(row0 + r) * k + c];
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[r][i] = fmaf(xv, w[i], acc[r][i]);
    }
  }
  // Lanes of the same h hold the same outputs' parts.
#pragma unroll
  for (int r = 0; r < kRowTile; ++r) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v = acc[r][i];
#pragma unroll
      for (int offset = 2; offset < kWarpSize; offset *= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
      }
      if (lane < 2) partial[warp][r][4 * lane + i] = v;
    }
  }
  __syncthreads();
  WritePanel(partial, p, row0, rows, n, bias, out);
}

// Grid-stride over dequant(w) (N, K) -> bf16, each weight scale * code + offset (int8: scale *
// code) in f32, then rounded to bf16 (nearest, ties to even).
template <bool kInt4, typename S>
__global__ void DequantizeKernel(const void* codes, const S* scales, const __half* offsets,
                                 int64_t n, int64_t k, int64_t groups, int64_t group_size,
                                 __nv_bfloat16* w) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * k;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / k, c = e % k;
    const int64_t p = row / kPanel, l = row % kPanel;
    const int64_t at = (p * groups + c / group_size) * kPanel + l;
    const float scale = ToFloat(scales[at]);
    float value;
    if constexpr (kInt4) {
      const uint32_t word = static_cast<const uint32_t*>(codes)[(p * (k / 8) + c / 8) * kPanel + l];
      const int j = static_cast<int>(c % 8);
      const int shift = j < 4 ? 8 * j : 8 * (j - 4) + 4;
      value = fmaf(scale, static_cast<float>((word >> shift) & 15u), __half2float(offsets[at]));
    } else {
      value =
          scale * static_cast<float>(static_cast<const int8_t*>(codes)[(p * k + c) * kPanel + l]);
    }
    w[e] = __float2bfloat16_rn(value);
  }
}

// Decode: the kernel for w's quant, scales S and bias B (float with a null bias for none).
template <typename S, typename B>
void LaunchDecode(const Tensor& x, const QuantizedWeight& w, const B* bias, Tensor& out,
                  cudaStream_t stream) {
  const int64_t m = x.dim(0), k = w.cols, n = w.rows;
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const dim3 grid(static_cast<unsigned>(panels),
                  static_cast<unsigned>((m + kRowTile - 1) / kRowTile));
  const int64_t groups = w.scales.dim(1);
  const int64_t group_size = k / groups;
  const uint32_t* words = static_cast<const uint32_t*>(w.codes.data());
  const S* scales = static_cast<const S*>(w.scales.data());
  if (w.quant == WeightQuant::kInt4) {
    Int4DecodeKernel<S, B><<<grid, kThreads, 0, stream>>>(
        x.data<float>(), m, k, words, scales, static_cast<const __half*>(w.offsets.data()), groups,
        group_size, n, bias, out.data<float>());
  } else {
    Int8DecodeKernel<S, B><<<grid, kThreads, 0, stream>>>(
        x.data<float>(), m, k, words, scales, groups, group_size, n, bias, out.data<float>());
  }
}

template <typename S>
absl::Status Decode(const Tensor& x, const QuantizedWeight& w, const Tensor& bias, Tensor& out,
                    cudaStream_t stream) {
  if (!bias.defined()) {
    LaunchDecode<S, float>(x, w, nullptr, out, stream);
  } else {
    DispatchFloat(bias.dtype(), [&](auto tag) {
      using B = typename decltype(tag)::type;
      LaunchDecode<S, B>(x, w, static_cast<const B*>(bias.data()), out, stream);
    });
  }
  TESSERA_RETURN_IF_LAUNCH_FAILED("QuantizedLinear (decode)");
  return absl::OkStatus();
}

// Prefill: dequant(w) as bf16 into stream-ordered scratch, then Linear; the scratch is
// released in stream order whether or not the product could be issued.
template <typename S>
absl::Status DequantizeThenMultiply(const Tensor& x, const QuantizedWeight& w, const Tensor& bias,
                                    Tensor& out, Stream& stream, cudaStream_t cuda_stream) {
  const int64_t n = w.rows, k = w.cols;
  const int64_t groups = w.scales.dim(1);
  void* scratch = nullptr;
  TESSERA_CUDA_CHECK(cudaMallocAsync(&scratch, static_cast<size_t>(n * k) * 2, cuda_stream));
  const S* scales = static_cast<const S*>(w.scales.data());
  const unsigned blocks = GridStrideBlocks(n * k, kDequantizeThreads);
  if (w.quant == WeightQuant::kInt4) {
    DequantizeKernel<true, S><<<blocks, kDequantizeThreads, 0, cuda_stream>>>(
        w.codes.data(), scales, static_cast<const __half*>(w.offsets.data()), n, k, groups,
        k / groups, static_cast<__nv_bfloat16*>(scratch));
  } else {
    DequantizeKernel<false, S><<<blocks, kDequantizeThreads, 0, cuda_stream>>>(
        w.codes.data(), scales, nullptr, n, k, groups, k / groups,
        static_cast<__nv_bfloat16*>(scratch));
  }
  const absl::Status widened = TESSERA_CALL_STATUS(CudaCall, cudaGetLastError());
  const Tensor dequantized = Tensor::Wrap(scratch, DType::kBF16, {n, k}, stream.device());
  const absl::Status product = widened.ok() ? Linear(x, dequantized, bias, out, stream) : widened;
  absl::Status freed = TESSERA_CALL_STATUS(CudaCall, cudaFreeAsync(scratch, cuda_stream));
  return product.ok() ? freed : product;
}

}  // namespace

absl::Status QuantizedLinear(const Tensor& x, const QuantizedWeight& w, const Tensor& bias,
                             Tensor& out, Stream& stream) {
  constexpr char kKernel[] = "QuantizedLinear";
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream(kKernel, stream));
  const Device device = stream.device();
  TESSERA_RETURN_IF_ERROR(CheckPacked(kKernel, w, device));
  if (w.activations != ActivationQuant::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": w is packed for int8 activations, which run on the CPU only; on ",
                     device.ToString(), " activations stay f32 (WithActivations(w, kF32))"));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "x", x, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectRank(kKernel, "x", x, 2));
  const int64_t m = x.dim(0), n = w.rows;
  if (x.dim(1) != w.cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": x ", x.DebugString(), " has ", x.dim(1), " inputs, w ", w.cols));
  }
  TESSERA_RETURN_IF_ERROR(ExpectDType(kKernel, "out", out, {DType::kF32}, device));
  TESSERA_RETURN_IF_ERROR(ExpectShape(kKernel, "out", out, {m, n}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectBias(kKernel, bias, n, device));
  if (m == 0 || n == 0) return absl::OkStatus();
  const bool f32_scales = w.scales.dtype() == DType::kF32;
  // int4's decode reads x as float4.
  const bool decode =
      m <= kQuantizedDecodeRows && (w.quant == WeightQuant::kInt8 || internal::Aligned16(x.data()));
  if (decode) {
    return f32_scales ? Decode<float>(x, w, bias, out, cuda_stream)
                      : Decode<__half>(x, w, bias, out, cuda_stream);
  }
  return f32_scales ? DequantizeThenMultiply<float>(x, w, bias, out, stream, cuda_stream)
                    : DequantizeThenMultiply<__half>(x, w, bias, out, stream, cuda_stream);
}

}  // namespace tessera::kernels::cuda
