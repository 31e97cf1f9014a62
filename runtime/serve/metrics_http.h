#ifndef TESSERA_RUNTIME_SERVE_METRICS_HTTP_H_
#define TESSERA_RUNTIME_SERVE_METRICS_HTTP_H_

// The HTTP endpoint Prometheus scrapes and orchestrators probe:
//   GET /metrics  200, Content-Type "text/plain; version=0.0.4; charset=utf-8", the
//                 registry's RenderText() (gzip-compressed when the client asks for it);
//   GET /healthz  200 "ok" when the health callback says so, else 503 "unhealthy".
// Anything else is 404. Requests are served by a small pool of threads of its own.

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "runtime/serve/http_server.h"
#include "runtime/serve/metrics.h"

namespace tessera::serve {

class MetricsServer {
 public:
  // Listens on `address` and serves until Stop or destruction. `address` is "host:port":
  // "127.0.0.1:9090", "0.0.0.0:9090", ":9090" (every IPv4 interface), "[::1]:9090"; port 0
  // takes any free port (see port()). `registry` must outlive the server; `healthy` may be
  // empty (always healthy) and is called on the server's threads, so it must be thread-safe.
  // Errors name the address: INVALID_ARGUMENT for an address that does not parse or a host
  // that does not resolve; UNAVAILABLE when it cannot listen there (the port is taken, or
  // the host is not an address of this machine).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(std::string address,
                                                              MetricsRegistry* registry,
                                                              std::function<bool()> healthy);

  // Stops listening, closes the socket and joins every server thread; when it returns no
  // handler is running and neither the registry nor the health callback will be called
  // again. A client holding an idle keep-alive connection can delay it by up to the
  // keep-alive timeout (two seconds). Safe to call more than once and from any thread.
  void Stop() { http_->Stop(); }

  // The port the server is bound to (the chosen one when the address asked for port 0).
  int port() const { return http_->port(); }
  // The address as given to Start.
  const std::string& address() const { return http_->address(); }

 private:
  explicit MetricsServer(std::unique_ptr<HttpServer> http) : http_(std::move(http)) {}

  const std::unique_ptr<HttpServer> http_;
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_METRICS_HTTP_H_
