#ifndef TESSERA_RUNTIME_SERVE_TLS_H_
#define TESSERA_RUNTIME_SERVE_TLS_H_

// TLS for Tessera's gRPC links, from PEM files. Every process has one identity (a certificate
// and its key), which it presents as a server and, to a server that asks for one, as a
// client; it checks its peers against one CA file. The links: clients -> coordinator,
// workers -> coordinator (registration), coordinator -> workers (requests).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace tessera::serve {

struct TlsFiles {
  std::string cert;       // this process's certificate chain (PEM)
  std::string key;        // its private key (PEM)
  std::string ca;         // the CA peers' certificates must chain to (PEM)
  std::string client_ca;  // as a server: require client certificates chaining to this (mTLS)

  // This process serves over TLS (it has a certificate).
  bool serves_tls() const { return !cert.empty(); }
  // This process dials its peers over TLS (it knows their CA).
  bool dials_tls() const { return !ca.empty(); }
};

// INVALID_ARGUMENT naming the `--tls-*` flag (prefix `flag_prefix`, e.g. "--tls-") when the
// files do not go together (a certificate without its key, a client CA without a certificate)
// or one cannot be read.
absl::Status CheckTlsFiles(const TlsFiles& files, const std::string& flag_prefix = "--tls-");

// Server credentials: TLS with the certificate when there is one (and client certificates
// required and verified when client_ca is set), plaintext otherwise.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const TlsFiles& files);

// Channel credentials: TLS checking the server against `ca` (and presenting the certificate,
// when there is one, as the client's) when `ca` is set, plaintext otherwise.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(
    const TlsFiles& files);

// The host of `address` ("host:port") is a loopback address or "localhost".
bool IsLoopbackAddress(const std::string& address);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_TLS_H_
