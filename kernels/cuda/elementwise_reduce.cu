#include <cuda_runtime.h>

#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/elementwise_reduce.h"
#include "kernels/cuda/launch.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels::cuda {
namespace {

using internal::FromFloat;
using internal::GridStrideBlocks;
using internal::LaunchStream;
using internal::ToFloat;

constexpr int kThreads = 256;

// The combining operations, as the CPU's: the same comparisons as std::max / std::min (so a
// NaN in the same operand position wins or loses as it does there), and sums of integers in
// the unsigned type, where overflow wraps.
struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;
      return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
    } else {
      return a + b;
    }
  }
};
struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a < b ? b : a;
  }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

// Grid-stride over out (count) = op(a, b) for f32 and the integer types. An i8 combination
// goes through int and is truncated back, as on the CPU.
template <typename T, typename Op>
__global__ void CombineKernel(T* out, const T* a, const T* b, int64_t count, Op op) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<T, int8_t>) {
      out[i] = static_cast<int8_t>(op(int{a[i]}, int{b[i]}));
    } else {
      out[i] = op(a[i], b[i]);
    }
  }
}

// Grid-stride over out (count) = round(op(widen(a), widen(b))) for bf16 and f16.
template <typename H, typename Op>
__global__ void CombineHalfKernel(H* out, const H* a, const H* b, int64_t count, Op op) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = FromFloat<H>(op(ToFloat(a[i]), ToFloat(b[i])));
  }
}

template <typename T, typename Op>
void LaunchCombine(void* out, const void* a, const void* b, int64_t count, Op op,
                   cudaStream_t stream) {
  CombineKernel<T><<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(
      static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b), count, op);
}

template <typename H, typename Op>
void LaunchCombineHalf(void* out, const void* a, const void* b, int64_t count, Op op,
                       cudaStream_t stream) {
  CombineHalfKernel<H><<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(
      static_cast<H*>(out), static_cast<const H*>(a), static_cast<const H*>(b), count, op);
}

template <typename Op>
bool Dispatch(void* out, const void* a, const void* b, int64_t count, DType dtype, Op op,
              cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      LaunchCombine<float>(out, a, b, count, op, stream);
      return true;
    case DType::kBF16:
      LaunchCombineHalf<__nv_bfloat16>(out, a, b, count, op, stream);
      return true;
    case DType::kF16:
      LaunchCombineHalf<__half>(out, a, b, count, op, stream);
      return true;
    case DType::kI8:
      LaunchCombine<int8_t>(out, a, b, count, op, stream);
      return true;
    case DType::kI32:
      LaunchCombine<int32_t>(out, a, b, count, op, stream);
      return true;
    case DType::kI64:
      LaunchCombine<int64_t>(out, a, b, count, op, stream);
      return true;
    case DType::kI4:
      break;
  }
  return false;
}

// `ptr` is memory the device `ordinal` can address as its own (device or managed memory of
// that device).
absl::Status ExpectDevicePointer(const char* name, const void* ptr, int ordinal) {
  cudaPointerAttributes attributes{};
  TESSERA_CUDA_CHECK(cudaPointerGetAttributes(&attributes, ptr));
  bool on_device =
      attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
  if (!on_device || attributes.device != ordinal) {
    return absl::InvalidArgumentError(
        absl::StrCat("Reduce: ", name, " is not memory of cuda:", ordinal));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Reduce(void* output, const void* a, const void* b, int64_t count, DType dtype,
                    Reduction reduction, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t cuda_stream, LaunchStream("Reduce", stream));
  if (dtype == DType::kI4) {
    return absl::InvalidArgumentError(
        absl::StrCat("element-wise reduction does not support dtype ", NameOf(dtype)));
  }
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("Reduce: count ", count));
  if (count == 0) return absl::OkStatus();
  int ordinal = stream.device().index;
  TESSERA_RETURN_IF_ERROR(ExpectDevicePointer("output", output, ordinal));
  TESSERA_RETURN_IF_ERROR(ExpectDevicePointer("a", a, ordinal));
  TESSERA_RETURN_IF_ERROR(ExpectDevicePointer("b", b, ordinal));
  bool launched = false;
  switch (reduction) {
    case Reduction::kSum:
      launched = Dispatch(output, a, b, count, dtype, Sum{}, cuda_stream);
      break;
    case Reduction::kMax:
      launched = Dispatch(output, a, b, count, dtype, Max{}, cuda_stream);
      break;
    case Reduction::kMin:
      launched = Dispatch(output, a, b, count, dtype, Min{}, cuda_stream);
      break;
  }
  if (!launched) return absl::InvalidArgumentError("Reduce: unknown reduction");
  TESSERA_RETURN_IF_LAUNCH_FAILED("Reduce");
  return absl::OkStatus();
}

absl::Status ReduceInto(void* accumulator, const void* input, int64_t count, DType dtype,
                        Reduction reduction, Stream& stream) {
  return Reduce(accumulator, accumulator, input, count, dtype, reduction, stream);
}

}  // namespace tessera::kernels::cuda
