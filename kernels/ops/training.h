#ifndef TESSERA_KERNELS_OPS_TRAINING_H_
#define TESSERA_KERNELS_OPS_TRAINING_H_

// The ops of fine-tuning on the device of the tensor they write (see dispatch.h): the
// backward of every layer kernel, causal attention over packed documents (forward and
// backward) and the local parts of the vocab-parallel cross-entropy. On the CPU they run
// kernels/cpu (linear.h, norm_activation.h, rotary.h, training_attention.h,
// cross_entropy.h), on a GPU the kernels/cuda files of the same names; arguments and results
// are those of the CPU kernels, documented there, with every tensor on the written tensor's
// device.
//
// The GPU kernels cannot read values held in device memory without waiting for the stream, so
// where the CPU kernels check ids, targets or document boundaries and return INVALID_ARGUMENT,
// the GPU kernels poison or skip instead (each kernels/cuda header says which); check those
// values while they are on the host. Both backends are deterministic; they agree with each
// other to rounding, not bit for bit.

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/rotary.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels::ops {

// ---- Linear (written: dx, dw) --------------------------------------------------------------

// dy (M, N) f32, w (N, K) f32 or bf16 (also f16 on a GPU) as stored -> dx (M, K) f32 = dy . w,
// overwritten.
absl::Status LinearBackwardInput(const Tensor& dy, const Tensor& w, Tensor& dx, Stream& stream);

// dy (M, N), x (M, K) f32: dw (N, K) f32 += dy^T . x and, when dbias is non-null and defined,
// dbias (N) f32 += the sum of dy's rows.
absl::Status LinearBackwardWeight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor* dbias,
                                  Stream& stream);

// ---- Norm, activation, embedding (written: dx, dgate_up, dtable) ----------------------------

// x, dy (T, H) f32, weight (H) -> dx (T, H) f32 (overwritten; may be dy), dweight (H) f32 +=.
absl::Status RmsNormBackward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                             Tensor& dx, Tensor& dweight, Stream& stream);

// gate_up (T, 2I), dout (T, I) f32 -> dgate_up (T, 2I) f32, overwritten (may be gate_up).
absl::Status SiluMulBackward(const Tensor& gate_up, const Tensor& dout, Tensor& dgate_up,
                             Stream& stream);

// dtable (V_shard, H) f32 += dout (T, H) f32 at the rows of the ids (T) i32 in the shard.
absl::Status EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                               int64_t vocab_size, Tensor& dtable, Stream& stream);

// ---- Rotary (written: dx) ------------------------------------------------------------------

// dx (T, heads, head_dim) f32, in place: the gradient before ApplyRotary's rotation.
absl::Status ApplyRotaryBackward(Tensor& dx, const Tensor& positions,
                                 absl::Span<const float> inv_freq, const RotaryConfig& config,
                                 Stream& stream);

// ---- Attention (written: out, dq) ----------------------------------------------------------

// q (T, Hq, D), k, v (T, Hkv, D) f32, sequence_starts (S+1) i32 -> out (T, Hq, D) f32 and
// lse (T, Hq) f32.
absl::Status CausalAttention(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& sequence_starts, const AttentionParams& params,
                             Tensor& out, Tensor& lse, Stream& stream);

// -> dq (T, Hq, D), dk, dv (T, Hkv, D) f32, overwritten.
absl::Status CausalAttentionBackward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& lse, const Tensor& dout,
                                     const Tensor& sequence_starts, const AttentionParams& params,
                                     Tensor& dq, Tensor& dk, Tensor& dv, Stream& stream);

// ---- Cross-entropy (written: stats, dlogits) -----------------------------------------------

// logits (T, V_shard) f32, targets (T) i32 -> stats (T, 3) f32 (max, sum of exponents,
// target logit) over the shard's valid columns.
absl::Status CrossEntropyShardStats(const Tensor& logits, const Tensor& targets,
                                    int64_t vocab_begin, int64_t valid_cols, int64_t vocab_size,
                                    Tensor& stats, Stream& stream);

// -> dlogits (T, V_shard) f32, overwritten (may be logits).
absl::Status CrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                  int64_t valid_cols, const Tensor& lse, const Tensor& row_scale,
                                  Tensor& dlogits, Stream& stream);

}  // namespace tessera::kernels::ops

#endif  // TESSERA_KERNELS_OPS_TRAINING_H_
