#include "launcher/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/node_share.h"
#include "launcher/flags.h"
#include "launcher/numa_placement.h"
#include "launcher/process.h"
#include "launcher/tls_flags.h"
#include "launcher/worker_job.h"
#include "runtime/core/status_macros.h"
#include "runtime/serve/grpc_server.h"

namespace tessera::launcher {
namespace {

constexpr int kDefaultCoordinatorPort = 50051;

// Tessera's own settings (README) that hold for every rank and so travel with the job.
// TESSERA_HOSTNAME names one node and must not.
constexpr const char* kForwardedTesseraSettings[] = {
    "TESSERA_COMM_TIMEOUT", "TESSERA_COMM_VALIDATE",       "TESSERA_CPU_THREADS",
    "TESSERA_CACHE_DIR",    "TESSERA_ALLREDUCE_ALGORITHM",
};

bool IsEnvName(absl::string_view name) {
  if (name.empty() || absl::ascii_isdigit(name[0])) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '_'; });
}

// "HOST:PORT" or "[V6]:PORT" -> the port, which must be a real one (not 0).
absl::StatusOr<int> PortOf(const std::string& address) {
  std::string host;
  int port = 0;
  if (!serve::SplitHostPort(address, "--coordinator", &host, &port).ok() || port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--coordinator: '", address, "' is not HOST:PORT (example: node-a:50051)"));
  }
  return port;
}

// How many ranks each hostfile entry runs (in `ranks`, by host), checking that
// tensor-parallel groups stay inside nodes. Without --ranks-per-node each host's slots are
// filled in hostfile order; with it, every host runs that many until --np is reached.
absl::Status CheckLayout(const LaunchConfig& config, const std::vector<HostSlots>& hosts, int* np,
                         std::vector<int>* ranks) {
  const int tp = config.tp;
  int capacity = 0;
  if (config.ranks_per_node > 0) {
    if (config.ranks_per_node % tp != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tp ", tp, " does not divide --ranks-per-node ", config.ranks_per_node,
                       ": a tensor-parallel group must stay within one node"));
    }
    for (const HostSlots& host : hosts) {
      if (host.slots < config.ranks_per_node) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--ranks-per-node ", config.ranks_per_node, ": host '", host.host, "' (",
            config.hostfile, " line ", host.line, ") has only ", host.slots, " slots"));
      }
    }
    capacity = config.ranks_per_node * static_cast<int>(hosts.size());
  } else {
    for (const HostSlots& host : hosts) capacity += host.slots;
  }
  *np = config.np > 0 ? config.np : capacity;
  if (*np > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("--np ", *np, ": ", config.hostfile, " has room for ", capacity, " ranks",
                     config.ranks_per_node > 0 ? " at --ranks-per-node " : "",
                     config.ranks_per_node > 0 ? absl::StrCat(config.ranks_per_node) : ""));
  }
  int remaining = *np;
  ranks->clear();
  for (const HostSlots& host : hosts) {
    int on_host =
        std::min(config.ranks_per_node > 0 ? config.ranks_per_node : host.slots, remaining);
    remaining -= on_host;
    ranks->push_back(on_host);
    if (config.ranks_per_node == 0 && on_host % tp != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tp ", tp, ": host '", host.host, "' (", config.hostfile, " line ", host.line,
          ") would run ", on_host, " ranks, which ", tp,
          " does not divide; a tensor-parallel group must stay within one node (give each "
          "host a multiple of ",
          tp, " slots, or set --ranks-per-node)"));
    }
  }
  // With --ranks-per-node a multiple of tp, every node holds whole groups when np does.
  if (*np % tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", tp, " does not divide --np ", *np, " (ranks come in whole groups)"));
  }
  return absl::OkStatus();
}

