#include "tests/e2e/serve_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "httplib.h"
#include "launcher/process_tree.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace tessera::e2e {
namespace {

using ::tessera::launcher::ProcStat;
using ::tessera::launcher::ReadProcStat;
using ::tessera::launcher::ReadWholeFile;
using ::tessera::launcher::SameProcessAlive;

// argv[0] as a path: itself when it holds a '/', else its first match in PATH.
std::string ResolveProgram(const std::string& name) {
  if (absl::StrContains(name, '/')) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;
}

}  // namespace

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout, absl::Duration poll) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (condition()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(poll);
  }
}

bool ProcessAlive(pid_t pid) {
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat && stat->state != 'Z' && stat->state != 'X';
}

std::string Tail(const std::string& text, int lines) {
  size_t pos = text.size();
  if (pos > 0 && text[pos - 1] == '\n') --pos;
  for (int i = 0; i < lines && pos != std::string::npos && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
  }
  return pos == std::string::npos || pos == 0 ? text : text.substr(pos + 1);
}

// ---------------------------------------------------------------------------------------
// ChildProcess

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path,
    const std::vector<std::string>& env) {
  if (argv.empty()) return absl::InvalidArgumentError("ChildProcess: empty argv");
  // Everything the child needs is made before fork: between fork and exec a child of a
  // threaded process may only make async-signal-safe calls.
  const std::string program = ResolveProgram(argv[0]);
  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    absl::string_view setting = *entry;
    absl::string_view name = setting.substr(0, setting.find('='));
    bool overridden = false;
    for (const std::string& added : env) {
      overridden |= absl::StartsWith(added, absl::StrCat(name, "="));
    }
    if (!overridden) environment.emplace_back(setting);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> args, envp;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  for (const std::string& setting : environment) envp.push_back(const_cast<char*>(setting.c_str()));
  envp.push_back(nullptr);
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    setpgid(0, 0);
    // Dies with the test process (the thread that forked: the test's main thread).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execve(program.c_str(), args.data(), envp.data());
    static const char kFailed[] = "ChildProcess: exec failed\n";
    (void)!write(STDERR_FILENO, kFailed, sizeof(kFailed) - 1);
    _exit(127);
  }
  setpgid(pid, pid);  // also from this side, so a signal to the group cannot miss it
  close(log_fd);
  close(null_fd);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, log_path));
}

ChildProcess::~ChildProcess() { Stop(); }

std::string ChildProcess::Log() const { return ReadWholeFile(log_path_); }

bool ChildProcess::Running() { return !Wait(absl::ZeroDuration()).has_value(); }

