#ifndef TESSERA_RUNTIME_SERVE_SECRETS_H_
#define TESSERA_RUNTIME_SERVE_SECRETS_H_

// The few primitives Tessera's authentication stands on, all from OpenSSL's libcrypto (which
// gRPC already links): SHA-256 for storing API keys hashed, a cryptographic random source for
// keys and group secrets, and a comparison whose time does not depend on where two secrets
// first differ.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::serve {

// SHA-256 of `text`, as 64 lower-case hex digits.
std::string Sha256Hex(absl::string_view text);

// `bytes` random bytes from the system's cryptographic generator, as 2 * bytes lower-case hex
// digits. INTERNAL when the generator fails.
absl::StatusOr<std::string> RandomHex(int bytes);

// a == b, in a time that depends only on their lengths.
bool SecretsEqual(absl::string_view a, absl::string_view b);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_SECRETS_H_
