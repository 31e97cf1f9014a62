#include "runtime/serve/openai_api.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tessera::serve {
namespace {

using Json = nlohmann::json;

absl::Status Invalid(absl::string_view param, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", why));
}

// A number field that a float holds; nullopt when absent or null.
absl::StatusOr<std::optional<double>> Number(const Json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) return Invalid(name, "must be a number");
  const double value = it->get<double>();
  if (!std::isfinite(value) || std::fabs(value) > std::numeric_limits<float>::max()) {
    return Invalid(name, "out of range");
  }
  return std::optional<double>(value);
}

// An integer field in [low, high]; nullopt when absent or null.
absl::StatusOr<std::optional<int64_t>> Integer(const Json& body, const char* name, int64_t low,
                                               int64_t high) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) return Invalid(name, "must be an integer");
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(high)) {
    return Invalid(name, absl::StrCat("must be at most ", high));
  }
  const int64_t value = it->get<int64_t>();
  if (value < low || value > high) {
    return Invalid(name, absl::StrCat("must be from ", low, " to ", high, ", not ", value));
  }
  return std::optional<int64_t>(value);
}

absl::StatusOr<bool> Bool(const Json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return false;
  if (!it->is_boolean()) return Invalid(name, "must be true or false");
  return it->get<bool>();
}

absl::Status ParsePrompt(const Json& prompt, v1::GenerateRequest& request) {
  if (prompt.is_string()) {
    request.set_prompt(prompt.get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt.is_array() || prompt.empty()) {
    return Invalid("prompt", "must be a string, a list of one string, or a list of token ids");
  }
  if (prompt.size() == 1 && prompt[0].is_string()) {
    request.set_prompt(prompt[0].get<std::string>());
    return absl::OkStatus();
  }
  for (size_t i = 0; i < prompt.size(); ++i) {
    const Json& id = prompt[i];
    if (id.is_string() || id.is_array()) {
      return Invalid("prompt", "several prompts in one request are not supported; send one each");
    }
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Invalid(absl::StrCat("prompt[", i, "]"), "a token id must be a non-negative integer");
    }
    request.add_prompt_tokens(static_cast<int32_t>(id.get<int64_t>()));
  }
  return absl::OkStatus();
}

const char* ErrorType(int status) {
  switch (status) {
    case 400:
    case 404:
    case 413:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 429:
      return "rate_limit_error";
    default:
      return "server_error";
  }
}

}  // namespace

absl::StatusOr<CompletionCall> ParseCompletionRequest(const Json& body) {
  if (!body.is_object()) return Invalid("body", "must be a JSON object");
  CompletionCall call;
  v1::GenerateRequest& request = call.request;
  auto model = body.find("model");
  if (model == body.end() || !model->is_string() || model->get<std::string>().empty()) {
    return Invalid("model", "required: the name of a served model (GET /v1/models)");
  }
  request.set_model(model->get<std::string>());
  auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null()) return Invalid("prompt", "required");
  if (absl::Status parsed = ParsePrompt(*prompt, request); !parsed.ok()) return parsed;

  v1::SamplingParams& sampling = *request.mutable_sampling();
  absl::StatusOr<std::optional<int64_t>> max_tokens =
      Integer(body, "max_tokens", 1, std::numeric_limits<int32_t>::max());
  if (!max_tokens.ok()) return max_tokens.status();
  if (max_tokens->has_value()) sampling.set_max_tokens(static_cast<int32_t>(**max_tokens));
  absl::StatusOr<std::optional<double>> temperature = Number(body, "temperature");
  if (!temperature.ok()) return temperature.status();
  // OpenAI's default temperature is 1: sampled unless the client asks for 0.
  sampling.set_temperature(static_cast<float>(temperature->value_or(1.0)));
  absl::StatusOr<std::optional<double>> top_p = Number(body, "top_p");
  if (!top_p.ok()) return top_p.status();
  if (top_p->has_value()) sampling.set_top_p(static_cast<float>(**top_p));
  absl::StatusOr<std::optional<int64_t>> top_k =
      Integer(body, "top_k", -1, std::numeric_limits<int32_t>::max());
  if (!top_k.ok()) return top_k.status();
  // -1 is vLLM's "no limit", as Tessera's 0.
  if (top_k->has_value() && **top_k > 0) sampling.set_top_k(static_cast<int32_t>(**top_k));
  absl::StatusOr<std::optional<int64_t>> seed = Integer(
      body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  if (!seed.ok()) return seed.status();
  if (seed->has_value()) sampling.set_seed(static_cast<uint64_t>(**seed));
  auto stop = body.find("stop");
  if (stop != body.end() && !stop->is_null()) {
    if (stop->is_string()) {
      sampling.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) {
          return Invalid(absl::StrCat("stop[", i, "]"), "must be a string");
        }
        sampling.add_stop((*stop)[i].get<std::string>());
      }
    } else {
      return Invalid("stop", "must be a string or a list of strings");
    }
  }
  absl::StatusOr<std::optional<int64_t>> n = Integer(body, "n", 1, 128);
  if (!n.ok()) return n.status();
  if (n->value_or(1) != 1) return Invalid("n", "only 1 is supported");
  auto logprobs = body.find("logprobs");
  if (logprobs != body.end() && !logprobs->is_null() &&
      !(logprobs->is_number_integer() && logprobs->get<int64_t>() == 0)) {
    return Invalid("logprobs", "not supported by this endpoint yet");
  }
  absl::StatusOr<bool> stream = Bool(body, "stream");
  if (!stream.ok()) return stream.status();
  call.stream = *stream;
  auto options = body.find("stream_options");
  if (options != body.end() && !options->is_null()) {
    if (!options->is_object()) return Invalid("stream_options", "must be an object");
    absl::StatusOr<bool> usage = Bool(*options, "include_usage");
    if (!usage.ok()) return Invalid("stream_options.include_usage", "must be true or false");
    call.include_usage = *usage;
  }
  return call;
}

