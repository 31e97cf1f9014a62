#include "runtime/serve/openai_api.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tessera::serve {
namespace {

using Json = nlohmann::json;

// Choices one call may ask for (n).
constexpr int64_t kMaxChoices = 16;

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

// A list of token ids at `where`.
absl::StatusOr<std::vector<int32_t>> TokenIds(const Json& ids, const std::string& where) {
  if (ids.empty()) return Invalid(where, "an empty list of token ids");
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < ids.size(); ++i) {
    const Json& id = ids[i];
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Invalid(absl::StrCat(where, "[", i, "]"), "a token id must be a non-negative integer");
    }
    tokens.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return tokens;
}

// OpenAI's prompt: a string, a list of token ids, or a list of strings or of lists of ids
// (several prompts).
absl::StatusOr<std::vector<CompletionPrompt>> ParsePrompts(const Json& prompt) {
  constexpr char kShapes[] =
      "must be a string, a list of token ids, or a list of strings or of token-id lists";
  if (prompt.is_string()) return std::vector<CompletionPrompt>{{prompt.get<std::string>(), {}}};
  if (!prompt.is_array() || prompt.empty()) return Invalid("prompt", kShapes);
  if (!prompt[0].is_string() && !prompt[0].is_array()) {
    absl::StatusOr<std::vector<int32_t>> tokens = TokenIds(prompt, "prompt");
    if (!tokens.ok()) return tokens.status();
    return std::vector<CompletionPrompt>{{"", *std::move(tokens)}};
  }
  std::vector<CompletionPrompt> prompts;
  for (size_t i = 0; i < prompt.size(); ++i) {
    const std::string where = absl::StrCat("prompt[", i, "]");
    if (prompt[i].is_string()) {
      prompts.push_back({prompt[i].get<std::string>(), {}});
    } else if (prompt[i].is_array()) {
      absl::StatusOr<std::vector<int32_t>> tokens = TokenIds(prompt[i], where);
      if (!tokens.ok()) return tokens.status();
      prompts.push_back({"", *std::move(tokens)});
    } else {
      return Invalid(where, "a prompt of several must be a string or a list of token ids");
    }
  }
  return prompts;
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

// The fields both endpoints take; `max_tokens_names` in order of preference.
absl::Status ParseCommonFields(const Json& body,
                               std::initializer_list<const char*> max_tokens_names,
                               CompletionCall& call) {
  v1::GenerateRequest& request = call.request;
  auto model = body.find("model");
  if (model == body.end() || !model->is_string() || model->get<std::string>().empty()) {
    return Invalid("model", "required: the name of a served model (GET /v1/models)");
  }
  call.model = model->get<std::string>();
  request.set_model(call.model);

  v1::SamplingParams& sampling = *request.mutable_sampling();
  for (const char* name : max_tokens_names) {
    absl::StatusOr<std::optional<int64_t>> max_tokens =
        Integer(body, name, 1, std::numeric_limits<int32_t>::max());
    if (!max_tokens.ok()) return max_tokens.status();
    if (max_tokens->has_value()) {
      sampling.set_max_tokens(static_cast<int32_t>(**max_tokens));
      break;
    }
  }
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
  absl::StatusOr<std::optional<double>> presence = Number(body, "presence_penalty");
  if (!presence.ok()) return presence.status();
  sampling.set_presence_penalty(static_cast<float>(presence->value_or(0.0)));
  absl::StatusOr<std::optional<double>> frequency = Number(body, "frequency_penalty");
  if (!frequency.ok()) return frequency.status();
  sampling.set_frequency_penalty(static_cast<float>(frequency->value_or(0.0)));
  absl::StatusOr<std::optional<int64_t>> n = Integer(body, "n", 1, kMaxChoices);
  if (!n.ok()) return n.status();
  call.n = static_cast<int>(n->value_or(1));
  // vLLM's extension: keep generating past the end-of-sequence token (benchmarks use it).
  absl::StatusOr<bool> ignore_eos = Bool(body, "ignore_eos");
  if (!ignore_eos.ok()) return ignore_eos.status();
  sampling.set_ignore_eos(*ignore_eos);
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
  return absl::OkStatus();
}

// A message's content: a string, null, or a list of {"type": "text", "text": ...} parts
// (joined with newlines, as vLLM joins them for text-only models).
absl::StatusOr<std::string> MessageContent(const Json& content, const std::string& where) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) return Invalid(where, "must be a string or a list of text parts");
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string part_where = absl::StrCat(where, "[", i, "]");
    auto type = part.is_object() ? part.find("type") : part.end();
    if (type == part.end() || !type->is_string()) {
      return Invalid(part_where, "must be an object with a \"type\"");
    }
    if (type->get<std::string>() != "text") {
      return Invalid(absl::StrCat(part_where, ".type"),
                     absl::StrCat("'", type->get<std::string>(),
                                  "' parts are not supported: this model reads text"));
    }
    auto part_text = part.find("text");
    if (part_text == part.end() || !part_text->is_string()) {
      return Invalid(absl::StrCat(part_where, ".text"), "must be a string");
    }
    if (i > 0) text += "\n";
    text += part_text->get<std::string>();
  }
  return text;
}

}  // namespace