std::optional<int> ChildProcess::Wait(absl::Duration timeout) {
  if (exit_status_) return exit_status_;
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_status_;
    }
    if (done < 0 && errno != EINTR) {
      exit_status_ = -1;  // not our child any more: nothing to wait for
      return exit_status_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

std::vector<pid_t> ChildProcess::Descendants() const { return launcher::DescendantsOf(pid_); }

void ChildProcess::RememberDescendants() {
  if (exit_status_) return;  // reaped: its children are no longer found through it
  for (pid_t pid : Descendants()) {
    if (std::optional<ProcStat> stat = ReadProcStat(pid)) descendants_[pid] = stat->start_time;
  }
}

void ChildProcess::KillAll() {
  RememberDescendants();
  if (!exit_status_) kill(pid_, SIGKILL);
  for (const auto& [pid, start_time] : descendants_) {
    if (SameProcessAlive(pid, start_time)) kill(pid, SIGKILL);
  }
}

void ChildProcess::Terminate() {
  RememberDescendants();
  if (exit_status_) return;
  kill(-pid_, SIGTERM);
  // mpirun relays SIGTERM to its ranks only after a delay; they stop sooner told directly.
  for (const auto& [pid, start_time] : descendants_) {
    if (SameProcessAlive(pid, start_time)) kill(pid, SIGTERM);
  }
}

void ChildProcess::Stop(absl::Duration grace) {
  if (!exit_status_) {
    Terminate();
    if (!Wait(grace)) {
      RememberDescendants();
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      Wait(absl::InfiniteDuration());
    }
  }
  // What it started may outlive it (an mpirun killed before its ranks): a short while to
  // exit on their own, then SIGKILL.
  auto any_alive = [this] {
    for (const auto& [pid, start_time] : descendants_) {
      if (SameProcessAlive(pid, start_time)) return true;
    }
    return false;
  };
  if (WaitFor([&] { return !any_alive(); }, std::min(grace, absl::Seconds(2)))) return;
  for (const auto& [pid, start_time] : descendants_) {
    if (SameProcessAlive(pid, start_time)) {
      kill(-pid, SIGKILL);  // harmless when it leads no group
      kill(pid, SIGKILL);
    }
  }
  WaitFor([&] { return !any_alive(); }, absl::Seconds(5));
}

// ---------------------------------------------------------------------------------------
// Metrics

MetricsSnapshot MetricsSnapshot::Parse(const std::string& text) {
  MetricsSnapshot snapshot;
  snapshot.text_ = text;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    Sample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    sample.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t equals = line.find('=', i);
        if (equals == absl::string_view::npos || equals + 1 >= line.size()) break;
        std::string name(absl::StripAsciiWhitespace(line.substr(i, equals - i)));
        std::string value;
        size_t j = equals + 2;  // past ="
        while (j < line.size() && line[j] != '"') {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value.push_back(line[j] == 'n' ? '\n' : line[j]);
          } else {
            value.push_back(line[j]);
          }
          ++j;
        }
        sample.labels[name] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // past '}'
    }
    absl::string_view rest = absl::StripAsciiWhitespace(line.substr(std::min(i, line.size())));
    std::string number(rest.substr(0, rest.find(' ')));
    char* end = nullptr;
    sample.value = std::strtod(number.c_str(), &end);
    if (end == number.c_str()) continue;
    snapshot.samples_.push_back(std::move(sample));
  }
  return snapshot;
}

namespace {

bool Matches(const MetricsSnapshot::Sample& sample, const std::string& name,
             const std::map<std::string, std::string>& labels) {
  if (sample.name != name) return false;
  for (const auto& [key, value] : labels) {
    auto found = sample.labels.find(key);
    if (found == sample.labels.end() || found->second != value) return false;
  }
  return true;
}

}  // namespace

double MetricsSnapshot::Sum(const std::string& name,
                            const std::map<std::string, std::string>& labels) const {
  double sum = 0;
  for (const Sample& sample : samples_) {
    if (Matches(sample, name, labels)) sum += sample.value;
  }
  return sum;
}

bool MetricsSnapshot::Has(const std::string& name,
                          const std::map<std::string, std::string>& labels) const {
  for (const Sample& sample : samples_) {
    if (Matches(sample, name, labels)) return true;
  }
  return false;
}

absl::StatusOr<MetricsSnapshot> ScrapeMetrics(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2, 0);
  client.set_read_timeout(5, 0);
  httplib::Result result = client.Get("/metrics");
  if (!result) {
    return absl::UnavailableError(absl::StrCat("GET http://127.0.0.1:", port,
                                               "/metrics: ", httplib::to_string(result.error())));
  }
  if (result->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET http://127.0.0.1:", port, "/metrics: HTTP ", result->status));
  }
  return MetricsSnapshot::Parse(result->body);
}

// ---------------------------------------------------------------------------------------
// CoordinatorProcess

std::string CoordinatorProcess::target() const { return absl::StrCat("127.0.0.1:", grpc_port_); }

absl::StatusOr<std::string> CoordinatorProcess::GroupIdOf(const std::string& endpoint) const {
  std::string id;
  for (absl::string_view line : absl::StrSplit(process_->Log(), '\n')) {
    if (!absl::StartsWith(line, "{")) continue;
    nlohmann::json event = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (event.is_discarded() || !event.is_object()) continue;
    if (event.value("event", "") == "group_registered" && event.value("endpoint", "") == endpoint) {
      id = event.value("group", "");
    }
  }
  if (id.empty()) {
    return absl::NotFoundError(absl::StrCat("no group registered from ", endpoint));
  }
  return id;
}

