#include "runtime/serve/http_server.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "httplib.h"

namespace tessera::serve {
namespace {

struct HostPort {
  std::string host;
  int port = 0;
};

absl::Status BadAddress(absl::string_view who, absl::string_view address, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat("%s address \"%s\": %s", who, address, why));
}

// "host:port", "[v6-host]:port" or ":port" (every IPv4 interface).
absl::StatusOr<HostPort> ParseAddress(absl::string_view who, absl::string_view address) {
  absl::string_view host;
  absl::string_view port_text;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return BadAddress(who, address, "expected [host]:port");
    }
    host = address.substr(1, close - 1);
    port_text = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) {
      return BadAddress(who, address, "expected host:port, e.g. 0.0.0.0:9090");
    }
    host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return BadAddress(who, address, "an IPv6 host goes in brackets, e.g. [::1]:9090");
    }
  }
  int port = -1;
  const bool digits_only =
      !port_text.empty() && std::all_of(port_text.begin(), port_text.end(), [](char c) {
        return absl::ascii_isdigit(static_cast<unsigned char>(c));
      });
  if (!digits_only || !absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return BadAddress(who, address, "the port must be a number from 0 to 65535");
  }
  HostPort result;
  result.host = host.empty() ? "0.0.0.0" : std::string(host);
  result.port = port;
  return result;
}

// Resolves `host` as httplib will, to tell a host that does not resolve from a port that
// cannot be bound.
absl::Status CheckResolves(absl::string_view who, absl::string_view address,
                           const std::string& host) {
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(host.c_str(), "0", &hints, &result);
  if (rc != 0) {
    return BadAddress(who, address,
                      absl::StrFormat("cannot resolve host \"%s\": %s", host, gai_strerror(rc)));
  }
  freeaddrinfo(result);
  return absl::OkStatus();
}

// SO_REUSEADDR only. httplib's default also sets SO_REUSEPORT, which would let a second
// server bind a port that is already serving and split the scrapes between the two.
void SetListenSocketOptions(socket_t sock) {
  int yes = 1;
  setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

}  // namespace

HttpServer::HttpServer(std::string address, int port, std::unique_ptr<httplib::Server> server)
    : address_(std::move(address)), port_(port), server_(std::move(server)) {}

HttpServer::~HttpServer() { Stop(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    std::string address, const HttpServerOptions& options,
    const std::function<void(httplib::Server&)>& add_routes) {
  const std::string& who = options.who;
  absl::StatusOr<HostPort> host_port = ParseAddress(who, address);
  if (!host_port.ok()) return host_port.status();
  if (absl::Status resolved = CheckResolves(who, address, host_port->host); !resolved.ok()) {
    return resolved;
  }

  std::unique_ptr<httplib::Server> server;
  if (options.tls_cert.empty()) {
    server = std::make_unique<httplib::Server>();
  } else {
    auto https = std::make_unique<httplib::SSLServer>(
        options.tls_cert.c_str(), options.tls_key.c_str(),
        options.tls_client_ca.empty() ? nullptr : options.tls_client_ca.c_str());
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s on \"%s\": the TLS certificate \"%s\", key \"%s\" or client CA \"%s\" does not "
          "load",
          who, address, options.tls_cert, options.tls_key, options.tls_client_ca));
    }
    server = std::move(https);
  }
  const size_t threads = options.threads;
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->set_socket_options(SetListenSocketOptions);
  server->set_keep_alive_timeout(options.keep_alive_seconds);
  // A streamed answer is many small writes: without TCP_NODELAY each could wait for the
  // client's delayed acknowledgement of the one before (tens of milliseconds).
  server->set_tcp_nodelay(true);
  if (options.max_body_bytes > 0) server->set_payload_max_length(options.max_body_bytes);
  add_routes(*server);

  errno = 0;
  int port = host_port->port;
  bool bound = false;
  if (port == 0) {
    port = server->bind_to_any_port(host_port->host);
    bound = port > 0;
  } else {
    bound = server->bind_to_port(host_port->host, port);
  }
  const int bind_errno = errno;
  if (!bound) {
    const std::string why =
        bind_errno != 0 ? std::error_code(bind_errno, std::generic_category()).message()
                        : "the port is in use or the host is not an address of this machine";
    return absl::UnavailableError(
        absl::StrFormat("%s cannot listen on \"%s\": %s", who, address, why));
  }

  std::unique_ptr<HttpServer> http_server(
      new HttpServer(std::move(address), port, std::move(server)));
  auto listener_exited = std::make_shared<std::atomic<bool>>(false);
  httplib::Server* http = http_server->server_.get();
  {
    absl::MutexLock lock(&http_server->stop_mutex_);
    http_server->listener_ = std::thread([http, listener_exited] {
      http->listen_after_bind();
      listener_exited->store(true);
    });
  }
  // httplib's stop() does nothing until the listener has marked itself running, so Stop
  // would wait forever on a listener it could not reach: return only once it is running.
  while (!http->is_running() && !listener_exited->load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (listener_exited->load()) {
    return absl::UnavailableError(absl::StrFormat(
        "%s on \"%s\": the listener stopped as it started", who, http_server->address_));
  }
  return http_server;
}

void HttpServer::Stop() {
  absl::MutexLock lock(&stop_mutex_);
  if (!listener_.joinable()) return;
  server_->stop();
  listener_.join();
}

}  // namespace tessera::serve
