// Fuzzes the body of an HTTP POST /v1/completions (ParseCompletionRequest) and the answers
// built from it: whatever the bytes, a body is refused with a 400 in OpenAI's shape naming a
// field, or becomes a request with a model and a prompt whose numbers a float holds; every
// answer is JSON text, client bytes that are not UTF-8 included.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "nlohmann/json.hpp"
#include "runtime/serve/openai_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using Json = nlohmann::json;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const Json body = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;
  absl::StatusOr<tessera::serve::CompletionCall> call =
      tessera::serve::ParseCompletionRequest(body);
  if (!call.ok()) {
    tessera::serve::HttpError error = tessera::serve::ErrorFromStatus(call.status());
    if (error.status != 400 || error.body["error"]["param"].is_null()) {
      std::fprintf(stderr, "refused without a 400 naming the field: %s\n",
                   std::string(call.status().message()).c_str());
      std::abort();
    }
    (void)tessera::serve::JsonText(error.body);
    return 0;
  }
  const tessera::v1::GenerateRequest& request = call->request;
  if (request.model().empty()) std::abort();
  if (request.prompt_tokens_size() > 0 && !request.prompt().empty()) std::abort();
  if (!std::isfinite(request.sampling().temperature()) ||
      (request.sampling().has_top_p() && !std::isfinite(request.sampling().top_p()))) {
    std::abort();
  }
  tessera::serve::CompletionResult result;
  result.text = request.prompt();  // any bytes: the answer must still be JSON text
  const std::string answer = tessera::serve::JsonText(
      tessera::serve::CompletionBody("cmpl-x", request.model(), 0, result));
  if (Json::parse(answer, nullptr, false).is_discarded()) std::abort();
  return 0;
}
