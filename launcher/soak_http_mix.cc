#include "launcher/soak_http_mix.h"

#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "launcher/openai_client.h"
#include "launcher/soak_draw.h"
#include "nlohmann/json.hpp"
#include "runtime/serve/openai_api.h"
#include "runtime/serve/serve_metrics.h"

namespace tessera::launcher {
namespace {

using Json = nlohmann::json;

// Shares of the kinds over HTTP, in SoakKind order (percent): the API has no batch call and
// takes no deadline.
constexpr int kKindWeights[kSoakKinds] = {25, 25, 0, 15, 0, 22, 8, 5};

constexpr char kCompletions[] = "/v1/completions";
constexpr char kRequestError[] = "invalid_request_error";
constexpr int kUnavailable = 503;

// A completion the API takes: only what OpenAI's fields say, so without ignore_eos (the model
// may stop at its end token before max_tokens). Greedy (2 in 5), seeded (2 in 5) or sampled
// freely; sometimes with a stop string.
v1::GenerateRequest ValidRequest(std::mt19937_64& random, const SoakTarget& target,
                                 int32_t min_tokens, int32_t max_tokens) {
  v1::GenerateRequest request;
  DrawPrompt(random, target.model, target.vocab, request);
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_max_tokens(Draw(random, min_tokens, max_tokens));
  const int mode = Draw(random, 0, 4);
  if (mode >= 2) {
    sampling.set_temperature(0.8f);
    sampling.set_top_p(0.9f);
    sampling.set_top_k(Draw(random, 0, 40));
  }
  if (mode == 2 || mode == 3) {
    sampling.set_seed(static_cast<uint64_t>(Draw(random, 0, std::numeric_limits<int32_t>::max())));
  }
  if (Chance(random, 0.2)) sampling.add_stop(RandomWord(random));
  return request;
}

// Whether `request` determines its answer (greedy or seeded), which is then the same over both
// APIs.
bool Reproducible(const v1::GenerateRequest& request) {
  return request.sampling().temperature() == 0 || request.sampling().has_seed();
}

// False when no whole answer came, recording what came instead.
bool Arrived(const HttpAnswer& answer, SoakOutcome& outcome) {
  if (answer.transport_error.empty()) return true;
  if (answer.hung_up) {
    outcome.code = kHttpClientClosed;
    outcome.message = "the client hung up";
  } else if (answer.timed_out) {
    outcome.code = kOutcomeLost;
    outcome.message = "no answer within the read timeout";
  } else {
    outcome.code = kOutcomeBroken;
    outcome.message = absl::StrCat("the call failed: ", answer.transport_error, " (HTTP ",
                                   answer.status, " so far)");
  }
  return false;
}

// The error an answer must carry: its status, and the type and param of its error object.
struct WantedError {
  int status = 400;
  std::optional<std::string> param;  // nullopt: null
  std::string type = kRequestError;
};

void Wrong(SoakOutcome& outcome, std::string why) {
  outcome.code = kOutcomeBadAnswer;
  outcome.message = std::move(why);
}

// Records `answer`'s status. An error status must come with OpenAI's error object as JSON, and,
// when it is `wanted`'s status, with its type and param; else the answer is wrong.
void RecordStatus(const HttpAnswer& answer, const WantedError* wanted, SoakOutcome& outcome) {
  outcome.code = answer.status;
  if (answer.status == 200) return;
  const Json json = Json::parse(answer.body, nullptr, /*allow_exceptions=*/false);
  absl::StatusOr<OpenAiError> error = ParseOpenAiError(json);
  if (!error.ok()) {
    return Wrong(outcome, absl::StrCat("HTTP ", answer.status, ": ", error.status().message()));
  }
  outcome.message = error->message;
  if (!absl::StartsWith(answer.content_type, "application/json")) {
    return Wrong(outcome, absl::StrCat("HTTP ", answer.status, " as ", answer.content_type));
  }
  if (wanted == nullptr || answer.status != wanted->status) return;
  if (error->type != wanted->type || error->param != wanted->param) {
    return Wrong(outcome, absl::StrCat("HTTP ", answer.status, " of type ", error->type, ", param ",
                                       error->param.value_or("null"), "; expected type ",
                                       wanted->type, ", param ", wanted->param.value_or("null"),
                                       " (", error->message, ")"));
  }
}

// Empty when `completion` can answer `request` (its model; no more tokens than asked for,
// exactly as many when it ended for length); else what is wrong.
std::string CheckCompletion(const v1::GenerateRequest& request,
                            const OpenAiCompletion& completion) {
  if (completion.model != request.model()) {
    return absl::StrCat("model ", completion.model, ", asked for ", request.model());
  }
  if (!completion.usage.has_value()) return "";
  const int wanted = request.sampling().max_tokens();
  const int got = completion.usage->completion_tokens();
  if (got > wanted || (completion.finish_reason == "length" && got != wanted)) {
    return absl::StrCat(got, " completion tokens ending for ", completion.finish_reason,
                        "; asked for ", wanted);
  }
  return "";
}

// `text` as a JSON string for a message, cut at 60 bytes.
std::string Shown(const std::string& text) {
  return serve::JsonText(Json(text.size() > 60 ? text.substr(0, 60) + "..." : text));
}

// Sends `request` over gRPC as the reference of `completion`, its answer over HTTP, which must
// be the same: text, finish reason and, when the completion reports usage, token counts.
void CompareWithReference(v1::Inference::Stub& stub, const SoakTarget& target,
                          const v1::GenerateRequest& request, const OpenAiCompletion& completion,
                          SoakOutcome& outcome) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + target.answer_timeout));
  v1::GenerateResponse reference;
  const grpc::Status status = stub.Generate(&context, request, &reference);
  if (!status.ok()) {
    // Judged as the request's own end: UNAVAILABLE is right while a group fails.
    outcome.code = status.error_code() == grpc::StatusCode::UNAVAILABLE         ? kUnavailable
                   : status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? kOutcomeLost
                                                                                : kOutcomeBadAnswer;
    outcome.message =
        absl::StrCat("its gRPC reference ended ",
                     serve::StatusCodeName(static_cast<absl::StatusCode>(status.error_code())),
                     ": ", status.error_message());
    return;
  }
  std::vector<std::string> differences;
  if (completion.text != reference.text()) {
    differences.push_back(
        absl::StrCat("text ", Shown(completion.text), " != ", Shown(reference.text())));
  }
  const std::string finish = serve::FinishReasonName(reference.finish_reason());
  if (completion.finish_reason != finish) {
    differences.push_back(absl::StrCat("finish_reason ", completion.finish_reason, " != ", finish));
  }
  if (completion.usage.has_value() &&
      (completion.usage->prompt_tokens() != reference.usage().prompt_tokens() ||
       completion.usage->completion_tokens() != reference.usage().completion_tokens())) {
    differences.push_back(absl::StrCat(
        "usage ", completion.usage->prompt_tokens(), "+", completion.usage->completion_tokens(),
        " != ", reference.usage().prompt_tokens(), "+", reference.usage().completion_tokens()));
  }
  if (!differences.empty()) {
    return Wrong(outcome, absl::StrCat("not the answer of the same request over gRPC: ",
                                       absl::StrJoin(differences, "; ")));
  }
  outcome.matched_reference = true;
}

