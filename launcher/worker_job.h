#ifndef TESSERA_LAUNCHER_WORKER_JOB_H_
#define TESSERA_LAUNCHER_WORKER_JOB_H_

// The worker job of one machine: `mpirun ... tessera worker` started as a child process
// beside a coordinator that runs in this process. Shared by `tessera serve` and `tessera bench
// serve`.

#include <sys/types.h>

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

struct WorkerJobConfig {
  int np = 2;                  // worker ranks
  int tp = 2;                  // tensor-parallel degree of each group
  std::string model;           // Hugging Face model directory; empty: the built-in model
  std::string model_name;      // the name clients ask for; empty: the worker's default
  std::string device = "cpu";  // the workers' --device
  double kv_cache_memory_fraction = kDefaultKvCacheMemoryFraction;
  std::string mpirun = "mpirun";
  std::string mpirun_args;                     // extra arguments, split on spaces
  absl::Duration timeout = absl::Seconds(10);  // deadline of each collective
  absl::Duration ready_timeout = absl::Minutes(5);
  engine::EngineOptions engine;

  int groups() const { return np / tp; }
};

// Declares --np, --tp, --model, --model-name, --device, --kv-cache-memory-fraction, --mpirun,
// --mpirun-args, --timeout, --ready-timeout and the engine's flags, writing into `config`
// (whose values are the defaults: set them first).
void AddWorkerJobFlags(FlagSet& flags, WorkerJobConfig* config);

// INVALID_ARGUMENT unless --np is a positive multiple of --tp, and for a bad --device or
// --kv-cache-memory-fraction (FAILED_PRECONDITION for cuda in a build without CUDA).
absl::Status CheckWorkerJobConfig(const WorkerJobConfig& config);

// The job's command line: mpirun, its options for this machine (root, oversubscription),
// then this binary's `worker` registering with the coordinator at 127.0.0.1:coordinator_port.
std::vector<std::string> WorkerCommand(const WorkerJobConfig& config, int coordinator_port);

// A running worker job: a child in its own process group, so that Ctrl-C reaches only this
// process, which stops the job in order. Stopped when destroyed. Not thread-safe.
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
  // it has exited. Does nothing once the job has exited.
  void Stop();

  // Waits until `coordinator` counts `groups` healthy groups: true then; false when a
  // shutdown was requested (SIGINT, SIGTERM; the job is stopped). UNAVAILABLE when the job
  // exits first, DEADLINE_EXCEEDED (the job stopped) after `timeout`.
  absl::StatusOr<bool> WaitUntilHealthy(const serve::Coordinator& coordinator, int groups,
                                        absl::Duration timeout);

 private:
  explicit WorkerJob(pid_t pid) : pid_(pid) {}

  pid_t pid_;
  std::optional<int> exit_status_;
};

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_WORKER_JOB_H_
