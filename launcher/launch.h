#ifndef TESSERA_LAUNCHER_LAUNCH_H_
#define TESSERA_LAUNCHER_LAUNCH_H_

// `tessera launch`: a serving job on many nodes from one Open MPI hostfile. It starts the
// coordinator on this machine, then one `mpirun` job per replica (a tensor-parallel group,
// which never spans two nodes), one rank per GPU (with the CPU backend, one per NUMA
// domain). A rank that fails ends only its replica's job, which is started again after a
// back-off (launcher/worker_groups.h); the coordinator and the other replicas serve on. The
// command lines are built by a pure function (BuildLaunchCommands) so that their mapping
// from flags can be tested.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "launcher/worker_groups.h"
#include "runtime/serve/tls.h"

namespace tessera::launcher {

// One host of an Open MPI hostfile ("node-a slots=8").
struct HostSlots {
  std::string host;
  int slots = 0;
  int line = 0;  // 1-based line of the hostfile where the host first appears
};

// Parses the text of an Open MPI hostfile: one "HOST slots=N [max_slots=M]" per line, '#'
// comments and blank lines ignored; a host listed twice has its slots added, as mpirun does.
// Every host must give slots=N (the launcher lays ranks out by it). INVALID_ARGUMENT naming
// `file_name` and the line otherwise.
absl::StatusOr<std::vector<HostSlots>> ParseHostfile(absl::string_view text,
                                                     absl::string_view file_name);

// Everything `tessera launch` needs to know. Each field is the flag of the same name.
struct LaunchConfig {
  // Open MPI hostfile, read and validated.
  std::string hostfile;
  // Worker ranks; 0: every slot (or ranks_per_node x hosts).
  int np = 0;
  // Ranks on each node; 0: fill each host's slots in hostfile order.
  int ranks_per_node = 0;
  // Tensor-parallel degree; must divide every node's rank count.
  int tp = 1;
  // numa, core or none. numa: each rank bound to one NUMA domain: with backend "nccl" its
  // GPU's, which the rank finds and binds itself to at start (mpirun binds nothing); with
  // backend "cpu" mapped one per domain (--map-by ppr:1:numa), so each node's slots (or
  // ranks_per_node) must be its NUMA domains. On a node that runs several groups (jobs), each
  // rank binds itself to its own slot's domain or cores (TESSERA_NODE_BIND,
  // launcher/numa_placement.h), so the jobs' cores are disjoint.
  std::string bind_to = "numa";
  // With bind_to "core": cores reserved for each rank (PE=k).
  int cores_per_rank = 1;
  // cpu or nccl: which communicator settings go to the ranks, and (with bind_to "numa") how
  // ranks are mapped: nccl one per slot (a GPU), cpu one per NUMA domain.
  std::string backend = "nccl";
  // "NAME=VALUE" set on every rank, or "NAME" to forward this process's value.
  std::vector<std::string> env;
  // HOST:PORT the workers register with; empty: local_host:50051.
  std::string coordinator;
  // False when a coordinator already runs at `coordinator`.
  bool start_coordinator = true;
  // The coordinator's --policy and --metrics-listen; empty: its defaults.
  std::string policy;
  std::string coordinator_metrics_listen;
  std::string coordinator_http_listen;  // empty: the coordinator's default
  // Passed as --join-token-file to the coordinator and every worker (the same path on every
  // node); the coordinator's --api-keys.
  std::string join_token_file;
  std::string api_keys_file;
  // The coordinator's and every worker's --tls-* files (the same paths on every node).
  serve::TlsFiles tls;
  // Worker flags; empty: not passed (the model: the built-in default).
  std::string model;
  std::string model_name;
  std::string version;
  std::string zone;
  std::string mpirun = "mpirun";
  // The tessera binary on the nodes, and here (which runs the coordinator).
  std::string tessera;
  std::string coordinator_binary;
  // Appended to the worker command (the arguments after "--").
  std::vector<std::string> worker_args;
  // How the replicas' jobs are restarted. Their health is not known here (the coordinator
  // is another process): a job that has run serving_after counts as started.
  Supervision supervision;

  // From the launching process, not flags: this host's name (the default coordinator
  // host) and the names of the environment variables set here (the NCCL_* and Tessera
  // settings among them are forwarded to the ranks).
  std::string local_host;
  std::vector<std::string> environment_names;
};

// The command lines of a launch, as argument vectors.
struct LaunchCommands {
  // `tessera coordinator --listen 0.0.0.0:PORT ...`, run on this machine; empty when
  // start_coordinator is false.
  std::vector<std::string> coordinator;
  // One job per replica, in replica order: `mpirun --host NODE:TP -np TP ... tessera worker
  // --coordinator HOST:PORT --tp TP --replica-offset R ...`, named NODE/replicaR.
  std::vector<GroupJob> replicas;
  int coordinator_port = 0;
  int np = 0;  // worker ranks
};

// Validates `config` (reading its hostfile) and builds both command lines. Every error is
// INVALID_ARGUMENT naming the flag at fault (and the hostfile line, for the hostfile).
absl::StatusOr<LaunchCommands> BuildLaunchCommands(const LaunchConfig& config);

// `args` as one shell line: each argument single-quoted when it holds anything but
// letters, digits and -_./:=@%+,.
std::string ShellJoin(const std::vector<std::string>& args);

// `tessera launch`. Returns the process exit code: non-zero when the coordinator failed or a
// replica kept failing to start (Supervision), and 128+N after signal N stopped the job.
int RunLaunch(const std::vector<std::string>& args, int* argc, char*** argv);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_LAUNCH_H_
