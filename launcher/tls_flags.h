#ifndef TESSERA_LAUNCHER_TLS_FLAGS_H_
#define TESSERA_LAUNCHER_TLS_FLAGS_H_

// The --tls-* flags, the same on every command that serves or dials gRPC.

#include <string>
#include <vector>

#include "launcher/flags.h"
#include "runtime/serve/tls.h"

namespace tessera::launcher {

// --tls-cert, --tls-key and --tls-ca; with `serves`, also --tls-client-ca.
void AddTlsFlags(FlagSet& flags, serve::TlsFiles* files, bool serves);

// The flags that give another process the same files ("--tls-cert", PATH, ...).
std::vector<std::string> TlsFlagArguments(const serve::TlsFiles& files);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_TLS_FLAGS_H_
