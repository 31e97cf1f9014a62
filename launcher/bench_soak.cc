// `tessera bench soak`: `tessera serve` under a long mixed load over gRPC and the OpenAI-style
// HTTP API (valid requests, cancellations and hang-ups, deadlines, invalid inputs, oversized
// messages: soak_mix.h), with a rank of a worker group killed partway and the group restarted
// by serve. Checks that every request is answered with a right code (and, over HTTP, greedy
// and seeded completions with the same request's answer over gRPC) and none is lost, that no
// process crashes, and that the coordinator's process holds no more memory (within
// --rss-tolerance), file descriptors or threads after the run than after a warm-up of the same
// mix.
//
// tessera serve runs as a child process (its coordinator in its own process), so that what
// it holds can be read from /proc before and after, and its worker ranks found and killed.

#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "launcher/bench.h"
#include "launcher/bench_client.h"
#include "launcher/child_process.h"
#include "launcher/flags.h"
#include "launcher/metrics_scrape.h"
#include "launcher/openai_client.h"
#include "launcher/process.h"
#include "launcher/process_tree.h"
#include "launcher/shutdown_signal.h"
#include "launcher/soak_mix.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/model/default_model.h"
#include "runtime/serve/request_convert.h"

namespace tessera::launcher {
namespace {

constexpr char kWho[] = "tessera bench soak";
// Requests of the mix sent after the run when it ended before the killed group came back.
constexpr int kRestartedProbe = 400;

struct BenchSoakConfig {
  int requests = 10000;
  int warmup_requests = 2000;
  int concurrency = 16;
  int seed = 1;
  double http_share = 0.25;  // of the requests, sent over the HTTP API
  int np = 4;
  int tp = 2;
  // SIGKILL to rank kill_rank of replica 0 once this share of the requests has started;
  // 0: no kill.
  double kill_at = 0.3;
  int kill_rank = 1;
  int64_t max_message_bytes = 64 << 10;
  // KV-cache memory per rank: small enough that the warm-up fills the groups' prefix caches.
  // The coordinator mirrors the blocks they hold (for prefix routing), so until they are full
  // its memory grows with the requests served, with no leak.
  int64_t kv_cache_bytes = 8 << 20;
  int max_batch_requests = 16;
  absl::Duration answer_timeout = absl::Minutes(2);
  absl::Duration settle = absl::Seconds(20);
  absl::Duration ready_timeout = absl::Minutes(5);
  double rss_tolerance = 0.10;
  std::string serve_args;  // more flags of tessera serve, split on spaces
  std::string log_dir;     // empty: a temporary folder, removed after a run that passes
};

// Reads what a growing log file gained since the last call, a whole line at a time.
class LogFollower {
 public:
  explicit LogFollower(std::string path) : path_(std::move(path)) {}

  std::vector<std::string> NewLines() {
    std::ifstream file(path_, std::ios::binary);
    file.seekg(offset_);
    std::vector<std::string> lines;
    std::string line;
    // A last line without its newline is still being written: read again next time.
    while (std::getline(file, line) && !file.eof()) {
      offset_ += static_cast<std::streamoff>(line.size()) + 1;
      lines.push_back(std::move(line));
    }
    return lines;
  }

 private:
  const std::string path_;
  std::streamoff offset_ = 0;
};

// The port of the address that follows `label` in `line` ("... LABEL HOST:PORT[/path][, ...]");
// 0 when there is none.
int PortAfter(absl::string_view line, absl::string_view label) {
  const size_t at = line.find(label);
  if (at == absl::string_view::npos) return 0;
  absl::string_view address = line.substr(at + label.size());
  address = address.substr(0, address.find_first_of(",/"));
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) return 0;
  return port;
}

// What tessera serve's log says: its ports, the worker jobs that exited, the groups that
// registered (by replica, when this process read the line).
struct ServeLog {
  explicit ServeLog(const std::string& path) : follower(path) {}

  void Poll() {
    // "tessera serve: ready: gRPC on HOST:PORT, metrics on http://HOST:PORT/metrics, OpenAI
    // API on http://HOST:PORT/v1"
    constexpr absl::string_view kReady = "tessera serve: ready: ";
    constexpr absl::string_view kExited = "tessera serve: the workers of replica ";
    const absl::Time now = absl::Now();
    for (const std::string& text : follower.NewLines()) {
      absl::string_view line = text;
      if (absl::StartsWith(line, kReady)) {
        grpc_port = PortAfter(line, "gRPC on ");
        metrics_port = PortAfter(line, ", metrics on http://");
        http_port = PortAfter(line, ", OpenAI API on http://");
        ready = grpc_port > 0 && metrics_port > 0 && http_port > 0;
      } else if (absl::StartsWith(line, kExited)) {
        // "... replica R exited (status S)[ before serving]; starting them again in T"
        line.remove_prefix(kExited.size());
        int replica = -1, status = -1;
        const size_t at = line.find(" exited (status ");
        if (at != absl::string_view::npos && absl::SimpleAtoi(line.substr(0, at), &replica)) {
          absl::string_view rest = line.substr(at + 16);
          (void)absl::SimpleAtoi(rest.substr(0, rest.find(')')), &status);
          exits.push_back({replica, status, std::string(absl::StripAsciiWhitespace(text))});
        }
      } else if (absl::StartsWith(line, "{")) {
        nlohmann::json event = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (event.is_discarded() || !event.is_object() ||
            event.value("event", "") != "group_registered") {
          continue;
        }
        const std::string name = event.value("name", "");
        int replica = -1;
        const size_t at = name.rfind("/replica");
        if (at != std::string::npos && absl::SimpleAtoi(name.substr(at + 8), &replica)) {
          registrations[replica].push_back({now, event.value("group", "")});
        }
      }
    }
  }

