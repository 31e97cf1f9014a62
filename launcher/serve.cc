#include "launcher/serve.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "launcher/coordinator_process.h"
#include "launcher/process.h"
#include "launcher/request_limit_flags.h"
#include "launcher/shutdown_signal.h"
#include "launcher/tls_flags.h"
#include "launcher/worker_groups.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"

namespace tessera::launcher {
namespace {

void PrintEndpoints(const char* who, const RunningCoordinator& running,
                    const CoordinatorConfig& config) {
  // Both addresses parsed when the servers started; here only their hosts are wanted.
  std::string host;
  int unused_port = 0;
  (void)serve::SplitHostPort(config.listen, "--listen", &host, &unused_port);
  std::fprintf(stderr, "%s: gRPC on %s:%d", who, host.c_str(), running.grpc.port);
  if (running.worker_grpc.server != nullptr) {
    (void)serve::SplitHostPort(config.worker_listen, "--worker-listen", &host, &unused_port);
    std::fprintf(stderr, ", workers register on %s:%d", host.c_str(), running.worker_grpc.port);
  }
  if (running.metrics_server != nullptr) {
    (void)serve::SplitHostPort(config.metrics_listen, "--metrics-listen", &host, &unused_port);
    std::fprintf(stderr, ", metrics on http://%s:%d/metrics", host.c_str(),
                 running.metrics_server->port());
  }
  if (running.http_server != nullptr) {
    (void)serve::SplitHostPort(config.http_listen, "--http-listen", &host, &unused_port);
    std::fprintf(stderr, ", OpenAI API on %s://%s:%d/v1",
                 config.tls.cert.empty() ? "http" : "https", host.c_str(),
                 running.http_server->port());
  }
  std::fprintf(stderr, "\n");
}

absl::Status Coordinate(const CoordinatorConfig& config) {
  InstallShutdownHandlers();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<RunningCoordinator> running, StartCoordinator(config));
  PrintEndpoints("tessera coordinator", *running, config);
  while (!WaitForShutdown(absl::Hours(1))) {
  }
  std::fprintf(stderr, "tessera coordinator: shutting down\n");
  return absl::OkStatus();
}

struct ServeConfig {
  CoordinatorConfig coordinator;
  WorkerJobConfig workers;
};

absl::Status Serve(const ServeConfig& config) {
  TESSERA_RETURN_IF_ERROR(CheckWorkerJobConfig(config.workers));
  InstallShutdownHandlers();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<RunningCoordinator> running,
                           StartCoordinator(config.coordinator));
  TESSERA_ASSIGN_OR_RETURN(
      serve::CounterFamily * restarts,
      running->metrics->AddCounter("tessera_worker_restarts_total",
                                   "Times tessera serve started a replica's worker job again "
                                   "after it exited.",
                                   {"replica"}));
  const int groups = config.workers.groups();
  WorkerJobConfig worker_config = config.workers;
  // The workers use this machine's TLS files: its certificate for their listeners (and as a
  // client certificate), its CA to check the coordinator.
  const std::vector<std::string> tls = TlsFlagArguments(config.coordinator.tls);
  worker_config.worker_args.insert(worker_config.worker_args.end(), tls.begin(), tls.end());
  const std::vector<std::string> limits = RequestLimitArguments(config.coordinator.request_limits);
  worker_config.worker_args.insert(worker_config.worker_args.end(), limits.begin(), limits.end());
  if (!running->join_token.empty()) {
    // The workers register with the token; it reaches them through the environment.
    setenv("TESSERA_JOIN_TOKEN", running->join_token.c_str(), /*overwrite=*/1);
    worker_config.forward_join_token = true;
  }
  TESSERA_ASSIGN_OR_RETURN(
      std::unique_ptr<WorkerGroups> workers,
      WorkerGroups::StartLocal(worker_config, running->registry_port(), *running->coordinator,
                               restarts, "tessera serve"));
  TESSERA_ASSIGN_OR_RETURN(bool ready, workers->WaitUntilHealthy(config.workers.ready_timeout));
  if (!ready) return absl::OkStatus();  // Ctrl-C while starting
  PrintEndpoints("tessera serve: ready", *running, config.coordinator);
  std::printf("tessera serve: serving on 127.0.0.1:%d (%d group(s) of tp %d); Ctrl-C stops\n",
              running->grpc.port, groups, config.workers.tp);
  std::fflush(stdout);
  // A group whose job exits is started again; the coordinator and the other groups serve on.
  while (!WaitForShutdown(absl::Milliseconds(100))) {
    if (absl::Status supervised = workers->Supervise(); !supervised.ok()) return supervised;
  }
  std::fprintf(stderr, "tessera serve: shutting down\n");
  workers->Stop();
  return absl::OkStatus();
}

// Without --model, the real model deploy/setup.sh put in the cache, when it is there (else
// the workers make the built-in random one). Its 9 heads take TP 1 unless --tp says otherwise.
void UseServeDefaultModel(const std::vector<std::string>& args, WorkerJobConfig& workers) {
  std::optional<std::string> model = model::CachedServeDefaultModel();
  if (!model.has_value()) return;
  workers.model = *model;
  const bool tp_given = std::any_of(args.begin(), args.end(), [](const std::string& arg) {
    return arg == "--tp" || absl::StartsWith(arg, "--tp=");
  });
  if (!tp_given) workers.tp = 1;
  std::fprintf(stderr, "tessera serve: no --model given: serving %s from the cache (%s), TP %d\n",
               model::kServeDefaultModelFile, model->c_str(), workers.tp);
}

}  // namespace

int RunCoordinator(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  CoordinatorConfig config;
  FlagSet flags("tessera coordinator",
                "The coordinator: the gRPC client API in front of the worker groups that "
                "register with it (tessera worker --coordinator HOST:PORT).");
  AddCoordinatorFlags(flags, &config);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  ConfigureCoordinatorProcess();
  return ReportExit(Coordinate(config));
}

int RunServe(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  ServeConfig config;
  FlagSet flags("tessera serve",
                "Serves a model on this machine: the coordinator, and --np worker ranks in "
                "groups of --tp, one mpirun job per group (defaults: CPU backend, 2 ranks, TP "
                "2, the built-in model). A group whose rank fails ends alone: its requests "
                "continue on the others, and its job is started again. Prints the endpoint "
                "when every group is healthy; Ctrl-C stops all.");
  AddCoordinatorFlags(flags, &config.coordinator);
  config.workers.engine.kv_cache_bytes = int64_t{256} << 20;
  AddWorkerJobFlags(flags, &config.workers);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  if (config.workers.model.empty()) UseServeDefaultModel(args, config.workers);
  ConfigureCoordinatorProcess();
  return ReportExit(Serve(config));
}

}  // namespace tessera::launcher