absl::Status CoordinatorProcess::WaitForHealthyGroups(const std::string& model,
                                                      const std::map<std::string, int>& healthy,
                                                      absl::Duration timeout) {
  std::string last;
  bool ready = WaitFor(
      [&] {
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
        if (!api_key_.empty()) context.AddMetadata("authorization", "Bearer " + api_key_);
        v1::ListModelsResponse models;
        grpc::Status status = inference_->ListModels(&context, v1::ListModelsRequest(), &models);
        if (!status.ok()) {
          last = status.error_message();
          return false;
        }
        last = models.ShortDebugString();
        for (const v1::ModelInfo& info : models.models()) {
          if (info.name() != model) continue;
          int matched = 0;
          for (const v1::ModelVersion& version : info.versions()) {
            auto wanted = healthy.find(version.version());
            if (wanted != healthy.end() && version.healthy_groups() == wanted->second) ++matched;
          }
          return matched == static_cast<int>(healthy.size());
        }
        return false;
      },
      timeout, absl::Milliseconds(100));
  if (ready) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat("the coordinator did not list ", model, " with the groups expected within ",
                   absl::FormatDuration(timeout), "; last ListModels: ", last));
}

// ---------------------------------------------------------------------------------------
// WorkerJob

absl::StatusOr<std::vector<std::string>> WorkerJob::WaitForLeaders(absl::Duration timeout) {
  const int replicas = options_.np / options_.tp;
  std::vector<std::string> endpoints(replicas);
  constexpr absl::string_view kPrefix = "tessera worker: replica ";
  bool exited = false;
  WaitFor(
      [&] {
        // Read the log before asking whether mpirun exited, so no line is missed.
        std::string log = process_->Log();
        exited = !process_->Running();
        int seen = 0;
        for (absl::string_view line : absl::StrSplit(log, '\n')) {
          size_t at = line.find(kPrefix);
          if (at == absl::string_view::npos) continue;
          line.remove_prefix(at + kPrefix.size());
          int replica = -1;
          size_t space = line.find(' ');
          size_t on = line.rfind(" on ");
          if (!absl::SimpleAtoi(line.substr(0, space), &replica) || replica < 0 ||
              replica >= replicas || on == absl::string_view::npos) {
            continue;
          }
          endpoints[replica] = std::string(absl::StripAsciiWhitespace(line.substr(on + 4)));
        }
        for (const std::string& endpoint : endpoints) seen += endpoint.empty() ? 0 : 1;
        return seen == replicas || exited;
      },
      timeout, absl::Milliseconds(50));
  for (const std::string& endpoint : endpoints) {
    if (!endpoint.empty()) continue;
    std::string message = absl::StrCat("worker leaders did not all start (",
                                       exited ? "mpirun exited first" : "timed out", "):\n",
                                       Tail(process_->Log(), 30));
    return exited ? absl::UnavailableError(message) : absl::DeadlineExceededError(message);
  }
  return endpoints;
}

absl::StatusOr<pid_t> WorkerJob::RankPid(int rank) const {
  std::optional<pid_t> pid = launcher::FindMpiRank(process_->Descendants(), rank);
  if (!pid.has_value()) {
    return absl::NotFoundError(
        absl::StrCat("no process of mpirun ", process_->pid(), " is MPI rank ", rank));
  }
  return *pid;
}

// ---------------------------------------------------------------------------------------
// ServeHarness

ServeHarness::ServeHarness(std::string tessera, std::vector<std::string> mpirun, std::string dir)
    : tessera_(std::move(tessera)), mpirun_(std::move(mpirun)), dir_(std::move(dir)) {}

