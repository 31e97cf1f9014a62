#include "launcher/request_file.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"

namespace tessera::launcher {
namespace {

using nlohmann::json;

absl::Status FieldError(int line, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", field, ": ", what));
}

}  // namespace

absl::StatusOr<engine::GenerationRequest> ParseRequestLine(const std::string& text, int line) {
  json object = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return FieldError(line, "request", "not valid JSON");
  if (!object.is_object()) return FieldError(line, "request", "not a JSON object");
  engine::GenerationRequest request;
  engine::SamplingOptions& sampling = request.sampling;
  static const char* const kKnown[] = {
      "id",    "prompt", "prompt_token_ids", "max_tokens",     "temperature", "top_k",
      "top_p", "seed",   "stop",             "stop_token_ids", "ignore_eos",  "logprobs"};
  for (const auto& [key, value] : object.items()) {
    if (std::find(std::begin(kKnown), std::end(kKnown), key) == std::end(kKnown)) {
      return FieldError(line, key, "unknown field");
    }
  }
  // Reads one optional field, naming it when its type is wrong.
  auto read = [&](const char* key, auto* target) -> absl::Status {
    if (!object.contains(key)) return absl::OkStatus();
    try {
      object[key].get_to(*target);
    } catch (const json::exception&) {
      return FieldError(line, key, absl::StrCat("wrong type (", object[key].type_name(), ")"));
    }
    return absl::OkStatus();
  };
  request.id = absl::StrCat(line);
  if (object.contains("id")) {
    const json& id = object["id"];
    request.id = id.is_string() ? id.get<std::string>() : id.dump();
  }
  if (object.contains("prompt") && !object["prompt"].is_string()) {
    return FieldError(line, "prompt", "not a string");
  }
  TESSERA_RETURN_IF_ERROR(read("prompt", &request.prompt));
  TESSERA_RETURN_IF_ERROR(read("prompt_token_ids", &request.prompt_tokens));
  if (request.prompt.empty() && request.prompt_tokens.empty()) {
    return FieldError(line, "prompt", "missing or empty (give prompt or prompt_token_ids)");
  }
  TESSERA_RETURN_IF_ERROR(read("max_tokens", &sampling.max_tokens));
  TESSERA_RETURN_IF_ERROR(read("temperature", &sampling.temperature));
  TESSERA_RETURN_IF_ERROR(read("top_k", &sampling.top_k));
  TESSERA_RETURN_IF_ERROR(read("top_p", &sampling.top_p));
  if (object.contains("seed")) {
    uint64_t seed = 0;
    TESSERA_RETURN_IF_ERROR(read("seed", &seed));
    sampling.seed = seed;
  }
  if (object.contains("stop") && object["stop"].is_string()) {
    sampling.stop = {object["stop"].get<std::string>()};
  } else {
    TESSERA_RETURN_IF_ERROR(read("stop", &sampling.stop));
  }
  TESSERA_RETURN_IF_ERROR(read("stop_token_ids", &sampling.stop_token_ids));
  TESSERA_RETURN_IF_ERROR(read("ignore_eos", &sampling.ignore_eos));
  TESSERA_RETURN_IF_ERROR(read("logprobs", &sampling.logprobs));
  return request;
}

std::string FormatResultLine(const RequestResult& result) {
  json out;
  out["id"] = result.id;
  if (!result.error.empty() && result.token_ids.empty()) {
    out["line"] = result.line;
    out["error"] = result.error;
    return out.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  out["text"] = result.text;
  out["token_ids"] = result.token_ids;
  out["finish_reason"] = engine::FinishReasonName(result.finish_reason);
  out["usage"] = {{"prompt_tokens", result.usage.prompt_tokens},
                  {"completion_tokens", result.usage.completion_tokens},
                  {"cached_tokens", result.usage.cached_tokens}};
  if (result.with_logprobs) out["logprobs"] = result.logprobs;
  if (!result.error.empty()) out["error"] = result.error;
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace tessera::launcher
