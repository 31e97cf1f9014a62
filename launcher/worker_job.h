#ifndef TESSERA_LAUNCHER_WORKER_JOB_H_
#define TESSERA_LAUNCHER_WORKER_JOB_H_

// A worker job of one machine: `mpirun ... tessera worker` for one replica, started as a
// child process beside a coordinator that runs in this process. worker_groups.h runs one per
// replica for `tessera serve` and `tessera bench serve`.

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "runtime/engine/engine.h"
#include "runtime/serve/coordinator.h"

namespace tessera::launcher {

// How worker jobs are kept running (worker_groups.h): a job that exits is started again after
// a back-off that doubles from restart_backoff up to max_restart_backoff while the replica
// keeps exiting before it serves; after max_failed_starts such exits in a row supervision
// gives up with an error.
struct Supervision {
  absl::Duration restart_backoff = absl::Seconds(1);
  absl::Duration max_restart_backoff = absl::Seconds(30);
  int max_failed_starts = 5;
  // When no coordinator runs in this process to say whether a group serves (tessera launch
  // --no-start-coordinator), a job that has run this long counts as serving.
  absl::Duration serving_after = absl::Minutes(2);
};

// Declares --restart-backoff and --max-failed-starts.
void AddSupervisionFlags(FlagSet& flags, Supervision* supervision);
// INVALID_ARGUMENT naming the flag when a value is out of range.
absl::Status CheckSupervision(const Supervision& supervision);

struct WorkerJobConfig {
  int np = 2;                           // worker ranks
  int tp = 2;                           // tensor-parallel degree of each group
  std::string model;                    // Hugging Face model directory; empty: the built-in model
  std::string model_name;               // the name clients ask for; empty: the worker's default
  std::string device = "cpu";           // the workers' --device
  QuantizeFlags quantize;               // the workers' --quantize and --quantize-group
  std::string kv_cache_dtype = "auto";  // the workers' --kv-cache-dtype
  double kv_cache_memory_fraction = kDefaultKvCacheMemoryFraction;
  std::string mpirun = "mpirun";
  std::string mpirun_args;                     // extra arguments, split on spaces
  absl::Duration timeout = absl::Seconds(10);  // deadline of each collective
  absl::Duration ready_timeout = absl::Minutes(5);
  engine::EngineOptions engine;
  std::string adapters;      // the workers' --adapters (name=DIR,...); --max-adapters is engine's
  std::string train_config;  // the first group's --train-config (a fine-tune inside it)
  // Groups a fine-tune is data-parallel over (--train-config's, or one the coordinator's
  // StartTraining starts on them): the first ones, which then run as one job (they share its
  // DP communicator, and start and stop together).
  int train_groups = 1;
  // The workers get the coordinator's join token from this process's TESSERA_JOIN_TOKEN
  // (mpirun -x), never on a command line.
  bool forward_join_token = false;
  std::vector<std::string> worker_args;  // appended to each worker's flags

  Supervision supervision;

  int groups() const { return np / tp; }
};

// Declares --np, --tp, --model, --model-name, --device, --quantize, --quantize-group,
// --kv-cache-dtype, --kv-cache-memory-fraction, --mpirun, --mpirun-args, --timeout,
// --ready-timeout, --restart-backoff, --max-failed-starts, the engine's flags, --adapters,
// --max-adapters, --train-config, --train-groups, --train-share and --train-target-itl,
// writing into `config` (whose values are the defaults: set them first).
void AddWorkerJobFlags(FlagSet& flags, WorkerJobConfig* config);

// INVALID_ARGUMENT unless --np is a positive multiple of --tp, for a bad --adapters,
// --device, --kv-cache-memory-fraction (FAILED_PRECONDITION for cuda in a build without
// CUDA), and for --train-groups outside 1..groups.
absl::Status CheckWorkerJobConfig(const WorkerJobConfig& config);

// The groups one mpirun job runs: replicas [first_replica, first_replica + groups).
struct JobGroups {
  int first_replica = 0;
  int groups = 1;
};
// The jobs of `config` on one machine, in order: the first --train-groups groups together
// (a data-parallel fine-tune's job; one group when it is 1), then one job per group.
std::vector<JobGroups> LocalJobs(const WorkerJobConfig& config);

// The command line of `job` (mpirun -np groups x tp): mpirun, its options for this machine
// (root, oversubscription, no core binding when several jobs share it), then this binary's
// `worker` registering with the coordinator at 127.0.0.1:coordinator_port; the job of
// replica 0 runs the --train-config fine-tune.
std::vector<std::string> WorkerCommand(const WorkerJobConfig& config, int coordinator_port,
                                       JobGroups job);

// A running child job (mpirun and its worker ranks; tessera launch's coordinator): a child
// in its own process group, so that Ctrl-C reaches only this process, which stops the job in
// order. Stopped when destroyed. Not thread-safe.
class WorkerJob {
 public:
  // Starts `argv`; `who` prefixes the child's message when argv[0] cannot be run.
  static absl::StatusOr<std::unique_ptr<WorkerJob>> Start(const std::vector<std::string>& argv,
                                                          const std::string& who);
  ~WorkerJob();
  WorkerJob(const WorkerJob&) = delete;
  WorkerJob& operator=(const WorkerJob&) = delete;

  // Waits up to `timeout` for the job to exit; its exit status (128 + signal when killed),
  // or nullopt while it runs.
  std::optional<int> WaitExit(absl::Duration timeout);

  // SIGTERM to the job's process group; SIGKILL if it has not exited 15 s later. Returns once
  // it and its ranks have exited (ranks still there 15 s after mpirun get SIGKILL).
  void Stop();
  // SIGTERM to the job's process group, without waiting (Stop finishes the job).
  void Terminate();

  pid_t pid() const { return pid_; }

 private:
  explicit WorkerJob(pid_t pid) : pid_(pid) {}
  // Notes the job's processes (pid and start time) while mpirun still parents them.
  void RememberRanks();

  pid_t pid_;
  std::optional<int> exit_status_;
  std::map<pid_t, unsigned long long> ranks_;  // mpirun's descendants seen when stopping
};

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_WORKER_JOB_H_