  struct Exit {
    int replica;
    int status;
    std::string line;
  };

  LogFollower follower;
  bool ready = false;
  int grpc_port = 0;
  int metrics_port = 0;
  int http_port = 0;  // the OpenAI-style API
  std::vector<Exit> exits;
  struct Registration {
    absl::Time seen;
    std::string group;  // the coordinator's id of the group
  };
  std::map<int, std::vector<Registration>> registrations;  // by replica
};

// A process seen below tessera serve.
struct SeenProcess {
  unsigned long long start_time = 0;
  std::string name;  // /proc/PID/comm
};

std::map<pid_t, SeenProcess> ProcessesBelow(pid_t root) {
  std::map<pid_t, SeenProcess> seen;
  for (pid_t pid : DescendantsOf(root)) {
    std::optional<ProcStat> stat = ReadProcStat(pid);
    if (!stat.has_value()) continue;
    seen[pid] = {stat->start_time, std::string(absl::StripAsciiWhitespace(
                                       ReadWholeFile(absl::StrCat("/proc/", pid, "/comm"))))};
  }
  return seen;
}

// The rank killed on purpose, and its job (mpirun and its ranks), whose ends are expected.
struct Kill {
  absl::Time at;
  std::string what;
  std::map<pid_t, SeenProcess> job;
};

// SIGKILL to MPI rank `rank` of the job tessera serve (`serve`) runs for replica `replica`:
// the child of serve whose command line has --replica-offset `replica`.
absl::StatusOr<Kill> KillRank(pid_t serve, int replica, int rank) {
  std::optional<pid_t> job;
  for (pid_t pid : AllPids()) {
    std::optional<ProcStat> stat = ReadProcStat(pid);
    if (!stat.has_value() || stat->ppid != serve) continue;
    std::vector<std::string> argv =
        absl::StrSplit(ReadWholeFile(absl::StrCat("/proc/", pid, "/cmdline")), '\0');
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == "--replica-offset" && argv[i + 1] == absl::StrCat(replica)) job = pid;
    }
  }
  if (!job.has_value()) {
    return absl::NotFoundError(absl::StrCat("no job of tessera serve runs replica ", replica));
  }
  Kill killed;
  killed.job = ProcessesBelow(*job);
  if (std::optional<ProcStat> stat = ReadProcStat(*job)) killed.job[*job] = {stat->start_time, ""};
  std::optional<pid_t> pid = FindMpiRank(DescendantsOf(*job), rank);
  if (!pid.has_value()) {
    return absl::NotFoundError(absl::StrCat("no process of replica ", replica, "'s job (mpirun ",
                                            *job, ") is MPI rank ", rank));
  }
  if (::kill(*pid, SIGKILL) != 0)
    return absl::InternalError(absl::StrCat("kill(", *pid, ") failed"));
  killed.at = absl::Now();
  killed.what =
      absl::StrCat("SIGKILL to rank ", rank, " of replica ", replica, " (pid ", *pid, ")");
  return killed;
}

struct Phase {
  std::vector<SoakOutcome> outcomes;
  absl::Duration took;
};

// Where tessera serve takes requests.
struct Endpoints {
  std::string grpc_address;  // "127.0.0.1:PORT"
  int http_port = 0;         // the OpenAI-style API's, on 127.0.0.1
};

// Requests [first, first + count) of the mix through `concurrency` clients, each on a gRPC
// connection of its own (and over HTTP a connection a call), each taking the next request
// when its previous one ends. `tick` runs on this thread every 20 ms meanwhile, given the
// number of requests started. The clients' connections are closed when it returns. Stops
// taking requests on Ctrl-C.
absl::StatusOr<Phase> RunPhase(const Endpoints& endpoints, const SoakTarget& target,
                               const SoakMix& mix, uint64_t first, int count, int concurrency,
                               const std::function<void(int started)>& tick) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < concurrency; ++c) {
    channels.push_back(ConnectBenchClient(endpoints.grpc_address));
    TESSERA_RETURN_IF_ERROR(WaitConnected(*channels.back(), endpoints.grpc_address));
  }
  std::atomic<int> next{0};
  std::atomic<int> running{concurrency};
  std::vector<std::vector<SoakOutcome>> outcomes(concurrency);
  const absl::Time start = absl::Now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&, c] {
      std::unique_ptr<v1::Inference::Stub> stub = v1::Inference::NewStub(channels[c]);
      OpenAiClient http("127.0.0.1", endpoints.http_port, target.answer_timeout);
      SoakClients connections{*stub, http};
      for (int i = next.fetch_add(1); i < count && !ShutdownRequested(); i = next.fetch_add(1)) {
        outcomes[c].push_back(RunSoakRequest(connections, target, mix, first + i));
      }
      running.fetch_sub(1);
    });
  }
  while (running.load() > 0) {
    tick(std::min(next.load(), count));
    absl::SleepFor(absl::Milliseconds(20));
  }
  for (std::thread& client : clients) client.join();
  channels.clear();
  Phase phase;
  phase.took = absl::Now() - start;
  for (std::vector<SoakOutcome>& mine : outcomes) {
    phase.outcomes.insert(phase.outcomes.end(), std::make_move_iterator(mine.begin()),
                          std::make_move_iterator(mine.end()));
  }
  return phase;
}