// The -x options of mpirun: what each rank's environment gets beyond what the node gives.
absl::StatusOr<std::vector<std::string>> Exports(const LaunchConfig& config) {
  std::set<std::string> named;  // names the user set with --env
  for (const std::string& entry : config.env) {
    std::string name = entry.substr(0, entry.find('='));
    if (!IsEnvName(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--env: '", entry, "' is not NAME=VALUE (or NAME, to forward its value)"));
    }
    named.insert(name);
  }
  std::set<std::string> here(config.environment_names.begin(), config.environment_names.end());
  auto unset = [&](const std::string& name) { return !named.count(name) && !here.count(name); };

  std::vector<std::string> exports;
  // Open MPI starts remote ranks with the environment of the node, not of this shell: the
  // settings the user made here travel by name ("-x NAME" copies this process's value).
  for (const std::string& name : here) {
    if (named.count(name)) continue;
    bool nccl = config.backend == "nccl" && absl::StartsWith(name, "NCCL_");
    bool tessera = std::find_if(std::begin(kForwardedTesseraSettings),
                                std::end(kForwardedTesseraSettings), [&](const char* setting) {
                                  return name == setting;
                                }) != std::end(kForwardedTesseraSettings);
    if (nccl || tessera) exports.push_back(name);
  }
  if (config.backend == "nccl" && unset("NCCL_DEBUG")) {
    // NCCL is silent about failures (a bad transport, a lost peer) unless asked; WARN puts
    // the reason beside Tessera's own error without the INFO chatter. Nothing else is set:
    // tensor-parallel groups stay inside a node, so NCCL moves data over NVLink or PCIe and
    // its choice of network (NCCL_IB_*, NCCL_SOCKET_IFNAME) is left to the site, which
    // reaches the ranks through the forwarding above or --env.
    exports.push_back("NCCL_DEBUG=WARN");
  }
  if (config.bind_to == "core" && unset("TESSERA_CPU_THREADS")) {
    // Bound to k cores, a rank must not start threads for the whole node's cores.
    exports.push_back(absl::StrCat("TESSERA_CPU_THREADS=", config.cores_per_rank));
  }
  for (const std::string& entry : config.env) exports.push_back(entry);
  return exports;
}

}  // namespace

absl::StatusOr<std::vector<HostSlots>> ParseHostfile(absl::string_view text,
                                                     absl::string_view file_name) {
  std::vector<HostSlots> hosts;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_name, " line ", line_number, ": ", what, " (expected 'HOST slots=N')"));
    };
    if (absl::StrContains(words[0], '=')) {
      return error(absl::StrCat("'", words[0], "' is not a host name"));
    }
    int slots = 0;
    for (size_t i = 1; i < words.size(); ++i) {
      std::pair<absl::string_view, absl::string_view> key_value =
          absl::StrSplit(words[i], absl::MaxSplits('=', 1));
      int value = 0;
      if (!absl::StrContains(words[i], '=') || !absl::SimpleAtoi(key_value.second, &value) ||
          value < 1) {
        return error(absl::StrCat("'", words[i], "' is not KEY=N with N a positive integer"));
      }
      if (key_value.first == "slots") {
        slots = value;
      } else if (key_value.first != "max_slots" && key_value.first != "max-slots") {
        return error(absl::StrCat("unknown key '", key_value.first, "'"));
      }
    }
    if (slots == 0) return error(absl::StrCat("host '", words[0], "' has no slots=N"));
    auto same = std::find_if(hosts.begin(), hosts.end(),
                             [&](const HostSlots& host) { return host.host == words[0]; });
    if (same != hosts.end()) {
      same->slots += slots;
    } else {
      hosts.push_back({std::string(words[0]), slots, line_number});
    }
  }
  if (hosts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_name, " lists no host (expected lines 'HOST slots=N')"));
  }
  return hosts;
}

