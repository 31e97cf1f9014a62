#ifndef TESSERA_TESTS_E2E_SERVE_HARNESS_H_
#define TESSERA_TESTS_E2E_SERVE_HARNESS_H_

// The harness of the serving end-to-end tests: the real `tessera coordinator` and `tessera
// worker` jobs (under mpirun) as child processes on loopback, and what a test needs to drive
// and watch them: their ports (parsed from what they print), gRPC stubs, /metrics scrapes,
// group ids by endpoint (from the coordinator's log) and the pid of each MPI rank (to kill
// one).
//
// Every process started here is stopped when its owner goes: SIGTERM to it, then SIGKILL to
// it, its process group and every process it had started (the ranks of an mpirun job live in
// process groups of their own, so they are tracked by pid). A child is also killed when the
// test process dies (PR_SET_PDEATHSIG), so a crashed test leaves no coordinator behind.
//
// Not thread-safe: one test thread drives a harness (client threads only use the stubs).

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::e2e {

// Polls `condition` every `poll` until it holds (true) or `timeout` passes (false).
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout,
             absl::Duration poll = absl::Milliseconds(50));

// Process `pid` exists and has not exited (a zombie has).
bool ProcessAlive(pid_t pid);

// The last `lines` lines of `text`.
std::string Tail(const std::string& text, int lines);

// A process with its stdout and stderr in one log file.
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

// One Prometheus text exposition, parsed.
class MetricsSnapshot {
 public:
  struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;
    double value = 0;
  };

  static MetricsSnapshot Parse(const std::string& text);

  // The sum of the samples named `name` whose labels include every pair of `labels`.
  double Sum(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
  // Some sample of `name` has every pair of `labels`.
  bool Has(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
  const std::vector<Sample>& samples() const { return samples_; }
  const std::string& text() const { return text_; }

 private:
  std::vector<Sample> samples_;
  std::string text_;
};

// GET http://127.0.0.1:`port`/metrics.
absl::StatusOr<MetricsSnapshot> ScrapeMetrics(int port);

// A running `tessera coordinator`.
class CoordinatorProcess {
 public:
  CoordinatorProcess(const CoordinatorProcess&) = delete;
  CoordinatorProcess& operator=(const CoordinatorProcess&) = delete;

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string target() const;  // "127.0.0.1:PORT"
  ChildProcess& process() { return *process_; }

  v1::Inference::Stub& inference() { return *inference_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }
  absl::StatusOr<MetricsSnapshot> Metrics() const { return ScrapeMetrics(metrics_port_); }
  // The API key the harness's own calls (WaitForHealthyGroups) send; none when empty.
  void set_api_key(std::string key) { api_key_ = std::move(key); }

  // The id the coordinator gave the group whose leader serves at `endpoint` (its log's
  // group_registered event); NOT_FOUND when it has not registered (yet).
  absl::StatusOr<std::string> GroupIdOf(const std::string& endpoint) const;
  // Waits until ListModels lists `model` with exactly `healthy` healthy groups of each
  // version named. DEADLINE_EXCEEDED with the last listing otherwise.
  absl::Status WaitForHealthyGroups(const std::string& model,
                                    const std::map<std::string, int>& healthy,
                                    absl::Duration timeout);

 private:
  friend class ServeHarness;
  CoordinatorProcess() = default;

  std::unique_ptr<ChildProcess> process_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string api_key_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

struct WorkerJobOptions {
  int np = 1;                      // ranks
  int tp = 1;                      // ranks per group
  std::string version;             // --version; empty: the worker's default
  std::string model_name;          // --model-name; empty: the model's own name
  std::string collective_timeout;  // --timeout; empty: the worker's default
  std::string kv_cache_memory = "64M";
  std::vector<std::string> extra_flags;  // more `tessera worker` flags
};

// A running `mpirun -np N tessera worker ...` job: N / tp groups.
class WorkerJob {
 public:
  WorkerJob(const WorkerJob&) = delete;
  WorkerJob& operator=(const WorkerJob&) = delete;

  ChildProcess& process() { return *process_; }  // mpirun
  const WorkerJobOptions& options() const { return options_; }

  // The gRPC endpoints the groups' leaders print once loaded ("tessera worker: replica R
  // ... on HOST:PORT"), by replica, once all have printed; DEADLINE_EXCEEDED otherwise, or
  // UNAVAILABLE when mpirun exits first.
  absl::StatusOr<std::vector<std::string>> WaitForLeaders(absl::Duration timeout);
  // The pid of MPI world rank `rank` (by its OMPI_COMM_WORLD_RANK).
  absl::StatusOr<pid_t> RankPid(int rank) const;

 private:
  friend class ServeHarness;
  WorkerJob() = default;

  WorkerJobOptions options_;
  std::unique_ptr<ChildProcess> process_;
};

// Starts coordinators and worker jobs with the given binaries; logs and the built-in model's
// cache go under `dir`.
class ServeHarness {
 public:
  // `tessera`: the binary; `mpirun`: the words that start a job on this machine (mpirun and
  // its options, e.g. --oversubscribe); `dir`: an existing folder.
  ServeHarness(std::string tessera, std::vector<std::string> mpirun, std::string dir);

  const std::string& tessera() const { return tessera_; }
  const std::string& dir() const { return dir_; }
  // What the children's environment adds (the model cache, mpirun as root).
  std::vector<std::string> ChildEnvironment() const;

  // `tessera coordinator --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 <flags>`, once
  // it has printed its ports.
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> StartCoordinator(
      const std::vector<std::string>& flags, absl::Duration timeout = absl::Seconds(30));
  // `mpirun -np N tessera worker --coordinator 127.0.0.1:PORT --tp T --listen 127.0.0.1:0
  // --metrics-listen 127.0.0.1:0 ...`; returns once started (see WaitForLeaders).
  absl::StatusOr<std::unique_ptr<WorkerJob>> StartWorkers(int coordinator_port,
                                                          const WorkerJobOptions& options);

  // Runs `tessera <args>` to completion (killed after `timeout`); its exit status and output.
  struct Outcome {
    int exit_code = -1;
    std::string output;  // stdout and stderr
  };
  Outcome RunTessera(const std::vector<std::string>& args,
                     absl::Duration timeout = absl::Seconds(30));

  // A fresh file name under dir() for a log.
  std::string NewLogPath(const std::string& stem);

 private:
  const std::string tessera_;
  const std::vector<std::string> mpirun_;
  const std::string dir_;
  int next_log_ = 0;
};

}  // namespace tessera::e2e

#endif  // TESSERA_TESTS_E2E_SERVE_HARNESS_H_
