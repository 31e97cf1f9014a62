#include "kernels/ops/rotary.h"

#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/rotary.h"
#endif

namespace tessera::kernels::ops {

using internal::Backend;

absl::Status ApplyRotary(Tensor& x, const Tensor& positions, absl::Span<const float> inv_freq,
                         const RotaryConfig& config, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("ApplyRotary", x, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::ApplyRotary(x, positions, inv_freq, config, stream);
#endif
  (void)backend;
  return kernels::ApplyRotary(x, positions, inv_freq, config);
}

}  // namespace tessera::kernels::ops