absl::StatusOr<CompletionCall> ParseCompletionRequest(const Json& body) {
  if (!body.is_object()) return Invalid("body", "must be a JSON object");
  CompletionCall call;
  call.endpoint = OpenAiEndpoint::kCompletions;
  if (absl::Status common = ParseCommonFields(body, {"max_tokens"}, call); !common.ok()) {
    return common;
  }
  auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null()) return Invalid("prompt", "required");
  absl::StatusOr<std::vector<CompletionPrompt>> prompts = ParsePrompts(*prompt);
  if (!prompts.ok()) return prompts.status();
  call.prompts = *std::move(prompts);
  if (call.choices() > kMaxCallChoices) {
    return Invalid("prompt", absl::StrCat(call.prompts.size(), " prompts x n ", call.n, " is ",
                                          call.choices(), " choices; at most ", kMaxCallChoices));
  }
  // The legacy API's logprobs: how many alternatives, the chosen token's always reported.
  absl::StatusOr<std::optional<int64_t>> logprobs = Integer(body, "logprobs", 0, 5);
  if (!logprobs.ok()) return logprobs.status();
  call.logprobs = logprobs->has_value();
  call.top_logprobs = static_cast<int>(logprobs->value_or(0));
  call.request.mutable_sampling()->set_logprobs(call.logprobs);
  call.request.mutable_sampling()->set_top_logprobs(call.top_logprobs);
  return call;
}

absl::StatusOr<CompletionCall> ParseChatCompletionRequest(const Json& body) {
  if (!body.is_object()) return Invalid("body", "must be a JSON object");
  CompletionCall call;
  call.endpoint = OpenAiEndpoint::kChatCompletions;
  if (absl::Status common = ParseCommonFields(body, {"max_completion_tokens", "max_tokens"}, call);
      !common.ok()) {
    return common;
  }
  auto messages = body.find("messages");
  if (messages == body.end() || messages->is_null()) return Invalid("messages", "required");
  if (!messages->is_array() || messages->empty()) {
    return Invalid("messages", "must be a non-empty list");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& message = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return Invalid(where, "must be an object");
    auto role = message.find("role");
    if (role == message.end() || !role->is_string() || role->get<std::string>().empty()) {
      return Invalid(where + ".role", "required: a string such as \"user\"");
    }
    v1::ChatMessage& turn = *call.request.add_messages();
    turn.set_role(role->get<std::string>());
    auto content = message.find("content");
    if (content != message.end()) {
      absl::StatusOr<std::string> text = MessageContent(*content, where + ".content");
      if (!text.ok()) return text.status();
      turn.set_content(*std::move(text));
    }
    auto name = message.find("name");
    if (name != message.end() && !name->is_null()) {
      if (!name->is_string()) return Invalid(where + ".name", "must be a string");
      turn.set_name(name->get<std::string>());
    }
  }
  absl::StatusOr<bool> logprobs = Bool(body, "logprobs");
  if (!logprobs.ok()) return logprobs.status();
  call.logprobs = *logprobs;
  absl::StatusOr<std::optional<int64_t>> top = Integer(body, "top_logprobs", 0, 20);
  if (!top.ok()) return top.status();
  if (top->value_or(0) > 0 && !call.logprobs) {
    return Invalid("top_logprobs", "needs logprobs: true");
  }
  call.top_logprobs = static_cast<int>(top->value_or(0));
  call.request.mutable_sampling()->set_logprobs(call.logprobs);
  call.request.mutable_sampling()->set_top_logprobs(call.top_logprobs);
  return call;
}

ModelAndAdapter SplitModelName(absl::string_view name,
                               const std::function<bool(absl::string_view)>& served) {
  if (served(name)) return {std::string(name), ""};
  const size_t colon = name.rfind(':');
  if (colon != absl::string_view::npos && colon > 0 &&
      CheckAdapterName(name.substr(colon + 1), "adapter").ok()) {
    return {std::string(name.substr(0, colon)), std::string(name.substr(colon + 1))};
  }
  return {std::string(name), ""};
}

