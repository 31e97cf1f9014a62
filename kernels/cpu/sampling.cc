#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/check_shapes.h"
#include "runtime/core/status_macros.h"

namespace tessera::kernels {

ArgmaxResult CombineArgmax(const ArgmaxResult& a, const ArgmaxResult& b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  if (a.value > b.value) return a;
  if (b.value > a.value) return b;
  return a.index <= b.index ? a : b;
}

absl::Status ShardArgmax(const Tensor& logits, int64_t vocab_begin,
                         std::vector<ArgmaxResult>* rows) {
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType("ShardArgmax", "logits", logits, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank("ShardArgmax", "logits", logits, 2));
  int64_t count = logits.dim(0), width = logits.dim(1);
  rows->assign(count, ArgmaxResult{});
  for (int64_t t = 0; t < count; ++t) {
    const float* row = logits.data<float>() + t * width;
    ArgmaxResult best;
    for (int64_t v = 0; v < width; ++v) {
      if (std::isnan(row[v])) continue;
      if (best.index < 0 || row[v] > best.value) best = {row[v], vocab_begin + v};
    }
    (*rows)[t] = best;
  }
  return absl::OkStatus();
}

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!(params.temperature >= 0.0f) || std::isinf(params.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature: must be a finite number >= 0, not ", params.temperature));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k: must be >= 0, not ", params.top_k));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p: must be in (0, 1], not ", params.top_p));
  }
  const std::pair<float, const char*> penalties[] = {
      {params.presence_penalty, "presence_penalty"},
      {params.frequency_penalty, "frequency_penalty"}};
  for (const auto& [value, name] : penalties) {
    if (!(value >= -2.0f && value <= 2.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": must be in [-2, 2], not ", value));
    }
  }
  return absl::OkStatus();
}

void ApplyPenalties(absl::Span<float> logits, const SamplingParams& params,
                    absl::Span<const int32_t> generated) {
  if (!params.has_penalties() || generated.empty()) return;
  std::vector<int32_t> sorted(generated.begin(), generated.end());
  std::sort(sorted.begin(), sorted.end());
  const int64_t vocab = static_cast<int64_t>(logits.size());
  for (size_t i = 0; i < sorted.size();) {
    size_t end = i;
    while (end < sorted.size() && sorted[end] == sorted[i]) ++end;
    const int32_t token = sorted[i];
    if (token >= 0 && token < vocab) {
      // Two float subtractions in the formula's order, as vLLM computes it.
      logits[token] -= params.frequency_penalty * static_cast<float>(end - i);
      logits[token] -= params.presence_penalty;
    }
    i = end;
  }
}

std::vector<TokenLogprob> TopLogprobs(absl::Span<const float> logits, int k, double log_sum_exp) {
  std::vector<int64_t> order;
  order.reserve(logits.size());
  for (int64_t v = 0; v < static_cast<int64_t>(logits.size()); ++v) {
    if (!std::isnan(logits[v])) order.push_back(v);
  }
  const size_t keep = std::min(order.size(), static_cast<size_t>(std::max(k, 0)));
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<TokenLogprob> top(keep);
  for (size_t i = 0; i < keep; ++i) {
    top[i] = {order[i], static_cast<float>(logits[order[i]] - log_sum_exp)};
  }
  return top;
}

uint64_t MixSeed(uint64_t base, uint64_t index) {
  uint64_t z = base + index * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double UniformFromCounter(uint64_t seed, uint64_t draw) {
  return static_cast<double>(MixSeed(seed, draw + 1) >> 11) * 0x1.0p-53;
}

int64_t SampleToken(absl::Span<const float> logits, const SamplingParams& params, uint64_t draw) {
  int64_t vocab = static_cast<int64_t>(logits.size());
  if (params.temperature == 0.0f) {
    ArgmaxResult best;
    for (int64_t v = 0; v < vocab; ++v) {
      if (!std::isnan(logits[v])) best = CombineArgmax(best, {logits[v], v});
    }
    return best.index;
  }
  // Candidates ordered most likely first (lowest index on ties): a fixed order, so that the
  // draw maps to the same token on every rank.
  std::vector<int64_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [&](int64_t a, int64_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int64_t keep = vocab;
  if (params.top_k > 0 && params.top_k < vocab) {
    std::nth_element(order.begin(), order.begin() + params.top_k - 1, order.end(), more_likely);
    float kth = logits[order[params.top_k - 1]];
    keep = std::partition(order.begin(), order.end(), [&](int64_t v) { return logits[v] >= kth; }) -
           order.begin();
  }
  std::sort(order.begin(), order.begin() + keep, more_likely);

  // Softmax of logits / temperature over the kept tokens, in double.
  std::vector<double> probability(keep);
  double max = logits[order[0]] / static_cast<double>(params.temperature);
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    probability[i] = std::exp(logits[order[i]] / static_cast<double>(params.temperature) - max);
    total += probability[i];
  }
  for (double& p : probability) p /= total;
  if (params.top_p < 1.0f) {
    // Keep the most likely tokens until their mass reaches top_p (HF drops a token when the
    // mass of everything less likely than it, itself included, is <= 1 - top_p).
    double mass = 0.0;
    int64_t nucleus = 0;
    while (nucleus < keep) {
      mass += probability[nucleus++];
      if (mass >= params.top_p) break;
    }
    keep = nucleus;
    double kept = std::accumulate(probability.begin(), probability.begin() + keep, 0.0);
    for (int64_t i = 0; i < keep; ++i) probability[i] /= kept;
  }
  double u = UniformFromCounter(params.seed, draw);
  double cumulative = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    cumulative += probability[i];
    if (u < cumulative) return order[i];
  }
  return order[keep - 1];
}

}  // namespace tessera::kernels
