#include "launcher/worker_groups.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/host_name.h"
#include "launcher/process_tree.h"
#include "launcher/shutdown_signal.h"

namespace tessera::launcher {

absl::StatusOr<std::unique_ptr<WorkerGroups>> WorkerGroups::Start(
    std::vector<GroupJob> jobs, const Supervision& supervision,
    const serve::Coordinator* coordinator, serve::CounterFamily* restarts, const std::string& who) {
  if (jobs.empty()) return absl::InvalidArgumentError("no worker groups to start");
  std::unique_ptr<WorkerGroups> groups(new WorkerGroups(supervision, coordinator, restarts, who));
  for (GroupJob& spec : jobs) {
    Replica& replica = groups->replicas_.emplace_back();
    replica.spec = std::move(spec);
    replica.backoff = supervision.restart_backoff;
  }
  if (groups->group_count() == groups->size()) {
    std::fprintf(stderr, "%s: starting %d worker group(s), one mpirun job each: %s\n", who.c_str(),
                 groups->size(),
                 absl::StrJoin(groups->replicas_.front().spec.command, " ").c_str());
  } else {
    std::fprintf(stderr, "%s: starting %d worker group(s) in %d mpirun job(s), the first: %s\n",
                 who.c_str(), groups->group_count(), groups->size(),
                 absl::StrJoin(groups->replicas_.front().spec.command, " ").c_str());
  }
  for (int r = 0; r < groups->size(); ++r) {
    if (absl::Status started = groups->StartJob(r); !started.ok()) return started;
  }
  return groups;
}

absl::StatusOr<std::unique_ptr<WorkerGroups>> WorkerGroups::StartLocal(
    const WorkerJobConfig& config, int coordinator_port, const serve::Coordinator& coordinator,
    serve::CounterFamily* restarts, const std::string& who) {
  const std::string host = comm::LocalHostName();
  std::vector<GroupJob> jobs;
  for (const JobGroups& job : LocalJobs(config)) {
    GroupJob& spec = jobs.emplace_back();
    for (int r = job.first_replica; r < job.first_replica + job.groups; ++r) {
      spec.groups.push_back(absl::StrCat(host, "/replica", r));
    }
    spec.command = WorkerCommand(config, coordinator_port, job);
  }
  return Start(std::move(jobs), config.supervision, &coordinator, restarts, who);
}

WorkerGroups::~WorkerGroups() { Stop(); }

absl::Status WorkerGroups::StartJob(int r) {
  Replica& replica = replicas_[r];
  absl::StatusOr<std::unique_ptr<WorkerJob>> job = WorkerJob::Start(replica.spec.command, who_);
  if (!job.ok()) return job.status();
  replica.job = *std::move(job);
  replica.started = absl::Now();
  replica.served = false;
  replica.restart_at.reset();
  return absl::OkStatus();
}

absl::StatusOr<bool> WorkerGroups::WaitUntilHealthy(absl::Duration timeout) {
  if (coordinator_ == nullptr) {
    return absl::FailedPreconditionError("no coordinator in this process to ask about health");
  }
  absl::Time deadline = absl::Now() + timeout;
  while (coordinator_->HealthyGroupCount() < group_count()) {
    for (int r = 0; r < size(); ++r) {
      if (std::optional<int> code = replicas_[r].job->WaitExit(absl::ZeroDuration())) {
        Stop();
        return absl::UnavailableError(absl::StrCat("the workers of ", JobName(r),
                                                   " exited (status ", *code, ") before serving"));
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

void WorkerGroups::MarkServing(Replica& replica) {
  replica.served = true;
  replica.failed_starts = 0;
  replica.backoff = supervision_.restart_backoff;
}

void WorkerGroups::NoteServing() {
  if (coordinator_ == nullptr) {
    const absl::Time now = absl::Now();
    for (Replica& replica : replicas_) {
      if (!replica.served && replica.job != nullptr && !replica.restart_at.has_value() &&
          now - replica.started >= supervision_.serving_after) {
        MarkServing(replica);
      }
    }
    return;
  }
  // A job serves once each of its groups is healthy under an id its last serving job's group
  // of that name did not have (the coordinator may not have dropped that one yet).
  const std::vector<serve::Coordinator::NamedGroup> healthy = coordinator_->HealthyGroupNames();
  for (Replica& replica : replicas_) {
    if (replica.served) continue;
    std::map<std::string, std::string> ids;
    for (const serve::Coordinator::NamedGroup& group : healthy) {
      const auto last = replica.group_ids.find(group.name);
      if (std::find(replica.spec.groups.begin(), replica.spec.groups.end(), group.name) !=
              replica.spec.groups.end() &&
          (last == replica.group_ids.end() || last->second != group.id)) {
        ids[group.name] = group.id;
      }
    }
    if (ids.size() == replica.spec.groups.size()) {
      replica.group_ids = std::move(ids);
      MarkServing(replica);
    }
  }
}

int WorkerGroups::FirstReplica(int r) const {
  int first = 0;
  for (int j = 0; j < r; ++j) first += static_cast<int>(replicas_[j].spec.groups.size());
  return first;
}

std::string WorkerGroups::JobName(int r) const {
  const int first = FirstReplica(r);
  const int count = static_cast<int>(replicas_[r].spec.groups.size());
  return count == 1 ? absl::StrCat("replica ", first)
                    : absl::StrCat("replicas ", first, "-", first + count - 1);
}

int WorkerGroups::group_count() const {
  int count = 0;
  for (const Replica& replica : replicas_) count += static_cast<int>(replica.spec.groups.size());
  return count;
}

absl::Status WorkerGroups::Supervise() {
  NoteServing();
  absl::Time now = absl::Now();
  for (int r = 0; r < size(); ++r) {
    Replica& replica = replicas_[r];
    if (replica.restart_at.has_value()) {
      if (now < *replica.restart_at) continue;
      ++replica.restarts;
      if (restarts_ != nullptr) restarts_->WithLabels({absl::StrCat(FirstReplica(r))}).Inc();
      std::fprintf(stderr, "%s: starting %s again (restart %d)\n", who_.c_str(), JobName(r).c_str(),
                   replica.restarts);
      if (absl::Status started = StartJob(r); !started.ok()) return started;
      continue;
    }
    std::optional<int> code = replica.job->WaitExit(absl::ZeroDuration());
    if (!code.has_value()) continue;
    if (!replica.served && ++replica.failed_starts >= supervision_.max_failed_starts) {
      return absl::UnavailableError(
          absl::StrCat(JobName(r), ": its workers exited ", replica.failed_starts,
                       " times in a row before serving (last exit status ", *code, "); giving up"));
    }
    std::fprintf(stderr, "%s: the workers of %s exited (status %d)%s; starting them again in %s\n",
                 who_.c_str(), JobName(r).c_str(), *code, replica.served ? "" : " before serving",
                 absl::FormatDuration(replica.backoff).c_str());
    replica.restart_at = now + replica.backoff;
    if (!replica.served) {
      replica.backoff = std::min(2 * replica.backoff, supervision_.max_restart_backoff);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<pid_t> WorkerGroups::RankPid(int replica, int rank) const {
  if (replica < 0 || replica >= size() || replicas_[replica].job == nullptr) {
    return absl::NotFoundError(absl::StrCat("no replica ", replica));
  }
  std::optional<pid_t> pid = FindMpiRank(DescendantsOf(replicas_[replica].job->pid()), rank);
  if (!pid.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("no process of replica ", replica, "'s job is MPI rank ", rank));
  }
  return *pid;
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