absl::StatusOr<LaunchCommands> BuildLaunchCommands(const LaunchConfig& config) {
  if (config.hostfile.empty()) {
    return absl::InvalidArgumentError(
        "--hostfile: required (an Open MPI hostfile, one 'HOST slots=N' line per node)");
  }
  std::ifstream file(config.hostfile);
  std::error_code error;
  if (!file || std::filesystem::is_directory(config.hostfile, error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--hostfile: cannot read '", config.hostfile, "'"));
  }
  std::stringstream text;
  text << file.rdbuf();
  absl::StatusOr<std::vector<HostSlots>> hosts = ParseHostfile(text.str(), config.hostfile);
  if (!hosts.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--hostfile ", hosts.status().message()));
  }
  if (config.tp < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tp: must be at least 1, got ", config.tp));
  }
  if (config.np < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--np: must be positive (or 0: every slot), got ", config.np));
  }
  if (config.ranks_per_node < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ranks-per-node: must be positive (or 0: the hostfile's slots), got ",
                     config.ranks_per_node));
  }
  if (config.bind_to != "core" && config.bind_to != "numa" && config.bind_to != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--bind-to: '", config.bind_to, "' is not core, numa or none"));
  }
  if (config.cores_per_rank < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cores-per-rank: must be at least 1, got ", config.cores_per_rank));
  }
  if (config.backend != "cpu" && config.backend != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend: '", config.backend, "' is not cpu or nccl"));
  }
  if (config.mpirun.empty()) return absl::InvalidArgumentError("--mpirun: empty");
  if (config.tessera.empty()) return absl::InvalidArgumentError("--tessera: empty");
  TESSERA_RETURN_IF_ERROR(CheckSupervision(config.supervision));

  LaunchCommands commands;
  std::vector<int> ranks_on_host;
  TESSERA_RETURN_IF_ERROR(CheckLayout(config, *hosts, &commands.np, &ranks_on_host));

  std::string coordinator = config.coordinator;
  if (coordinator.empty()) {
    if (config.local_host.empty()) {
      return absl::InvalidArgumentError("--coordinator: required (this host's name is unknown)");
    }
    coordinator = absl::StrCat(config.local_host, ":", kDefaultCoordinatorPort);
  }
  TESSERA_ASSIGN_OR_RETURN(commands.coordinator_port, PortOf(coordinator));
  TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> exports, Exports(config));

  if (config.start_coordinator) {
    commands.coordinator = {
        config.coordinator_binary.empty() ? std::string("tessera") : config.coordinator_binary,
        "coordinator", "--listen", absl::StrCat("0.0.0.0:", commands.coordinator_port)};
    if (!config.coordinator_metrics_listen.empty()) {
      commands.coordinator.insert(commands.coordinator.end(),
                                  {"--metrics-listen", config.coordinator_metrics_listen});
    }
    if (!config.coordinator_http_listen.empty()) {
      commands.coordinator.insert(commands.coordinator.end(),
                                  {"--http-listen", config.coordinator_http_listen});
    }
    if (!config.policy.empty()) {
      commands.coordinator.insert(commands.coordinator.end(), {"--policy", config.policy});
    }
    if (!config.join_token_file.empty()) {
      commands.coordinator.insert(commands.coordinator.end(),
                                  {"--join-token-file", config.join_token_file});
    }
    if (!config.api_keys_file.empty()) {
      commands.coordinator.insert(commands.coordinator.end(), {"--api-keys", config.api_keys_file});
    }
    for (const std::string& word : TlsFlagArguments(config.tls)) {
      commands.coordinator.push_back(word);
    }
  }

  // One mpirun job per replica (a tensor-parallel group, inside one node: `--host
  // NODE:TP -np TP`), so that a rank's failure ends only its own group; RunJob supervises
  // the jobs.
  //
  // Binding, by backend, for a node that runs one group. nccl (one rank per GPU): the
  // hostfile's slots, or --ranks-per-node, are the GPUs of a node, and "numa" (the default)
  // keeps each rank on the cores and memory of its GPU's NUMA domain, so that its host threads
  // (the CPU attention kernel, the leader's gRPC server) and pinned buffers sit beside the
  // GPU. mpirun cannot do that: it knows neither which GPU a rank takes nor where that GPU
  // hangs, and binding by domain in rank order would put some ranks a socket away from their
  // GPU. So mpirun binds nothing and each rank binds itself at start, from the PCI topology
  // (launcher/numa_placement.h: PlaceNearGpu). cpu: the kernels run on the rank's own cores
  // and its memory is placed on its cores' node, so a rank spanning two domains would read
  // half its weights across the socket link; "numa" therefore runs one rank per NUMA domain
  // (`--map-by ppr:1:numa`), and the slots, or --ranks-per-node, must be the domains of each
  // node (usually its sockets; more with sub-NUMA clustering). Each rank then sizes its
  // threads from its affinity mask (kernels/cpu/cpu_affinity.h). "core" reserves k =
  // --cores-per-rank cores for each rank with the PE=k modifier of --map-by (plain --bind-to
  // core would give each rank one core, on which all its threads would queue), and caps
  // TESSERA_CPU_THREADS at k. "none" leaves placement to the OS.
  //
  // A node that runs several groups runs several jobs, and each mpirun would bind its ranks
  // to the node's first cores not knowing of the others: mpirun binds none of them, and each
  // job is told where its slots start and how many ranks share the node (comm/node_share.h),
  // so that its ranks take the next GPUs and divide the node with the other jobs: with "core"
  // or the cpu backend's "numa" (TESSERA_NODE_BIND, launcher/numa_placement.h: SlotCpus),
  // each rank binds itself to the cores or NUMA domain of its own slot, disjoint from every
  // other job's; with nccl's "numa", to its GPU's domain as above.
  const bool gpu_numa = config.backend == "nccl" && config.bind_to == "numa";
  std::string node_bind;  // TESSERA_NODE_BIND for jobs that share a node; empty: none
  if (config.bind_to == "core") {
    node_bind = absl::StrCat("core:", config.cores_per_rank);
  } else if (config.bind_to == "numa" && !gpu_numa) {
    node_bind = "numa";
  }
  int replica = 0;
  for (size_t h = 0; h < hosts->size(); ++h) {
    const int groups_on_host = ranks_on_host[h] / config.tp;
    for (int g = 0; g < groups_on_host; ++g, ++replica) {
      const bool alone = groups_on_host == 1;
      std::string map_by = "slot";
      if (alone && config.backend == "cpu" && config.bind_to == "numa") map_by = "ppr:1:numa";
      if (alone && config.bind_to == "core") {
        absl::StrAppend(&map_by, ":PE=", config.cores_per_rank);
      }
      std::vector<std::string> job = {config.mpirun,
                                      "--host",
                                      absl::StrCat((*hosts)[h].host, ":", config.tp),
                                      "-np",
                                      absl::StrCat(config.tp),
                                      "--map-by",
                                      map_by,
                                      "--bind-to",
                                      alone && !gpu_numa ? config.bind_to : std::string("none")};
      if (!alone) {
        job.insert(job.end(),
                   {"-x", absl::StrCat(comm::kNodeFirstSlotVariable, "=", g * config.tp), "-x",
                    absl::StrCat(comm::kNodeRanksVariable, "=", ranks_on_host[h])});
        if (!node_bind.empty()) {
          job.insert(job.end(), {"-x", absl::StrCat(kNodeBindVariable, "=", node_bind)});
        }
      }
      for (const std::string& entry : exports) job.insert(job.end(), {"-x", entry});
      job.insert(job.end(), {config.tessera, "worker", "--coordinator", coordinator, "--tp",
                             absl::StrCat(config.tp), "--replica-offset", absl::StrCat(replica)});
      auto add = [&](const char* flag, const std::string& value) {
        if (!value.empty()) job.insert(job.end(), {flag, value});
      };
      // The model runs where the backend's collectives do: on the GPUs with NCCL.
      add("--device", config.backend == "nccl" ? "cuda" : "cpu");
      add("--model", config.model);
      add("--model-name", config.model_name);
      add("--version", config.version);
      add("--zone", config.zone);
      add("--join-token-file", config.join_token_file);
      for (const std::string& word : TlsFlagArguments(config.tls)) job.push_back(word);
      job.insert(job.end(), config.worker_args.begin(), config.worker_args.end());
      commands.replicas.push_back(
          {{absl::StrCat((*hosts)[h].host, "/replica", replica)}, std::move(job)});
    }
  }
  return commands;
}

