#include "kernels/ops/attention.h"

#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/attention.h"
#endif

namespace tessera::kernels::ops {

using internal::Backend;

absl::Status WriteKvCache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                          Tensor& k_cache, Tensor& v_cache, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("WriteKvCache", k_cache, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::WriteKvCache(k, v, slot_mapping, k_cache, v_cache, stream);
  }
#endif
  (void)backend;
  return kernels::WriteKvCache(k, v, slot_mapping, k_cache, v_cache);
}

absl::Status PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& query_starts, const Tensor& context_lens,
                            const Tensor& block_tables, const AttentionParams& params, Tensor& out,
                            Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("PagedAttention", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::PagedAttention(q, k_cache, v_cache, query_starts, context_lens, block_tables,
                                params, out, stream);
  }
#endif
  (void)backend;
  return kernels::PagedAttention(q, k_cache, v_cache, query_starts, context_lens, block_tables,
                                 params, out);
}

}  // namespace tessera::kernels::ops