// While a group is killed and restarted: a request that ran then may end UNAVAILABLE.
struct FaultWindow {
  absl::Time from = absl::InfiniteFuture();
  absl::Time to = absl::InfiniteFuture();
};

bool RightAnswer(const SoakOutcome& outcome, const FaultWindow& window) {
  if (std::find(outcome.expected.begin(), outcome.expected.end(), outcome.code) !=
      outcome.expected.end()) {
    return true;
  }
  return outcome.code == UnavailableCode(outcome.api) && outcome.reaches_group &&
         outcome.start <= window.to && outcome.end >= window.from;
}

bool Succeeded(const SoakOutcome& outcome) {
  return outcome.code == (outcome.api == SoakApi::kGrpc ? grpc::StatusCode::OK : 200);
}

// The outcomes over one API. sent = ok + failed + wrong + lost.
struct Tally {
  int sent = 0;
  int ok = 0;      // a right answer that succeeded
  int failed = 0;  // a right answer that was an error: a refusal, a cancellation, ...
  int wrong = 0;   // an answer with a wrong code or content
  int lost = 0;    // no answer
  int unavailable_in_window = 0;
  int matched_reference = 0;                 // HTTP answers equal to the same request's over gRPC
  std::map<int, std::map<int, int>> counts;  // kind -> code -> requests
  int wrong_by_kind[kSoakKinds] = {};
  // (kind, code) of wrong answers -> count and the first one's variant and message.
  std::map<std::pair<int, int>, std::pair<int, std::string>> wrong_examples;
  std::map<int, std::map<std::string, int>> variants;  // kind -> variant -> count
};

using Tallies = std::array<Tally, kSoakApis>;  // by SoakApi

Tallies Count(const std::vector<SoakOutcome>& outcomes, const FaultWindow& window) {
  Tallies tallies;
  for (const SoakOutcome& outcome : outcomes) {
    Tally& tally = tallies[static_cast<int>(outcome.api)];
    const int kind = static_cast<int>(outcome.kind);
    ++tally.sent;
    ++tally.counts[kind][outcome.code];
    if (!outcome.variant.empty()) ++tally.variants[kind][outcome.variant];
    tally.matched_reference += outcome.matched_reference ? 1 : 0;
    if (RightAnswer(outcome, window)) {
      ++(Succeeded(outcome) ? tally.ok : tally.failed);
      tally.unavailable_in_window += outcome.code == UnavailableCode(outcome.api) ? 1 : 0;
      continue;
    }
    ++(outcome.code == kOutcomeLost ? tally.lost : tally.wrong);
    ++tally.wrong_by_kind[kind];
    auto& example = tally.wrong_examples[{kind, outcome.code}];
    if (example.first++ == 0) {
      example.second =
          absl::StrCat(outcome.variant.empty() ? "" : outcome.variant + ": ", outcome.message);
    }
  }
  return tallies;
}

int Total(const Tallies& tallies, int Tally::*field) {
  int total = 0;
  for (const Tally& tally : tallies) total += tally.*field;
  return total;
}

// "0 (gRPC 0, HTTP 0)".
std::string ByApi(const Tallies& tallies, int Tally::*field) {
  std::string text = absl::StrCat(Total(tallies, field), " (");
  for (int api = 0; api < kSoakApis; ++api) {
    absl::StrAppend(&text, api > 0 ? ", " : "", SoakApiName(static_cast<SoakApi>(api)), " ",
                    tallies[api].*field);
  }
  return text + ")";
}

// The requests over `api` by kind and code, and what was wrong.
void PrintTally(SoakApi api, const Tally& tally) {
  std::vector<int> codes;
  std::vector<int> kinds;
  for (const auto& [kind, by_code] : tally.counts) {
    kinds.push_back(kind);
    for (const auto& [code, count] : by_code) codes.push_back(code);
  }
  std::sort(codes.begin(), codes.end());
  codes.erase(std::unique(codes.begin(), codes.end()), codes.end());
  std::printf("# over %s\n%-10s %8s", SoakApiName(api), "kind", "requests");
  for (int code : codes) {
    // Column heads short enough for the table: RESOURCE_EXHAUSTED -> RESOURCE_EXH.
    std::printf(" %12s", OutcomeCodeName(api, code).substr(0, 12).c_str());
  }
  std::printf(" %8s\n", "wrong");
  std::map<int, int> total_by_code;
  for (int kind : kinds) {
    const std::map<int, int>& by_code = tally.counts.at(kind);
    int requests = 0;
    for (const auto& [code, count] : by_code) requests += count;
    std::printf("%-10s %8d", SoakKindName(static_cast<SoakKind>(kind)), requests);
    for (int code : codes) {
      auto found = by_code.find(code);
      const int count = found == by_code.end() ? 0 : found->second;
      total_by_code[code] += count;
      std::printf(" %12d", count);
    }
    std::printf(" %8d\n", tally.wrong_by_kind[kind]);
  }
  std::printf("%-10s %8d", "total", tally.sent);
  for (int code : codes) std::printf(" %12d", total_by_code[code]);
  std::printf(" %8d\n", tally.wrong + tally.lost);
  for (const auto& [kind, variants] : tally.variants) {
    std::vector<std::string> parts;
    for (const auto& [variant, count] : variants)
      parts.push_back(absl::StrCat(variant, " ", count));
    std::printf("# %s %s: %s\n", SoakApiName(api), SoakKindName(static_cast<SoakKind>(kind)),
                absl::StrJoin(parts, ", ").c_str());
  }
  for (const auto& [key, example] : tally.wrong_examples) {
    std::printf("# WRONG %s %s %s x%d, first: %s\n", SoakApiName(api),
                SoakKindName(static_cast<SoakKind>(key.first)),
                OutcomeCodeName(api, key.second).c_str(), example.first, example.second.c_str());
  }
}

