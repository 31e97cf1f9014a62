#ifndef TESSERA_LAUNCHER_WORKER_GROUPS_H_
#define TESSERA_LAUNCHER_WORKER_GROUPS_H_

// Worker groups, each one `mpirun -np TP tessera worker` job, so that a rank that fails ends
// only its own group (its job: the launcher aborts it), while the other groups serve on; and
// supervised: a job that exits is started again after a back-off, registers again and takes
// traffic. `tessera serve` and `tessera bench serve` run one job per replica on this machine;
// `tessera launch` one per replica on the nodes of a hostfile.
//
// A job counts as started once its group is healthy at the coordinator (when one runs in
// this process; otherwise once it has run Supervision::serving_after). One that exits before
// that doubles the next back-off (up to the configured maximum), and too many such exits in
// a row of one replica end supervision with an error that says so.
//
// Not thread-safe: one thread starts, supervises and stops the groups.

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "launcher/worker_job.h"
#include "runtime/serve/coordinator.h"
#include "runtime/serve/metrics.h"

namespace tessera::launcher {

// One job: the names its groups register with (HOST/replicaN; one group, or the groups of a
// data-parallel fine-tune) and its command.
struct GroupJob {
  std::vector<std::string> groups;
  std::vector<std::string> command;
};

class WorkerGroups {
 public:
  // Starts one job per entry of `jobs`. `coordinator` (may be null: then a job serves once it
  // has run supervision.serving_after) tells when a group is healthy. `restarts` (may be
  // null) counts restarts by job, labelled with its first group's replica index. `who`
  // prefixes messages. Below, `replica` is the index of a job in `jobs` (the same as its
  // group's, unless an earlier job runs several).
  static absl::StatusOr<std::unique_ptr<WorkerGroups>> Start(std::vector<GroupJob> jobs,
                                                             const Supervision& supervision,
                                                             const serve::Coordinator* coordinator,
                                                             serve::CounterFamily* restarts,
                                                             const std::string& who);
  // The jobs of `tessera serve` on this machine (LocalJobs(config)), registering with the
  // coordinator at 127.0.0.1:port, which `coordinator` is.
  static absl::StatusOr<std::unique_ptr<WorkerGroups>> StartLocal(
      const WorkerJobConfig& config, int coordinator_port, const serve::Coordinator& coordinator,
      serve::CounterFamily* restarts, const std::string& who);
  ~WorkerGroups();  // Stop()
  WorkerGroups(const WorkerGroups&) = delete;
  WorkerGroups& operator=(const WorkerGroups&) = delete;

  // Waits until every group of every job is healthy at the coordinator: true then; false when a
  // shutdown was requested (SIGINT, SIGTERM; the jobs are stopped). UNAVAILABLE when a job exits
  // first (a bad flag or model fails every start alike), DEADLINE_EXCEEDED (the jobs
  // stopped) after `timeout`. Needs the coordinator.
  absl::StatusOr<bool> WaitUntilHealthy(absl::Duration timeout);

  // One round of supervision: notes the jobs that exited and starts those whose back-off has
  // passed. UNAVAILABLE naming the replica once it has exited max_failed_starts times in a
  // row before serving.
  absl::Status Supervise();

  // Replica `replica`'s current job has registered and its groups are healthy.
  bool serving(int replica) const { return replicas_[replica].served; }
  // Restarts of replica `replica` so far.
  int restarts(int replica) const { return replicas_[replica].restarts; }
  int size() const { return static_cast<int>(replicas_.size()); }
  // The pid of MPI rank `rank` of replica `replica`'s running job (a fault to inject).
  absl::StatusOr<pid_t> RankPid(int replica, int rank) const;

  // Stops every job (SIGTERM, then SIGKILL; see WorkerJob::Stop). Idempotent.
  void Stop();

 private:
  struct Replica {
    GroupJob spec;
    std::unique_ptr<WorkerJob> job;
    absl::Time started;
    bool served = false;  // its current (or last) job's groups were healthy
    // The coordinator's id of each of its groups (by name) when its job last served.
    std::map<std::string, std::string> group_ids;
    std::optional<absl::Time> restart_at;
    absl::Duration backoff;
    int failed_starts = 0;  // exits in a row before serving
    int restarts = 0;
  };

  WorkerGroups(const Supervision& supervision, const serve::Coordinator* coordinator,
               serve::CounterFamily* restarts, std::string who)
      : supervision_(supervision),
        coordinator_(coordinator),
        restarts_(restarts),
        who_(std::move(who)) {}
  absl::Status StartJob(int replica);
  // Marks the replicas whose current job serves: its group is healthy under a new id at
  // the coordinator, or (without one) it has run supervision_.serving_after.
  void NoteServing();
  void MarkServing(Replica& replica);
  // Groups over every job.
  int group_count() const;
  // The replica index of job r's first group (the groups are numbered over the jobs in order).
  int FirstReplica(int r) const;
  // Job r in messages: "replica 2", or "replicas 0-1" for a job of several groups.
  std::string JobName(int r) const;

  const Supervision supervision_;
  const serve::Coordinator* coordinator_;
  serve::CounterFamily* restarts_;
  const std::string who_;
  std::vector<Replica> replicas_;
};

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_WORKER_GROUPS_H_