std::string ShellJoin(const std::vector<std::string>& args) {
  std::vector<std::string> quoted;
  quoted.reserve(args.size());
  for (const std::string& arg : args) {
    bool plain = !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
      return absl::ascii_isalnum(c) || std::strchr("-_./:=@%+,", c) != nullptr;
    });
    if (plain) {
      quoted.push_back(arg);
    } else {
      std::string q = "'";
      for (char c : arg) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      quoted.push_back(q + "'");
    }
  }
  return absl::StrJoin(quoted, " ");
}

namespace {

// Waits up to `timeout` for one of `signals` (blocked); returns it, or 0.
int WaitForSignal(const sigset_t& signals, absl::Duration timeout) {
  timespec wait = absl::ToTimespec(timeout);
  int signal = sigtimedwait(&signals, nullptr, &wait);
  return signal == SIGINT || signal == SIGTERM ? signal : 0;
}

bool Listening(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return connected;
}

// The coordinator runs as a child job of its own process group (worker_job.h), so that a
// Ctrl-C on the terminal reaches this launcher alone and the children stop in order: the
// workers, then the coordinator. Null when one already runs elsewhere.
using CoordinatorJob = std::unique_ptr<WorkerJob>;

void StopCoordinator(CoordinatorJob& coordinator) {
  if (coordinator != nullptr) coordinator->Stop();
}

// The coordinator's exit status once it has exited.
std::optional<int> CoordinatorExit(CoordinatorJob& coordinator) {
  if (coordinator == nullptr) return std::nullopt;
  return coordinator->WaitExit(absl::ZeroDuration());
}

int StoppedBy(int signal, WorkerGroups* workers, CoordinatorJob& coordinator) {
  std::fprintf(stderr, "tessera launch: %s received; stopping the workers and the coordinator\n",
               strsignal(signal));
  if (workers != nullptr) workers->Stop();
  StopCoordinator(coordinator);
  return 128 + signal;
}

// Runs the coordinator until it listens, then the replicas' jobs, restarting those that
// exit, until SIGINT/SIGTERM arrives, the coordinator fails, or a replica keeps failing.
int RunJob(const LaunchCommands& commands, const Supervision& supervision,
           absl::Duration startup_timeout) {
  sigset_t handled;
  sigemptyset(&handled);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGCHLD);
  sigprocmask(SIG_BLOCK, &handled, nullptr);