// The outcomes by API: sent, ok, failed, wrong, lost.
void PrintApiSummary(const Tallies& tallies) {
  std::printf(
      "# by API: ok is a success; failed an error that was the right answer (a refusal, a "
      "cancellation or hang-up, a deadline, UNAVAILABLE while the group was down); matched: "
      "HTTP completions equal to the same request's answer over gRPC\n");
  std::printf("%-6s %8s %8s %8s %8s %8s %8s\n", "api", "sent", "ok", "failed", "wrong", "lost",
              "matched");
  for (int api = 0; api < kSoakApis; ++api) {
    const Tally& tally = tallies[api];
    std::printf("%-6s %8d %8d %8d %8d %8d %8s\n", SoakApiName(static_cast<SoakApi>(api)),
                tally.sent, tally.ok, tally.failed, tally.wrong, tally.lost,
                api == static_cast<int>(SoakApi::kHttp)
                    ? absl::StrCat(tally.matched_reference).c_str()
                    : "-");
  }
  std::fflush(stdout);
}

// gRPC core's executor and timer threads: pools that grow on demand up to a bound of gRPC's
// and are kept until shutdown, so their size is the load's high-water mark, not a leak. They
// are reported beside the others and not held to the threads' limit.
bool InGrpcCorePool(const std::string& thread_name) {
  return absl::StartsWith(thread_name, "default-executo") ||
         absl::StartsWith(thread_name, "grpc_global_tim");
}

// What tessera serve holds.
struct Held {
  ProcResources resources;
  int threads = 0;       // all but gRPC core's pools
  int pool_threads = 0;  // gRPC core's pools
};

std::optional<Held> ReadHeld(pid_t pid) {
  std::optional<ProcResources> resources = ReadProcResources(pid);
  if (!resources.has_value()) return std::nullopt;
  Held held;
  held.resources = *resources;
  for (const auto& [name, count] : ThreadNames(pid)) {
    (InGrpcCorePool(name) ? held.pool_threads : held.threads) += count;
  }
  return held;
}

// Reads what tessera serve holds once it has settled: when its descriptors and threads are
// down to `limit`'s (when given) or, without one, have stayed the same for 2 s; at most after
// `settle`.
absl::StatusOr<Held> SettledHeld(pid_t pid, absl::Duration settle,
                                 const std::optional<Held>& limit) {
  const absl::Time until = absl::Now() + settle;
  std::optional<Held> last;
  absl::Time same_since = absl::Now();
  while (true) {
    std::optional<Held> now = ReadHeld(pid);
    if (!now.has_value()) return absl::UnavailableError("tessera serve is gone");
    if (limit.has_value()) {
      if (now->resources.open_fds <= limit->resources.open_fds && now->threads <= limit->threads) {
        return *now;
      }
    } else if (!last.has_value() || now->resources.open_fds != last->resources.open_fds ||
               now->threads != last->threads) {
      same_since = absl::Now();
    } else if (absl::Now() - same_since >= absl::Seconds(2)) {
      return *now;
    }
    last = now;
    if (absl::Now() >= until) return *now;
    absl::SleepFor(absl::Milliseconds(250));
  }
}

struct Criterion {
  std::string figure;
  std::string value;
  std::string limit;
  bool met;
};

