#include "runtime/serve/openai_http.h"

#include <cstdio>
#include <deque>
#include <optional>
#include <thread>
#include <utility>

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

// One streamed completion between the thread that runs it and the connection's thread.
class StreamRelay {
 public:
  // The coordinator's sink: false once the client is gone (the request is then cancelled).
  bool Push(const v1::GenerateStreamResponse& message) {
    absl::MutexLock lock(&mutex_);
    if (client_gone_) return false;
    messages_.push_back(message);
    return true;
  }
  void Finish(grpc::Status status) {
    absl::MutexLock lock(&mutex_);
    status_ = std::move(status);
  }
  void ClientGone() {
    absl::MutexLock lock(&mutex_);
    client_gone_ = true;
  }
  // Waits for a message or the end: the next message, or nullopt once finished (status()).
  std::optional<v1::GenerateStreamResponse> Next() {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(
        +[](StreamRelay* relay) ABSL_EXCLUSIVE_LOCKS_REQUIRED(relay->mutex_) {
          return !relay->messages_.empty() || relay->status_.has_value();
        },
        this));
    if (messages_.empty()) return std::nullopt;
    v1::GenerateStreamResponse message = std::move(messages_.front());
    messages_.pop_front();
    return message;
  }
  // Whether the request ended before streaming anything (and how).
  std::optional<grpc::Status> EndedBeforeFirstMessage() {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(
        +[](StreamRelay* relay) ABSL_EXCLUSIVE_LOCKS_REQUIRED(relay->mutex_) {
          return !relay->messages_.empty() || relay->status_.has_value();
        },
        this));
    if (messages_.empty()) return status_;
    return std::nullopt;
  }
  grpc::Status status() {
    absl::MutexLock lock(&mutex_);
    return status_.value_or(grpc::Status::OK);
  }

 private:
  absl::Mutex mutex_;
  std::deque<v1::GenerateStreamResponse> messages_ ABSL_GUARDED_BY(mutex_);
  std::optional<grpc::Status> status_ ABSL_GUARDED_BY(mutex_);
  bool client_gone_ ABSL_GUARDED_BY(mutex_) = false;
};

void Completions(Coordinator& coordinator, const httplib::Request& http, httplib::Response& out) {
  absl::StatusOr<std::string> tenant = Authenticate(coordinator, http);
  if (!tenant.ok()) return ReplyError(out, ErrorFromStatus(tenant.status()));
  Json body = Json::parse(http.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return ReplyError(out, ErrorFromStatus(absl::InvalidArgumentError(
                               "body: not JSON (Content-Type application/json expected)")));
  }
  absl::StatusOr<CompletionCall> call = ParseCompletionRequest(body);
  if (!call.ok()) return ReplyError(out, ErrorFromStatus(call.status()));
  absl::StatusOr<std::string> suffix = RandomHex(12);
  if (!suffix.ok()) return ReplyError(out, ErrorFromStatus(suffix.status()));
  const std::string id = absl::StrCat("cmpl-", *suffix);
  call->request.set_request_id(id);
  const std::string model = call->request.model();
  const int64_t created = absl::ToUnixSeconds(absl::Now());

  if (!call->stream) {
    CompletionResult result;
    grpc::Status status =
        coordinator.Generate(call->request, *tenant, [&](const v1::GenerateStreamResponse& m) {
          result.text += m.text();
          if (m.final()) {
            result.finish_reason = m.finish_reason();
            result.usage = m.usage();
          }
          return true;
        });
    if (!status.ok()) return ReplyError(out, ErrorFromStatus(status));
    return Reply(out, 200, CompletionBody(id, model, created, result));
  }

  // Streaming: the request runs on a thread of its own; an error before its first message is
  // the response's status, after it the stream's last event.
  auto relay = std::make_shared<StreamRelay>();
  auto runner = std::make_shared<std::thread>([&coordinator, relay, request = call->request,
                                               tenant = *tenant] {
    relay->Finish(coordinator.Generate(
        request, tenant, [&relay](const v1::GenerateStreamResponse& m) { return relay->Push(m); }));
  });
  if (std::optional<grpc::Status> early = relay->EndedBeforeFirstMessage(); early.has_value()) {
    runner->join();
    return ReplyError(out, ErrorFromStatus(*early));
  }
  const bool include_usage = call->include_usage;
  out.set_header("Cache-Control", "no-cache");
  out.set_chunked_content_provider(
      "text/event-stream",
      [relay, id, model, created, include_usage](size_t, httplib::DataSink& sink) {
        auto send = [&sink](const std::string& event) {
          return sink.is_writable() && sink.write(event.data(), event.size());
        };
        v1::Usage usage;
        while (std::optional<v1::GenerateStreamResponse> message = relay->Next()) {
          if (message->final()) usage = message->usage();
          if (message->text().empty() && !message->final()) continue;
          if (!send(Event(CompletionChunk(
                  id, model, created, message->text(),
                  message->final() ? message->finish_reason() : v1::FINISH_REASON_UNSPECIFIED)))) {
            relay->ClientGone();
            return false;
          }
        }
        grpc::Status status = relay->status();
        bool sent = true;
        if (!status.ok()) {
          sent = send(Event(ErrorFromStatus(status).body));
        } else if (include_usage) {
          sent = send(Event(UsageChunk(id, model, created, usage)));
        }
        if (sent) sent = send("data: [DONE]\n\n");
        if (!sent) relay->ClientGone();
        sink.done();
        return sent;
      },
      // Runs when the response ends, or the connection does: the request ends before the
      // thread that ran it is joined.
      [relay, runner](bool) {
        relay->ClientGone();
        while (relay->Next().has_value()) {
        }
        runner->join();
      });
}

void Models(const Coordinator& coordinator, const httplib::Request& http, httplib::Response& out) {
  absl::StatusOr<std::string> tenant = Authenticate(coordinator, http);
  if (!tenant.ok()) return ReplyError(out, ErrorFromStatus(tenant.status()));
  Json data = Json::array();
  for (const ModelSummary& model : coordinator.Models()) {
    data.push_back(
        {{"id", model.model}, {"object", "model"}, {"created", 0}, {"owned_by", "tessera"}});
  }
  Reply(out, 200, {{"object", "list"}, {"data", data}});
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
                  Completions(coordinator, request, response);
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