// POST /v1/completions asking for `request`; a reproducible one is compared with its gRPC
// reference when `compare`.
void Complete(SoakClients& clients, const SoakTarget& target, const v1::GenerateRequest& request,
              bool stream, bool include_usage, const HttpHangUp& hang_up, bool compare,
              SoakOutcome& outcome) {
  const HttpAnswer answer = clients.http.Post(
      kCompletions, CompletionRequestJson(request, stream, include_usage).dump(), hang_up);
  if (!Arrived(answer, outcome)) return;
  RecordStatus(answer, nullptr, outcome);
  if (outcome.code != 200) return;
  absl::StatusOr<OpenAiCompletion> completion = ParseCompletion(answer, stream, include_usage);
  if (!completion.ok()) return Wrong(outcome, std::string(completion.status().message()));
  if (completion->error.has_value()) {
    // An error after the first chunk has no status of its own; server_error is what a group
    // failing under the stream gives (UNAVAILABLE).
    outcome.code = completion->error->type == "server_error" ? kUnavailable : kOutcomeBadAnswer;
    outcome.message =
        absl::StrCat("mid-stream ", completion->error->type, ": ", completion->error->message);
    return;
  }
  if (std::string wrong = CheckCompletion(request, *completion); !wrong.empty()) {
    return Wrong(outcome, std::move(wrong));
  }
  if (compare && Reproducible(request)) {
    CompareWithReference(clients.grpc, target, request, *completion, outcome);
  }
}

// A body the API refuses, the status it refuses it with, and whether a worker (not the
// coordinator) refuses it.
struct InvalidVariant {
  const char* name;
  int status;
  bool reaches_group;
};

