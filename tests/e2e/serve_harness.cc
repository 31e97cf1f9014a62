#include "tests/e2e/serve_harness.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
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
#include "launcher/process_tree.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"

namespace tessera::e2e {
namespace {

using ::tessera::launcher::ProcStat;
using ::tessera::launcher::ReadProcStat;

}  // namespace

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
  // The HTTP API's default port would collide between coordinators: off unless asked for.
  if (std::find(flags.begin(), flags.end(), "--http-listen") == flags.end()) {
    argv.insert(argv.end(), {"--http-listen", "off"});
  }
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
            // ", OpenAI API on http://HOST:PORT/v1" (https with a certificate).
            constexpr absl::string_view kHttp = ", OpenAI API on ";
            if (size_t http = line.find(kHttp); http != absl::string_view::npos) {
              absl::string_view address = line.substr(http + kHttp.size());
              address = address.substr(address.find("://") + 3);
              address = address.substr(0, address.find('/'));
              (void)absl::SimpleAtoi(address.substr(address.rfind(':') + 1),
                                     &coordinator->http_port_);
            }
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
  std::vector<std::string> environment = ChildEnvironment();
  environment.insert(environment.end(), options.environment.begin(), options.environment.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> process =
      ChildProcess::Start(argv, NewLogPath(stem), environment);
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

absl::StatusOr<ServingGroup> StartServingGroup(ServeHarness& harness,
                                               CoordinatorProcess& coordinator,
                                               const WorkerJobOptions& job,
                                               const std::string& model, absl::Duration timeout) {
  if (job.np != job.tp) {
    return absl::InvalidArgumentError(
        absl::StrCat("StartServingGroup: np ", job.np, " and tp ", job.tp, " are not one group"));
  }
  ServingGroup serving;
  TESSERA_ASSIGN_OR_RETURN(serving.workers, harness.StartWorkers(coordinator.grpc_port(), job));
  const auto failed = [&](absl::string_view waiting, const absl::Status& status) {
    return absl::Status(status.code(),
                        absl::StrCat(waiting, ": ", status.message(), "\n",
                                     SuiteLogs(&coordinator, serving.workers.get())));
  };
  absl::StatusOr<std::vector<std::string>> leaders = serving.workers->WaitForLeaders(timeout);
  if (!leaders.ok()) return failed("waiting for the leader", leaders.status());
  absl::Status healthy = coordinator.WaitForHealthyGroups(model, {{"v1", 1}}, timeout);
  if (!healthy.ok()) return failed("waiting for the group to be healthy", healthy);
  absl::StatusOr<std::string> group = coordinator.GroupIdOf(leaders->at(0));
  if (!group.ok()) return failed("the group's id", group.status());
  serving.group = *std::move(group);
  return serving;
}

std::string SuiteLogs(CoordinatorProcess* coordinator, WorkerJob* workers) {
  std::string text;
  if (coordinator != nullptr) {
    absl::StrAppend(&text, "--- coordinator:\n", Tail(coordinator->process().Log(), 40), "\n");
  }
  if (workers != nullptr) {
    absl::StrAppend(&text, "--- workers:\n", Tail(workers->process().Log(), 40), "\n");
  }
  return text;
}

void EndSuite(const char* suite, bool failed, std::unique_ptr<WorkerJob>& workers,
              std::unique_ptr<CoordinatorProcess>& coordinator,
              std::unique_ptr<ServeHarness>& harness, const std::string& dir) {
  if (workers != nullptr) workers->process().Stop(absl::Seconds(10));
  workers.reset();
  if (coordinator != nullptr) coordinator->process().Stop(absl::Seconds(5));
  coordinator.reset();
  harness.reset();
  if (failed) {
    std::fprintf(stderr, "%s: logs kept in %s\n", suite, dir.c_str());
  } else {
    std::filesystem::remove_all(dir);
  }
}

}  // namespace tessera::e2e
