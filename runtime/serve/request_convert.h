#ifndef TESSERA_RUNTIME_SERVE_REQUEST_CONVERT_H_
#define TESSERA_RUNTIME_SERVE_REQUEST_CONVERT_H_

// Between the wire (tessera.v1.GenerateRequest and its responses) and the engine's C++ API:
// field checks that name the field, defaults, finish reasons, usage and timings.

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "runtime/engine/request.h"
#include "tessera/v1/inference.pb.h"

namespace tessera::serve {

// Tokens generated when a request sets no max_tokens.
inline constexpr int kDefaultMaxTokens = 16;

// Bounds on what one request may carry, so that no request makes the coordinator or a group
// do unbounded work: stop strings are matched at every token on the group's engine thread.
struct RequestLimits {
  int max_stop_strings = 16;
  int max_stop_string_bytes = 256;
  int max_stop_token_ids = 256;
  int max_name_bytes = 128;  // model, version, request_id, tenant, session_id, adapter
};

// Checks what can be checked without the model: a model name, one of prompt,
// prompt_tokens and messages (each message with a role), sampling parameters in range, and
// `limits`. INVALID_ARGUMENT naming the field ("sampling.top_p: must be in (0, 1], not 1.5").
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits = {});

// The engine's sampling options for the wire's (defaults filled in).
engine::SamplingOptions ToEngineSampling(const v1::SamplingParams& sampling);

// The engine's request for a validated wire request.
engine::GenerationRequest ToEngineRequest(const v1::GenerateRequest& request);

v1::FinishReason ToWireFinishReason(engine::FinishReason reason);
v1::Usage ToWireUsage(const engine::RequestUsage& usage);
v1::Timings ToWireTimings(const engine::RequestUsage& usage);

// absl::Status <-> grpc::Status, keeping the code and the message.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Folds one stream message into a unary response (text, tokens and logprobs appended; the final
// message's finish reason, usage and timings; the first placement seen).
void AppendToResponse(const v1::GenerateStreamResponse& message, v1::GenerateResponse* response);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_REQUEST_CONVERT_H_
