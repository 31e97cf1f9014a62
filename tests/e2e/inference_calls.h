#ifndef TESSERA_TESTS_E2E_INFERENCE_CALLS_H_
#define TESSERA_TESTS_E2E_INFERENCE_CALLS_H_

// What the end-to-end tests send a coordinator and what they read back: requests, unary and
// streamed calls with a deadline, and the coordinator's structured log events.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "nlohmann/json.hpp"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::e2e {

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout);

// A greedy request for exactly `max_tokens` tokens (EOS ignored).
v1::GenerateRequest Request(const std::string& model, const std::string& prompt, int max_tokens);

struct Unary {
  grpc::Status status;
  v1::GenerateResponse response;
};

Unary Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
               absl::Duration timeout = absl::Seconds(60));

// What a client saw of one stream.
struct Streamed {
  grpc::Status status;
  std::vector<v1::GenerateStreamResponse> messages;

  std::string Text() const;
  std::vector<int32_t> Tokens() const;
  // The group of the first message; empty when none came.
  std::string Group() const;
};

Streamed Stream(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                absl::Duration timeout = absl::Seconds(60));

// "code N: message".
std::string Describe(const grpc::Status& status);

// The structured log lines (one JSON object each) of `log` whose event is `event`.
std::vector<nlohmann::json> Events(const std::string& log, const std::string& event);

}  // namespace tessera::e2e

#endif  // TESSERA_TESTS_E2E_INFERENCE_CALLS_H_
