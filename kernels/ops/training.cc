#include "kernels/ops/training.h"

#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/training_attention.h"
#include "kernels/ops/dispatch.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/norm_activation.h"
#include "kernels/cuda/rotary.h"
#include "kernels/cuda/training_attention.h"
#endif

namespace tessera::kernels::ops {

using internal::Backend;

absl::Status LinearBackwardInput(const Tensor& dy, const Tensor& w, Tensor& dx, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("LinearBackwardInput", dx, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::LinearBackwardInput(dy, w, dx, stream);
#endif
  (void)backend;
  return kernels::LinearBackwardInput(dy, w, dx);
}

absl::Status LinearBackwardWeight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor* dbias,
                                  Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("LinearBackwardWeight", dw, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::LinearBackwardWeight(dy, x, dw, dbias, stream);
#endif
  (void)backend;
  return kernels::LinearBackwardWeight(dy, x, dw, dbias);
}

absl::Status RmsNormBackward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                             Tensor& dx, Tensor& dweight, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("RmsNormBackward", dx, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::RmsNormBackward(x, weight, eps, dy, dx, dweight, stream);
  }
#endif
  (void)backend;
  return kernels::RmsNormBackward(x, weight, eps, dy, dx, dweight);
}

absl::Status SiluMulBackward(const Tensor& gate_up, const Tensor& dout, Tensor& dgate_up,
                             Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("SiluMulBackward", dgate_up, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) return cuda::SiluMulBackward(gate_up, dout, dgate_up, stream);
#endif
  (void)backend;
  return kernels::SiluMulBackward(gate_up, dout, dgate_up);
}

absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                               int64_t vocab_size, Tensor& dtable, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("EmbeddingBackward", dtable, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::EmbeddingBackward(ids, dout, vocab_begin, vocab_size, dtable, stream);
  }
#endif
  (void)backend;
  return kernels::EmbeddingBackward(ids, dout, vocab_begin, vocab_size, dtable);
}

absl::Status ApplyRotaryBackward(Tensor& dx, const Tensor& positions,
                                 absl::Span<const float> inv_freq, const RotaryConfig& config,
                                 Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("ApplyRotaryBackward", dx, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::ApplyRotaryBackward(dx, positions, inv_freq, config, stream);
  }
#endif
  (void)backend;
  return kernels::ApplyRotaryBackward(dx, positions, inv_freq, config);
}

absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend, internal::BackendFor("CausalAttention", out, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::CausalAttention(q, k, v, sequence_starts, params, out, lse, stream);
  }
#endif
  (void)backend;
  return kernels::CausalAttention(q, k, v, sequence_starts, params, out, lse);
}

absl::Status CausalAttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& sequence_starts, const AttentionParams& params,
                                     Tensor& dq, Tensor& dk, Tensor& dv, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("CausalAttentionBackward", dq, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::CausalAttentionBackward(q, k, v, out, lse, dout, sequence_starts, params, dq, dk,
                                         dv, stream);
  }
#endif
  (void)backend;
  return kernels::CausalAttentionBackward(q, k, v, out, lse, dout, sequence_starts, params, dq, dk,
                                          dv);
}

absl::Status CrossEntropyShardStats(const Tensor& logits, const Tensor& targets,
                                    int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                    Tensor& stats, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("CrossEntropyShardStats", stats, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::CrossEntropyShardStats(logits, targets, vocab_begin, valid_cols, vocab_size, stats,
                                        stream);
  }
#endif
  (void)backend;
  return kernels::CrossEntropyShardStats(logits, targets, vocab_begin, valid_cols, vocab_size,
                                         stats);
}

absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                  int64_t valid_cols, const Tensor& lse, const Tensor& row_scale,
                                  Tensor& dlogits, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(Backend backend,
                           internal::BackendFor("CrossEntropyBackward", dlogits, stream));
#if TESSERA_HAVE_CUDA
  if (backend == Backend::kCuda) {
    return cuda::CrossEntropyBackward(logits, targets, vocab_begin, valid_cols, lse, row_scale,
                                      dlogits, stream);
  }
#endif
  (void)backend;
  return kernels::CrossEntropyBackward(logits, targets, vocab_begin, valid_cols, lse, row_scale,
                                       dlogits);
}

}  // namespace tessera::kernels::ops
