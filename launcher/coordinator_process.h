#ifndef TESSERA_LAUNCHER_COORDINATOR_PROCESS_H_
#define TESSERA_LAUNCHER_COORDINATOR_PROCESS_H_

// The coordinator's flags and start-up, shared by `tessera coordinator` and `tessera serve`
// (which runs one in its own process beside the workers it launches).

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "launcher/flags.h"
#include "runtime/serve/api_keys.h"
#include "runtime/serve/coordinator.h"
#include "runtime/serve/grpc_server.h"
#include "runtime/serve/http_server.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/metrics_http.h"
#include "runtime/serve/tls.h"

namespace tessera::launcher {

struct CoordinatorConfig {
  // Loopback unless told: a coordinator other machines reach is configured so on purpose.
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9400";
  std::string http_listen = "127.0.0.1:8000";  // the OpenAI-style HTTP API (openai_http.h)
  std::string policy = "combined";
  std::string versions;       // "MODEL=VER:WEIGHT,VER:WEIGHT;MODEL2=..."
  std::string tenants_file;   // JSON (tenant_quota.h)
  std::string tenant_quotas;  // "acme=high:5000:20000,..."
  int max_queue = 1024;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration engine_stall_timeout = absl::Minutes(2);   // zero: never stalled
  absl::Duration max_request_duration = absl::Minutes(30);  // zero: no limit
  absl::Duration failover_wait = absl::Seconds(30);
  int64_t max_message_bytes = 4 << 20;
  int64_t max_registration_bytes = int64_t{64} << 20;
  std::string worker_listen;    // empty: the registry shares --listen
  std::string api_keys_file;    // api_keys.h; empty: clients need no key
  std::string join_token_file;  // empty: TESSERA_JOIN_TOKEN, or no token
  serve::TlsFiles tls;          // its listener's, and how it dials the workers
  serve::RequestLimits request_limits;
  int max_batch_requests = 1024;
  int max_batch_threads = 256;
};

// Declares the coordinator's flags, writing into `config` (whose values are the defaults).
void AddCoordinatorFlags(FlagSet& flags, CoordinatorConfig* config);

struct RunningCoordinator {
  std::unique_ptr<serve::ApiKeyStore> api_keys;  // before the coordinator, which reads it
  std::unique_ptr<serve::MetricsRegistry> metrics;
  std::unique_ptr<serve::Coordinator> coordinator;
  serve::RunningGrpcServer grpc;         // the client API (and the registry, unless below)
  serve::RunningGrpcServer worker_grpc;  // the registry, with --worker-listen
  // The port workers register on.
  int registry_port() const { return worker_grpc.server != nullptr ? worker_grpc.port : grpc.port; }
  std::unique_ptr<serve::MetricsServer> metrics_server;
  std::unique_ptr<serve::HttpServer> http_server;  // --http-listen
  std::string join_token;                          // what registrations must show; empty: none

  ~RunningCoordinator();  // stops the servers before the coordinator goes
  RunningCoordinator() = default;
  RunningCoordinator(RunningCoordinator&&) = default;
};

// Settings of a whole process that runs a coordinator, made before it starts threads. gRPC's
// synchronous server starts and ends a thread per call in flight; glibc gives threads
// arenas of their own, up to 8 per core, and the memory they fragment stays resident: under
// a long mixed load the coordinator's resident memory grew by a fifth (tessera bench soak)
// without any leak. Two arenas hold it flat and cost it nothing measurable.
void ConfigureCoordinatorProcess();

// Checks the flags (INVALID_ARGUMENT naming the flag) and starts serving.
absl::StatusOr<std::unique_ptr<RunningCoordinator>> StartCoordinator(
    const CoordinatorConfig& config);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_COORDINATOR_PROCESS_H_
