#include "runtime/serve/grpc_server.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "runtime/serve/tls.h"

namespace tessera::serve {

absl::StatusOr<RunningGrpcServer> StartGrpcServer(const GrpcServerOptions& options,
                                                  const std::vector<grpc::Service*>& services) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  RunningGrpcServer running;
  std::shared_ptr<grpc::ServerCredentials> credentials = options.credentials;
  if (credentials == nullptr) {
    credentials = grpc::InsecureServerCredentials();
    if (!IsLoopbackAddress(options.address)) {
      std::fprintf(stderr,
                   "%s: warning: serving plaintext gRPC on %s, which is not a loopback address: "
                   "anyone who reaches it can read and send traffic (--tls-cert and --tls-key "
                   "turn TLS on)\n",
                   options.who.c_str(), options.address.c_str());
    }
  }
  builder.AddListeningPort(options.address, credentials, &running.port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(-1);
  // A port one process still holds must not be shared with another.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (grpc::Service* service : services) builder.RegisterService(service);
  running.server = builder.BuildAndStart();
  if (running.server == nullptr || running.port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve gRPC on ", options.address, " (address in use or invalid)"));
  }
  return running;
}

void SetServing(grpc::Server& server, const std::vector<std::string>& services, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", true);
  for (const std::string& service : services) health->SetServingStatus(service, serving);
}

absl::Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host,
                           int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), port) || *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", address, "' is not host:port (port 0-65535)"));
  }
  *host = address.substr(0, colon);
  return absl::OkStatus();
}

}  // namespace tessera::serve
