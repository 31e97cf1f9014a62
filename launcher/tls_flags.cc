#include "launcher/tls_flags.h"

namespace tessera::launcher {

void AddTlsFlags(FlagSet& flags, serve::TlsFiles* files, bool serves) {
  flags.String("tls-cert", &files->cert,
               serves ? "this process's TLS certificate (PEM): its listener serves TLS, and it "
                        "shows the certificate to peers that ask for one"
                      : "a client certificate (PEM), for a server that requires one");
  flags.String("tls-key", &files->key, "the private key of --tls-cert (PEM)");
  flags.String("tls-ca", &files->ca,
               "the CA (PEM) that servers' certificates are checked against: dial over TLS");
  if (serves) {
    flags.String("tls-client-ca", &files->client_ca,
                 "require client certificates issued by this CA (PEM): mutual TLS");
  }
}

std::vector<std::string> TlsFlagArguments(const serve::TlsFiles& files) {
  std::vector<std::string> args;
  auto add = [&](const char* flag, const std::string& value) {
    if (!value.empty()) args.insert(args.end(), {flag, value});
  };
  add("--tls-cert", files.cert);
  add("--tls-key", files.key);
  add("--tls-ca", files.ca);
  add("--tls-client-ca", files.client_ca);
  return args;
}

}  // namespace tessera::launcher