constexpr InvalidVariant kInvalidVariants[] = {
    {"not JSON", 400, false},
    {"not an object", 400, false},
    {"no model", 400, false},
    {"unknown model", 404, false},
    {"empty prompt", 400, false},
    {"a prompt list of text and a number", 400, false},
    {"negative token id", 400, false},
    {"token id past the vocabulary", 400, true},
    {"top_p 1.5", 400, false},
    {"temperature -1", 400, false},
    {"max_tokens not an integer", 400, false},
    {"max_tokens 0", 400, false},
    {"max_tokens past the context", 400, true},
    {"n 0", 400, false},
    {"logprobs -1", 400, false},
    {"too many stop strings", 400, false},
    {"empty stop string", 400, false},
    {"stream not a boolean", 400, false},
    {"model name too long", 400, false},
    {"no such endpoint", 404, false},
};
constexpr int kInvalidVariantCount = std::size(kInvalidVariants);

// An invalid call: where it goes, its body and the param its error names.
struct InvalidCall {
  std::string path = kCompletions;
  std::string body;
  std::optional<std::string> param;
};

// `body` (a valid request) made invalid in the way of kInvalidVariants[variant].
InvalidCall MakeInvalid(int variant, std::mt19937_64& random, const SoakTarget& target, Json body) {
  InvalidCall call;
  // A prompt of token ids with one bad id at a random place.
  auto tokens_with = [&](int64_t bad) {
    std::vector<int64_t> tokens(Draw(random, 1, 8));
    for (int64_t& token : tokens) token = Draw(random, 0, target.vocab - 1);
    const int at = Draw(random, 0, static_cast<int32_t>(tokens.size()) - 1);
    tokens[at] = bad;
    body["prompt"] = tokens;
    return at;
  };
  switch (variant) {
    case 0:
      call.param = "body";
      call.body = body.dump();
      call.body.resize(Draw(random, 1, static_cast<int32_t>(call.body.size()) - 1));
      return call;
    case 1:
      call.param = "body";
      body = Json::array({body});
      break;
    case 2:
      call.param = "model";
      body.erase("model");
      break;
    case 3:
      body["model"] = absl::StrCat("no-such-model-", Draw(random, 0, 999));
      break;
    case 4:
      call.param = "prompt";
      body["prompt"] = "";
      break;
    case 5:
      // Several prompts are strings or token-id lists; a bare number among strings is neither.
      call.param = "prompt[1]";
      body["prompt"] = Json::array({RandomText(random, 8), Draw(random, 0, 99)});
      break;
    case 6:
      call.param = absl::StrCat("prompt[", tokens_with(-Draw(random, 1, 1000)), "]");
      break;
    case 7:
      call.param =
          absl::StrCat("prompt_tokens[",
                       tokens_with(int64_t{target.vocab} + Draw(random, 1 << 20, 1 << 30)), "]");
      break;
    case 8:
      call.param = "sampling.top_p";
      body["top_p"] = 1.5;
      break;
    case 9:
      call.param = "sampling.temperature";
      body["temperature"] = -1.0;
      break;
    case 10:
      call.param = "max_tokens";
      body["max_tokens"] = Chance(random, 0.5) ? Json("ten") : Json(2.5);
      break;
    case 11:
      call.param = "max_tokens";
      body["max_tokens"] = 0;
      break;
    case 12:
      call.param = "max_tokens";
      body["max_tokens"] = target.max_tokens + Draw(random, 1, 100000);
      break;
    case 13:
      call.param = "n";
      body["n"] = 0;
      break;
    case 14:
      call.param = "logprobs";
      body["logprobs"] = -1;
      break;
    case 15: {
      call.param = "sampling.stop";
      Json stop = Json::array();
      for (int i = 0; i <= target.max_stop_strings; ++i) stop.push_back(absl::StrCat("s", i));
      body["stop"] = stop;
      break;
    }
    case 16:
      call.param = "sampling.stop[0]";
      body["stop"] = Json::array({""});
      break;
    case 17:
      call.param = "stream";
      body["stream"] = "yes";
      break;
    case 18:
      call.param = "model";
      body["model"] = std::string(target.max_name_bytes + Draw(random, 1, 64), 'm');
      break;
    default:
      call.path = "/v1/completion";
      break;
  }
  call.body = body.dump();
  return call;
}

void RunInvalid(OpenAiClient& http, const SoakTarget& target, std::mt19937_64& random,
                SoakOutcome& outcome) {
  const int variant = Draw(random, 0, kInvalidVariantCount - 1);
  const InvalidVariant& invalid = kInvalidVariants[variant];
  outcome.variant = invalid.name;
  outcome.expected = {invalid.status};
  outcome.reaches_group = invalid.reaches_group;
  const bool stream = Chance(random, 0.5);
  InvalidCall call =
      MakeInvalid(variant, random, target,
                  CompletionRequestJson(ValidRequest(random, target, 1, 8), stream, false));
  const HttpAnswer answer = http.Post(call.path, call.body);
  if (!Arrived(answer, outcome)) return;
  WantedError wanted;
  wanted.status = invalid.status;
  wanted.param = call.param;
  RecordStatus(answer, &wanted, outcome);
}