std::string FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
    case v1::FINISH_REASON_EOS:
      return "stop";
    default:
      return "";
  }
}

Json UsageJson(const v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens()}}}};
}

Json CompletionBody(const std::string& id, const std::string& model, int64_t created,
                    const CompletionResult& result) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", Json::array({{{"index", 0},
                                    {"text", result.text},
                                    {"logprobs", nullptr},
                                    {"finish_reason", FinishReasonName(result.finish_reason)}}})},
          {"usage", UsageJson(result.usage)}};
}

Json CompletionChunk(const std::string& id, const std::string& model, int64_t created,
                     const std::string& text, v1::FinishReason finish_reason) {
  const std::string finish = FinishReasonName(finish_reason);
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", Json::array({{{"index", 0},
                                    {"text", text},
                                    {"logprobs", nullptr},
                                    {"finish_reason", finish.empty() ? Json() : Json(finish)}}})}};
}

Json UsageChunk(const std::string& id, const std::string& model, int64_t created,
                const v1::Usage& usage) {
  return {{"id", id},       {"object", "text_completion"}, {"created", created},
          {"model", model}, {"choices", Json::array()},    {"usage", UsageJson(usage)}};
}

HttpError ErrorFromStatus(const grpc::Status& status) {
  HttpError error;
  std::string param;
  const std::string& message = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      error.status = 400;
      // Tessera's messages start with the field: "sampling.top_p: must be ...".
      if (size_t colon = message.find(':');
          colon != std::string::npos && colon < 64 && message.find(' ') > colon) {
        param = message.substr(0, colon);
      }
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      error.status = 401;
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
      error.status = 403;
      break;
    case grpc::StatusCode::NOT_FOUND:
      error.status = 404;
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      error.status = 429;
      break;
    case grpc::StatusCode::UNAVAILABLE:
      error.status = 503;
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      error.status = 504;
      break;
    case grpc::StatusCode::CANCELLED:
      error.status = 499;  // the client went away: nobody reads it
      break;
    default:
      error.status = 500;
  }
  error.body = {{"error",
                 {{"message", message},
                  {"type", ErrorType(error.status)},
                  {"param", param.empty() ? Json() : Json(param)},
                  {"code", nullptr}}}};
  return error;
}

std::string JsonText(const Json& json) {
  return json.dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

HttpError ErrorFromStatus(const absl::Status& status) {
  return ErrorFromStatus(
      grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message())));
}

}  // namespace tessera::serve