absl::Status Soak(const BenchSoakConfig& config, const std::string& log_dir) {
  const int groups = config.np / config.tp;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // The built-in random model, named: without --model, serve would take the real model that
  // deploy/setup.sh fetched (--serve-args "--model ..." still chooses another).
  TESSERA_ASSIGN_OR_RETURN(const std::string model, model::EnsureDefaultModel());
  // Kept as flag-value pairs, which clang-format would put one a line.
  // clang-format off
  std::vector<std::string> argv = {
      self, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
      "--http-listen", "127.0.0.1:0",
      "--np", absl::StrCat(config.np), "--tp", absl::StrCat(config.tp),
      "--max-message-bytes", FormatBytes(config.max_message_bytes),
      "--kv-cache-memory", FormatBytes(config.kv_cache_bytes),
      "--max-batch-requests", absl::StrCat(config.max_batch_requests),
      "--ready-timeout", absl::FormatDuration(config.ready_timeout), "--model", model};
  // clang-format on
  for (absl::string_view extra : absl::StrSplit(config.serve_args, ' ', absl::SkipEmpty())) {
    argv.emplace_back(extra);
  }
  const std::string log_path = absl::StrCat(log_dir, "/serve.log");
  std::fprintf(stderr, "%s: %s (log %s)\n", kWho, absl::StrJoin(argv, " ").c_str(),
               log_path.c_str());
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> serve_process,
                           ChildProcess::Start(argv, log_path));
  ServeLog log(log_path);
  std::optional<int> early_exit;
  WaitFor(
      [&] {
        log.Poll();
        early_exit = serve_process->Wait(absl::ZeroDuration());
        return log.ready || early_exit.has_value() || ShutdownRequested();
      },
      config.ready_timeout + absl::Seconds(30), absl::Milliseconds(50));
  if (ShutdownRequested()) return absl::CancelledError("interrupted");
  if (!log.ready) {
    return absl::UnavailableError(absl::StrCat(
        "tessera serve did not get ready (",
        early_exit.has_value() ? absl::StrCat("it exited with status ", *early_exit) : "timed out",
        "); its log: ", log_path));
  }
  const pid_t serve_pid = serve_process->pid();
  const std::string address = absl::StrCat("127.0.0.1:", log.grpc_port);
  const Endpoints endpoints{address, log.http_port};
  const SoakMix mix{static_cast<uint64_t>(config.seed), config.http_share};

  SoakTarget target;
  target.max_message_bytes = config.max_message_bytes;
  target.max_batch_requests = config.max_batch_requests;
  target.answer_timeout = config.answer_timeout;
  {
    std::shared_ptr<grpc::Channel> channel = ConnectBenchClient(address);
    TESSERA_RETURN_IF_ERROR(WaitConnected(*channel, address));
    std::unique_ptr<v1::Inference::Stub> stub = v1::Inference::NewStub(channel);
    TESSERA_ASSIGN_OR_RETURN(target.model, FirstModel(*stub));
    TESSERA_ASSIGN_OR_RETURN(target.vocab, ProbeVocab(*stub, target.model));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    v1::ListModelsResponse models;
    TESSERA_RETURN_IF_ERROR(
        serve::FromGrpcStatus(stub->ListModels(&context, v1::ListModelsRequest(), &models)));
    for (const v1::ModelVersion& version : models.models(0).versions()) {
      target.max_tokens = std::max(target.max_tokens, version.max_model_length());
    }
  }

  std::printf(
      "# tessera bench soak: tessera serve (pid %d), %d group(s) of tp %d, model %s at %s "
      "(HTTP API on port %d); --max-message-bytes %s, --max-batch-requests %d, "
      "--kv-cache-memory %s\n"
      "# %d requests over %d clients (seed %d), %.0f%% of them over HTTP, after a warm-up of "
      "%d; a right answer is the code its kind expects (UNAVAILABLE too while a group is "
      "killed and restarted), and over HTTP a greedy or seeded completion is the same "
      "request's answer over gRPC; lost: none within %s\n",
      serve_pid, groups, config.tp, target.model.c_str(), address.c_str(), endpoints.http_port,
      FormatBytes(config.max_message_bytes).c_str(), config.max_batch_requests,
      FormatBytes(config.kv_cache_bytes).c_str(), config.requests, config.concurrency, config.seed,
      100 * config.http_share, config.warmup_requests,
      absl::FormatDuration(config.answer_timeout).c_str());
  std::fflush(stdout);

  // The warm-up: the same mix (other requests), so that the coordinator's pools, caches and
  // metric series are all in use before the figures are first read.
  std::fprintf(stderr, "%s: warm-up, %d requests...\n", kWho, config.warmup_requests);
  TESSERA_ASSIGN_OR_RETURN(
      Phase warmup, RunPhase(endpoints, target, mix, uint64_t{1} << 40, config.warmup_requests,
                             config.concurrency, [&](int) { log.Poll(); }));
  if (ShutdownRequested()) return absl::CancelledError("interrupted");
  const Tallies warmup_tallies = Count(warmup.outcomes, FaultWindow());
  TESSERA_ASSIGN_OR_RETURN(Held before, SettledHeld(serve_pid, config.settle, std::nullopt));
  const std::map<pid_t, SeenProcess> processes_before = ProcessesBelow(serve_pid);
  std::fprintf(stderr,
               "%s: before: %.1f MiB resident, %d fds, %d threads (and %d of gRPC's pools)\n", kWho,
               before.resources.resident_bytes / 1048576.0, before.resources.open_fds,
               before.threads, before.pool_threads);

  // The run, with the kill.
  const bool inject = config.kill_at > 0;
  const int kill_after = static_cast<int>(config.kill_at * config.requests);
  std::optional<Kill> kill;
  std::string kill_error;
  std::optional<int> serve_exited;
  int next_progress = config.requests / 10;
  std::fprintf(stderr, "%s: %d requests over %d clients...\n", kWho, config.requests,
               config.concurrency);
  const absl::Time run_start = absl::Now();
  TESSERA_ASSIGN_OR_RETURN(
      Phase run,
      RunPhase(endpoints, target, mix, 0, config.requests, config.concurrency, [&](int started) {
        log.Poll();
        if (!serve_exited) serve_exited = serve_process->Wait(absl::ZeroDuration());
        if (inject && !kill.has_value() && kill_error.empty() && started >= kill_after) {
          absl::StatusOr<Kill> killed = KillRank(serve_pid, 0, config.kill_rank);
          if (killed.ok()) {
            kill = *std::move(killed);
            std::fprintf(stderr, "%s: %s\n", kWho, kill->what.c_str());
          } else {
            kill_error = killed.status().ToString();
          }
        }
        if (started >= next_progress && next_progress > 0) {
          std::fprintf(stderr, "%s: %d/%d requests started, %.0f s\n", kWho, started,
                       config.requests, absl::ToDoubleSeconds(absl::Now() - run_start));
          next_progress += config.requests / 10;
        }
      }));
  if (ShutdownRequested()) return absl::CancelledError("interrupted");

  // The killed group serving again: its replica registered after the kill.
  std::optional<ServeLog::Registration> serving_again;
  auto registered_again = [&] {
    log.Poll();
    if (!kill.has_value()) return true;
    for (const ServeLog::Registration& registration : log.registrations[0]) {
      if (registration.seen > kill->at) serving_again = registration;
    }
    return serving_again.has_value();
  };
  if (kill.has_value()) {
    std::fprintf(stderr, "%s: waiting for replica 0 to serve again...\n", kWho);
    WaitFor(registered_again, config.ready_timeout, absl::Milliseconds(100));
  }
  FaultWindow window;
  if (kill.has_value()) {
    window.from = kill->at;
    window.to =
        serving_again.has_value() ? serving_again->seen + absl::Seconds(1) : absl::InfiniteFuture();
  }
  // The restarted group takes requests: in the run, or when the run ended before it came
  // back, in a short run of the mix after (part of the load the figures are read after). Only
  // gRPC answers name their group, so that run is over gRPC alone.
  auto answered_by = [](const Phase& phase, const std::string& group) {
    return std::count_if(phase.outcomes.begin(), phase.outcomes.end(),
                         [&group](const SoakOutcome& outcome) { return outcome.group == group; });
  };
  int64_t restarted_answered = 0, restarted_answered_after = 0;
  if (serving_again.has_value()) {
    restarted_answered = answered_by(run, serving_again->group);
    if (restarted_answered == 0) {
      TESSERA_ASSIGN_OR_RETURN(
          Phase probe,
          RunPhase(endpoints, target, SoakMix{mix.seed, /*http_share=*/0}, uint64_t{2} << 40,
                   kRestartedProbe, config.concurrency, [](int) {}));
      restarted_answered_after = answered_by(probe, serving_again->group);
    }
  }
  TESSERA_ASSIGN_OR_RETURN(Held after, SettledHeld(serve_pid, config.settle, before));
  // Heartbeats carry the groups' running sequences once a second: a few of them to settle.
  std::optional<MetricsSnapshot> metrics;
  WaitFor(
      [&] {
        absl::StatusOr<MetricsSnapshot> scraped = ScrapeMetrics(log.metrics_port);
        if (!scraped.ok()) return false;
        metrics = *std::move(scraped);
        return metrics->Sum("tessera_queue_depth") == 0 &&
               metrics->Sum("tessera_group_running_sequences") == 0;
      },
      absl::Seconds(5), absl::Milliseconds(500));
  log.Poll();
  if (!serve_exited) serve_exited = serve_process->Wait(absl::ZeroDuration());

  // Crashes: a process below serve gone that was not of the killed job; a job exit other
  // than the killed one's.
  std::vector<std::string> crashed;
  for (const auto& [pid, seen] : processes_before) {
    if (kill.has_value() && kill->job.contains(pid)) continue;
    if (!SameProcessAlive(pid, seen.start_time))
      crashed.push_back(absl::StrCat(seen.name, " ", pid));
  }
  if (serve_exited.has_value()) {
    crashed.push_back(
        absl::StrCat("tessera serve ", serve_pid, " (exit status ", *serve_exited, ")"));
  }
  std::vector<std::string> other_exits;
  bool killed_job_exit_seen = false;
  for (const ServeLog::Exit& exit : log.exits) {
    if (kill.has_value() && exit.replica == 0 && !killed_job_exit_seen) {
      killed_job_exit_seen = true;
      continue;
    }
    other_exits.push_back(exit.line);
  }

  // Shutdown: serve stops its jobs and exits 0; nothing of it may be left.
  const std::map<pid_t, SeenProcess> processes_at_end = ProcessesBelow(serve_pid);
  std::optional<int> exit_status = serve_exited;
  if (!exit_status.has_value()) {
    serve_process->Terminate();
    exit_status = serve_process->Wait(absl::Minutes(1));
  }
  const bool left_in_time = WaitFor(
      [&] {
        for (const auto& [pid, seen] : processes_at_end) {
          if (SameProcessAlive(pid, seen.start_time)) return false;
        }
        return true;
      },
      absl::Seconds(20));
  int left_behind = 0;
  for (const auto& [pid, seen] : processes_at_end) {
    left_behind += SameProcessAlive(pid, seen.start_time) ? 1 : 0;
  }
  (void)left_in_time;
  serve_process->Stop();

  // The report.
  const Tallies tallies = Count(run.outcomes, window);
  std::printf("\n# the run: %zu requests in %.1f s (%.1f requests/s)\n", run.outcomes.size(),
              absl::ToDoubleSeconds(run.took),
              run.outcomes.size() / absl::ToDoubleSeconds(run.took));
  for (int api = 0; api < kSoakApis; ++api) {
    if (tallies[api].sent > 0) PrintTally(static_cast<SoakApi>(api), tallies[api]);
  }
  PrintApiSummary(tallies);
  std::printf("# warm-up: %zu requests in %.1f s, %d wrong, %d lost\n", warmup.outcomes.size(),
              absl::ToDoubleSeconds(warmup.took), Total(warmup_tallies, &Tally::wrong),
              Total(warmup_tallies, &Tally::lost));
  if (kill.has_value()) {
    std::printf("# failover: %s after %d requests (%.1f s into the run); ", kill->what.c_str(),
                kill_after, absl::ToDoubleSeconds(kill->at - run_start));
    if (serving_again.has_value()) {
      std::printf("replica 0 registered again %.1f s after the kill (group %s)\n",
                  absl::ToDoubleSeconds(serving_again->seen - kill->at),
                  serving_again->group.c_str());
    } else {
      std::printf("replica 0 did NOT register again\n");
    }
    std::printf("# %s requests ended UNAVAILABLE while it was down",
                ByApi(tallies, &Tally::unavailable_in_window).c_str());
    if (metrics.has_value()) {
      std::printf("; redispatched %.0f, resumed mid-stream %.0f",
                  metrics->Sum("tessera_redispatches_total"),
                  metrics->Sum("tessera_resumes_total"));
    }
    std::printf("\n");
  } else if (inject) {
    std::printf("# failover: no rank killed: %s\n", kill_error.c_str());
  }
  for (const ServeLog::Exit& exit : log.exits) std::printf("# serve log: %s\n", exit.line.c_str());

  std::vector<Criterion> criteria;
  const double mib = 1048576.0;
  const double ratio = static_cast<double>(after.resources.resident_bytes) /
                       static_cast<double>(before.resources.resident_bytes);
  criteria.push_back({"coordinator resident memory, MiB",
                      absl::StrFormat("%.1f -> %.1f (x%.3f)", before.resources.resident_bytes / mib,
                                      after.resources.resident_bytes / mib, ratio),
                      absl::StrFormat("<= x%.2f", 1 + config.rss_tolerance),
                      ratio <= 1 + config.rss_tolerance});
  criteria.push_back({"coordinator open file descriptors",
                      absl::StrCat(before.resources.open_fds, " -> ", after.resources.open_fds),
                      absl::StrCat("<= ", before.resources.open_fds),
                      after.resources.open_fds <= before.resources.open_fds});
  criteria.push_back({"coordinator threads", absl::StrCat(before.threads, " -> ", after.threads),
                      absl::StrCat("<= ", before.threads), after.threads <= before.threads});
  criteria.push_back({"  and gRPC core's executor and timer pools",
                      absl::StrCat(before.pool_threads, " -> ", after.pool_threads), "(bounded)",
                      true});
  criteria.push_back({"requests lost (no answer)", ByApi(tallies, &Tally::lost), "0",
                      Total(tallies, &Tally::lost) == 0});
  criteria.push_back({"wrong answers (code or content)", ByApi(tallies, &Tally::wrong), "0",
                      Total(tallies, &Tally::wrong) == 0});
  const Tally& http = tallies[static_cast<int>(SoakApi::kHttp)];
  if (http.sent > 0) {
    // The comparison ran: greedy and seeded completions are most of the valid ones.
    criteria.push_back({"HTTP completions equal to their gRPC reference",
                        absl::StrCat(http.matched_reference), ">= 1", http.matched_reference >= 1});
  }
  criteria.push_back({"requests not run (interrupted)",
                      absl::StrCat(config.requests - static_cast<int>(run.outcomes.size())), "0",
                      static_cast<int>(run.outcomes.size()) == config.requests});
  if (inject) {
    criteria.push_back(
        {"rank killed, group registered again",
         kill.has_value() ? (serving_again.has_value() ? "yes" : "no restart") : "no kill", "yes",
         kill.has_value() && serving_again.has_value()});
    criteria.push_back({"  requests it answered",
                        restarted_answered > 0 ? absl::StrCat(restarted_answered, " in the run")
                                               : absl::StrCat(restarted_answered_after, " of ",
                                                              kRestartedProbe, " after the run"),
                        ">= 1", restarted_answered + restarted_answered_after >= 1});
  }
  criteria.push_back(
      {"processes crashed",
       crashed.empty() ? "0" : absl::StrCat(crashed.size(), ": ", absl::StrJoin(crashed, ", ")),
       "0", crashed.empty()});
  criteria.push_back({"worker jobs that exited unasked", absl::StrCat(other_exits.size()), "0",
                      other_exits.empty()});
  const double queue = metrics.has_value() ? metrics->Sum("tessera_queue_depth") : -1;
  const double sequences =
      metrics.has_value() ? metrics->Sum("tessera_group_running_sequences") : -1;
  criteria.push_back({"requests in flight at the coordinator after",
                      metrics.has_value() ? absl::StrCat(queue) : "no metrics", "0", queue == 0});
  criteria.push_back({"sequences running on the groups after",
                      metrics.has_value() ? absl::StrCat(sequences) : "no metrics", "0",
                      sequences == 0});
  criteria.push_back(
      {"tessera serve's exit status on SIGTERM",
       exit_status.has_value() ? absl::StrCat(*exit_status) : "did not exit in 1 min", "0",
       exit_status == 0});
  criteria.push_back(
      {"its processes left after it exited", absl::StrCat(left_behind), "0", left_behind == 0});

  std::printf("\n%-46s %-34s %-10s %s\n", "figure", "value", "limit", "");
  std::vector<std::string> missed;
  for (const Criterion& criterion : criteria) {
    std::printf("%-46s %-34s %-10s %s\n", criterion.figure.c_str(), criterion.value.c_str(),
                criterion.limit.c_str(), criterion.met ? "met" : "MISSED");
    if (!criterion.met) missed.push_back(criterion.figure);
  }
  std::fflush(stdout);
  if (!missed.empty()) {
    return absl::InternalError(absl::StrCat("the soak missed: ", absl::StrJoin(missed, "; "),
                                            " (tessera serve's log: ", log_path, ")"));
  }
  return absl::OkStatus();
}

