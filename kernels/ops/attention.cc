#include "kernels/ops/attention.h"

#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/kv_cache_int8.h"
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

absl::Status WriteKvCacheInt8(const Tensor& k, const Tensor& v, const Tensor& slot_mapping,
                              Tensor& k_cache, Tensor& v_cache, Tensor& k_scale, Tensor& v_scale,
                              Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("WriteKvCacheInt8", k_cache, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::WriteKvCacheInt8(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale, stream);
  }
#endif
  (void)backend;
  return kernels::WriteKvCacheInt8(k, v, slot_mapping, k_cache, v_cache, k_scale, v_scale);
}

absl::Status PagedAttentionInt8(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& k_scale, const Tensor& v_scale,
                                const Tensor& query_starts, const Tensor& context_lens,
                                const Tensor& block_tables, const AttentionParams& params,
                                Tensor& out, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("PagedAttentionInt8", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::PagedAttentionInt8(q, k_cache, v_cache, k_scale, v_scale, query_starts,
                                    context_lens, block_tables, params, out, stream);
  }
#endif
  (void)backend;
  return kernels::PagedAttentionInt8(q, k_cache, v_cache, k_scale, v_scale, query_starts,
                                     context_lens, block_tables, params, out);
}

}  // namespace tessera::kernels::ops
