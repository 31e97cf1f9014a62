#ifndef TESSERA_RUNTIME_SERVE_HTTP_SERVER_H_
#define TESSERA_RUNTIME_SERVE_HTTP_SERVER_H_

// An HTTP server (cpp-httplib) on a listener and a pool of threads of its own, started and
// stopped as one: the Prometheus endpoint (metrics_http.h) and the OpenAI-style API
// (openai_http.h) are routes added to one.

#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace tessera::serve {

struct HttpServerOptions {
  std::string who = "HTTP server";  // starts error messages
  size_t threads = 4;               // requests served at once
  // Bounds how long an idle keep-alive connection holds a thread, and so how long Stop waits.
  time_t keep_alive_seconds = 2;
  size_t max_body_bytes = 0;  // larger request bodies get 413; 0: httplib's default
  // PEM files; with a certificate the server speaks only HTTPS, and with a client CA it
  // requires client certificates that CA issued (mutual TLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
};

class HttpServer {
 public:
  // Listens on `address` and serves the routes `add_routes` adds until Stop or destruction.
  // `address` is "host:port": "127.0.0.1:9090", "0.0.0.0:9090", ":9090" (every IPv4
  // interface), "[::1]:9090"; port 0 takes any free port (see port()). Errors name the
  // address: INVALID_ARGUMENT for an address that does not parse or a host that does not
  // resolve, or TLS files that do not load; UNAVAILABLE when it cannot listen there (the
  // port is taken, or the host is not an address of this machine).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      std::string address, const HttpServerOptions& options,
      const std::function<void(httplib::Server&)>& add_routes);

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer();  // Stop()

  // Stops listening, closes the socket and joins every server thread; when it returns no
  // handler is running. A client holding an idle keep-alive connection can delay it by up
  // to the keep-alive timeout. Safe to call more than once and from any thread.
  void Stop();

  // The port the server is bound to (the chosen one when the address asked for port 0).
  int port() const { return port_; }
  // The address as given to Start.
  const std::string& address() const { return address_; }

 private:
  HttpServer(std::string address, int port, std::unique_ptr<httplib::Server> server);

  const std::string address_;
  const int port_;
  const std::unique_ptr<httplib::Server> server_;
  absl::Mutex stop_mutex_;
  std::thread listener_ ABSL_GUARDED_BY(stop_mutex_);
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_HTTP_SERVER_H_
