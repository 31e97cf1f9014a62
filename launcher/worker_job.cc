#include "launcher/worker_job.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "comm/node_share.h"
#include "launcher/engine_flags.h"
#include "launcher/process_tree.h"
#include "launcher/shutdown_signal.h"
#include "runtime/core/status_macros.h"
#include "runtime/model/weight_quantization.h"

namespace tessera::launcher {

void AddSupervisionFlags(FlagSet& flags, Supervision* supervision) {
  flags.Duration("restart-backoff", &supervision->restart_backoff,
                 "wait before a group whose job exited is started again (doubling, up to "
                 "30 s, while it keeps failing to start)");
  flags.Int("max-failed-starts", &supervision->max_failed_starts,
            "starts in a row of one group that exit before it serves, before serving stops");
}

absl::Status CheckSupervision(const Supervision& supervision) {
  if (supervision.max_failed_starts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-failed-starts: must be >= 1, not ", supervision.max_failed_starts));
  }
  if (supervision.restart_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--restart-backoff: must not be negative");
  }
  return absl::OkStatus();
}

void AddWorkerJobFlags(FlagSet& flags, WorkerJobConfig* config) {
  flags.Int("np", &config->np, "worker ranks");
  flags.Int("tp", &config->tp, "tensor-parallel degree of each group");
  flags.String("model", &config->model,
               "Hugging Face model directory or GGUF file (default: built-in)");
  flags.String("model-name", &config->model_name, "the name clients ask for");
  AddDeviceFlag(flags, &config->device);
  AddQuantizeFlags(flags, &config->quantize);
  AddKvCacheDtypeFlag(flags, &config->kv_cache_dtype);
  AddKvCacheMemoryFractionFlag(flags, &config->kv_cache_memory_fraction);
  flags.String("mpirun", &config->mpirun, "the mpirun to start the workers with");
  flags.String("mpirun-args", &config->mpirun_args, "extra mpirun arguments");
  flags.Duration("timeout", &config->timeout, "deadline of each collective in the workers");
  flags.Duration("ready-timeout", &config->ready_timeout,
                 "how long the workers may take to load and register");
  AddSupervisionFlags(flags, &config->supervision);
  AddEngineFlags(flags, &config->engine);
  AddAdapterFlags(flags, &config->adapters, &config->engine);
  flags.String("train-config", &config->train_config,
               "a JSON file of a LoRA fine-tune run inside the first worker group between its "
               "serving steps, its adapter served as it learns (tessera worker --train-config)");
  flags.Int("train-groups", &config->train_groups,
            "groups a fine-tune is data-parallel over, --train-config's or one that "
            "StartTraining starts (the first ones; they run as one mpirun job, so a rank lost "
            "in one restarts them all, and the fine-tune resumes from its last checkpoint)");
  AddTrainScheduleFlags(flags, &config->engine);
}

absl::Status CheckWorkerJobConfig(const WorkerJobConfig& config) {
  if (config.np < 1 || config.tp < 1 || config.np % config.tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--np ", config.np, " must be a multiple of --tp ", config.tp));
  }
  TESSERA_RETURN_IF_ERROR(CheckSupervision(config.supervision));
  if (config.train_groups < 1 || config.train_groups > config.groups()) {
    return absl::InvalidArgumentError(absl::StrCat("--train-groups ", config.train_groups,
                                                   ": must be between 1 and the ", config.groups(),
                                                   " group(s) of --np / --tp"));
  }
  TESSERA_RETURN_IF_ERROR(ParseAdapterList(config.adapters).status());
  TESSERA_RETURN_IF_ERROR(CheckTrainScheduleFlags(config.engine));
  TESSERA_RETURN_IF_ERROR(ParseQuantizeFlags(config.quantize).status());
  TESSERA_RETURN_IF_ERROR(ParseKvCacheDtypeFlag(config.kv_cache_dtype).status());
  absl::StatusOr<DeviceType> device = ParseDeviceFlag(config.device);
  if (!device.ok()) return device.status();
  if (*device == DeviceType::kCuda) {
    return CheckKvCacheMemoryFraction(config.kv_cache_memory_fraction);
  }
  return absl::OkStatus();
}

std::vector<JobGroups> LocalJobs(const WorkerJobConfig& config) {
  const int together = std::max(1, config.train_groups);
  std::vector<JobGroups> jobs = {{.first_replica = 0, .groups = together}};
  for (int r = together; r < config.groups(); ++r) {
    jobs.push_back({.first_replica = r, .groups = 1});
  }
  return jobs;
}

std::vector<std::string> WorkerCommand(const WorkerJobConfig& config, int coordinator_port,
                                       JobGroups job) {
  const int replica = job.first_replica;
  std::vector<std::string> argv = {config.mpirun, "-np", absl::StrCat(job.groups * config.tp)};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  // More ranks than cores is fine for serving on a small machine; idle ranks then yield.
  if (config.np > static_cast<int>(std::thread::hardware_concurrency())) {
    argv.insert(argv.end(), {"--oversubscribe", "--mca", "mpi_yield_when_idle", "1"});
  }
  // Each job would bind its ranks to the same first cores, and take the same first GPUs, not
  // knowing of the others: no binding, and each job told where its slots start
  // (comm/node_share.h).
  if (job.groups < config.groups()) {
    argv.insert(argv.end(), {"--bind-to", "none", "-x",
                             absl::StrCat(comm::kNodeFirstSlotVariable, "=", replica * config.tp),
                             "-x", absl::StrCat(comm::kNodeRanksVariable, "=", config.np)});
  }
  if (config.forward_join_token) argv.insert(argv.end(), {"-x", "TESSERA_JOIN_TOKEN"});
  for (absl::string_view extra : absl::StrSplit(config.mpirun_args, ' ', absl::SkipEmpty())) {
    argv.emplace_back(extra);
  }
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // Kept as flag-value pairs, which clang-format would put one a line.
  // clang-format off
  argv.insert(argv.end(),
              {self, "worker", "--coordinator", absl::StrCat("127.0.0.1:", coordinator_port),
               "--tp", absl::StrCat(config.tp), "--listen", "127.0.0.1:0", "--metrics-listen",
               "127.0.0.1:0", "--replica-offset", absl::StrCat(replica),
               "--timeout", absl::FormatDuration(config.timeout),
               "--block-size", absl::StrCat(config.engine.block_size), "--kv-cache-memory",
               FormatBytes(config.engine.kv_cache_bytes), "--max-running",
               absl::StrCat(config.engine.max_running), "--max-step-tokens",
               absl::StrCat(config.engine.max_step_tokens), "--max-queued",
               absl::StrCat(config.engine.max_queued),
               config.engine.prefix_caching ? "--prefix-cache" : "--no-prefix-cache"});
  // clang-format on
  if (!config.model.empty()) argv.insert(argv.end(), {"--model", config.model});
  if (!config.model_name.empty()) argv.insert(argv.end(), {"--model-name", config.model_name});
  if (!config.adapters.empty()) argv.insert(argv.end(), {"--adapters", config.adapters});
  if (config.engine.max_adapters > 0) {
    argv.insert(argv.end(), {"--max-adapters", absl::StrCat(config.engine.max_adapters)});
  }
  if (!config.train_config.empty() && replica == 0) {
    argv.insert(argv.end(), {"--train-config", config.train_config});
  }
  // Every group: StartTraining may start a fine-tune on any.
  const std::vector<std::string> schedule = TrainScheduleArguments(config.engine);
  argv.insert(argv.end(), schedule.begin(), schedule.end());
  const std::vector<std::string> quantize = QuantizeArguments(config.quantize);
  argv.insert(argv.end(), quantize.begin(), quantize.end());
  if (config.kv_cache_dtype != "auto") {
    argv.insert(argv.end(), {"--kv-cache-dtype", config.kv_cache_dtype});
  }
  if (config.device != "cpu") {
    argv.insert(argv.end(), {"--device", config.device, "--kv-cache-memory-fraction",
                             absl::StrCat(config.kv_cache_memory_fraction)});
  }
  argv.insert(argv.end(), config.worker_args.begin(), config.worker_args.end());
  return argv;
}

absl::StatusOr<std::unique_ptr<WorkerJob>> WorkerJob::Start(const std::vector<std::string>& argv,
                                                            const std::string& who) {
  // Everything the child needs is made before fork: it only calls async-signal-safe functions.
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::string cannot_run = absl::StrCat(who, ": cannot run ", argv.empty() ? "" : argv[0], "\n");
  const pid_t parent = getpid();
  // mpirun forwards its stdin to rank 0: from a background process group reading the
  // terminal would stop it.
  const int null_input = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) {
    if (null_input >= 0) close(null_input);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    // Its own process group: Ctrl-C reaches the parent, which stops the job in order.
    setpgid(0, 0);
    if (null_input >= 0) dup2(null_input, STDIN_FILENO);
    // The parent may block SIGINT and SIGTERM to wait for them; the job must receive them.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    // A parent killed without stopping the job (SIGKILL) still takes mpirun, and so the
    // workers, with it.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    execvp(args[0], args.data());
    ssize_t ignored = write(STDERR_FILENO, cannot_run.data(), cannot_run.size());
    (void)ignored;
    _exit(127);
  }
  if (null_input >= 0) close(null_input);
  return std::unique_ptr<WorkerJob>(new WorkerJob(pid));
}

