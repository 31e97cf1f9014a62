#include "launcher/request_file.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"

namespace tessera::launcher {
namespace {

using nlohmann::json;

absl::Status FieldError(int line, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", field, ": ", what));
}

// `value` as a T, or why not: no silent casts (a fraction, a bool, an integer out of T's
// range or a string are refused, as nlohmann's get<T>() would truncate or wrap them).
template <typename T>
std::string Convert(const json& value, T* out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!value.is_boolean()) return absl::StrCat("must be true or false, not ", value.dump());
    *out = value.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    const std::string range = absl::StrCat("must be an integer in [", std::numeric_limits<T>::min(),
                                           ", ", std::numeric_limits<T>::max(), "]");
    if (!value.is_number_integer()) {
      return absl::StrCat(range, ", not ", value.is_string() ? "a string" : value.dump());
    }
    if (value.is_number_unsigned()) {
      const uint64_t v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
        return absl::StrCat(range, ", not ", value.dump());
      }
      *out = static_cast<T>(v);
    } else {
      const int64_t v = value.get<int64_t>();
      if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          (v > 0 &&
           static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
        return absl::StrCat(range, ", not ", value.dump());
      }
      *out = static_cast<T>(v);
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!value.is_number()) return absl::StrCat("must be a number, not ", value.dump());
    // A double beyond T's range has no T to convert to (undefined behaviour; infinity, in
    // practice, which sampling would then take as a temperature).
    const double v = value.get<double>();
    if (std::abs(v) > std::numeric_limits<T>::max()) {
      return absl::StrCat("must be a number of magnitude at most ", std::numeric_limits<T>::max(),
                          ", not ", value.dump());
    }
    *out = static_cast<T>(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!value.is_string()) return absl::StrCat("must be a string, not ", value.dump());
    *out = value.get<std::string>();
  } else {  // a std::vector of one of the above
    if (!value.is_array()) return absl::StrCat("must be a list, not ", value.dump());
    out->assign(value.size(), typename T::value_type());
    for (size_t i = 0; i < value.size(); ++i) {
      if (std::string error = Convert(value[i], &(*out)[i]); !error.empty()) {
        return absl::StrCat("[", i, "] ", error);
      }
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<engine::GenerationRequest> ParseRequestLine(const std::string& text, int line) {
  json object = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return FieldError(line, "request", "not valid JSON");
  if (!object.is_object()) return FieldError(line, "request", "not a JSON object");
  engine::GenerationRequest request;
  engine::SamplingOptions& sampling = request.sampling;
  static const char* const kKnown[] = {"id",
                                       "prompt",
                                       "prompt_token_ids",
                                       "max_tokens",
                                       "temperature",
                                       "top_k",
                                       "top_p",
                                       "seed",
                                       "stop",
                                       "stop_token_ids",
                                       "ignore_eos",
                                       "logprobs",
                                       "presence_penalty",
                                       "frequency_penalty",
                                       "adapter"};
  for (const auto& [key, value] : object.items()) {
    if (std::find(std::begin(kKnown), std::end(kKnown), key) == std::end(kKnown)) {
      return FieldError(line, key, "unknown field");
    }
  }
  // Reads one optional field, naming it (and the element of a list) when its value is not
  // one the field takes.
  auto read = [&](const char* key, auto* target) -> absl::Status {
    if (!object.contains(key)) return absl::OkStatus();
    if (std::string error = Convert(object[key], target); !error.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line, ": ", key, absl::StartsWith(error, "[") ? "" : ": ", error));
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
  TESSERA_RETURN_IF_ERROR(read("presence_penalty", &sampling.presence_penalty));
  TESSERA_RETURN_IF_ERROR(read("frequency_penalty", &sampling.frequency_penalty));
  // Whether the engine serves it is the engine's to say (Engine::Submit names the loaded ones).
  TESSERA_RETURN_IF_ERROR(read("adapter", &request.adapter));
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
