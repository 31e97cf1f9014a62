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
// OpenAI's penalties come before all of them, for greedy rows too: SampleToken takes a row
// that ApplyPenalties has already changed.
struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  float presence_penalty = 0.0f;   // in [-2, 2]
  float frequency_penalty = 0.0f;  // in [-2, 2]

  bool has_penalties() const { return presence_penalty != 0.0f || frequency_penalty != 0.0f; }
};

// The most alternatives a token's top log-probabilities may list (OpenAI's limit).
inline constexpr int kMaxTopLogprobs = 20;

// INVALID_ARGUMENT "FIELD: must ..., not VALUE" naming the parameter when temperature < 0,
// top_k < 0, top_p not in (0, 1], or a penalty not in [-2, 2].
absl::Status ValidateSamplingParams(const SamplingParams& params);

// OpenAI's presence and frequency penalties, in place on a full logits row (V) f32:
//   logits[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0)
// where count(t) is how often t occurs in `generated`, the tokens the request generated so far
// (not its prompt). Ids outside [0, V) are ignored. A no-op when both penalties are 0.
void ApplyPenalties(absl::Span<float> logits, const SamplingParams& params,
                    absl::Span<const int32_t> generated);

struct TokenLogprob {
  int64_t token = -1;
  float logprob = 0.0f;
};

// The `k` most likely tokens of a full logits row (V) f32 with their log-probabilities
// log_softmax(logits)[token], most likely first, lowest id on ties (NaN never listed);
// min(k, V) entries. `log_sum_exp` is log(sum(exp(logits))) of the row.
std::vector<TokenLogprob> TopLogprobs(absl::Span<const float> logits, int k, double log_sum_exp);

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
