#include "launcher/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "launcher/process_tree.h"

extern char** environ;

namespace tessera::launcher {
namespace {

// argv[0] as a path: itself when it holds a '/', else its first match in PATH.
std::string ResolveProgram(const std::string& name) {
  if (absl::StrContains(name, '/')) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;
}

}  // namespace

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout, absl::Duration poll) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (condition()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(poll);
  }
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path,
    const std::vector<std::string>& env) {
  if (argv.empty()) return absl::InvalidArgumentError("ChildProcess: empty argv");
  // Everything the child needs is made before fork: between fork and exec a child of a
  // threaded process may only make async-signal-safe calls.
  const std::string program = ResolveProgram(argv[0]);
  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    absl::string_view setting = *entry;
    absl::string_view name = setting.substr(0, setting.find('='));
    bool overridden = false;
    for (const std::string& added : env) {
      overridden |= absl::StartsWith(added, absl::StrCat(name, "="));
    }
    if (!overridden) environment.emplace_back(setting);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> args, envp;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  for (const std::string& setting : environment) envp.push_back(const_cast<char*>(setting.c_str()));
  envp.push_back(nullptr);
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    setpgid(0, 0);
    // Dies with the thread that forked it (the parent's main thread, say).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execve(program.c_str(), args.data(), envp.data());
    static const char kFailed[] = "ChildProcess: exec failed\n";
    (void)!write(STDERR_FILENO, kFailed, sizeof(kFailed) - 1);
    _exit(127);
  }
  setpgid(pid, pid);  // also from this side, so a signal to the group cannot miss it
  close(log_fd);
  close(null_fd);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, log_path));
}

ChildProcess::~ChildProcess() { Stop(); }

std::string ChildProcess::Log() const { return ReadWholeFile(log_path_); }

bool ChildProcess::Running() { return !Wait(absl::ZeroDuration()).has_value(); }

std::optional<int> ChildProcess::Wait(absl::Duration timeout) {
  if (exit_status_) return exit_status_;
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_status_;
    }
    if (done < 0 && errno != EINTR) {
      exit_status_ = -1;  // not our child any more: nothing to wait for
      return exit_status_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::vector<pid_t> ChildProcess::Descendants() const { return DescendantsOf(pid_); }

void ChildProcess::RememberDescendants() {
  if (exit_status_) return;  // reaped: its children are no longer found through it
  for (pid_t pid : Descendants()) {
    if (std::optional<ProcStat> stat = ReadProcStat(pid)) descendants_[pid] = stat->start_time;
  }
}

void ChildProcess::KillAll() {
  RememberDescendants();
  if (!exit_status_) kill(pid_, SIGKILL);
  for (const auto& [pid, start_time] : descendants_) {
    if (SameProcessAlive(pid, start_time)) kill(pid, SIGKILL);
  }
}

void ChildProcess::Terminate() {
  RememberDescendants();
  if (exit_status_) return;
  kill(-pid_, SIGTERM);
  // mpirun relays SIGTERM to its ranks only after a delay; they stop sooner told directly.
  for (const auto& [pid, start_time] : descendants_) {
    if (SameProcessAlive(pid, start_time)) kill(pid, SIGTERM);
  }
}

void ChildProcess::Stop(absl::Duration grace) {
  if (!exit_status_) {
    Terminate();
    if (!Wait(grace)) {
      RememberDescendants();
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      Wait(absl::InfiniteDuration());
    }
  }
  // What it started may outlive it (an mpirun killed before its ranks): a short while to
  // exit on their own, then SIGKILL.
  auto any_alive = [this] {
    for (const auto& [pid, start_time] : descendants_) {
      if (SameProcessAlive(pid, start_time)) return true;
    }
    return false;
  };
  if (WaitFor([&] { return !any_alive(); }, std::min(grace, absl::Seconds(2)))) return;
  for (const auto& [pid, start_time] : descendants_) {
    if (SameProcessAlive(pid, start_time)) {
      kill(-pid, SIGKILL);  // harmless when it leads no group
      kill(pid, SIGKILL);
    }
  }
  WaitFor([&] { return !any_alive(); }, absl::Seconds(5));
}

}  // namespace tessera::launcher