WorkerJob::~WorkerJob() { Stop(); }

std::optional<int> WorkerJob::WaitExit(absl::Duration timeout) {
  if (exit_status_) return exit_status_;
  absl::Time until = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_status_;
    }
    if (absl::Now() >= until) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

void WorkerJob::RememberRanks() {
  if (exit_status_) return;  // reaped: its ranks are no longer found through it
  for (pid_t pid : DescendantsOf(pid_)) {
    if (std::optional<ProcStat> stat = ReadProcStat(pid)) ranks_[pid] = stat->start_time;
  }
}

void WorkerJob::Terminate() {
  RememberRanks();
  if (!exit_status_) kill(-pid_, SIGTERM);
}

void WorkerJob::Stop() {
  RememberRanks();
  if (!exit_status_) {
    kill(-pid_, SIGTERM);
    if (!WaitExit(absl::Seconds(15))) {
      kill(-pid_, SIGKILL);
      WaitExit(absl::InfiniteDuration());
    }
  }
  // mpirun may be gone before its ranks (they run in process groups of their own): the job
  // has stopped once they have too.
  absl::Time until = absl::Now() + absl::Seconds(15);
  for (const auto& [pid, start_time] : ranks_) {
    while (SameProcessAlive(pid, start_time) && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    if (SameProcessAlive(pid, start_time)) kill(pid, SIGKILL);
  }
  ranks_.clear();
}

}  // namespace tessera::launcher