void RunOversized(OpenAiClient& http, const SoakTarget& target, std::mt19937_64& random,
                  SoakOutcome& outcome) {
  outcome.expected = {413};
  // Between 1.1 and 4 times the limit.
  const int64_t bytes =
      target.max_message_bytes + Draw(random, static_cast<int32_t>(target.max_message_bytes / 10),
                                      static_cast<int32_t>(3 * target.max_message_bytes));
  v1::GenerateRequest request = ValidRequest(random, target, 1, 8);
  request.clear_prompt();
  request.clear_prompt_tokens();
  if (Chance(random, 0.5)) {
    outcome.variant = "a text prompt over the limit";
    request.set_prompt(RandomText(random, bytes));
  } else {
    outcome.variant = "token ids over the limit";
    // Two bytes or more each ("7,").
    for (int64_t i = 0; i < bytes / 2; ++i)
      request.add_prompt_tokens(Draw(random, 0, target.vocab - 1));
  }
  const bool stream = Chance(random, 0.5);
  const HttpAnswer answer =
      http.Post(kCompletions, CompletionRequestJson(request, stream, false).dump());
  if (!Arrived(answer, outcome)) return;
  WantedError wanted;
  wanted.status = 413;
  RecordStatus(answer, &wanted, outcome);
}

void RunModels(OpenAiClient& http, const SoakTarget& target, SoakOutcome& outcome) {
  outcome.expected = {200};
  const HttpAnswer answer = http.Get("/v1/models");
  if (!Arrived(answer, outcome)) return;
  RecordStatus(answer, nullptr, outcome);
  if (outcome.code != 200) return;
  const Json json = Json::parse(answer.body, nullptr, /*allow_exceptions=*/false);
  if (json.is_object() && json.value("object", "") == "list" && json.contains("data") &&
      json["data"].is_array()) {
    for (const Json& model : json["data"]) {
      if (model.is_object() && model.value("id", "") == target.model &&
          model.value("object", "") == "model") {
        return;
      }
    }
  }
  Wrong(outcome, absl::StrCat("not a list of models naming ", target.model, ": ",
                              answer.body.substr(0, 200)));
}

}  // namespace

void RunHttpRequest(SoakClients& clients, const SoakTarget& target, std::mt19937_64& random,
                    SoakOutcome& outcome) {
  std::discrete_distribution<int> kinds(std::begin(kKindWeights), std::end(kKindWeights));
  outcome.kind = static_cast<SoakKind>(kinds(random));
  switch (outcome.kind) {
    case SoakKind::kUnary:
    case SoakKind::kStream: {
      outcome.expected = {200};
      outcome.reaches_group = true;
      const bool stream = outcome.kind == SoakKind::kStream;
      const bool include_usage = stream && Chance(random, 0.5);
      const v1::GenerateRequest request = ValidRequest(random, target, 1, 16);
      const v1::SamplingParams& sampling = request.sampling();
      outcome.variant = sampling.temperature() == 0 ? "greedy"
                        : sampling.has_seed()       ? "seeded"
                                                    : "sampled";
      Complete(clients, target, request, stream, include_usage, {}, /*compare=*/true, outcome);
      break;
    }
    case SoakKind::kCancel: {
      // The client hangs up mid-stream or before its first event; what this kind tests is the
      // coordinator letting go of the request and the connection (the leak checks after the
      // run).
      outcome.expected = {kHttpClientClosed, 200};
      outcome.reaches_group = true;
      const v1::GenerateRequest request = ValidRequest(random, target, 32, 64);
      HttpHangUp hang_up;
      if (Chance(random, 0.7)) {
        hang_up.after_events = Draw(random, 1, 3);
        outcome.variant = "after an event";
      } else {
        hang_up.when_idle = absl::Milliseconds(Draw(random, 1, 20));
        outcome.variant = "once it waited a few ms";
      }
      Complete(clients, target, request, /*stream=*/true, Chance(random, 0.5), hang_up,
               /*compare=*/false, outcome);
      break;
    }
    case SoakKind::kInvalid:
      RunInvalid(clients.http, target, random, outcome);
      break;
    case SoakKind::kOversized:
      RunOversized(clients.http, target, random, outcome);
      break;
    case SoakKind::kModels:
      RunModels(clients.http, target, outcome);
      break;
    case SoakKind::kBatch:
    case SoakKind::kDeadline:
      Wrong(outcome, "no such kind over HTTP");
      break;
  }
}

}  // namespace tessera::launcher
