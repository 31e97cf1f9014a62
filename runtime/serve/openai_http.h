#ifndef TESSERA_RUNTIME_SERVE_OPENAI_HTTP_H_
#define TESSERA_RUNTIME_SERVE_OPENAI_HTTP_H_

// The coordinator's OpenAI-style HTTP API, on a listener of its own (--http-listen):
//   GET  /v1/models       the models some group serves, and their loaded LoRA adapters as
//                         "base:adapter";
//   POST /v1/completions  a completion, as one JSON answer or, with "stream": true, as
//                         server-sent events ("data: {chunk}" ... "data: [DONE]");
//   POST /v1/chat/completions  likewise for a conversation.
// A "model" of "base:adapter" runs on model base with that adapter (SplitModelName); answers
// echo the "model" the client sent.
// Requests take the coordinator's one request path (Coordinator::Generate): the same keys
// ("Authorization: Bearer KEY"), tenants, quotas, routing, failover, limits and metrics as
// the gRPC API. Errors come in OpenAI's shape with their HTTP status (openai_api.h); an
// error before the first token is the response's status, one after it the stream's last
// event. A streaming client that disconnects cancels its request, which frees its KV blocks.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/serve/coordinator.h"
#include "runtime/serve/http_server.h"
#include "runtime/serve/tls.h"

namespace tessera::serve {

struct OpenAiHttpOptions {
  size_t threads = 64;              // requests in flight at once (streams hold one each)
  size_t max_body_bytes = 4 << 20;  // larger bodies get 413
  TlsFiles tls;  // the coordinator's: its certificate makes the API HTTPS (tls.h)
};

// Serves `coordinator` (which must outlive the server) on `address` ("host:port", port 0:
// any free one), as HttpServer::Start does.
absl::StatusOr<std::unique_ptr<HttpServer>> StartOpenAiHttp(std::string address,
                                                            Coordinator& coordinator,
                                                            const OpenAiHttpOptions& options);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_OPENAI_HTTP_H_
