#include "launcher/worker_groups.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "comm/host_name.h"
#include "launcher/shutdown_signal.h"

namespace tessera::launcher {
namespace {

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The processes below `root` (children, theirs, ...), from /proc.
std::vector<pid_t> Descendants(pid_t root) {
  std::multimap<pid_t, pid_t> children;  // parent -> child
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    std::string stat = ReadWholeFile(absl::StrCat("/proc/", pid, "/stat"));
    size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t parent = 0;
    if (rest >> state >> parent) children.emplace(parent, pid);
  }
  std::vector<pid_t> found;
  std::vector<pid_t> frontier = {root};
  while (!frontier.empty()) {
    pid_t parent = frontier.back();
    frontier.pop_back();
    auto [begin, end] = children.equal_range(parent);
    for (auto it = begin; it != end; ++it) {
      found.push_back(it->second);
      frontier.push_back(it->second);
    }
  }
  return found;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerGroups>> WorkerGroups::Start(
    const WorkerJobConfig& config, int coordinator_port, const serve::Coordinator& coordinator,
    serve::CounterFamily* restarts, const std::string& who) {
  std::unique_ptr<WorkerGroups> groups(new WorkerGroups(config, coordinator, restarts, who));
  const std::string host = comm::LocalHostName();
  for (int r = 0; r < config.groups(); ++r) {
    Replica& replica = groups->replicas_.emplace_back();
    replica.command = WorkerCommand(config, coordinator_port, r);
    replica.name = absl::StrCat(host, "/replica", r);
    replica.backoff = config.restart_backoff;
  }
  std::fprintf(stderr, "%s: starting %d worker group(s), one mpirun job each: %s\n", who.c_str(),
               config.groups(), absl::StrJoin(groups->replicas_.front().command, " ").c_str());
  for (int r = 0; r < groups->size(); ++r) {
    if (absl::Status started = groups->StartJob(r); !started.ok()) return started;
  }
  return groups;
}

WorkerGroups::~WorkerGroups() { Stop(); }

absl::Status WorkerGroups::StartJob(int r) {
  Replica& replica = replicas_[r];
  absl::StatusOr<std::unique_ptr<WorkerJob>> job = WorkerJob::Start(replica.command, who_);
  if (!job.ok()) return job.status();
  replica.job = *std::move(job);
  replica.served = false;
  replica.restart_at.reset();
  return absl::OkStatus();
}

absl::StatusOr<bool> WorkerGroups::WaitUntilHealthy(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (coordinator_.HealthyGroupCount() < size()) {
    for (int r = 0; r < size(); ++r) {
      if (std::optional<int> code = replicas_[r].job->WaitExit(absl::ZeroDuration())) {
        Stop();
        return absl::UnavailableError(absl::StrCat("the workers of replica ", r, " exited (status ",
                                                   *code, ") before serving"));
      }
    }
    if (ShutdownRequested()) {
      Stop();
      return false;
    }
    if (absl::Now() > deadline) {
      Stop();
      return absl::DeadlineExceededError(
          absl::StrCat("the workers did not all register within ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  NoteServing();
  return true;
}

void WorkerGroups::NoteServing() {
  for (const serve::Coordinator::NamedGroup& group : coordinator_.HealthyGroupNames()) {
    for (Replica& replica : replicas_) {
      if (!replica.served && group.name == replica.name && group.id != replica.group_id) {
        replica.served = true;
        replica.group_id = group.id;
        replica.failed_starts = 0;
        replica.backoff = config_.restart_backoff;
      }
    }
  }
}

absl::Status WorkerGroups::Supervise() {
  NoteServing();
  absl::Time now = absl::Now();
  for (int r = 0; r < size(); ++r) {
    Replica& replica = replicas_[r];
    if (replica.restart_at.has_value()) {
      if (now < *replica.restart_at) continue;
      ++replica.restarts;
      if (restarts_ != nullptr) restarts_->WithLabels({absl::StrCat(r)}).Inc();
      std::fprintf(stderr, "%s: starting replica %d again (restart %d)\n", who_.c_str(), r,
                   replica.restarts);
      if (absl::Status started = StartJob(r); !started.ok()) return started;
      continue;
    }
    std::optional<int> code = replica.job->WaitExit(absl::ZeroDuration());
    if (!code.has_value()) continue;
    if (!replica.served && ++replica.failed_starts >= config_.max_failed_starts) {
      return absl::UnavailableError(
          absl::StrCat("replica ", r, "'s workers exited ", replica.failed_starts,
                       " times in a row before serving (last exit status ", *code, "); giving up"));
    }
    std::fprintf(stderr,
                 "%s: the workers of replica %d exited (status %d)%s; starting them "
                 "again in %s\n",
                 who_.c_str(), r, *code, replica.served ? "" : " before serving",
                 absl::FormatDuration(replica.backoff).c_str());
    replica.restart_at = now + replica.backoff;
    if (!replica.served) {
      replica.backoff = std::min(2 * replica.backoff, config_.max_restart_backoff);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<pid_t> WorkerGroups::RankPid(int replica, int rank) const {
  if (replica < 0 || replica >= size() || replicas_[replica].job == nullptr) {
    return absl::NotFoundError(absl::StrCat("no replica ", replica));
  }
  const std::string wanted = absl::StrCat("OMPI_COMM_WORLD_RANK=", rank);
  for (pid_t pid : Descendants(replicas_[replica].job->pid())) {
    std::string environment = ReadWholeFile(absl::StrCat("/proc/", pid, "/environ"));
    for (absl::string_view setting : absl::StrSplit(environment, '\0')) {
      if (setting == wanted) return pid;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no process of replica ", replica, "'s job has ", wanted));
}

void WorkerGroups::Stop() {
  // SIGTERM to every job first, so that they shut down together.
  for (Replica& replica : replicas_) {
    if (replica.job != nullptr && !replica.job->WaitExit(absl::ZeroDuration())) {
      replica.job->Terminate();
    }
  }
  for (Replica& replica : replicas_) {
    if (replica.job != nullptr) replica.job->Stop();
  }
}

}  // namespace tessera::launcher
