// Fuzzes the body of an HTTP POST /v1/completions and /v1/chat/completions
// (ParseCompletionRequest, ParseChatCompletionRequest) and the answers built from them: whatever
// the bytes, a body is refused with a 400 in OpenAI's shape naming a field, or becomes a request
// with a model and a prompt whose numbers a float holds; every answer is JSON text, client bytes
// that are not UTF-8 included.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/serve/openai_api.h"

namespace {

using Json = nlohmann::json;

// One endpoint's parse of `body`, and the answers built from what it accepts.
void Check(const Json& body, absl::StatusOr<tessera::serve::CompletionCall> (*parse)(const Json&)) {
  absl::StatusOr<tessera::serve::CompletionCall> call = parse(body);
  if (!call.ok()) {
    tessera::serve::HttpError error = tessera::serve::ErrorFromStatus(call.status());
    if (error.status != 400 || error.body["error"]["param"].is_null()) {
      std::fprintf(stderr, "refused without a 400 naming the field: %s\n",
                   std::string(call.status().message()).c_str());
      std::abort();
    }
    (void)tessera::serve::JsonText(error.body);
    return;
  }
  if (call->n < 1 || call->n > 16 || call->choices() > tessera::serve::kMaxCallChoices) {
    std::abort();
  }
  // Every choice's request holds exactly one of prompt, prompt_tokens and messages.
  for (int i = 0; i < call->choices(); ++i) {
    const tessera::v1::GenerateRequest choice = tessera::serve::ChoiceRequest(*call, "x", i);
    const int prompts = (choice.prompt().empty() ? 0 : 1) + (choice.prompt_tokens_size() > 0) +
                        (choice.messages_size() > 0);
    if (prompts > 1 ||
        (prompts == 0 && !call->prompts.empty() && !call->prompts[i / call->n].text.empty())) {
      std::abort();
    }
  }
  const tessera::v1::GenerateRequest& request = call->request;
  if (request.model().empty()) std::abort();
  if (!std::isfinite(request.sampling().temperature()) ||
      (request.sampling().has_top_p() && !std::isfinite(request.sampling().top_p()))) {
    std::abort();
  }
  // Any bytes (the prompt's, a message's) in the answer: it must still be JSON text.
  std::vector<tessera::serve::ChoiceResult> choices(call->choices());
  for (const tessera::serve::CompletionPrompt& prompt : call->prompts)
    choices[0].text += prompt.text;
  for (const tessera::v1::ChatMessage& message : request.messages()) {
    choices[0].text += message.content();
  }
  choices[0].tokens = {1, 2};
  choices[0].logprobs = {-0.5f, -1.0f};
  for (int i = 0; i < 2; ++i) {
    tessera::v1::TopLogprobs& top = *choices[0].top_logprobs.Add();
    for (int j = 0; j < call->top_logprobs; ++j) {
      top.add_tokens(j % 3);
      top.add_logprobs(-0.5f * static_cast<float>(j));
    }
  }
  const auto token_bytes = [&](int, int32_t id, bool) {
    return id == 1 ? choices[0].text : std::string();
  };
  const auto token_text = [&](int, int32_t id) {
    return id == 1 ? choices[0].text : std::string(1, static_cast<char>(0x80 + id));
  };
  const std::string answer = tessera::serve::JsonText(
      tessera::serve::CompletionBody(*call, "cmpl-x", 0, choices, token_bytes, token_text));
  if (Json::parse(answer, nullptr, false).is_discarded()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const Json body = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;
  Check(body, &tessera::serve::ParseCompletionRequest);
  Check(body, &tessera::serve::ParseChatCompletionRequest);
  return 0;
}
