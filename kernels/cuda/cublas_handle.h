#ifndef TESSERA_KERNELS_CUDA_CUBLAS_HANDLE_H_
#define TESSERA_KERNELS_CUDA_CUBLAS_HANDLE_H_

#include <cublas_v2.h>

#include "absl/status/statusor.h"
#include "runtime/core/stream.h"

namespace tessera::kernels::cuda::internal {

// The cuBLAS handle of a CUDA stream: created on the stream's first matrix multiply, bound to
// the stream, and kept for the life of the process (one per stream ever used, so streams are
// meant to live as long as the engine that owns them). A Stream is used by one thread at a
// time, so its handle is too, and the handle's default workspace is only ever used in the
// stream's order. The stream's device must be current (internal::LaunchStream sees to it).
// Thread safe.
absl::StatusOr<cublasHandle_t> CublasHandleFor(const Stream& stream);

}  // namespace tessera::kernels::cuda::internal

#endif  // TESSERA_KERNELS_CUDA_CUBLAS_HANDLE_H_
