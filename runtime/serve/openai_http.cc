#include "runtime/serve/openai_http.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "httplib.h"
#include "runtime/serve/openai_api.h"
#include "runtime/serve/secrets.h"

namespace tessera::serve {
namespace {

using Json = nlohmann::json;

constexpr char kJson[] = "application/json";

void Reply(httplib::Response& response, int status, const Json& body) {
  response.status = status;
  response.set_content(JsonText(body), kJson);
}

void ReplyError(httplib::Response& response, const HttpError& error) {
  Reply(response, error.status, error.body);
}

// The caller's tenant from "Authorization: Bearer KEY"; an HttpError when refused.
absl::StatusOr<std::string> Authenticate(const Coordinator& coordinator,
                                         const httplib::Request& request) {
  std::string key;
  const std::string header = request.get_header_value("Authorization");
  if (absl::StartsWithIgnoreCase(header, "Bearer ")) {
    key = std::string(absl::StripAsciiWhitespace(absl::string_view(header).substr(7)));
  }
  return coordinator.AuthenticateKey(key);
}

std::string Event(const Json& data) { return absl::StrCat("data: ", JsonText(data), "\n\n"); }

// The choices of one call, each run as a request on a thread of its own, and the
// connection's thread that reads their messages in the order they come.
class ChoiceRelay {
 public:
  struct Item {
    int index;
    v1::GenerateStreamResponse message;
  };
  explicit ChoiceRelay(int choices) : statuses_(choices) {}

  // A choice's sink: false once the client is gone (the request is then cancelled).
  bool Push(int index, const v1::GenerateStreamResponse& message) {
    absl::MutexLock lock(&mutex_);
    if (client_gone_) return false;
    items_.push_back({index, message});
    return true;
  }
  void Finish(int index, grpc::Status status) {
    absl::MutexLock lock(&mutex_);
    statuses_[index] = std::move(status);
    ++finished_;
  }
  void ClientGone() {
    absl::MutexLock lock(&mutex_);
    client_gone_ = true;
  }
  // The next message of any choice, or nullopt once every choice has finished (status()).
  std::optional<Item> Next() {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(this, &ChoiceRelay::ReadyLocked));
    if (items_.empty()) return std::nullopt;
    Item item = std::move(items_.front());
    items_.pop_front();
    return item;
  }
  // Waits for the first message or the end of every choice; in the second case, the call's
  // status (the first choice that failed).
  std::optional<grpc::Status> EndedBeforeFirstMessage() {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(this, &ChoiceRelay::ReadyLocked));
    if (items_.empty()) return StatusLocked();
    return std::nullopt;
  }
  grpc::Status status() {
    absl::MutexLock lock(&mutex_);
    return StatusLocked();
  }

 private:
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return !items_.empty() || finished_ == static_cast<int>(statuses_.size());
  }
  grpc::Status StatusLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    for (const std::optional<grpc::Status>& status : statuses_) {
      if (status.has_value() && !status->ok()) return *status;
    }
    return grpc::Status::OK;
  }

  absl::Mutex mutex_;
  std::deque<Item> items_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::optional<grpc::Status>> statuses_ ABSL_GUARDED_BY(mutex_);
  int finished_ ABSL_GUARDED_BY(mutex_) = 0;
  bool client_gone_ ABSL_GUARDED_BY(mutex_) = false;
};

// Starts every choice of `call` on a thread of its own; the returned runner joins them.
class ChoiceRunner {
 public:
  ChoiceRunner(Coordinator& coordinator, const CompletionCall& call, const std::string& id,
               const std::string& tenant, std::shared_ptr<ChoiceRelay> relay) {
    for (int index = 0; index < call.choices(); ++index) {
      threads_.emplace_back(
          [&coordinator, relay, index, tenant, request = ChoiceRequest(call, id, index)] {
            relay->Finish(
                index, coordinator.Generate(request, tenant,
                                            [&relay, index](const v1::GenerateStreamResponse& m) {
                                              return relay->Push(index, m);
                                            }));
          });
    }
  }
  ~ChoiceRunner() {
    for (std::thread& thread : threads_) thread.join();
  }

 private:
  std::vector<std::thread> threads_;
};

