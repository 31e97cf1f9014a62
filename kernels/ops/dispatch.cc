#include "kernels/ops/dispatch.h"

#include "absl/strings/str_cat.h"

namespace tessera::kernels::ops::internal {

absl::StatusOr<Backend> BackendFor(absl::string_view op, const Tensor& written,
                                   const Stream& stream) {
  const Device device = written.device();
  if (stream.device() != device) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", written.DebugString(), " is written on a stream of ",
                     stream.device().ToString(), "; the stream must be on the tensor's device"));
  }
  if (device.is_cpu()) return Backend::kCpu;
  if (!BuiltWithCuda()) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, ": ", written.DebugString(), " is on a GPU, but this build has no CUDA support"));
  }
  return Backend::kCuda;
}

}  // namespace tessera::kernels::ops::internal