  CoordinatorJob coordinator;
  if (!commands.coordinator.empty()) {
    std::fprintf(stderr, "tessera launch: coordinator: %s\n",
                 ShellJoin(commands.coordinator).c_str());
    absl::StatusOr<CoordinatorJob> started =
        WorkerJob::Start(commands.coordinator, "tessera launch");
    if (!started.ok()) return ReportExit(started.status());
    coordinator = *std::move(started);
    absl::Time deadline = absl::Now() + startup_timeout;
    while (!Listening(commands.coordinator_port)) {
      if (std::optional<int> code = CoordinatorExit(coordinator)) {
        return ReportExit(absl::UnavailableError(
            absl::StrCat("the coordinator exited (status ", *code, ") before it listened on port ",
                         commands.coordinator_port)));
      }
      if (absl::Now() >= deadline) {
        StopCoordinator(coordinator);
        return ReportExit(absl::DeadlineExceededError(
            absl::StrCat("the coordinator did not listen on port ", commands.coordinator_port,
                         " within ", absl::FormatDuration(startup_timeout))));
      }
      if (int signal = WaitForSignal(handled, absl::Milliseconds(100))) {
        return StoppedBy(signal, nullptr, coordinator);
      }
    }
  }

  for (const GroupJob& replica : commands.replicas) {
    std::fprintf(stderr, "tessera launch: %s: %s\n", replica.groups.front().c_str(),
                 ShellJoin(replica.command).c_str());
  }
  std::fflush(stderr);
  absl::StatusOr<std::unique_ptr<WorkerGroups>> workers =
      WorkerGroups::Start(commands.replicas, supervision, nullptr, nullptr, "tessera launch");
  if (!workers.ok()) {
    StopCoordinator(coordinator);
    return ReportExit(workers.status());
  }
  for (;;) {
    if (int signal = WaitForSignal(handled, absl::Milliseconds(200))) {
      return StoppedBy(signal, workers->get(), coordinator);
    }
    if (absl::Status supervised = (*workers)->Supervise(); !supervised.ok()) {
      (*workers)->Stop();
      StopCoordinator(coordinator);
      return ReportExit(supervised);
    }
    if (std::optional<int> code = CoordinatorExit(coordinator)) {
      (*workers)->Stop();
      return ReportExit(absl::UnavailableError(
          absl::StrCat("the coordinator exited (status ", *code, ") while the workers ran")));
    }
  }
}

