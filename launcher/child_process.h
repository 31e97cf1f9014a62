#ifndef TESSERA_LAUNCHER_CHILD_PROCESS_H_
#define TESSERA_LAUNCHER_CHILD_PROCESS_H_

// A child process with its stdout and stderr in a log file of its own, and what it started
// below it: `tessera bench soak` runs `tessera serve` this way (to read its resident memory,
// descriptors and threads from /proc and kill its ranks), and the end-to-end tests run their
// coordinators and worker jobs so. Linux only.
//
// A child is stopped when its owner goes: SIGTERM to it, then SIGKILL to it, its process
// group and every process it had started (the ranks of an mpirun job live in process groups
// of their own, so they are tracked by pid). It is also killed when the thread that started
// it dies (PR_SET_PDEATHSIG), so a crashed parent leaves nothing behind.
//
// Not thread-safe: one thread starts, watches and stops a child.

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera::launcher {

// Polls `condition` every `poll` until it holds (true) or `timeout` passes (false).
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout,
             absl::Duration poll = absl::Milliseconds(50));

class ChildProcess {
 public:
  // Starts `argv` (argv[0] a path, or a name looked up in PATH) in a process group of its
  // own, with `env` ("NAME=value") added to this process's environment, stdin from
  // /dev/null and stdout and stderr appended to `log_path`.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::string& log_path,
      const std::vector<std::string>& env = {});

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();  // Stop()

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const;  // the log so far

  // Not exited yet.
  bool Running();
  // The exit status (128 + signal when killed) once it has exited, waiting up to `timeout`;
  // nullopt while it runs.
  std::optional<int> Wait(absl::Duration timeout);

  // The processes it started, and theirs, transitively (itself not included).
  std::vector<pid_t> Descendants() const;

  // SIGKILL to it and its descendants at once (a crash, not a shutdown).
  void KillAll();
  // SIGTERM to its process group and its descendants, without waiting (Stop finishes the
  // job).
  void Terminate();
  // Terminate(); after `grace` SIGKILL to it, its process group and every descendant seen.
  // Idempotent.
  void Stop(absl::Duration grace = absl::Seconds(5));

 private:
  ChildProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  // Remembers the current descendants (pid and start time) so that they can be killed after
  // the parent is gone, and never a process that reused one of their pids.
  void RememberDescendants();

  const pid_t pid_;
  const std::string log_path_;
  std::optional<int> exit_status_;
  std::map<pid_t, unsigned long long> descendants_;  // pid -> start time (clock ticks)
};

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_CHILD_PROCESS_H_
