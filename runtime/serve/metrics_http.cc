#include "runtime/serve/metrics_http.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "httplib.h"

namespace tessera::serve {
namespace {

constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(std::string address,
                                                                    MetricsRegistry* registry,
                                                                    std::function<bool()> healthy) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metrics server \"%s\": no registry given", address));
  }
  HttpServerOptions options;
  options.who = "metrics server";
  // Scrapes are rare and cheap; a few threads keep one slow client from blocking the others.
  options.threads = 4;
  absl::StatusOr<std::unique_ptr<HttpServer>> http =
      HttpServer::Start(std::move(address), options, [&](httplib::Server& server) {
        server.Get("/metrics", [registry](const httplib::Request&, httplib::Response& response) {
          response.set_content(registry->RenderText(), kMetricsContentType);
        });
        server.Get("/healthz", [healthy = std::move(healthy)](const httplib::Request&,
                                                              httplib::Response& response) {
          const bool ok = !healthy || healthy();
          response.status = ok ? 200 : 503;
          response.set_content(ok ? "ok" : "unhealthy", "text/plain; charset=utf-8");
        });
      });
  if (!http.ok()) return http.status();
  return std::unique_ptr<MetricsServer>(new MetricsServer(*std::move(http)));
}

}  // namespace tessera::serve
