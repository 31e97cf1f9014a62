#include "launcher/serve.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "launcher/coordinator_process.h"
#include "launcher/engine_flags.h"
#include "launcher/process.h"
#include "launcher/shutdown_signal.h"
#include "runtime/core/status_macros.h"

namespace tessera::launcher {
namespace {

void PrintEndpoints(const char* who, const RunningCoordinator& running,
                    const CoordinatorConfig& config) {
  std::string host, unused;
  int port = 0;
  (void)serve::SplitHostPort(config.listen, "--listen", &host, &port);
  std::fprintf(stderr, "%s: gRPC on %s:%d", who, host.c_str(), running.grpc.port);
  if (running.metrics_server != nullptr) {
    std::fprintf(stderr, ", metrics on http://%s:%d/metrics",
                 config.metrics_listen.substr(0, config.metrics_listen.rfind(':')).c_str(),
                 running.metrics_server->port());
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
  int np = 2;
  int tp = 2;
  std::string model;
  std::string model_name;
  std::string mpirun = "mpirun";
  std::string mpirun_args;  // extra arguments, split on spaces
  absl::Duration timeout = absl::Seconds(10);
  absl::Duration ready_timeout = absl::Minutes(5);
  engine::EngineOptions engine;
};

// The worker job's command line: mpirun, its options for this machine, tessera worker.
std::vector<std::string> WorkerCommand(const ServeConfig& config, int coordinator_port) {
  std::vector<std::string> argv = {config.mpirun, "-np", absl::StrCat(config.np)};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  // More ranks than cores is fine for serving on a small machine; idle ranks then yield.
  if (config.np > static_cast<int>(std::thread::hardware_concurrency())) {
    argv.insert(argv.end(), {"--oversubscribe", "--mca", "mpi_yield_when_idle", "1"});
  }
  for (absl::string_view extra : absl::StrSplit(config.mpirun_args, ' ', absl::SkipEmpty())) {
    argv.emplace_back(extra);
  }
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  argv.insert(argv.end(),
              {self, "worker", "--coordinator", absl::StrCat("127.0.0.1:", coordinator_port),
               "--tp", absl::StrCat(config.tp), "--listen", "127.0.0.1:0", "--metrics-listen",
               "127.0.0.1:0", "--timeout", absl::FormatDuration(config.timeout),
               "--block-size", absl::StrCat(config.engine.block_size), "--kv-cache-memory",
               FormatBytes(config.engine.kv_cache_bytes), "--max-running",
               absl::StrCat(config.engine.max_running), "--max-step-tokens",
               absl::StrCat(config.engine.max_step_tokens), "--max-queued",
               absl::StrCat(config.engine.max_queued),
               config.engine.prefix_caching ? "--prefix-cache" : "--no-prefix-cache"});
  if (!config.model.empty()) argv.insert(argv.end(), {"--model", config.model});
  if (!config.model_name.empty()) argv.insert(argv.end(), {"--model-name", config.model_name});
  return argv;
}

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv) {
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // Its own process group: Ctrl-C reaches the parent, which stops the job in order.
    setpgid(0, 0);
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "tessera serve: cannot run %s\n", args[0]);
    _exit(127);
  }
  return pid;
}

// Waits up to `timeout` for `pid` to exit; its exit status, or nullopt if still running.
std::optional<int> WaitExit(pid_t pid, absl::Duration timeout) {
  absl::Time until = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (absl::Now() >= until) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::Status Serve(const ServeConfig& config) {
  if (config.np < 1 || config.tp < 1 || config.np % config.tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--np ", config.np, " must be a multiple of --tp ", config.tp));
  }
  InstallShutdownHandlers();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<RunningCoordinator> running,
                           StartCoordinator(config.coordinator));
  std::vector<std::string> command = WorkerCommand(config, running->grpc.port);
  std::fprintf(stderr, "tessera serve: starting %d worker group(s): %s\n", config.np / config.tp,
               absl::StrJoin(command, " ").c_str());
  TESSERA_ASSIGN_OR_RETURN(pid_t workers, Spawn(command));

  auto stop_workers = [&] {
    kill(-workers, SIGTERM);
    if (WaitExit(workers, absl::Seconds(15))) return;
    kill(-workers, SIGKILL);
    WaitExit(workers, absl::InfiniteDuration());
  };
  const int groups = config.np / config.tp;
  absl::Time deadline = absl::Now() + config.ready_timeout;
  bool ready = false;
  while (!ready) {
    if (std::optional<int> code = WaitExit(workers, absl::Milliseconds(100))) {
      return absl::UnavailableError(
          absl::StrCat("the workers exited (status ", *code, ") before serving"));
    }
    if (ShutdownRequested()) {
      stop_workers();
      return absl::OkStatus();
    }
    if (absl::Now() > deadline) {
      stop_workers();
      return absl::DeadlineExceededError(absl::StrCat(
          "the workers did not all register within ", absl::FormatDuration(config.ready_timeout)));
    }
    ready = running->coordinator->HealthyGroupCount() >= groups;
  }
  PrintEndpoints("tessera serve: ready", *running, config.coordinator);
  std::printf("tessera serve: serving on 127.0.0.1:%d (%d group(s) of tp %d); Ctrl-C stops\n",
              running->grpc.port, groups, config.tp);
  std::fflush(stdout);
  std::optional<int> exited;
  while (!ShutdownRequested() && !(exited = WaitExit(workers, absl::Milliseconds(100)))) {
  }
  if (exited) {
    return absl::UnavailableError(absl::StrCat("the workers exited (status ", *exited, ")"));
  }
  std::fprintf(stderr, "tessera serve: shutting down\n");
  stop_workers();
  return absl::OkStatus();
}

}  // namespace

int RunCoordinator(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  CoordinatorConfig config;
  FlagSet flags("tessera coordinator",
                "The coordinator: the gRPC client API in front of the worker groups that "
                "register with it (tessera worker --coordinator HOST:PORT).");
  AddCoordinatorFlags(flags, &config);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(Coordinate(config));
}

int RunServe(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  ServeConfig config;
  config.coordinator.listen = "127.0.0.1:50051";
  config.coordinator.metrics_listen = "127.0.0.1:9400";
  FlagSet flags("tessera serve",
                "Serves a model on this machine: the coordinator, and mpirun with --np worker "
                "ranks in groups of --tp (defaults: CPU backend, 2 ranks, TP 2, the built-in "
                "model). Prints the endpoint when every group is healthy; Ctrl-C stops all.");
  AddCoordinatorFlags(flags, &config.coordinator);
  flags.Int("np", &config.np, "worker ranks");
  flags.Int("tp", &config.tp, "tensor-parallel degree of each group");
  flags.String("model", &config.model, "Hugging Face model directory (default: built-in)");
  flags.String("model-name", &config.model_name, "the name clients ask for");
  flags.String("mpirun", &config.mpirun, "the mpirun to start the workers with");
  flags.String("mpirun-args", &config.mpirun_args, "extra mpirun arguments");
  flags.Duration("timeout", &config.timeout, "deadline of each collective in the workers");
  flags.Duration("ready-timeout", &config.ready_timeout,
                 "how long the workers may take to load and register");
  config.engine.kv_cache_bytes = int64_t{256} << 20;
  AddEngineFlags(flags, &config.engine);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(Serve(config));
}

}  // namespace tessera::launcher
