#ifndef TESSERA_LAUNCHER_OPENAI_CLIENT_H_
#define TESSERA_LAUNCHER_OPENAI_CLIENT_H_

// A client of the coordinator's OpenAI-style HTTP API (runtime/serve/openai_http.h) for the
// serving benchmarks (`tessera bench soak`, `bench serve --api http`): a call on a connection
// of its own, as curl makes one, or on one kept open, as the openai package keeps its; an
// answer read whole or as server-sent events, or hung up on partway; and
// readers that hold the answers to OpenAI's shapes. A separate client, not the server's own
// conversions (openai_api.h), so that the answers are checked from outside.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tessera/v1/inference.pb.h"

namespace httplib {
class Client;
}  // namespace httplib

namespace tessera::launcher {

// What came back from one HTTP call.
struct HttpAnswer {
  int status = 0;               // the HTTP status; 0 when no response came
  std::string transport_error;  // httplib's error when the call did not end whole, else empty
  bool timed_out = false;       // ... because no byte came for the read timeout
  bool hung_up = false;         // ... because the client hung up as its HttpHangUp asked
  std::string content_type;
  std::string body;  // as much of it as came
  // A text/event-stream's whole events as they came ("data: ..."), without the blank line
  // that ends each, and when each had come whole.
  std::vector<std::string> events;
  std::vector<absl::Time> event_times;
};

// When a client hangs up on its call; the default never does.
struct HttpHangUp {
  int after_events = -1;     // once this many server-sent events came; < 0: never
  absl::Duration when_idle;  // > 0: once no byte came for this long (before or
                             // between events), instead of the client's read timeout
};

// Thread-compatible: one thread at a time per client.
class OpenAiClient {
 public:
  // Calls http://`host`:`port`, connecting within kBenchConnectTimeout (bench_client.h). A
  // call on which no byte comes for `read_timeout` ends with transport_error "Read".
  // `keep_alive`: calls share one connection while the server keeps it open; otherwise
  // each call opens and closes its own.
  OpenAiClient(std::string host, int port, absl::Duration read_timeout, bool keep_alive = false);
  ~OpenAiClient();

  HttpAnswer Get(const std::string& path);
  // POST `path` with `body` as application/json; the body goes as it is (malformed ones too).
  HttpAnswer Post(const std::string& path, const std::string& body, const HttpHangUp& hang_up = {});

 private:
  // The connection of the next call: the kept one, or `fresh`.
  httplib::Client& Connection(std::unique_ptr<httplib::Client>& fresh);

  const std::string host_;
  const int port_;
  const absl::Duration read_timeout_;
  std::unique_ptr<httplib::Client> kept_;  // with keep_alive
};

// The POST /v1/completions body that asks for `request`: model, prompt (text, or token ids),
// max_tokens, temperature (always: OpenAI's default is 1, Tessera's 0), top_p, top_k, seed,
// stop, stream and stream_options.include_usage. What OpenAI's fields cannot say
// (ignore_eos, logprobs, stop token ids, version, ...) is left out.
nlohmann::json CompletionRequestJson(const v1::GenerateRequest& request, bool stream,
                                     bool include_usage);

// OpenAI's error object, {"error": {"message", "type", "param", "code"}}.
struct OpenAiError {
  std::string message;
  std::string type;                  // "invalid_request_error", "server_error", ...
  std::optional<std::string> param;  // the field at fault; nullopt when null
};
// INVALID_ARGUMENT naming what departs from the shape.
absl::StatusOr<OpenAiError> ParseOpenAiError(const nlohmann::json& json);

// A completion as an answer of 200 holds it, whole or streamed.
struct OpenAiCompletion {
  std::string id;
  std::string model;
  std::string text;                // a stream's chunks' texts, joined
  std::string finish_reason;       // "length" or "stop"; empty for a stream that ended in an error
  std::optional<v1::Usage> usage;  // absent from a stream that did not ask for it
  std::optional<OpenAiError> error;  // a stream's error event (one after its first chunk)
};
// The completion of `answer` (status 200), one "text_completion" object or, when `stream`,
// server-sent "text_completion" chunks of one id, exactly one with a finish reason (or an
// error event), then the usage chunk when `include_usage` asked for one, then [DONE].
// INVALID_ARGUMENT naming what departs from that.
absl::StatusOr<OpenAiCompletion> ParseCompletion(const HttpAnswer& answer, bool stream,
                                                 bool include_usage);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_OPENAI_CLIENT_H_
