#ifndef TESSERA_RUNTIME_SERVE_OPENAI_API_H_
#define TESSERA_RUNTIME_SERVE_OPENAI_API_H_

// OpenAI's HTTP API in Tessera's terms: a /v1/completions body as a tessera.v1
// GenerateRequest, Tessera's streamed messages as OpenAI's answers (one JSON object, or
// server-sent-event chunks), and errors in OpenAI's shape with the HTTP status a client acts
// on. Pure conversions; openai_http.h serves them.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "nlohmann/json.hpp"
#include "tessera/v1/inference.pb.h"

namespace tessera::serve {

// A parsed /v1/completions body.
struct CompletionCall {
  v1::GenerateRequest request;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// INVALID_ARGUMENT "PARAM: why" for a field of the wrong type or value (PARAM is OpenAI's
// name of it). Unknown fields are ignored, as OpenAI does. Supported: model, prompt (a
// string, a list of one string, or a list of token ids), max_tokens, temperature, top_p,
// top_k, seed, stop (a string or a list), stream, stream_options.include_usage, user (kept
// as nothing: tenants come from API keys); n and logprobs only at their defaults.
absl::StatusOr<CompletionCall> ParseCompletionRequest(const nlohmann::json& body);

// "stop" or "length" (OpenAI's finish reasons), or "" while unfinished.
std::string FinishReasonName(v1::FinishReason reason);

// One completion's answer, gathered from its stream.
struct CompletionResult {
  std::string text;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
};

// The JSON of a finished completion ("object": "text_completion").
nlohmann::json CompletionBody(const std::string& id, const std::string& model, int64_t created,
                              const CompletionResult& result);
// One streamed chunk: `text` so far and, in the last, the finish reason.
nlohmann::json CompletionChunk(const std::string& id, const std::string& model, int64_t created,
                               const std::string& text, v1::FinishReason finish_reason);
// The usage chunk that stream_options.include_usage asks for (no choices).
nlohmann::json UsageChunk(const std::string& id, const std::string& model, int64_t created,
                          const v1::Usage& usage);
nlohmann::json UsageJson(const v1::Usage& usage);

// An error as OpenAI answers it, {"error": {"message", "type", "param", "code"}}, and its
// HTTP status: 400 (invalid; `param` names the field), 401, 403, 404 (model), 413, 429
// (queue full, quota), 503 (no healthy group), 504 (deadline), 500 otherwise.
struct HttpError {
  int status = 500;
  nlohmann::json body;
};
HttpError ErrorFromStatus(const grpc::Status& status);
HttpError ErrorFromStatus(const absl::Status& status);

// `json` as text; bytes that are not UTF-8 (a client's, echoed in a message) replaced by
// U+FFFD instead of failing.
std::string JsonText(const nlohmann::json& json);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_OPENAI_API_H_
