#ifndef TESSERA_KERNELS_CPU_SAMPLING_H_
#define TESSERA_KERNELS_CPU_SAMPLING_H_

// Choosing the next token. Greedy decoding needs only each rank's vocabulary shard: every
// rank takes its shard's maximum, the maxima are exchanged, and CombineArgmax picks the
// largest with the lowest index on ties (as torch.argmax does on the full row), so the
// choice is the same at every tensor-parallel degree. Sampling draws from the full row with
// a counter-based generator keyed by (seed, draw index): every rank, at every degree, draws
// the same token.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "runtime/core/tensor.h"

namespace tessera::kernels {

struct ArgmaxResult {
  float value = 0.0f;
  int64_t index = -1;  // in the whole vocabulary
};

// logits (T, V_shard) f32 holding vocabulary columns [vocab_begin, vocab_begin + V_shard)
// -> the maximum of each row with its vocabulary index (lowest on ties; NaN never wins).
absl::Status ShardArgmax(const Tensor& logits, int64_t vocab_begin,
                         std::vector<ArgmaxResult>* rows);
ArgmaxResult CombineArgmax(const ArgmaxResult& a, const ArgmaxResult& b);

// Hugging Face's meaning: temperature divides the logits (0 means greedy); top_k keeps the k
// largest (0: all; values tied with the k-th are kept); top_p keeps the smallest set of most
// likely tokens whose probability reaches p (1: all; at least one token always stays).
struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
};

// INVALID_ARGUMENT naming the parameter when temperature < 0, top_k < 0 or top_p not in
// (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& params);

// One token from a full logits row (V) f32. `draw` numbers the draws of one request (its
// generated-token index), so that the same (seed, draw) always gives the same token.
int64_t SampleToken(absl::Span<const float> logits, const SamplingParams& params, uint64_t draw);

// The generator: a uniform double in [0, 1) from (seed, draw) (SplitMix64).
double UniformFromCounter(uint64_t seed, uint64_t draw);

// SplitMix64's output for counter `index` of stream `base`: well-spread 64-bit values, e.g.
// the seeds of requests that name none, from one random base and a request counter.
uint64_t MixSeed(uint64_t base, uint64_t index);

}  // namespace tessera::kernels

#endif  // TESSERA_KERNELS_CPU_SAMPLING_H_
