#ifndef TESSERA_RUNTIME_SERVE_GRPC_SERVER_H_
#define TESSERA_RUNTIME_SERVE_GRPC_SERVER_H_

// Starting a gRPC server the way every Tessera process does: the given services plus
// gRPC health checking (grpc.health.v1) and server reflection, so grpcurl and
// grpc_health_probe work against it.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"

namespace tessera::serve {

struct GrpcServerOptions {
  std::string address = "0.0.0.0:0";  // host:port; port 0 picks a free one
  int max_message_bytes = 4 << 20;    // larger requests are refused (RESOURCE_EXHAUSTED)
  // TLS (tls.h); null: plaintext, with a warning on stderr when `address` is not loopback.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::string who = "tessera";  // names the process in that warning
};

struct RunningGrpcServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;  // the port bound
};

// UNAVAILABLE naming the address when it cannot be bound.
absl::StatusOr<RunningGrpcServer> StartGrpcServer(const GrpcServerOptions& options,
                                                  const std::vector<grpc::Service*>& services);

// Marks each named service SERVING or NOT_SERVING for health checks. The server as a whole
// (service "") stays SERVING while it runs: it answers, so liveness probes pass, while a
// service without a worker group behind it reports NOT_SERVING.
void SetServing(grpc::Server& server, const std::vector<std::string>& services, bool serving);

// "host:port" -> host and port. INVALID_ARGUMENT naming `flag` when malformed.
absl::Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host,
                           int* port);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_GRPC_SERVER_H_