absl::Status BenchSoak(const BenchSoakConfig& config) {
  if (config.requests < 1 || config.concurrency < 1 || config.warmup_requests < 1) {
    return absl::InvalidArgumentError(
        "--requests, --concurrency and --warmup-requests must be >= 1");
  }
  if (config.np < 1 || config.tp < 1 || config.np % config.tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--np ", config.np, " must be a multiple of --tp ", config.tp));
  }
  if (config.kill_at < 0 || config.kill_at >= 1) {
    return absl::InvalidArgumentError("--kill-at: must be in [0, 1)");
  }
  if (config.kill_at > 0 && config.np / config.tp < 2) {
    return absl::InvalidArgumentError(
        "--kill-at: needs two groups or more (--np at least 2 x --tp), so that requests have "
        "somewhere to go");
  }
  if (config.kill_at > 0 && (config.kill_rank < 0 || config.kill_rank >= config.tp)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kill-rank: must be in [0, --tp ", config.tp, "), not ", config.kill_rank));
  }
  if (config.max_message_bytes < 1024 || config.max_batch_requests < 1) {
    return absl::InvalidArgumentError(
        "--max-message-bytes must be >= 1K and --max-batch-requests >= 1");
  }
  if (config.rss_tolerance < 0) return absl::InvalidArgumentError("--rss-tolerance: negative");
  if (config.http_share < 0 || config.http_share > 1) {
    return absl::InvalidArgumentError("--http-share: must be in [0, 1]");
  }
  InstallShutdownHandlers();
  std::string log_dir = config.log_dir;
  const bool temporary = log_dir.empty();
  if (temporary) {
    std::string pattern = (std::filesystem::temp_directory_path() / "tessera-soak-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot make a folder like ", pattern));
    }
    log_dir = pattern;
  } else {
    std::error_code error;
    std::filesystem::create_directories(log_dir, error);
    if (error) return absl::InvalidArgumentError(absl::StrCat("--log-dir: ", error.message()));
  }
  absl::Status status = Soak(config, log_dir);
  if (status.ok() && temporary) {
    std::error_code ignored;
    std::filesystem::remove_all(log_dir, ignored);
  }
  return status;
}

}  // namespace

