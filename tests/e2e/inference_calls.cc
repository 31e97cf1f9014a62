#include "tests/e2e/inference_calls.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace tessera::e2e {

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

v1::GenerateRequest Request(const std::string& model, const std::string& prompt, int max_tokens) {
  v1::GenerateRequest request;
  request.set_model(model);
  request.set_prompt(prompt);
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_temperature(0);  // greedy
  sampling.set_max_tokens(max_tokens);
  sampling.set_ignore_eos(true);
  return request;
}

Unary Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
               absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  Unary out;
  out.status = stub.Generate(&context, request, &out.response);
  return out;
}

std::string Streamed::Text() const {
  std::string text;
  for (const auto& message : messages) text += message.text();
  return text;
}

std::vector<int32_t> Streamed::Tokens() const {
  std::vector<int32_t> tokens;
  for (const auto& message : messages) {
    tokens.insert(tokens.end(), message.tokens().begin(), message.tokens().end());
  }
  return tokens;
}

std::string Streamed::Group() const {
  return messages.empty() ? "" : messages.front().placement().group();
}

Streamed Stream(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                absl::Duration timeout) {
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  Streamed out;
  auto reader = stub.GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) out.messages.push_back(message);
  out.status = reader->Finish();
  return out;
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat("code ", status.error_code(), ": ", status.error_message());
}

std::vector<nlohmann::json> Events(const std::string& log, const std::string& event) {
  std::vector<nlohmann::json> events;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!absl::StartsWith(line, "{")) continue;
    nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_discarded() && parsed.is_object() && parsed.value("event", "") == event) {
      events.push_back(std::move(parsed));
    }
  }
  return events;
}

}  // namespace tessera::e2e
