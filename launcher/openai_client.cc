#include "launcher/openai_client.h"

#include <chrono>
#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "httplib.h"
#include "launcher/bench_client.h"

namespace tessera::launcher {
namespace {

using Json = nlohmann::json;

constexpr char kEventEnd[] = "\n\n";

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(std::string(what));
}

std::chrono::microseconds Micros(absl::Duration duration) {
  return absl::ToChronoMicroseconds(duration);
}

// Whether a call that ended in `error` timed out reading: httplib reports a read that timed out
// and one the peer cut short alike.
bool TimedOut(httplib::Error error, absl::Time start, absl::Duration read_timeout) {
  return error == httplib::Error::Read && absl::Now() - start >= read_timeout;
}

// The integer `json[name]`; nullopt when it is absent or not an integer.
std::optional<int64_t> IntegerField(const Json& json, const char* name) {
  auto it = json.find(name);
  if (it == json.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

absl::StatusOr<v1::Usage> ParseUsage(const Json& json) {
  if (!json.is_object()) return Malformed("usage: not an object");
  std::optional<int64_t> prompt = IntegerField(json, "prompt_tokens");
  std::optional<int64_t> completion = IntegerField(json, "completion_tokens");
  std::optional<int64_t> total = IntegerField(json, "total_tokens");
  if (!prompt || !completion || !total) {
    return Malformed(absl::StrCat("usage: not integer token counts: ", json.dump()));
  }
  if (*total != *prompt + *completion) {
    return Malformed(absl::StrCat("usage: total_tokens ", *total, " is not prompt_tokens ", *prompt,
                                  " + completion_tokens ", *completion));
  }
  v1::Usage usage;
  usage.set_prompt_tokens(static_cast<int32_t>(*prompt));
  usage.set_completion_tokens(static_cast<int32_t>(*completion));
  auto details = json.find("prompt_tokens_details");
  if (details != json.end() && details->is_object()) {
    usage.set_cached_tokens(
        static_cast<int32_t>(IntegerField(*details, "cached_tokens").value_or(0)));
  }
  return usage;
}

// What every "text_completion" object, whole or a chunk, has: its id and model, and its one
// choice's text and finish reason (empty while a chunk's is null).
struct CompletionObject {
  std::string id;
  std::string model;
  std::string text;
  std::string finish_reason;
  bool has_choice = false;  // a stream's usage chunk has none
};

absl::StatusOr<CompletionObject> ParseCompletionObject(const Json& json, bool chunk) {
  if (!json.is_object()) return Malformed("not a JSON object");
  if (json.value("object", "") != "text_completion") {
    return Malformed(absl::StrCat("object is not \"text_completion\": ", json.dump()));
  }
  CompletionObject object;
  auto id = json.find("id");
  auto model = json.find("model");
  auto choices = json.find("choices");
  if (id == json.end() || !id->is_string() || !absl::StartsWith(id->get<std::string>(), "cmpl-") ||
      model == json.end() || !model->is_string() || !IntegerField(json, "created").has_value() ||
      choices == json.end() || !choices->is_array()) {
    return Malformed(
        absl::StrCat("id (\"cmpl-...\"), model, created or choices missing: ", json.dump()));
  }
  object.id = id->get<std::string>();
  object.model = model->get<std::string>();
  if (choices->empty() && chunk) return object;
  if (choices->size() != 1) {
    return Malformed(absl::StrCat(choices->size(), " choices, not 1: ", json.dump()));
  }
  const Json& choice = (*choices)[0];
  auto text = choice.find("text");
  auto finish = choice.find("finish_reason");
  if (IntegerField(choice, "index") != 0 || text == choice.end() || !text->is_string() ||
      finish == choice.end() || !(finish->is_string() || (chunk && finish->is_null()))) {
    return Malformed(absl::StrCat("a choice has index 0, text and finish_reason: ", json.dump()));
  }
  object.has_choice = true;
  object.text = text->get<std::string>();
  if (finish->is_string()) {
    object.finish_reason = finish->get<std::string>();
    if (object.finish_reason != "length" && object.finish_reason != "stop") {
      return Malformed(absl::StrCat("finish_reason \"", object.finish_reason,
                                    "\" is neither \"length\" nor \"stop\""));
    }
  }
  return object;
}

absl::StatusOr<OpenAiCompletion> ParseWhole(const HttpAnswer& answer) {
  Json json = Json::parse(answer.body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Malformed("the body is not JSON");
  absl::StatusOr<CompletionObject> object = ParseCompletionObject(json, /*chunk=*/false);
  if (!object.ok()) return object.status();
  OpenAiCompletion completion;
  completion.id = object->id;
  completion.model = object->model;
  completion.text = object->text;
  completion.finish_reason = object->finish_reason;
  auto usage = json.find("usage");
  if (usage == json.end()) return Malformed("no usage");
  absl::StatusOr<v1::Usage> parsed = ParseUsage(*usage);
  if (!parsed.ok()) return parsed.status();
  completion.usage = *parsed;
  return completion;
}

absl::StatusOr<OpenAiCompletion> ParseStream(const HttpAnswer& answer, bool include_usage) {
  if (!absl::StartsWith(answer.content_type, "text/event-stream")) {
    return Malformed(
        absl::StrCat("Content-Type \"", answer.content_type, "\", not text/event-stream"));
  }
  if (answer.events.empty() || answer.events.back() != "data: [DONE]") {
    return Malformed("the stream does not end with \"data: [DONE]\"");
  }
  OpenAiCompletion completion;
  bool finished = false;  // the chunk with the finish reason came
  for (size_t i = 0; i + 1 < answer.events.size(); ++i) {
    absl::string_view data = answer.events[i];
    if (!absl::ConsumePrefix(&data, "data: ")) {
      return Malformed(absl::StrCat("event ", i, " is not \"data: ...\": ", data));
    }
    Json json = Json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return Malformed(absl::StrCat("event ", i, " is not JSON"));
    if (json.contains("error")) {
      if (i + 2 != answer.events.size()) {
        return Malformed(absl::StrCat("event ", i, " is an error but not the last before [DONE]"));
      }
      absl::StatusOr<OpenAiError> error = ParseOpenAiError(json);
      if (!error.ok()) return error.status();
      completion.error = *std::move(error);
      return completion;
    }
    absl::StatusOr<CompletionObject> chunk = ParseCompletionObject(json, /*chunk=*/true);
    if (!chunk.ok()) return Malformed(absl::StrCat("event ", i, ": ", chunk.status().message()));
    if (i == 0) {
      completion.id = chunk->id;
      completion.model = chunk->model;
    } else if (chunk->id != completion.id || chunk->model != completion.model) {
      return Malformed(absl::StrCat("event ", i, " names id ", chunk->id, " and model ",
                                    chunk->model, ", the first ", completion.id, " and ",
                                    completion.model));
    }
    if (!chunk->has_choice) {
      if (!include_usage || completion.usage.has_value() || completion.finish_reason.empty()) {
        return Malformed(absl::StrCat("event ", i,
                                      ": a usage chunk not asked for, or not once "
                                      "after the chunk with the finish reason"));
      }
      absl::StatusOr<v1::Usage> usage = ParseUsage(json.value("usage", Json()));
      if (!usage.ok()) return Malformed(absl::StrCat("event ", i, ": ", usage.status().message()));
      completion.usage = *usage;
      continue;
    }
    if (finished) {
      return Malformed(absl::StrCat("event ", i, ": a chunk after the one with the finish reason"));
    }
    completion.text += chunk->text;
    if (!chunk->finish_reason.empty()) {
      completion.finish_reason = chunk->finish_reason;
      finished = true;
    }
  }
  if (completion.finish_reason.empty()) return Malformed("no chunk has a finish reason");
  if (include_usage && !completion.usage.has_value()) {
    return Malformed("no usage chunk, though stream_options.include_usage asked for one");
  }
  return completion;
}

}  // namespace

OpenAiClient::OpenAiClient(std::string host, int port, absl::Duration read_timeout, bool keep_alive)
    : host_(std::move(host)), port_(port), read_timeout_(read_timeout) {
  if (keep_alive) {
    kept_ = std::make_unique<httplib::Client>(host_, port_);
    kept_->set_keep_alive(true);
    kept_->set_tcp_nodelay(true);
  }
}

OpenAiClient::~OpenAiClient() = default;

httplib::Client& OpenAiClient::Connection(std::unique_ptr<httplib::Client>& fresh) {
  if (kept_ != nullptr) return *kept_;
  fresh = std::make_unique<httplib::Client>(host_, port_);
  fresh->set_tcp_nodelay(true);
  return *fresh;
}

HttpAnswer OpenAiClient::Get(const std::string& path) {
  std::unique_ptr<httplib::Client> fresh;
  httplib::Client& client = Connection(fresh);
  client.set_connection_timeout(Micros(kBenchConnectTimeout));
  client.set_read_timeout(Micros(read_timeout_));
  HttpAnswer answer;
  const absl::Time start = absl::Now();
  httplib::Result result = client.Get(path);
  if (!result) {
    answer.transport_error = httplib::to_string(result.error());
    answer.timed_out = TimedOut(result.error(), start, read_timeout_);
    return answer;
  }
  answer.status = result->status;
  answer.content_type = result->get_header_value("Content-Type");
  answer.body = result->body;
  return answer;
}

HttpAnswer OpenAiClient::Post(const std::string& path, const std::string& body,
                              const HttpHangUp& hang_up) {
  std::unique_ptr<httplib::Client> fresh;
  httplib::Client& client = Connection(fresh);
  client.set_connection_timeout(Micros(kBenchConnectTimeout));
  const bool idle_hang_up = hang_up.when_idle > absl::ZeroDuration();
  const absl::Duration read_timeout = idle_hang_up ? hang_up.when_idle : read_timeout_;
  client.set_read_timeout(Micros(read_timeout));
  HttpAnswer answer;
  size_t scanned = 0;  // answer.body up to here is split into events
  bool hung_up_after_events = false;
  httplib::Request request;
  request.method = "POST";
  request.path = path;
  request.body = body;
  request.set_header("Content-Type", "application/json");
  request.response_handler = [&answer](const httplib::Response& response) {
    answer.status = response.status;
    answer.content_type = response.get_header_value("Content-Type");
    return true;
  };
  request.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
    answer.body.append(data, length);
    if (!absl::StartsWith(answer.content_type, "text/event-stream")) return true;
    for (size_t end = answer.body.find(kEventEnd, scanned); end != std::string::npos;
         end = answer.body.find(kEventEnd, scanned)) {
      answer.events.push_back(answer.body.substr(scanned, end - scanned));
      answer.event_times.push_back(absl::Now());
      scanned = end + 2;
    }
    if (hang_up.after_events >= 0 &&
        static_cast<int>(answer.events.size()) >= hang_up.after_events) {
      hung_up_after_events = true;
      return false;
    }
    return true;
  };
  const absl::Time start = absl::Now();
  httplib::Result result = client.send(request);
  if (!result) {
    answer.transport_error = httplib::to_string(result.error());
    answer.timed_out = TimedOut(result.error(), start, read_timeout);
    answer.hung_up = (hung_up_after_events && result.error() == httplib::Error::Canceled) ||
                     (idle_hang_up && answer.timed_out);
  }
  return answer;
}

nlohmann::json CompletionRequestJson(const v1::GenerateRequest& request, bool stream,
                                     bool include_usage) {
  Json body = {{"model", request.model()}};
  if (request.prompt_tokens_size() > 0) {
    body["prompt"] =
        Json(std::vector<int32_t>(request.prompt_tokens().begin(), request.prompt_tokens().end()));
  } else {
    body["prompt"] = request.prompt();
  }
  const v1::SamplingParams& sampling = request.sampling();
  if (sampling.max_tokens() != 0) body["max_tokens"] = sampling.max_tokens();
  body["temperature"] = sampling.temperature();
  if (sampling.has_top_p()) body["top_p"] = sampling.top_p();
  if (sampling.top_k() != 0) body["top_k"] = sampling.top_k();
  if (sampling.has_seed()) body["seed"] = sampling.seed();
  if (sampling.stop_size() > 0) {
    body["stop"] = Json(std::vector<std::string>(sampling.stop().begin(), sampling.stop().end()));
  }
  if (stream) {
    body["stream"] = true;
    if (include_usage) body["stream_options"] = {{"include_usage", true}};
  }
  return body;
}

absl::StatusOr<OpenAiError> ParseOpenAiError(const nlohmann::json& json) {
  auto error = json.is_object() ? json.find("error") : json.end();
  if (error == json.end() || !error->is_object()) {
    return Malformed(absl::StrCat("not {\"error\": {...}}: ", json.dump()));
  }
  auto message = error->find("message");
  auto type = error->find("type");
  auto param = error->find("param");
  if (message == error->end() || !message->is_string() || message->get<std::string>().empty() ||
      type == error->end() || !type->is_string() || param == error->end() ||
      !(param->is_string() || param->is_null()) || !error->contains("code")) {
    return Malformed(absl::StrCat("the error lacks a message, type, param or code: ", json.dump()));
  }
  OpenAiError parsed;
  parsed.message = message->get<std::string>();
  parsed.type = type->get<std::string>();
  if (param->is_string()) parsed.param = param->get<std::string>();
  return parsed;
}

absl::StatusOr<OpenAiCompletion> ParseCompletion(const HttpAnswer& answer, bool stream,
                                                 bool include_usage) {
  if (answer.status != 200) return Malformed(absl::StrCat("HTTP ", answer.status, ", not 200"));
  return stream ? ParseStream(answer, include_usage) : ParseWhole(answer);
}

}  // namespace tessera::launcher
