#ifndef TESSERA_KERNELS_OPS_DISPATCH_H_
#define TESSERA_KERNELS_OPS_DISPATCH_H_

// How an op chooses its kernels: by the device of the tensor it writes (its output, or the
// tensor it updates in place). On the CPU it runs kernels/cpu, on a GPU kernels/cuda; the
// stream must be on that same device (the CPU stream for host tensors, a CUDA stream of the
// tensor's GPU otherwise), so that every op is ordered on the stream it is given.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops::internal {

enum class Backend { kCpu, kCuda };

// The backend of `op` for `written` on `stream`. INVALID_ARGUMENT naming the op when the
// stream's device is not the tensor's; FAILED_PRECONDITION for a GPU tensor in a build
// without CUDA.
absl::StatusOr<Backend> BackendFor(absl::string_view op, const Tensor& written,
                                   const Stream& stream);

}  // namespace tessera::kernels::ops::internal

#endif  // TESSERA_KERNELS_OPS_DISPATCH_H_
