#ifndef TESSERA_TESTS_E2E_SERVE_HARNESS_H_
#define TESSERA_TESTS_E2E_SERVE_HARNESS_H_

// The harness of the serving end-to-end tests: the real `tessera coordinator` and `tessera
// worker` jobs (under mpirun) as child processes on loopback, and what a test needs to drive
// and watch them: their ports (parsed from what they print), gRPC stubs, /metrics scrapes,
// group ids by endpoint (from the coordinator's log) and the pid of each MPI rank (to kill
// one).
//
// Every process started here is a launcher::ChildProcess (launcher/child_process.h): stopped
// when its owner goes, killed when the test process dies, so a crashed test leaves no
// coordinator behind.
//
// Not thread-safe: one test thread drives a harness (client threads only use the stubs).

#include <sys/types.h>

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
#include "launcher/child_process.h"
#include "launcher/metrics_scrape.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::e2e {

// Process `pid` exists and has not exited (a zombie has).
bool ProcessAlive(pid_t pid);

// The last `lines` lines of `text`.
std::string Tail(const std::string& text, int lines);

using ::tessera::launcher::ChildProcess;
using ::tessera::launcher::MetricsSnapshot;
using ::tessera::launcher::ScrapeMetrics;
using ::tessera::launcher::WaitFor;

// A running `tessera coordinator`.
class CoordinatorProcess {
 public:
  CoordinatorProcess(const CoordinatorProcess&) = delete;
  CoordinatorProcess& operator=(const CoordinatorProcess&) = delete;

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  int http_port() const { return http_port_; }  // 0: started without --http-listen
  std::string target() const;                   // "127.0.0.1:PORT"
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
  int http_port_ = 0;
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
  std::vector<std::string> environment;  // more of the job's environment, VAR=value
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

// A worker job of one group, serving: its leader printed its endpoint and `coordinator`
// lists the group healthy for `model` at version v1.
struct ServingGroup {
  std::unique_ptr<WorkerJob> workers;
  std::string group;  // the coordinator's id of the group
};
// Starts `job` (np = tp: one group) for `coordinator` and waits up to `timeout` until it
// serves; an error says which wait failed, with the tail of both logs.
absl::StatusOr<ServingGroup> StartServingGroup(ServeHarness& harness,
                                               CoordinatorProcess& coordinator,
                                               const WorkerJobOptions& job,
                                               const std::string& model, absl::Duration timeout);

// For a test suite that shares one coordinator and one worker job: the tail of each one's log
// (either may be null).
std::string SuiteLogs(CoordinatorProcess* coordinator, WorkerJob* workers);
// Stops the suite's workers, then its coordinator, then drops the harness; removes `dir`
// unless `failed` (a test of the suite failed), when it says on stderr where `suite`'s logs
// are kept.
void EndSuite(const char* suite, bool failed, std::unique_ptr<WorkerJob>& workers,
              std::unique_ptr<CoordinatorProcess>& coordinator,
              std::unique_ptr<ServeHarness>& harness, const std::string& dir);

}  // namespace tessera::e2e

#endif  // TESSERA_TESTS_E2E_SERVE_HARNESS_H_
