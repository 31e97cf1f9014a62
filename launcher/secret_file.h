#ifndef TESSERA_LAUNCHER_SECRET_FILE_H_
#define TESSERA_LAUNCHER_SECRET_FILE_H_

// Secrets given to tessera commands: in a file (a flag names it) or an environment variable,
// never on the command line, where `ps` would show them to every user of the machine.

#include <string>

#include "absl/status/statusor.h"

namespace tessera::launcher {

// The secret in `path` (its text, surrounding whitespace removed); when `path` is empty, the
// value of the environment variable `variable` (empty when unset). INVALID_ARGUMENT naming
// `flag` when the file cannot be read or holds nothing.
absl::StatusOr<std::string> ReadSecret(const std::string& path, const char* variable,
                                       const std::string& flag);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SECRET_FILE_H_
