#ifndef TESSERA_RUNTIME_SERVE_BEARER_H_
#define TESSERA_RUNTIME_SERVE_BEARER_H_

// Credentials as gRPC metadata, the way HTTP APIs carry them: "authorization: Bearer TOKEN".
// Clients send API keys so; workers send the coordinator's join token so.

#include <string>

#include "absl/strings/string_view.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"

namespace tessera::serve {

// The TOKEN of the call's "authorization: Bearer TOKEN" metadata; empty when there is none.
std::string BearerToken(const grpc::ServerContext& context);

// Adds "authorization: Bearer TOKEN" to the call; nothing when `token` is empty.
void AddBearerToken(grpc::ClientContext& context, absl::string_view token);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_BEARER_H_
