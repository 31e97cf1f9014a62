#ifndef TESSERA_LAUNCHER_SHUTDOWN_SIGNAL_H_
#define TESSERA_LAUNCHER_SHUTDOWN_SIGNAL_H_

// SIGINT and SIGTERM as a request to shut down cleanly: the handler only records the signal;
// a long-running subcommand polls for it and stops its services in order.

#include "absl/time/time.h"

namespace tessera::launcher {

// Installs the handlers (once; later calls do nothing).
void InstallShutdownHandlers();
// True once SIGINT or SIGTERM arrived.
bool ShutdownRequested();
// Waits up to `timeout` for a shutdown request; true when one came.
bool WaitForShutdown(absl::Duration timeout);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SHUTDOWN_SIGNAL_H_
