#include "kernels/ops/row_ops.h"

#include "kernels/cpu/row_ops.h"
#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/row_ops.h"
#endif

namespace tessera::kernels::ops {

using internal::Backend;

absl::Status AddBias(Tensor& x, const Tensor& bias, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("AddBias", x, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::AddBias(x, bias, stream);
#endif
  (void)backend;
  return kernels::AddBias(x, bias);
}

absl::Status FillColumns(Tensor& x, int64_t begin, int64_t end, float value, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("FillColumns", x, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::FillColumns(x, begin, end, value, stream);
#endif
  (void)backend;
  return kernels::FillColumns(x, begin, end, value);
}

absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor& out, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("GatherRows", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::GatherRows(x, rows, out, stream);
#endif
  (void)backend;
  return kernels::GatherRows(x, rows, out);
}

}  // namespace tessera::kernels::ops
