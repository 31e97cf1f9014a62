#ifndef TESSERA_RUNTIME_ENGINE_REQUEST_H_
#define TESSERA_RUNTIME_ENGINE_REQUEST_H_

// What a caller of the serving engine hands in for one request and what comes back.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kernels/cpu/sampling.h"

namespace tessera::engine {

struct SamplingOptions {
  float temperature = 0.0f;             // 0: greedy
  int top_k = 0;                        // 0: no limit
  float top_p = 1.0f;                   // 1: no limit
  std::optional<uint64_t> seed;         // unset: the engine picks one
  int max_tokens = 16;                  // tokens to generate at most
  std::vector<int32_t> stop_token_ids;  // generation ends after any of these (finish: stop)
  std::vector<std::string> stop;        // ... or once the text contains one (not returned)
  bool ignore_eos = false;              // keep going past the model's end-of-sequence tokens
  bool logprobs = false;                // report the log-probability of each chosen token
  // OpenAI's penalties on the tokens generated so far (resumed_tokens included, not the
  // prompt), in [-2, 2]: kernels::ApplyPenalties.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int top_logprobs = 0;  // also report this many of the most likely tokens, 0..20

  // The kernel's parameters (seed 0 when unset).
  kernels::SamplingParams KernelParams() const {
    return {.temperature = temperature,
            .top_k = top_k,
            .top_p = top_p,
            .seed = seed.value_or(0),
            .presence_penalty = presence_penalty,
            .frequency_penalty = frequency_penalty};
  }
};

struct GenerationRequest {
  std::string id;                      // the caller's name for it; empty: the engine's number
  std::string prompt;                  // text, tokenized by the engine...
  std::vector<int32_t> prompt_tokens;  // ... unless token ids are given
  // Tokens this request already generated elsewhere (its group failed mid-stream): they are
  // computed after the prompt, count as output (max_tokens, stop strings, usage), are not
  // streamed again, and sampling goes on from the draw after them, so a seeded or greedy
  // request continues with the tokens an undisturbed run would have produced.
  std::vector<int32_t> resumed_tokens;
  SamplingOptions sampling;
  // The LoRA adapter to run with, by the name the engine loaded it under
  // (EngineOptions::adapters); empty: the base model alone.
  std::string adapter;
};

enum class FinishReason {
  kNone,       // still running
  kLength,     // max_tokens, or the model's context
  kStop,       // a stop token id or stop string
  kEos,        // the model's end-of-sequence token
  kCancelled,  // Cancel(), or the engine shutting down
  kError,      // the step failed; see the status
};

const char* FinishReasonName(FinishReason reason);

struct RequestUsage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;      // prompt tokens whose KV came from the prefix cache
  int preemptions = 0;        // times the request was pushed out and computed again
  absl::Duration queue_time;  // submit -> first scheduled
  absl::Duration time_to_first_token;
  absl::Duration total_time;
};

// One event of a request's stream: a generated token, or the end.
struct TokenEvent {
  int32_t token = -1;  // -1 in the final event
  float logprob = 0.0f;
  // The most likely tokens at this position, most likely first (SamplingOptions::top_logprobs;
  // log-probabilities as `logprob`'s: before penalties, temperature, top-k and top-p).
  std::vector<kernels::TokenLogprob> top_logprobs;
  std::string text;  // the text this token completes (may be empty mid-character)
  bool final = false;
  FinishReason finish_reason = FinishReason::kNone;  // set in the final event
  absl::Status status;                               // the error behind kError
  RequestUsage usage;                                // complete in the final event
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_REQUEST_H_
