#include "kernels/ops/linear.h"

#include "kernels/cpu/linear.h"
#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/linear.h"
#include "kernels/cuda/quantized_linear.h"
#endif

namespace tessera::kernels::ops {

using internal::Backend;

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out,
                    Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("Linear", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::Linear(x, w, bias, out, stream);
#endif
  (void)backend;
  return kernels::Linear(x, w, bias, out);
}

absl::Status Linear(const Tensor& x, const ProjectionWeight& w, const Tensor& bias, Tensor& out,
                    Stream& stream) {
  if (!w.quantized.defined()) return Linear(x, w.dense, bias, out, stream);
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("Linear", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::QuantizedLinear(x, w.quantized, bias, out, stream);
#endif
  (void)backend;
  return kernels::QuantizedLinear(x, w.quantized, bias, out);
}

}  // namespace tessera::kernels::ops