// The text each token adds to its choice (logprobs), decoded as the stream's text is, with the
// tokenizer of the version that served the call.
class TokenText {
 public:
  TokenText(const Coordinator& coordinator, std::string model, int choices)
      : coordinator_(coordinator), model_(std::move(model)), decoders_(choices) {}
  // Records the version a message names (the first message of a choice does).
  void Note(const v1::GenerateStreamResponse& message) {
    if (encoder_ != nullptr || !message.has_placement()) return;
    absl::StatusOr<std::shared_ptr<const PromptEncoder>> encoder =
        coordinator_.EncoderFor(model_, message.placement().version());
    if (encoder.ok()) encoder_ = *std::move(encoder);
  }
  std::string Next(int index, int32_t id, bool last) {
    if (encoder_ == nullptr) return "";
    std::optional<tokenizer::StreamingDecoder>& decoder = decoders_[index];
    if (!decoder.has_value()) decoder.emplace(encoder_->tokenizer(), /*skip_special_tokens=*/true);
    absl::StatusOr<std::string> piece = decoder->Add(id);
    std::string text = piece.ok() ? *std::move(piece) : std::string();
    if (last) text += decoder->Flush();
    return text;
  }
  // Token `id` decoded alone (top logprobs' alternatives). Stateless: any thread.
  std::string Alone(int32_t id) const {
    if (encoder_ == nullptr) return "";
    absl::StatusOr<std::string> text =
        encoder_->tokenizer().Decode({id}, /*skip_special_tokens=*/false);
    return text.ok() ? *std::move(text) : std::string();
  }

 private:
  const Coordinator& coordinator_;
  const std::string model_;
  std::shared_ptr<const PromptEncoder> encoder_;  // keeps the decoders' tokenizer alive
  std::vector<std::optional<tokenizer::StreamingDecoder>> decoders_;
};

// POST /v1/completions and /v1/chat/completions: `parse` reads the body.
void Completions(Coordinator& coordinator, const httplib::Request& http, httplib::Response& out,
                 absl::StatusOr<CompletionCall> (*parse)(const Json&)) {
  absl::StatusOr<std::string> tenant = Authenticate(coordinator, http);
  if (!tenant.ok()) return ReplyError(out, ErrorFromStatus(tenant.status()));
  Json body = Json::parse(http.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return ReplyError(out, ErrorFromStatus(absl::InvalidArgumentError(
                               "body: not JSON (Content-Type application/json expected)")));
  }
  absl::StatusOr<CompletionCall> parsed = parse(body);
  if (!parsed.ok()) return ReplyError(out, ErrorFromStatus(parsed.status()));
  const std::vector<ModelSummary> models = coordinator.Models();
  ModelAndAdapter target = SplitModelName(parsed->model, [&models](absl::string_view name) {
    return std::any_of(models.begin(), models.end(),
                       [name](const ModelSummary& model) { return model.model == name; });
  });
  parsed->request.set_model(std::move(target.model));
  parsed->request.set_adapter(std::move(target.adapter));
  auto call = std::make_shared<const CompletionCall>(*std::move(parsed));
  absl::StatusOr<std::string> suffix = RandomHex(12);
  if (!suffix.ok()) return ReplyError(out, ErrorFromStatus(suffix.status()));
  const std::string id = absl::StrCat(
      call->endpoint == OpenAiEndpoint::kChatCompletions ? "chatcmpl-" : "cmpl-", *suffix);
  const int64_t created = absl::ToUnixSeconds(absl::Now());

  auto relay = std::make_shared<ChoiceRelay>(call->choices());
  auto runner = std::make_shared<ChoiceRunner>(coordinator, *call, id, *tenant, relay);
  auto token_text =
      std::make_shared<TokenText>(coordinator, call->request.model(), call->choices());
  auto bytes_of = [token_text](int index, int32_t token, bool last) {
    return token_text->Next(index, token, last);
  };
  auto text_of = [token_text](int, int32_t token) { return token_text->Alone(token); };

  if (!call->stream) {
    std::vector<ChoiceResult> choices(call->choices());
    while (std::optional<ChoiceRelay::Item> item = relay->Next()) {
      token_text->Note(item->message);
      choices[item->index].Append(item->message);
    }
    runner.reset();
    grpc::Status status = relay->status();
    if (!status.ok()) return ReplyError(out, ErrorFromStatus(status));
    return Reply(out, 200, CompletionBody(*call, id, created, choices, bytes_of, text_of));
  }

  // Streaming: an error before the first message is the response's status, after it the
  // stream's last event.
  if (std::optional<grpc::Status> early = relay->EndedBeforeFirstMessage(); early.has_value()) {
    runner.reset();
    return ReplyError(out, ErrorFromStatus(*early));
  }
  out.set_header("Cache-Control", "no-cache");
  out.set_chunked_content_provider(
      "text/event-stream",
      [relay, call, id, created, token_text, bytes_of, text_of](size_t, httplib::DataSink& sink) {
        auto send = [&sink](const std::string& event) {
          return sink.is_writable() && sink.write(event.data(), event.size());
        };
        std::vector<ChoiceResult> choices(call->choices());
        std::vector<bool> started(call->choices(), false);
        while (std::optional<ChoiceRelay::Item> item = relay->Next()) {
          const v1::GenerateStreamResponse& message = item->message;
          token_text->Note(message);
          ChoiceResult& choice = choices[item->index];
          const int64_t offset = static_cast<int64_t>(choice.text.size());
          choice.Append(message);
          if (message.text().empty() && message.tokens().empty() && !message.final()) continue;
          const bool first = !started[item->index];
          started[item->index] = true;
          if (!send(Event(CompletionChunk(*call, id, created, item->index, message, first, offset,
                                          bytes_of, text_of)))) {
            relay->ClientGone();
            return false;
          }
        }
        grpc::Status status = relay->status();
        bool sent = true;
        if (!status.ok()) {
          sent = send(Event(ErrorFromStatus(status).body));
        } else if (call->include_usage) {
          sent = send(Event(UsageChunk(*call, id, created, CallUsage(*call, choices))));
        }
        if (sent) sent = send("data: [DONE]\n\n");
        if (!sent) relay->ClientGone();
        sink.done();
        return sent;
      },
      // Runs when the response ends, or the connection does: the requests end before the
      // threads that ran them are joined.
      [relay, runner](bool) mutable {
        relay->ClientGone();
        while (relay->Next().has_value()) {
        }
        runner.reset();
      });
}

