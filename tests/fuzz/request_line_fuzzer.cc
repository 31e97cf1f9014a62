// Fuzzes one line of a `tessera generate --requests` JSONL file (ParseRequestLine) and the
// result line written for it (FormatResultLine): whatever the input, the output line must be
// JSON that names the request by the id it was read with.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "launcher/request_file.h"
#include "nlohmann/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tessera::launcher::RequestResult;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tessera::engine::GenerationRequest> request =
      tessera::launcher::ParseRequestLine(text, 7);

  RequestResult result;
  result.line = 7;
  if (request.ok()) {
    if (request->prompt.empty() && request->prompt_tokens.empty()) std::abort();
    // Sampling takes these as they are: a value no float holds must have been refused.
    if (!std::isfinite(request->sampling.temperature) || !std::isfinite(request->sampling.top_p)) {
      std::abort();
    }
    result.id = request->id;
    result.text = text;  // bytes that need not be UTF-8: the writer must replace, not throw
    result.token_ids = request->prompt_tokens;
    result.with_logprobs = request->sampling.logprobs;
    result.logprobs.assign(result.token_ids.size(), -0.5f);
  } else {
    result.id = "7";
    result.error = std::string(request.status().message());
  }
  const std::string line = tessera::launcher::FormatResultLine(result);
  nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object() || parsed.value("id", "") != result.id) {
    std::fprintf(stderr, "result line is not a JSON object with an id: %s\n", line.c_str());
    std::abort();
  }
  return 0;
}