Json ModelsBody(const std::vector<ModelSummary>& models,
                const std::vector<AdapterListing>& adapters) {
  auto card = [](const std::string& id, const Json& parent) {
    return Json{{"id", id},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "tessera"},
                {"parent", parent}};
  };
  Json data = Json::array();
  for (const ModelSummary& model : models) data.push_back(card(model.model, nullptr));
  std::set<std::pair<std::string, std::string>> listed;
  for (const AdapterListing& adapter : adapters) {
    if (adapter.groups == 0 || !listed.insert({adapter.model, adapter.name}).second) continue;
    data.push_back(card(absl::StrCat(adapter.model, ":", adapter.name), adapter.model));
  }
  return {{"object", "list"}, {"data", std::move(data)}};
}

v1::GenerateRequest ChoiceRequest(const CompletionCall& call, const std::string& id, int index) {
  v1::GenerateRequest request = call.request;
  if (!call.prompts.empty()) {
    const CompletionPrompt& prompt = call.prompts[index / call.n];
    request.set_prompt(prompt.text);
    request.mutable_prompt_tokens()->Add(prompt.tokens.begin(), prompt.tokens.end());
  }
  request.set_request_id(call.choices() == 1 ? id : absl::StrCat(id, "-", index));
  if (request.sampling().has_seed()) {
    request.mutable_sampling()->set_seed(request.sampling().seed() +
                                         static_cast<uint64_t>(index % call.n));
  }
  return request;
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

void ChoiceResult::Append(const v1::GenerateStreamResponse& message) {
  text += message.text();
  tokens.insert(tokens.end(), message.tokens().begin(), message.tokens().end());
  logprobs.insert(logprobs.end(), message.logprobs().begin(), message.logprobs().end());
  top_logprobs.Add(message.top_logprobs().begin(), message.top_logprobs().end());
  if (message.final()) {
    finish_reason = message.finish_reason();
    usage = message.usage();
  }
}

v1::Usage CallUsage(const CompletionCall& call, const std::vector<ChoiceResult>& choices) {
  v1::Usage usage;
  for (size_t i = 0; i < choices.size(); ++i) {
    const v1::Usage& choice = choices[i].usage;
    if (i % call.n == 0) {  // each prompt once
      usage.set_prompt_tokens(usage.prompt_tokens() + choice.prompt_tokens());
      usage.set_cached_tokens(usage.cached_tokens() + choice.cached_tokens());
    }
    usage.set_completion_tokens(usage.completion_tokens() + choice.completion_tokens());
  }
  return usage;
}

namespace {

const char* ObjectName(const CompletionCall& call, bool chunk) {
  if (call.endpoint == OpenAiEndpoint::kCompletions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

using TopLogprobsList = google::protobuf::RepeatedPtrField<v1::TopLogprobs>;

Json ByteValues(const std::string& bytes) {
  Json values = Json::array();
  for (unsigned char byte : bytes) values.push_back(static_cast<int>(byte));
  return values;
}

// The logprobs of `tokens` in the endpoint's shape, or null when not asked for.
// Completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, top_logprobs a
// {text: logprob} object per token (the most likely of alternatives with the same text), or
// null without alternatives; chat: {"content": [{"token", "logprob", "bytes", "top_logprobs":
// [{"token", "logprob", "bytes"}, ...]}]}. `top` holds one entry per token when the call
// asks for alternatives. `finished`: the tokens end the choice.
Json LogprobsJson(const CompletionCall& call, int index, absl::Span<const int32_t> tokens,
                  absl::Span<const float> logprobs, const TopLogprobsList& top, bool finished,
                  const TokenBytesFn& token_bytes, const TokenTextFn& token_text,
                  int64_t text_offset) {
  if (!call.logprobs) return nullptr;
  const size_t count = std::min(tokens.size(), logprobs.size());
  const bool alternatives = call.top_logprobs > 0;
  auto top_of = [&](size_t i) -> const v1::TopLogprobs& {
    return i < static_cast<size_t>(top.size()) ? top[static_cast<int>(i)]
                                               : v1::TopLogprobs::default_instance();
  };
  if (call.endpoint == OpenAiEndpoint::kCompletions) {
    Json strings = Json::array(), values = Json::array(), offsets = Json::array();
    Json tops = alternatives ? Json::array() : Json();
    for (size_t i = 0; i < count; ++i) {
      std::string bytes = token_bytes(index, tokens[i], finished && i + 1 == count);
      offsets.push_back(text_offset);
      text_offset += static_cast<int64_t>(bytes.size());
      strings.push_back(std::move(bytes));
      values.push_back(logprobs[i]);
      if (!alternatives) continue;
      const v1::TopLogprobs& entry = top_of(i);
      Json by_text = Json::object();
      for (int j = 0; j < std::min(entry.tokens_size(), entry.logprobs_size()); ++j) {
        std::string text = token_text(index, entry.tokens(j));
        if (!by_text.contains(text)) by_text[text] = entry.logprobs(j);
      }
      tops.push_back(std::move(by_text));
    }
    return {{"tokens", strings},
            {"token_logprobs", values},
            {"top_logprobs", tops},
            {"text_offset", offsets}};
  }
  Json content = Json::array();
  for (size_t i = 0; i < count; ++i) {
    const std::string bytes = token_bytes(index, tokens[i], finished && i + 1 == count);
    Json alternatives_json = Json::array();
    if (alternatives) {
      const v1::TopLogprobs& entry = top_of(i);
      for (int j = 0; j < std::min(entry.tokens_size(), entry.logprobs_size()); ++j) {
        const std::string text = token_text(index, entry.tokens(j));
        alternatives_json.push_back(
            {{"token", text}, {"logprob", entry.logprobs(j)}, {"bytes", ByteValues(text)}});
      }
    }
    content.push_back({{"token", bytes},
                       {"logprob", logprobs[i]},
                       {"bytes", ByteValues(bytes)},
                       {"top_logprobs", std::move(alternatives_json)}});
  }
  return {{"content", content}};
}

Json FinishJson(v1::FinishReason reason) {
  const std::string finish = FinishReasonName(reason);
  return finish.empty() ? Json() : Json(finish);
}

}  // namespace

Json CompletionBody(const CompletionCall& call, const std::string& id, int64_t created,
                    const std::vector<ChoiceResult>& choices, const TokenBytesFn& token_bytes,
                    const TokenTextFn& token_text) {
  Json list = Json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& choice = choices[i];
    Json entry = {{"index", i}};
    if (call.endpoint == OpenAiEndpoint::kCompletions) {
      entry["text"] = choice.text;
    } else {
      entry["message"] = {{"role", "assistant"}, {"content", choice.text}};
    }
    entry["logprobs"] =
        LogprobsJson(call, static_cast<int>(i), choice.tokens, choice.logprobs, choice.top_logprobs,
                     /*finished=*/true, token_bytes, token_text, 0);
    entry["finish_reason"] = FinishJson(choice.finish_reason);
    list.push_back(std::move(entry));
  }
  return {{"id", id},
          {"object", ObjectName(call, /*chunk=*/false)},
          {"created", created},
          {"model", call.model},
          {"choices", std::move(list)},
          {"usage", UsageJson(CallUsage(call, choices))}};
}

Json CompletionChunk(const CompletionCall& call, const std::string& id, int64_t created, int index,
                     const v1::GenerateStreamResponse& message, bool first, int64_t text_offset,
                     const TokenBytesFn& token_bytes, const TokenTextFn& token_text) {
  Json entry = {{"index", index}};
  if (call.endpoint == OpenAiEndpoint::kCompletions) {
    entry["text"] = message.text();
  } else {
    Json delta = Json::object();
    if (first) delta["role"] = "assistant";
    if (!message.text().empty() || !message.final()) delta["content"] = message.text();
    entry["delta"] = std::move(delta);
  }
  entry["logprobs"] =
      LogprobsJson(call, index, message.tokens(), message.logprobs(), message.top_logprobs(),
                   message.final(), token_bytes, token_text, text_offset);
  entry["finish_reason"] =
      FinishJson(message.final() ? message.finish_reason() : v1::FINISH_REASON_UNSPECIFIED);
  Json chunk = {{"id", id},
                {"object", ObjectName(call, /*chunk=*/true)},
                {"created", created},
                {"model", call.model},
                {"choices", Json::array({std::move(entry)})}};
  if (call.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

Json UsageChunk(const CompletionCall& call, const std::string& id, int64_t created,
                const v1::Usage& usage) {
  return {{"id", id},
          {"object", ObjectName(call, /*chunk=*/true)},
          {"created", created},
          {"model", call.model},
          {"choices", Json::array()},
          {"usage", UsageJson(usage)}};
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
