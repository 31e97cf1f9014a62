#ifndef TESSERA_LAUNCHER_REQUEST_FILE_H_
#define TESSERA_LAUNCHER_REQUEST_FILE_H_

// The JSON Lines files of offline generation (`tessera generate --requests in.jsonl
// --output out.jsonl`). One request per line:
//   {"id": "q1", "prompt": "Hello",            // or "prompt_token_ids": [1, 2, 3]
//    "max_tokens": 64, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 1,
//    "stop": ["\n\n"] (or one string), "stop_token_ids": [2], "ignore_eos": false,
//    "logprobs": true, "presence_penalty": 0.5, "frequency_penalty": 0.2,
//    "adapter": "sql"}                         // a LoRA adapter of --adapters; absent: the base
// Every field but the prompt is optional (max_tokens defaults to 16, the rest as in
// SamplingOptions); the engine checks the values (penalties in [-2, 2]) when it takes them. One
// result per request, in input order:
//   {"id": "q1", "text": "...", "token_ids": [...], "finish_reason": "length",
//    "usage": {"prompt_tokens": 5, "completion_tokens": 64, "cached_tokens": 0},
//    "logprobs": [...]}                        // when asked for
// or, for a request that could not run, {"id": ..., "line": N, "error": "..."}.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/request.h"

namespace tessera::launcher {

// One line of the input: a request, or why it is not one (INVALID_ARGUMENT naming the
// field). `line` numbers from 1; a request without an "id" is named after its line.
absl::StatusOr<engine::GenerationRequest> ParseRequestLine(const std::string& text, int line);

struct RequestResult {
  std::string id;
  int line = 0;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  bool with_logprobs = false;
  engine::FinishReason finish_reason = engine::FinishReason::kNone;
  engine::RequestUsage usage;
  std::string error;  // non-empty: the request did not run (or failed)
};

// The output line for `result` (no trailing newline).
std::string FormatResultLine(const RequestResult& result);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_REQUEST_FILE_H_