// Every value of a repeatable flag ("--env A=1 --env=B=2"); FlagSet keeps only the last.
std::vector<std::string> RepeatedFlag(const std::vector<std::string>& args,
                                      absl::string_view name) {
  std::vector<std::string> values;
  const std::string spaced = absl::StrCat("--", name);
  const std::string joined = absl::StrCat(spaced, "=");
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == spaced && i + 1 < args.size()) {
      values.push_back(args[++i]);
    } else if (absl::StartsWith(args[i], joined)) {
      values.push_back(args[i].substr(joined.size()));
    }
  }
  return values;
}

}  // namespace

int RunLaunch(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  LaunchConfig config;
  bool dry_run = false;
  absl::Duration startup_timeout = absl::Seconds(60);
  std::string env_flag;

  // Arguments after "--" go to every worker unchanged.
  auto separator = std::find(args.begin(), args.end(), "--");
  std::vector<std::string> flag_args(args.begin(), separator);
  if (separator != args.end()) config.worker_args.assign(separator + 1, args.end());

  FlagSet flags(
      "tessera launch",
      "Starts a serving job on the nodes of an Open MPI hostfile: the coordinator on this "
      "machine, then\n`mpirun ... tessera worker` with one rank per GPU, tensor-parallel groups "
      "kept inside nodes.\nArguments after -- are added to the worker command, e.g. "
      "-- --dtype bf16 --kv-cache-memory 8G.\nexample: tessera launch --hostfile hosts "
      "--ranks-per-node 8 --tp 4 --model /models/glm-4-9b --dry-run");
  flags.String("hostfile", &config.hostfile, "Open MPI hostfile: one 'HOST slots=N' per node");
  flags.Int("np", &config.np, "worker ranks (0: every slot, or --ranks-per-node x hosts)");
  flags.Int("ranks-per-node", &config.ranks_per_node,
            "ranks on each node, as --map-by ppr:N:node (0: each host's slots, in order)");
  flags.Int("tp", &config.tp, "tensor-parallel degree; divides every node's rank count");
  flags.String("bind-to", &config.bind_to,
               "numa (each rank on one NUMA domain: its GPU's, or with --backend cpu one rank "
               "per domain, --map-by ppr:1:numa), core (--cores-per-rank cores per rank) or "
               "none");
  flags.Int("cores-per-rank", &config.cores_per_rank,
            "cores reserved for each rank with "
            "--bind-to core");
  flags.String("backend", &config.backend,
               "nccl (one rank per GPU: slots = GPUs; NCCL_DEBUG=WARN and this shell's NCCL_* "
               "reach the ranks) or cpu (one rank per NUMA domain: slots = domains)");
  flags.String("env", &env_flag,
               "NAME=VALUE set on every rank, or NAME to pass this shell's value (repeatable)");
  flags.String("coordinator", &config.coordinator,
               "HOST:PORT where workers register; empty: this host's name, port 50051");
  flags.Bool("start-coordinator", &config.start_coordinator,
             "start the coordinator here, listening on --coordinator's port "
             "(--no-start-coordinator: one already runs there)");
  flags.String("coordinator-metrics-listen", &config.coordinator_metrics_listen,
               "the coordinator's --metrics-listen, HOST:PORT or off; empty: its "
               "default, 127.0.0.1:9400 (loopback)");
  flags.String("coordinator-http-listen", &config.coordinator_http_listen,
               "the coordinator's --http-listen (the OpenAI-style API), HOST:PORT or off; "
               "empty: its default, 127.0.0.1:8000 (loopback)");
  flags.String("join-token-file", &config.join_token_file,
               "a file holding the token workers show to register: the coordinator's and every "
               "worker's --join-token-file (the same path on every node)");
  flags.String("api-keys", &config.api_keys_file,
               "the coordinator's --api-keys: a file of API keys clients must send");
  AddTlsFlags(flags, &config.tls, /*serves=*/true);
  flags.String("policy", &config.policy,
               "the coordinator's routing policy: combined, least-load, prefix or topology; "
               "empty: its default");
  flags.String("model", &config.model,
               "model directory or GGUF file on the nodes; empty: the built-in model");
  flags.String("model-name", &config.model_name, "name the workers serve the model under");
  flags.String("version", &config.version, "model version the workers register");
  flags.String("zone", &config.zone, "zone label of the workers, for topology-aware routing");
  flags.String("mpirun", &config.mpirun, "the mpirun to run");
  flags.String("tessera", &config.tessera,
               "path of the tessera binary on the nodes; empty: this binary's own path");
  flags.Duration("startup-timeout", &startup_timeout,
                 "how long the coordinator may take to listen before the launch fails");
  AddSupervisionFlags(flags, &config.supervision);
  flags.Duration("serving-after", &config.supervision.serving_after,
                 "a replica's job that has run this long counts as started: its next exit "
                 "restarts it after the first back-off, not a doubled one");
  flags.Bool("dry-run", &dry_run, "print the coordinator and mpirun commands and exit");
  if (std::optional<int> done = ParseOrExit(flags, flag_args)) return *done;
  config.env = RepeatedFlag(flag_args, "env");

  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  config.coordinator_binary = error ? std::string("tessera") : self.string();
  if (config.tessera.empty()) config.tessera = config.coordinator_binary;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) config.local_host = host;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    absl::string_view variable = *entry;
    config.environment_names.emplace_back(variable.substr(0, variable.find('=')));
  }

  absl::StatusOr<LaunchCommands> commands = BuildLaunchCommands(config);
  if (!commands.ok()) {
    std::fprintf(stderr, "tessera launch: %s\n", std::string(commands.status().message()).c_str());
    return kExitUsage;
  }
  if (dry_run) {
    if (!commands->coordinator.empty()) {
      std::printf("%s\n", ShellJoin(commands->coordinator).c_str());
    }
    for (const GroupJob& replica : commands->replicas) {
      std::printf("%s\n", ShellJoin(replica.command).c_str());
    }
    return kExitOk;
  }
  return RunJob(*commands, config.supervision, startup_timeout);
}

}  // namespace tessera::launcher