std::vector<std::string> ServeHarness::ChildEnvironment() const {
  return {absl::StrCat("TESSERA_CACHE_DIR=", dir_, "/cache"), "OMPI_ALLOW_RUN_AS_ROOT=1",
          "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
}

std::string ServeHarness::NewLogPath(const std::string& stem) {
  return absl::StrCat(dir_, "/", next_log_++, "-", stem, ".log");
}

absl::StatusOr<std::unique_ptr<CoordinatorProcess>> ServeHarness::StartCoordinator(
    const std::vector<std::string>& flags, absl::Duration timeout) {
  std::vector<std::string> argv = {tessera_,      "coordinator",      "--listen",
                                   "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  std::unique_ptr<CoordinatorProcess> coordinator(new CoordinatorProcess());
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, NewLogPath("coordinator"), ChildEnvironment());
  if (!process.ok()) return process.status();
  coordinator->process_ = *std::move(process);
  ChildProcess& child = *coordinator->process_;
  // "tessera coordinator: gRPC on 127.0.0.1:PORT, metrics on http://127.0.0.1:PORT/metrics"
  constexpr absl::string_view kGrpc = "tessera coordinator: gRPC on ";
  constexpr absl::string_view kMetrics = ", metrics on http://";
  bool exited = false;
  bool started = WaitFor(
      [&] {
        std::string log = child.Log();
        exited = !child.Running();
        for (absl::string_view line : absl::StrSplit(log, '\n')) {
          size_t at = line.find(kGrpc);
          if (at == absl::string_view::npos) continue;
          line.remove_prefix(at + kGrpc.size());
          size_t comma = line.find(kMetrics);
          if (comma == absl::string_view::npos) continue;
          absl::string_view grpc_address = line.substr(0, comma);
          absl::string_view metrics_address = line.substr(comma + kMetrics.size());
          metrics_address = metrics_address.substr(0, metrics_address.find('/'));
          int grpc_port = 0, metrics_port = 0;
          if (absl::SimpleAtoi(grpc_address.substr(grpc_address.rfind(':') + 1), &grpc_port) &&
              absl::SimpleAtoi(metrics_address.substr(metrics_address.rfind(':') + 1),
                               &metrics_port) &&
              grpc_port > 0 && metrics_port > 0) {
            coordinator->grpc_port_ = grpc_port;
            coordinator->metrics_port_ = metrics_port;
            return true;
          }
        }
        return exited;
      },
      timeout, absl::Milliseconds(20));
  if (!started || coordinator->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("the coordinator did not print its ports (",
                                               exited ? "it exited" : "timed out", "):\n",
                                               Tail(child.Log(), 30)));
  }
  coordinator->channel_ =
      grpc::CreateChannel(coordinator->target(), grpc::InsecureChannelCredentials());
  coordinator->inference_ = v1::Inference::NewStub(coordinator->channel_);
  coordinator->health_ = grpc::health::v1::Health::NewStub(coordinator->channel_);
  return coordinator;
}

absl::StatusOr<std::unique_ptr<WorkerJob>> ServeHarness::StartWorkers(
    int coordinator_port, const WorkerJobOptions& options) {
  if (options.np < 1 || options.tp < 1 || options.np % options.tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("np ", options.np, " is not a multiple of tp ", options.tp));
  }
  std::vector<std::string> argv = mpirun_;
  argv.insert(argv.end(), {"-np", absl::StrCat(options.np), tessera_, "worker", "--coordinator",
                           absl::StrCat("127.0.0.1:", coordinator_port), "--tp",
                           absl::StrCat(options.tp), "--listen", "127.0.0.1:0", "--metrics-listen",
                           "127.0.0.1:0", "--kv-cache-memory", options.kv_cache_memory});
  if (!options.version.empty()) argv.insert(argv.end(), {"--version", options.version});
  if (!options.model_name.empty()) argv.insert(argv.end(), {"--model-name", options.model_name});
  if (!options.collective_timeout.empty()) {
    argv.insert(argv.end(), {"--timeout", options.collective_timeout});
  }
  argv.insert(argv.end(), options.extra_flags.begin(), options.extra_flags.end());
  std::unique_ptr<WorkerJob> job(new WorkerJob());
  job->options_ = options;
  std::string stem = absl::StrCat("workers-np", options.np, "-tp", options.tp,
                                  options.version.empty() ? "" : "-", options.version);
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, NewLogPath(stem), ChildEnvironment());
  if (!process.ok()) return process.status();
  job->process_ = *std::move(process);
  return job;
}

ServeHarness::Outcome ServeHarness::RunTessera(const std::vector<std::string>& args,
                                               absl::Duration timeout) {
  std::vector<std::string> argv = {tessera_};
  argv.insert(argv.end(), args.begin(), args.end());
  Outcome outcome;
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, NewLogPath("tessera"), ChildEnvironment());
  if (!process.ok()) {
    outcome.output = std::string(process.status().message());
    return outcome;
  }
  std::optional<int> code = (*process)->Wait(timeout);
  if (!code) (*process)->Stop(absl::Seconds(1));
  outcome.exit_code = code ? *code : (*process)->Wait(absl::ZeroDuration()).value_or(-1);
  outcome.output = (*process)->Log();
  return outcome;
}

}  // namespace tessera::e2e