int RunBenchSoak(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  BenchSoakConfig config;
  FlagSet flags(kWho,
                "A soak of the serving stack: starts tessera serve (its coordinator in a "
                "process of its own), sends --requests over gRPC and, --http-share of them, "
                "over the OpenAI-style HTTP API from --concurrency clients, mixing valid unary, "
                "streaming and batch requests with cancellations and hang-ups, tight "
                "deadlines, invalid inputs and messages over the limits, and SIGKILLs a rank of "
                "one group partway (serve restarts it). Fails unless every request got a right "
                "code (greedy and seeded HTTP completions the same request's answer over "
                "gRPC) and none was lost, no process crashed, and the coordinator's resident "
                "memory, file descriptors and threads after the run are within bounds of "
                "what they were after a warm-up.");
  flags.Int("requests", &config.requests, "requests of the run");
  flags.Int("warmup-requests", &config.warmup_requests,
            "requests of the same mix before the figures are first read");
  flags.Int("concurrency", &config.concurrency, "clients at once, each on its own connection");
  flags.Int("seed", &config.seed, "seed of the mix: the same requests for the same seed");
  flags.Double("http-share", &config.http_share,
               "share of the requests sent over the OpenAI-style HTTP API (POST "
               "/v1/completions, JSON or server-sent events; GET /v1/models) instead of gRPC");
  flags.Int("np", &config.np, "worker ranks of tessera serve");
  flags.Int("tp", &config.tp, "tensor-parallel degree of each group");
  flags.Double("kill-at", &config.kill_at,
               "SIGKILL a rank of replica 0 once this share of the requests has started (0: "
               "none)");
  flags.Int("kill-rank", &config.kill_rank, "which rank of the group --kill-at kills");
  flags.Bytes("kv-cache-memory", &config.kv_cache_bytes,
              "KV-cache memory per rank of tessera serve: small, so that the warm-up fills the "
              "groups' prefix caches and the coordinator's mirror of them before its memory is "
              "first read");
  flags.Bytes("max-message-bytes", &config.max_message_bytes,
              "the coordinator's --max-message-bytes (oversized requests exceed it)");
  flags.Int("max-batch-requests", &config.max_batch_requests,
            "the coordinator's --max-batch-requests (oversized batches exceed it)");
  flags.Duration("answer-timeout", &config.answer_timeout,
                 "deadline of every request not meant to miss one: a request without an answer "
                 "by then is lost");
  flags.Duration("settle", &config.settle,
                 "how long tessera serve may take to come back to its descriptors and threads "
                 "after the warm-up and after the run");
  flags.Duration("ready-timeout", &config.ready_timeout,
                 "how long the workers may take to load and register (and to come back)");
  flags.Double("rss-tolerance", &config.rss_tolerance,
               "the coordinator's resident memory after the run may exceed what it was before "
               "by this share");
  flags.String("serve-args", &config.serve_args, "more flags of tessera serve");
  flags.String("log-dir", &config.log_dir,
               "where tessera serve's log goes (default: a temporary folder, removed after a "
               "run that passes)");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(BenchSoak(config));
}

}  // namespace tessera::launcher