void Models(const Coordinator& coordinator, const httplib::Request& http, httplib::Response& out) {
  absl::StatusOr<std::string> tenant = Authenticate(coordinator, http);
  if (!tenant.ok()) return ReplyError(out, ErrorFromStatus(tenant.status()));
  Reply(out, 200, ModelsBody(coordinator.Models(), coordinator.Adapters("")));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> StartOpenAiHttp(std::string address,
                                                            Coordinator& coordinator,
                                                            const OpenAiHttpOptions& options) {
  if (options.tls.cert.empty() && !IsLoopbackAddress(address)) {
    std::fprintf(stderr,
                 "tessera coordinator: warning: serving the HTTP API in plaintext on %s, which is "
                 "not a loopback address: anyone who reaches it can read and send traffic, API "
                 "keys included (--tls-cert and --tls-key turn HTTPS on)\n",
                 address.c_str());
  }
  HttpServerOptions http;
  http.who = "HTTP API";
  http.threads = options.threads;
  http.max_body_bytes = options.max_body_bytes;
  http.tls_cert = options.tls.cert;
  http.tls_key = options.tls.key;
  http.tls_client_ca = options.tls.client_ca;
  return HttpServer::Start(std::move(address), http, [&coordinator](httplib::Server& server) {
    server.Post("/v1/completions",
                [&coordinator](const httplib::Request& request, httplib::Response& response) {
                  Completions(coordinator, request, response, &ParseCompletionRequest);
                });
    server.Post("/v1/chat/completions",
                [&coordinator](const httplib::Request& request, httplib::Response& response) {
                  Completions(coordinator, request, response, &ParseChatCompletionRequest);
                });
    server.Get("/v1/models",
               [&coordinator](const httplib::Request& request, httplib::Response& response) {
                 Models(coordinator, request, response);
               });
    server.set_error_handler([](const httplib::Request&, httplib::Response& response) {
      if (!response.body.empty()) return;
      const int status = response.status;
      Json body = {{"error",
                    {{"message", status == 413   ? "the request body is too large"
                                 : status == 404 ? "no such endpoint"
                                                 : "the request was refused"},
                     {"type", "invalid_request_error"},
                     {"param", nullptr},
                     {"code", nullptr}}}};
      response.set_content(JsonText(body), kJson);
    });
  });
}

}  // namespace tessera::serve
