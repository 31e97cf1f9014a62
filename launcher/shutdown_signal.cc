#include "launcher/shutdown_signal.h"

#include <csignal>

#include <atomic>

#include "absl/time/clock.h"

namespace tessera::launcher {
namespace {

std::atomic<bool> shutdown_requested{false};

extern "C" void OnShutdownSignal(int /*signal*/) { shutdown_requested.store(true); }

}  // namespace

void InstallShutdownHandlers() {
  static const bool installed = [] {
    struct sigaction action = {};
    action.sa_handler = OnShutdownSignal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
    return true;
  }();
  (void)installed;
}

bool ShutdownRequested() { return shutdown_requested.load(); }

bool WaitForShutdown(absl::Duration timeout) {
  absl::Time until = absl::Now() + timeout;
  while (!ShutdownRequested()) {
    absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    absl::SleepFor(std::min(left, absl::Milliseconds(20)));
  }
  return true;
}

}  // namespace tessera::launcher
