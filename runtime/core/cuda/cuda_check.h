#ifndef TESSERA_RUNTIME_CORE_CUDA_CUDA_CHECK_H_
#define TESSERA_RUNTIME_CORE_CUDA_CUDA_CHECK_H_

// CUDA runtime and cuBLAS members of the checking macro family (runtime/core/check.h).

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"
#include "runtime/core/check.h"

namespace tessera {

struct CudaCall {
  using Code = cudaError_t;
  static bool Ok(Code code) { return code == cudaSuccess; }
  static std::string Describe(Code code) {
    return std::string(cudaGetErrorName(code)) + ": " + cudaGetErrorString(code);
  }
  static absl::StatusCode StatusCode(Code code) {
    switch (code) {
      case cudaErrorMemoryAllocation:
        return absl::StatusCode::kResourceExhausted;
      case cudaErrorInvalidValue:
      case cudaErrorInvalidDevice:
        return absl::StatusCode::kInvalidArgument;
      case cudaErrorNoDevice:
      case cudaErrorInsufficientDriver:
        return absl::StatusCode::kFailedPrecondition;
      default:
        return absl::StatusCode::kInternal;
    }
  }
};

struct CublasCall {
  using Code = cublasStatus_t;
  static bool Ok(Code code) { return code == CUBLAS_STATUS_SUCCESS; }
  static std::string Describe(Code code) {
    return std::string(cublasGetStatusName(code)) + ": " + cublasGetStatusString(code);
  }
  static absl::StatusCode StatusCode(Code code) {
    switch (code) {
      case CUBLAS_STATUS_ALLOC_FAILED:
        return absl::StatusCode::kResourceExhausted;
      case CUBLAS_STATUS_INVALID_VALUE:
        return absl::StatusCode::kInvalidArgument;
      case CUBLAS_STATUS_NOT_SUPPORTED:
      case CUBLAS_STATUS_ARCH_MISMATCH:
        return absl::StatusCode::kUnimplemented;
      default:
        return absl::StatusCode::kInternal;
    }
  }
};

}  // namespace tessera

#define TESSERA_CUDA_CHECK(expr) TESSERA_CALL_CHECK(CudaCall, expr)
#define TESSERA_CUBLAS_CHECK(expr) TESSERA_CALL_CHECK(CublasCall, expr)

#endif  // TESSERA_RUNTIME_CORE_CUDA_CUDA_CHECK_H_
