#ifndef TESSERA_LAUNCHER_REQUEST_LIMIT_FLAGS_H_
#define TESSERA_LAUNCHER_REQUEST_LIMIT_FLAGS_H_

// The flags that bound one request (runtime/serve/request_convert.h), the same on the
// coordinator and the workers, which both check them.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "launcher/flags.h"
#include "runtime/serve/request_convert.h"

namespace tessera::launcher {

void AddRequestLimitFlags(FlagSet& flags, serve::RequestLimits* limits);

// INVALID_ARGUMENT naming the flag when a limit is below 1.
absl::Status CheckRequestLimits(const serve::RequestLimits& limits);

// The flags that give a worker the same limits.
std::vector<std::string> RequestLimitArguments(const serve::RequestLimits& limits);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_REQUEST_LIMIT_FLAGS_H_
