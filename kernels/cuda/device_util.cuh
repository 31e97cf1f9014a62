#ifndef TESSERA_KERNELS_CUDA_DEVICE_UTIL_CUH_
#define TESSERA_KERNELS_CUDA_DEVICE_UTIL_CUH_

// Device-side building blocks of the CUDA kernels: widening of the 16-bit storage types,
// warp-shuffle and block reductions, and the dispatch from a DType to the element type a
// kernel template is instantiated with.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <utility>

#include "runtime/core/dtype.h"

namespace tessera::kernels::cuda::internal {

inline constexpr int kWarpSize = 32;

// Element widening to f32 and rounding back (nearest, ties to even, as the host's
// BFloat16::FromFloat and Half::FromFloat).
__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}

// The sum / maximum over the 32 lanes of a warp, returned to every lane.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// The sum / maximum of `v` over the whole block, returned to every thread. blockDim.x must be
// a multiple of 32 (at most 1024); `scratch` holds 32 floats of shared memory and may be
// reused once the call returns. Every thread of the block must call it.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  int warps = blockDim.x / kWarpSize;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  int warps = blockDim.x / kWarpSize;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(v);
}

// The element type of a floating-point dtype, as a kernel template argument.
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the device type of `dtype` (f32, bf16 or f16) and returns
// true, or returns false for any other dtype.
template <typename Fn>
bool DispatchFloat(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      std::forward<Fn>(fn)(TypeTag<float>{});
      return true;
    case DType::kBF16:
      std::forward<Fn>(fn)(TypeTag<__nv_bfloat16>{});
      return true;
    case DType::kF16:
      std::forward<Fn>(fn)(TypeTag<__half>{});
      return true;
    default:
      return false;
  }
}

}  // namespace tessera::kernels::cuda::internal

#endif  // TESSERA_KERNELS_CUDA_DEVICE_UTIL_CUH_
