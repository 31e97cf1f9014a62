#include "kernels/ops/norm_activation.h"

#include "kernels/cpu/norm_activation.h"
#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/norm_activation.h"
#endif

namespace tessera::kernels::ops {

using internal::Backend;

absl::Status EmbeddingLookup(const Tensor& ids, const Tensor& table, int64_t vocab_begin,
                             int64_t vocab_size, Tensor& out, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("EmbeddingLookup", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::EmbeddingLookup(ids, table, vocab_begin, vocab_size, out, stream);
  }
#endif
  (void)backend;
  return kernels::EmbeddingLookup(ids, table, vocab_begin, vocab_size, out);
}

absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out,
                     Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("RmsNorm", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::RmsNorm(x, weight, eps, out, stream);
#endif
  (void)backend;
  return kernels::RmsNorm(x, weight, eps, out);
}

absl::Status AddRmsNorm(Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                        Tensor& out, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("AddRmsNorm", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::AddRmsNorm(residual, x, weight, eps, out, stream);
#endif
  (void)backend;
  return kernels::AddRmsNorm(residual, x, weight, eps, out);
}

absl::Status SiluMul(const Tensor& gate_up, Tensor& out, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("SiluMul", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::SiluMul(gate_up, out, stream);
#endif
  (void)backend;
  return kernels::SiluMul(gate_up, out);
}

}  // namespace tessera::kernels::ops
