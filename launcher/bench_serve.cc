// `tessera bench serve`: the serving stack end to end, as clients see it, over gRPC or the
// OpenAI-style HTTP API (--api). N streaming clients at once against the coordinator, the
// same one at a time, the time to first token the coordinator adds compared with asking a
// group leader directly, and what the HTTP layer adds compared with gRPC. With --train, the
// cost of a LoRA fine-tune inside the serving job to each side: the concurrent run served
// alone and with the fine-tune in the first group (or the first --train-groups, data-parallel),
// and the fine-tune's tokens/s there against the same fine-tune alone (`tessera train`).

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "launcher/bench.h"
#include "launcher/bench_client.h"
#include "launcher/child_process.h"
#include "launcher/coordinator_process.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/openai_client.h"
#include "launcher/process.h"
#include "launcher/serving_finetune.h"
#include "launcher/shutdown_signal.h"
#include "launcher/worker_groups.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status_macros.h"
#include "runtime/serve/grpc_server.h"
#include "runtime/serve/serve_metrics.h"
#include "tessera/v1/inference.grpc.pb.h"
#include "tessera/v1/worker.grpc.pb.h"

namespace tessera::launcher {
namespace {

constexpr char kWho[] = "tessera bench serve";
// What the figures are held against (the serving issue's acceptance targets).
constexpr double kTargetSpeedup = 4.0;          // output tokens/s, all streams vs one
constexpr double kTargetOverheadMs = 1.0;       // median TTFT added by the coordinator
constexpr double kTargetHttpTtftMs = 1.0;       // median TTFT added by the HTTP layer
constexpr double kTargetHttpThroughput = 0.95;  // output tokens/s over HTTP vs gRPC
constexpr int kOverheadWarmupPairs = 10;        // not counted
// --train: the fine-tune-inside-serving issue's targets, at the concurrent run's streams.
constexpr double kTargetTrainItlP99 = 1.5;      // ITL P99 with the fine-tune vs serving alone
constexpr double kTargetTrainThroughput = 0.5;  // fine-tune tokens/s inside serving vs alone
struct TokenRange {
  int min = 16;
  int max = 64;
};

struct BenchServeConfig {
  WorkerJobConfig workers;
  std::string target;        // empty: a coordinator and workers of our own
  std::string leader;        // with --target: a group leader's Worker endpoint
  std::string http_target;   // with --target: host:port of its HTTP API
  std::string api = "grpc";  // grpc, http, or both
  int requests = 2000;
  int concurrency = 16;
  int baseline_requests = 50;
  int overhead_requests = 200;
  std::string prompt_tokens = "16:64";
  std::string output_tokens = "16:64";
  int seed = 1;
  absl::Duration request_timeout = absl::Minutes(5);
  // > 0: SIGKILL rank kill_rank of replica 0 this long into the concurrent run (failover).
  absl::Duration kill_rank_after;
  int kill_rank = 1;
  // The concurrent run twice, serving alone and with a fine-tune inside the first
  // --train-groups groups (the workers' --train-config, or one written here), then that
  // fine-tune alone for train_steps.
  bool train = false;
  int train_steps = 100;
};

// A rank killed during the concurrent run, as the supervising thread saw it.
struct InjectedFault {
  absl::Duration heartbeat;  // the coordinator's heartbeat interval (3 missed: dead)
  absl::Mutex mutex;
  std::optional<absl::Time> killed_at ABSL_GUARDED_BY(mutex);
  std::optional<absl::Time> serving_again_at ABSL_GUARDED_BY(mutex);
  std::string what ABSL_GUARDED_BY(mutex);
};

// "MIN:MAX" (or "N" for MIN = MAX = N), both >= 1.
absl::StatusOr<TokenRange> ParseTokenRange(const std::string& text, const std::string& flag) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  TokenRange range;
  bool ok = parts.size() == 1 ? absl::SimpleAtoi(parts[0], &range.min)
                              : parts.size() == 2 && absl::SimpleAtoi(parts[0], &range.min) &&
                                    absl::SimpleAtoi(parts[1], &range.max);
  if (parts.size() == 1) range.max = range.min;
  if (!ok || range.min < 1 || range.max < range.min) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", text, "' is not MIN:MAX with 1 <= MIN <= MAX"));
  }
  return range;
}

struct PlannedRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 0;
};

// `count` requests with prompt and output lengths uniform in the ranges and prompt token ids
// uniform in [0, vocab), drawn from `random`.
std::vector<PlannedRequest> Plan(int count, TokenRange prompt, TokenRange output, int32_t vocab,
                                 std::mt19937_64& random) {
  std::uniform_int_distribution<int> prompt_length(prompt.min, prompt.max);
  std::uniform_int_distribution<int> output_length(output.min, output.max);
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  std::vector<PlannedRequest> plan(count);
  for (PlannedRequest& request : plan) {
    request.prompt.resize(prompt_length(random));
    for (int32_t& id : request.prompt) id = token(random);
    request.max_tokens = output_length(random);
  }
  return plan;
}

v1::GenerateRequest ToWire(const PlannedRequest& planned, const std::string& model) {
  v1::GenerateRequest request;
  request.set_model(model);
  request.mutable_prompt_tokens()->Add(planned.prompt.begin(), planned.prompt.end());
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_max_tokens(planned.max_tokens);
  sampling.set_ignore_eos(true);
  return request;
}

// One streamed request as the client saw it.
struct StreamResult {
  grpc::Status status;
  double ttft_seconds = -1;  // call start -> first message with a token
  std::vector<double> inter_token_seconds;
  int64_t output_tokens = 0;
  int finals = 0;
  bool resumed = false;        // a group failed under it and another continued it
  absl::Time longest_gap_end;  // when the longest wait between two tokens ended
};

// Reads a stream of GenerateStreamResponse to its end; `reader` was started at `start`.
template <typename Reader>
StreamResult ReadStream(Reader& reader, absl::Time start) {
  StreamResult result;
  v1::GenerateStreamResponse message;
  absl::Time last = start;
  absl::Duration longest_gap;
  while (reader.Read(&message)) {
    absl::Time at = absl::Now();
    result.finals += message.final() ? 1 : 0;
    result.resumed |= message.resumptions_size() > 0;
    if (result.output_tokens > 0 && at - last > longest_gap) {
      longest_gap = at - last;
      result.longest_gap_end = at;
    }
    const int tokens = message.tokens_size();
    if (tokens == 0) continue;
    if (result.output_tokens == 0) {
      result.ttft_seconds = absl::ToDoubleSeconds(at - start);
    } else {
      // A message of k tokens took k inter-token intervals.
      const double gap = absl::ToDoubleSeconds(at - last) / tokens;
      result.inter_token_seconds.insert(result.inter_token_seconds.end(), tokens, gap);
    }
    result.output_tokens += tokens;
    last = at;
  }
  result.status = reader.Finish();
  return result;
}

// Failures by what went wrong: a status code's name, or what was wrong with a stream that
// ended OK.
struct ErrorTally {
  std::map<std::string, int> counts;
  std::map<std::string, std::string> first_message;
  int total = 0;

  void Add(const std::string& what, const std::string& message) {
    ++total;
    if (counts[what]++ == 0) first_message[what] = message;
  }
  void Merge(const ErrorTally& other) {
    for (const auto& [what, count] : other.counts) {
      if (counts[what] == 0) first_message[what] = other.first_message.at(what);
      counts[what] += count;
    }
    total += other.total;
  }
  std::string Summary() const {
    if (total == 0) return "none";
    std::vector<std::string> parts;
    for (const auto& [what, count] : counts) {
      parts.push_back(absl::StrCat(what, " ", count, " (first: ", first_message.at(what), ")"));
    }
    return absl::StrJoin(parts, "; ");
  }
};

// An error for a stream that should have produced `expected_tokens` tokens; nullopt when
// it did.
std::optional<std::pair<std::string, std::string>> CheckStream(const StreamResult& result,
                                                               int expected_tokens) {
  if (!result.status.ok()) {
    return std::make_pair(std::string(serve::StatusCodeName(
                              static_cast<absl::StatusCode>(result.status.error_code()))),
                          result.status.error_message());
  }
  if (result.finals != 1 || result.output_tokens != expected_tokens) {
    return std::make_pair(
        std::string("BAD_STREAM"),
        absl::StrCat(result.output_tokens, " tokens and ", result.finals,
                     " final messages; expected ", expected_tokens, " tokens and 1 final"));
  }
  return std::nullopt;
}

// One streamed request of a client, start to end.
using StreamFn = std::function<StreamResult(const PlannedRequest&)>;
// A new client (a connection of its own) and its StreamFn.
using ConnectFn = std::function<absl::StatusOr<StreamFn>()>;

// Streams by the streaming call `method` of `Service`'s stub at `address`.
template <typename Service, typename Method>
ConnectFn StubClients(const std::string& address, const std::string& model, absl::Duration timeout,
                      Method method) {
  return [=]() -> absl::StatusOr<StreamFn> {
    std::shared_ptr<grpc::Channel> channel = ConnectBenchClient(address);
    TESSERA_RETURN_IF_ERROR(WaitConnected(*channel, address));
    std::shared_ptr<typename Service::Stub> stub = Service::NewStub(channel);
    return StreamFn([stub, model, timeout, method](const PlannedRequest& planned) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
      absl::Time begun = absl::Now();
      auto reader = ((*stub).*method)(&context, ToWire(planned, model));
      return ReadStream(*reader, begun);
    });
  };
}

// GenerateStream through the coordinator at `target`.
ConnectFn GrpcClients(const std::string& target, const std::string& model, absl::Duration timeout) {
  return StubClients<v1::Inference>(target, model, timeout, &v1::Inference::Stub::GenerateStream);
}

// Worker/Submit straight to a group leader at `leader`.
ConnectFn LeaderClients(const std::string& leader, const std::string& model,
                        absl::Duration timeout) {
  return StubClients<v1::Worker>(leader, model, timeout, &v1::Worker::Stub::Submit);
}

// The same request as a streamed POST /v1/completions (token ids as the prompt, greedy,
// ignore_eos, usage asked for), read as StreamResult: TTFT to the first chunk; the output
// tokens are the usage's; the gaps between chunks (a message of the engine each) count as
// the inter-token times, spread over the tokens when a chunk holds several.
StreamResult ReadHttpStream(OpenAiClient& client, const PlannedRequest& planned,
                            const std::string& model) {
  const nlohmann::json body = {{"model", model},
                               {"prompt", planned.prompt},
                               {"max_tokens", planned.max_tokens},
                               {"temperature", 0},
                               {"ignore_eos", true},
                               {"stream", true},
                               {"stream_options", {{"include_usage", true}}}};
  const absl::Time begun = absl::Now();
  HttpAnswer answer = client.Post("/v1/completions", body.dump());
  StreamResult result;
  if (answer.status != 200 || !answer.transport_error.empty()) {
    result.status = grpc::Status(grpc::StatusCode::UNKNOWN,
                                 absl::StrCat("HTTP ", answer.status, " ", answer.transport_error,
                                              " ", answer.body.substr(0, 200)));
    return result;
  }
  std::vector<absl::Time> chunks;
  for (size_t i = 0; i < answer.events.size(); ++i) {
    absl::string_view data = answer.events[i];
    if (!absl::ConsumePrefix(&data, "data: ") || data == "[DONE]") continue;
    const nlohmann::json chunk = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (!chunk.is_object() || chunk.contains("error")) {
      result.status = grpc::Status(grpc::StatusCode::UNKNOWN, std::string(data.substr(0, 200)));
      return result;
    }
    const nlohmann::json& choices = chunk.value("choices", nlohmann::json::array());
    if (choices.empty()) {
      result.output_tokens = chunk["usage"].value("completion_tokens", 0);
      continue;
    }
    result.finals += choices[0]["finish_reason"].is_null() ? 0 : 1;
    chunks.push_back(answer.event_times[i]);
  }
  if (chunks.empty()) return result;
  result.ttft_seconds = absl::ToDoubleSeconds(chunks.front() - begun);
  const double tokens_per_chunk =
      std::max(1.0, static_cast<double>(result.output_tokens) / static_cast<double>(chunks.size()));
  for (size_t i = 1; i < chunks.size(); ++i) {
    const double gap = absl::ToDoubleSeconds(chunks[i] - chunks[i - 1]) / tokens_per_chunk;
    result.inter_token_seconds.insert(result.inter_token_seconds.end(),
                                      static_cast<size_t>(std::lround(tokens_per_chunk)), gap);
  }
  return result;
}

// Streamed POST /v1/completions to the HTTP API at `http_target` (host:port), each client on
// a connection it keeps open, as the openai package keeps its.
ConnectFn HttpClients(const std::string& http_target, const std::string& model,
                      absl::Duration timeout) {
  return [=]() -> absl::StatusOr<StreamFn> {
    std::string host;
    int port = 0;
    TESSERA_RETURN_IF_ERROR(serve::SplitHostPort(http_target, "--http-target", &host, &port));
    auto client = std::make_shared<OpenAiClient>(host, port, timeout, /*keep_alive=*/true);
    return StreamFn([client, model](const PlannedRequest& planned) {
      return ReadHttpStream(*client, planned, model);
    });
  };
}

struct PhaseFigures {
  int streams = 0;
  int requests = 0;
  double seconds = 0;
  int64_t output_tokens = 0;
  std::vector<double> ttft_seconds;
  std::vector<double> inter_token_seconds;
  std::vector<absl::Time> resumed_gap_ends;  // of the streams that were resumed
  ErrorTally errors;
};

// Runs `plan` through `concurrency` streaming clients (`connect` makes each), each taking the
// next request when its previous one ends. Stops taking requests on Ctrl-C.
absl::StatusOr<PhaseFigures> RunStreams(const ConnectFn& connect,
                                        const std::vector<PlannedRequest>& plan, int concurrency) {
  PhaseFigures figures;
  figures.streams = concurrency;
  std::vector<StreamFn> streams;
  for (int c = 0; c < concurrency; ++c) {
    TESSERA_ASSIGN_OR_RETURN(StreamFn stream, connect());
    streams.push_back(std::move(stream));
  }
  std::atomic<int> next{0};
  absl::Mutex mutex;
  absl::Time start = absl::Now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&, c] {
      PhaseFigures mine;
      for (int i = next.fetch_add(1); i < static_cast<int>(plan.size()) && !ShutdownRequested();
           i = next.fetch_add(1)) {
        StreamResult result = streams[c](plan[i]);
        ++mine.requests;
        mine.output_tokens += result.output_tokens;
        if (auto error = CheckStream(result, plan[i].max_tokens)) {
          mine.errors.Add(error->first, error->second);
          continue;
        }
        if (result.resumed) mine.resumed_gap_ends.push_back(result.longest_gap_end);
        mine.ttft_seconds.push_back(result.ttft_seconds);
        mine.inter_token_seconds.insert(mine.inter_token_seconds.end(),
                                        result.inter_token_seconds.begin(),
                                        result.inter_token_seconds.end());
      }
      absl::MutexLock lock(&mutex);
      figures.requests += mine.requests;
      figures.output_tokens += mine.output_tokens;
      figures.ttft_seconds.insert(figures.ttft_seconds.end(), mine.ttft_seconds.begin(),
                                  mine.ttft_seconds.end());
      figures.inter_token_seconds.insert(figures.inter_token_seconds.end(),
                                         mine.inter_token_seconds.begin(),
                                         mine.inter_token_seconds.end());
      figures.resumed_gap_ends.insert(figures.resumed_gap_ends.end(), mine.resumed_gap_ends.begin(),
                                      mine.resumed_gap_ends.end());
      figures.errors.Merge(mine.errors);
    });
  }
  for (std::thread& client : clients) client.join();
  figures.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return figures;
}

// The nearest-rank percentile `p` (0..100) of `values`; NaN when empty.
double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return std::nan("");
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * values.size()));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

// The same of seconds, in milliseconds.
double PercentileMs(std::vector<double> values, double p) {
  return 1e3 * Percentile(std::move(values), p);
}

// The times to first token of two paths, measured in alternation.
struct PairedTtft {
  std::vector<double> first_ttft_seconds;
  std::vector<double> second_ttft_seconds;
  ErrorTally errors;
};

// Sequential requests of one token, alternately by `first` and by `second` (which of the two
// goes first alternates too). Each request has a prompt of its own, so neither path finds the
// other's prefix in the cache. `second_name` marks the second path's errors.
absl::StatusOr<PairedTtft> MeasurePairedTtft(const ConnectFn& first, const ConnectFn& second,
                                             const std::string& second_name,
                                             const std::vector<PlannedRequest>& plan) {
  TESSERA_ASSIGN_OR_RETURN(StreamFn first_stream, first());
  TESSERA_ASSIGN_OR_RETURN(StreamFn second_stream, second());
  PairedTtft figures;
  for (size_t i = 0; i + 1 < plan.size() && !ShutdownRequested(); i += 2) {
    const bool counted = i / 2 >= kOverheadWarmupPairs;
    for (int leg = 0; leg < 2; ++leg) {
      const bool via_first = (leg == 0) == ((i / 2) % 2 == 0);
      const PlannedRequest& planned = plan[i + leg];
      StreamResult result = via_first ? first_stream(planned) : second_stream(planned);
      if (auto error = CheckStream(result, planned.max_tokens)) {
        figures.errors.Add(absl::StrCat(error->first, via_first ? "" : " (" + second_name + ")"),
                           error->second);
        continue;
      }
      if (!counted) continue;
      (via_first ? figures.first_ttft_seconds : figures.second_ttft_seconds)
          .push_back(result.ttft_seconds);
    }
  }
  return figures;
}

void PrintPhase(const char* name, const PhaseFigures& phase) {
  std::printf("%-16s %7d %6d %6d %8.1f %8.2f %10.1f %7.1f %7.1f %7.1f %6.2f %6.2f %6.2f\n", name,
              phase.streams, phase.requests, phase.errors.total, phase.seconds,
              phase.requests / phase.seconds, phase.output_tokens / phase.seconds,
              PercentileMs(phase.ttft_seconds, 50), PercentileMs(phase.ttft_seconds, 90),
              PercentileMs(phase.ttft_seconds, 99), PercentileMs(phase.inter_token_seconds, 50),
              PercentileMs(phase.inter_token_seconds, 90),
              PercentileMs(phase.inter_token_seconds, 99));
  std::fflush(stdout);
}

// The failover figures of a run with a rank killed (--kill-rank-after).
// Waits up to `restart_wait` for the killed group to serve again.
void PrintFailover(const PhaseFigures& phase, InjectedFault& fault, absl::Duration heartbeat,
                   absl::Duration restart_wait) {
  absl::MutexLock lock(&fault.mutex);
  auto settled = [&fault]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fault.mutex) {
    return !fault.killed_at.has_value() || fault.serving_again_at.has_value();
  };
  fault.mutex.AwaitWithTimeout(absl::Condition(&settled), restart_wait);
  std::printf("\n# failover: %s\n", fault.what.c_str());
  if (!fault.killed_at.has_value()) return;
  std::vector<double> extra;
  for (absl::Time end : phase.resumed_gap_ends) {
    extra.push_back(absl::ToDoubleSeconds(end - *fault.killed_at));
  }
  // Detection is bounded by the workers' collective deadline (a peer killed) or the
  // heartbeat timeout (a leader lost); the target allows 2 s on top of the latter.
  const double target = 2.0 + 3 * absl::ToDoubleSeconds(heartbeat);
  const double worst = extra.empty() ? 0.0 : *std::max_element(extra.begin(), extra.end());
  std::printf("%-44s %10zu\n", "streams resumed on another group", extra.size());
  std::printf("%-44s %9.2fs %9s\n", "kill -> next token, median of those",
              PercentileMs(extra, 50) / 1e3, "");
  std::printf("%-44s %9.2fs %8.1fs %7.2f  %s\n", "kill -> next token, worst of those", worst,
              target, worst / target, worst <= target ? "met" : "MISSED");
  if (fault.serving_again_at.has_value()) {
    std::printf("%-44s %9.2fs\n", "kill -> restarted group serving again",
                absl::ToDoubleSeconds(*fault.serving_again_at - *fault.killed_at));
  } else {
    std::printf("# the killed group was not serving again by the end of the run\n");
  }
}

// The failed requests' line of the table and its reasons; UNKNOWN when any failed.
absl::Status ReportFailedRequests(const ErrorTally& errors) {
  std::printf("%-44s %10d %10d\n", "failed requests", errors.total, 0);
  std::printf("# errors: %s\n", errors.Summary().c_str());
  std::fflush(stdout);
  if (errors.total > 0) {
    return absl::UnknownError(absl::StrCat(errors.total, " requests failed: ", errors.Summary()));
  }
  return absl::OkStatus();
}

// `target`: the coordinator's gRPC address; `leader`: a group leader's, or empty;
// `http_target`: the coordinator's HTTP API, or empty (then --api must be grpc).
absl::Status Bench(const std::string& target, const std::string& leader,
                   const std::string& http_target, const BenchServeConfig& config,
                   const std::string& setup, InjectedFault* fault = nullptr) {
  TESSERA_ASSIGN_OR_RETURN(TokenRange prompt_range,
                           ParseTokenRange(config.prompt_tokens, "--prompt-tokens"));
  TESSERA_ASSIGN_OR_RETURN(TokenRange output_range,
                           ParseTokenRange(config.output_tokens, "--output-tokens"));
  std::shared_ptr<grpc::Channel> channel = ConnectBenchClient(target);
  TESSERA_RETURN_IF_ERROR(WaitConnected(*channel, target));
  auto stub = v1::Inference::NewStub(channel);
  std::string model = config.workers.model_name;
  if (model.empty()) {
    TESSERA_ASSIGN_OR_RETURN(model, FirstModel(*stub));
  }
  TESSERA_ASSIGN_OR_RETURN(int32_t vocab, ProbeVocab(*stub, model));
  const bool grpc_phases = config.api != "http";
  const bool http_phases = config.api != "grpc";
  const ConnectFn grpc_clients = GrpcClients(target, model, config.request_timeout);
  const ConnectFn http_clients = HttpClients(http_target, model, config.request_timeout);
  // The concurrent and one-at-a-time phases run over gRPC, and over HTTP too with --api both.
  const ConnectFn& main_clients = grpc_phases ? grpc_clients : http_clients;

  // One random sequence for every phase: no prompt is sent twice, so no phase gets another's
  // prefix from the cache.
  std::mt19937_64 random(static_cast<uint64_t>(config.seed));
  std::vector<PlannedRequest> concurrent =
      Plan(config.requests, prompt_range, output_range, vocab, random);
  std::vector<PlannedRequest> alone =
      Plan(config.baseline_requests, prompt_range, output_range, vocab, random);
  const TokenRange one_token{1, 1};

  std::printf(
      "# tessera bench serve: %s; model %s at %s%s\n"
      "# streaming requests (%s, greedy, ignore_eos): prompts of %d:%d random "
      "token ids in [0, %d), %d:%d output tokens, seed %d\n"
      "# TTFT: call start -> first token at the client; ITL: between tokens (over HTTP: "
      "between chunks, spread over the tokens of each)\n",
      setup.c_str(), model.c_str(), target.c_str(),
      http_phases ? absl::StrCat(", HTTP API at ", http_target).c_str() : "",
      config.api == "grpc"   ? "GenerateStream"
      : config.api == "http" ? "POST /v1/completions, stream"
                             : "GenerateStream, and POST /v1/completions, stream",
      prompt_range.min, prompt_range.max, vocab, output_range.min, output_range.max, config.seed);
  std::printf("%-16s %7s %6s %6s %8s %8s %10s %7s %7s %7s %6s %6s %6s\n", "run", "streams", "reqs",
              "errors", "seconds", "req/s", "output t/s", "TTFT50", "TTFT90", "TTFT99", "ITL50",
              "ITL90", "ITL99");
  std::printf("%-16s %7s %6s %6s %8s %8s %10s %7s %7s %7s %6s %6s %6s\n", "", "", "", "", "", "",
              "", "ms", "ms", "ms", "ms", "ms", "ms");
  std::fflush(stdout);

  std::fprintf(stderr, "%s: %d requests over %d streams...\n", kWho, config.requests,
               config.concurrency);
  TESSERA_ASSIGN_OR_RETURN(PhaseFigures many,
                           RunStreams(main_clients, concurrent, config.concurrency));
  if (ShutdownRequested()) return absl::CancelledError("interrupted");
  PrintPhase(grpc_phases ? "concurrent" : "concurrent http", many);
  if (fault != nullptr) {
    PrintFailover(many, *fault, fault->heartbeat, config.workers.ready_timeout);
  }
  // With --api both, the same load over HTTP: as many requests of the same lengths, with
  // prompts of their own.
  std::optional<PhaseFigures> many_http;
  if (grpc_phases && http_phases) {
    std::mt19937_64 http_random(static_cast<uint64_t>(config.seed) + 1);
    std::vector<PlannedRequest> concurrent_http = concurrent;
    std::uniform_int_distribution<int32_t> token(0, vocab - 1);
    for (PlannedRequest& request : concurrent_http) {
      for (int32_t& id : request.prompt) id = token(http_random);
    }
    std::fprintf(stderr, "%s: the same over HTTP...\n", kWho);
    TESSERA_ASSIGN_OR_RETURN(many_http,
                             RunStreams(http_clients, concurrent_http, config.concurrency));
    if (ShutdownRequested()) return absl::CancelledError("interrupted");
    PrintPhase("concurrent http", *many_http);
  }
  std::fprintf(stderr, "%s: %d requests one at a time...\n", kWho, config.baseline_requests);
  TESSERA_ASSIGN_OR_RETURN(PhaseFigures one, RunStreams(main_clients, alone, 1));
  if (ShutdownRequested()) return absl::CancelledError("interrupted");
  PrintPhase(grpc_phases ? "one at a time" : "one at a time http", one);

  // Sequential one-token requests alternating between two paths, and their TTFT rows.
  auto paired_phase = [&](const ConnectFn& first, const char* first_label, const ConnectFn& second,
                          const char* second_label, const std::string& second_name,
                          const std::string& what) -> absl::StatusOr<PairedTtft> {
    std::vector<PlannedRequest> plan =
        Plan(2 * (config.overhead_requests + kOverheadWarmupPairs),
             {prompt_range.min, prompt_range.min}, one_token, vocab, random);
    std::fprintf(stderr, "%s: %d requests of 1 token each way, %s...\n", kWho,
                 config.overhead_requests, what.c_str());
    TESSERA_ASSIGN_OR_RETURN(PairedTtft paired,
                             MeasurePairedTtft(first, second, second_name, plan));
    if (ShutdownRequested()) return absl::CancelledError("interrupted");
    std::printf(
        "\n# %s: %d sequential requests each way, alternating (after %d pairs of warm-up): %d "
        "prompt tokens, max_tokens 1\n",
        what.c_str(), config.overhead_requests, kOverheadWarmupPairs, prompt_range.min);
    std::printf("%-34s %6s %7s %7s %7s\n", "path", "reqs", "TTFT50", "TTFT90", "TTFT99");
    auto row = [](const char* path, const std::vector<double>& ttft) {
      std::printf("%-34s %6zu %7.3f %7.3f %7.3f\n", path, ttft.size(), PercentileMs(ttft, 50),
                  PercentileMs(ttft, 90), PercentileMs(ttft, 99));
    };
    row(first_label, paired.first_ttft_seconds);
    row(second_label, paired.second_ttft_seconds);
    return paired;
  };
  std::optional<PairedTtft> overhead;
  if (grpc_phases && !leader.empty() && fault == nullptr) {
    TESSERA_ASSIGN_OR_RETURN(
        overhead, paired_phase(grpc_clients, "client -> coordinator -> leader",
                               LeaderClients(leader, model, config.request_timeout),
                               "client -> leader (Worker/Submit)", "leader",
                               absl::StrCat("coordinator overhead (leader ", leader, ")")));
  }
  std::optional<PairedTtft> http_overhead;
  if (http_phases && fault == nullptr) {
    TESSERA_ASSIGN_OR_RETURN(
        http_overhead,
        paired_phase(http_clients, "POST /v1/completions (stream)", grpc_clients,
                     "gRPC GenerateStream", "grpc", "HTTP layer (both through the coordinator)"));
  }

  const double speedup = (many.output_tokens / many.seconds) / (one.output_tokens / one.seconds);
  std::printf("\n%-44s %10s %10s %7s\n", "figure", "value", "target", "ratio");
  std::printf("%-44s %9.2fx %9s %7.2f  %s\n",
              absl::StrCat("output t/s, ", config.concurrency, " streams vs 1").c_str(), speedup,
              absl::StrCat(">= ", kTargetSpeedup, "x").c_str(), speedup / kTargetSpeedup,
              speedup >= kTargetSpeedup ? "met" : "MISSED");
  if (overhead) {
    const double added = PercentileMs(overhead->first_ttft_seconds, 50) -
                         PercentileMs(overhead->second_ttft_seconds, 50);
    std::printf("%-44s %8.3fms %9s %7.2f  %s\n", "median TTFT added by the coordinator", added,
                absl::StrCat("<= ", kTargetOverheadMs, "ms").c_str(), added / kTargetOverheadMs,
                added <= kTargetOverheadMs ? "met" : "MISSED");
  } else if (fault != nullptr) {
    std::printf("# coordinator overhead not measured in a run with a rank killed\n");
  } else if (grpc_phases) {
    std::printf("# coordinator overhead not measured: --target needs --leader HOST:PORT\n");
  }
  if (http_overhead) {
    const double added = PercentileMs(http_overhead->first_ttft_seconds, 50) -
                         PercentileMs(http_overhead->second_ttft_seconds, 50);
    std::printf("%-44s %8.3fms %9s %7.2f  %s\n", "median TTFT added by HTTP (vs gRPC)", added,
                absl::StrCat("<= ", kTargetHttpTtftMs, "ms").c_str(), added / kTargetHttpTtftMs,
                added <= kTargetHttpTtftMs ? "met" : "MISSED");
  }
  if (many_http) {
    const double ratio =
        (many_http->output_tokens / many_http->seconds) / (many.output_tokens / many.seconds);
    std::printf("%-44s %9.3fx %9s %7.2f  %s\n",
                absl::StrCat("output t/s, HTTP vs gRPC, ", config.concurrency, " streams").c_str(),
                ratio, absl::StrCat(">= ", kTargetHttpThroughput, "x").c_str(),
                ratio / kTargetHttpThroughput, ratio >= kTargetHttpThroughput ? "met" : "MISSED");
  }
  ErrorTally errors = many.errors;
  errors.Merge(one.errors);
  if (many_http) errors.Merge(many_http->errors);
  if (overhead) errors.Merge(overhead->errors);
  if (http_overhead) errors.Merge(http_overhead->errors);
  return ReportFailedRequests(errors);
}

// The fine-tune --train writes when the workers are given none: LoRA on prompt -> completion
// pairs of random words, packed into rows of kBenchTuneSeqLen tokens, with steps enough to
// outlast any run, so that it never publishes (an adapter load would be measured with it).
constexpr int kBenchTunePairs = 64;
constexpr int kBenchTuneSeqLen = 128;
// Rows of a step, taken one a micro-batch: the finer the pieces of a step that run between
// serving steps, the less each adds to the serving step before it.
constexpr int kBenchTuneMicroBatch = 1;
constexpr int kBenchTuneGradAccum = 4;
constexpr int kBenchTuneLoraR = 8;
constexpr int64_t kBenchTuneSteps = 1'000'000;

// Writes the fine-tune's pairs and config file (serving_finetune.h) into `dir`; the file's
// path.
absl::StatusOr<std::string> WriteBenchFineTune(const std::string& dir, int seed) {
  static const char* const kWords[] = {"river",  "stone",   "cloud",  "paper",  "seven",  "orange",
                                       "quiet",  "north",   "lamp",   "garden", "window", "silver",
                                       "letter", "morning", "engine", "forest"};
  std::mt19937_64 random(static_cast<uint64_t>(seed));
  std::uniform_int_distribution<size_t> word(0, std::size(kWords) - 1);
  std::uniform_int_distribution<int> length(4, 12);
  auto words = [&] {
    std::vector<std::string> picked(length(random));
    for (std::string& w : picked) w = kWords[word(random)];
    return absl::StrJoin(picked, " ");
  };
  const std::string data = dir + "/pairs.jsonl";
  const std::string path = dir + "/finetune.json";
  std::ofstream pairs(data);
  for (int i = 0; i < kBenchTunePairs; ++i) {
    const std::string prompt = words() + " ";
    pairs << nlohmann::json{{"prompt", prompt}, {"completion", words()}}.dump() << "\n";
  }
  std::ofstream file(path);
  file << nlohmann::json{{"data", data},
                         {"adapter", "bench-tune"},
                         {"output", dir + "/tuned"},
                         {"steps", kBenchTuneSteps},
                         {"publish_every", 0},
                         {"seq_len", kBenchTuneSeqLen},
                         {"micro_batch", kBenchTuneMicroBatch},
                         {"grad_accum", kBenchTuneGradAccum},
                         {"lora_r", kBenchTuneLoraR},
                         {"seed", seed}}
              .dump()
       << "\n";
  pairs.close();
  file.close();
  if (!pairs || !file) {
    return absl::InternalError(absl::StrCat("cannot write ", data, " and ", path));
  }
  return path;
}

// A string field of a log line's JSON object; empty when absent or not a string.
std::string LogField(const nlohmann::json& event, const char* key) {
  auto it = event.find(key);
  return it != event.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// What a serving fine-tune's leader logged (serving_finetune.cc: {"component":"finetune",
// "event":"step","step":"N/M","seconds":S,...}, each line with its "ts") of the steps that
// ended between `from` and `to`.
struct LoggedSteps {
  int64_t steps = 0;  // ended in [from, to]
  std::vector<double> step_seconds;
  int64_t last_step = 0;    // the last that ended by `to`
  int64_t total_steps = 0;  // of the fine-tune's
  std::string failure;      // its error, when it failed
};

LoggedSteps StepsLogged(const std::string& log, absl::Time from, absl::Time to) {
  LoggedSteps logged;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!absl::StartsWith(line, "{")) continue;
    const nlohmann::json event = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!event.is_object() || LogField(event, "component") != "finetune") continue;
    const std::string what = LogField(event, "event");
    if (what == "fine-tune failed") logged.failure = LogField(event, "error");
    absl::Time at;
    std::string unused;
    if (what != "step" ||
        !absl::ParseTime("%Y-%m-%dT%H:%M:%E*SZ", LogField(event, "ts"), &at, &unused) || at > to) {
      continue;
    }
    const std::vector<std::string> step = absl::StrSplit(LogField(event, "step"), '/');
    if (step.size() == 2) {
      (void)absl::SimpleAtoi(step[0], &logged.last_step);
      (void)absl::SimpleAtoi(step[1], &logged.total_steps);
    }
    if (at < from) continue;
    ++logged.steps;
    double seconds = 0;
    if (absl::SimpleAtod(LogField(event, "seconds"), &seconds)) {
      logged.step_seconds.push_back(seconds);
    }
  }
  return logged;
}

// A concurrent run of --train against a coordinator of its own and worker jobs as `workers`
// says, started for it and stopped after it.
struct ServingRun {
  std::string model;
  int32_t vocab = 0;
  PhaseFigures figures;
  absl::Time end;               // when its last stream ended
  std::string first_group_log;  // the output of replica 0's job (where a fine-tune runs)
  std::string first_group_log_path;
};

// The jobs' output goes to `log_prefix`-replicaR.log. Every run makes the same requests (from
// --seed), each to workers of its own, so none finds another's prefixes in a cache.
absl::StatusOr<ServingRun> RunServing(const BenchServeConfig& config,
                                      const WorkerJobConfig& workers,
                                      const std::string& log_prefix) {
  CoordinatorConfig coordinator_config;
  coordinator_config.listen = "127.0.0.1:0";
  coordinator_config.metrics_listen = "off";
  coordinator_config.http_listen = "off";
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<RunningCoordinator> running,
                           StartCoordinator(coordinator_config));
  // The jobs as tessera serve starts them, but each with its output in a file; declared after
  // the coordinator, so stopped before it.
  std::vector<std::unique_ptr<ChildProcess>> jobs;
  for (const JobGroups& job_groups : LocalJobs(workers)) {
    TESSERA_ASSIGN_OR_RETURN(
        std::unique_ptr<ChildProcess> job,
        ChildProcess::Start(
            WorkerCommand(workers, running->registry_port(), job_groups),
            absl::StrCat(log_prefix, "-replica", job_groups.first_replica, ".log")));
    jobs.push_back(std::move(job));
  }
  std::string exited;
  WaitFor(
      [&] {
        for (const std::unique_ptr<ChildProcess>& job : jobs) {
          if (std::optional<int> status = job->Wait(absl::ZeroDuration())) {
            exited = absl::StrCat("a worker job exited (status ", *status,
                                  ") before serving; its log: ", job->log_path());
          }
        }
        return !exited.empty() || ShutdownRequested() ||
               running->coordinator->HealthyGroupCount() >= workers.groups();
      },
      workers.ready_timeout, absl::Milliseconds(100));
  if (ShutdownRequested()) return absl::CancelledError("interrupted while the workers started");
  if (!exited.empty()) return absl::UnavailableError(exited);
  if (running->coordinator->HealthyGroupCount() < workers.groups()) {
    return absl::DeadlineExceededError(absl::StrCat("the workers did not all register within ",
                                                    absl::FormatDuration(workers.ready_timeout),
                                                    "; their logs: ", log_prefix, "-replica*.log"));
  }
  const std::string target = absl::StrCat("127.0.0.1:", running->grpc.port);
  std::shared_ptr<grpc::Channel> channel = ConnectBenchClient(target);
  TESSERA_RETURN_IF_ERROR(WaitConnected(*channel, target));
  auto stub = v1::Inference::NewStub(channel);
  ServingRun run;
  run.model = workers.model_name;
  if (run.model.empty()) {
    TESSERA_ASSIGN_OR_RETURN(run.model, FirstModel(*stub));
  }
  TESSERA_ASSIGN_OR_RETURN(run.vocab, ProbeVocab(*stub, run.model));
  TESSERA_ASSIGN_OR_RETURN(TokenRange prompt_range,
                           ParseTokenRange(config.prompt_tokens, "--prompt-tokens"));
  TESSERA_ASSIGN_OR_RETURN(TokenRange output_range,
                           ParseTokenRange(config.output_tokens, "--output-tokens"));
  std::mt19937_64 random(static_cast<uint64_t>(config.seed));
  const std::vector<PlannedRequest> plan =
      Plan(config.requests, prompt_range, output_range, run.vocab, random);
  TESSERA_ASSIGN_OR_RETURN(
      run.figures,
      RunStreams(GrpcClients(target, run.model, config.request_timeout), plan, config.concurrency));
  run.end = absl::Now();
  if (ShutdownRequested()) return absl::CancelledError("interrupted");
  run.first_group_log = jobs.front()->Log();
  run.first_group_log_path = jobs.front()->log_path();
  return run;
}

// The steps of a fine-tune alone, from its log.jsonl.
struct StandaloneSteps {
  std::vector<double> tokens_per_s;  // rows x seq_len (padding included) / step time
  std::vector<double> step_seconds;
};

// `tune` as `tessera train` runs it on --train-groups groups of the workers' tp (data-parallel
// over them, as inside serving; mpirun as for them), for --train-steps steps, writing into
// `dir`/alone.
absl::StatusOr<StandaloneSteps> RunFineTuneAlone(const BenchServeConfig& config,
                                                 const ServingFineTuneConfig& tune,
                                                 const std::string& dir) {
  const WorkerJobConfig& workers = config.workers;
  const int ranks = workers.train_groups * workers.tp;
  std::vector<std::string> argv = {workers.mpirun, "-np", absl::StrCat(ranks)};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  if (ranks > static_cast<int>(std::thread::hardware_concurrency())) {
    argv.insert(argv.end(), {"--oversubscribe", "--mca", "mpi_yield_when_idle", "1"});
  }
  for (absl::string_view extra : absl::StrSplit(workers.mpirun_args, ' ', absl::SkipEmpty())) {
    argv.emplace_back(extra);
  }
  const std::string output = dir + "/alone";
  // Kept as flag-value pairs, which clang-format would put one a line.
  // clang-format off
  argv.insert(argv.end(), {
      std::filesystem::read_symlink("/proc/self/exe").string(), "train",
      "--tp", absl::StrCat(workers.tp), "--data", tune.data, "--output", output,
      "--steps", absl::StrCat(config.train_steps), "--seq-len", absl::StrCat(tune.seq_len),
      "--micro-batch", absl::StrCat(tune.micro_batch),
      "--grad-accum", absl::StrCat(tune.grad_accum), "--lr", absl::StrCat(tune.lr),
      "--warmup", absl::StrCat(tune.warmup), "--schedule", tune.schedule,
      "--lora-r", absl::StrCat(tune.lora_r), "--lora-alpha", absl::StrCat(tune.lora_alpha),
      "--lora-targets", tune.lora_targets, "--seed", absl::StrCat(tune.seed),
      "--save-every", "0", "--no-export", "--timeout", absl::FormatDuration(workers.timeout)});
  // clang-format on
  if (!workers.model.empty()) argv.insert(argv.end(), {"--model", workers.model});
  const std::vector<std::string> quantize = QuantizeArguments(workers.quantize);
  argv.insert(argv.end(), quantize.begin(), quantize.end());
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> train,
                           ChildProcess::Start(argv, dir + "/alone.log"));
  std::optional<int> status;
  WaitFor(
      [&] {
        status = train->Wait(absl::ZeroDuration());
        return status.has_value() || ShutdownRequested();
      },
      absl::InfiniteDuration(), absl::Milliseconds(100));
  if (!status.has_value()) return absl::CancelledError("interrupted");
  if (*status != 0) {
    return absl::UnknownError(absl::StrCat("tessera train exited with status ", *status,
                                           "; its log: ", train->log_path()));
  }
  StandaloneSteps steps;
  std::ifstream log(output + "/log.jsonl");
  for (std::string line; std::getline(log, line);) {
    const nlohmann::json entry = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!entry.is_object() || !entry.contains("tokens_per_s") || !entry.contains("step_s")) {
      continue;  // an evaluation's line
    }
    steps.tokens_per_s.push_back(entry["tokens_per_s"].get<double>());
    steps.step_seconds.push_back(entry["step_s"].get<double>());
  }
  if (steps.tokens_per_s.empty()) {
    return absl::InternalError(absl::StrCat("no step in ", output, "/log.jsonl"));
  }
  return steps;
}

// --train, its files in `dir`.
absl::Status BenchTrainIn(const BenchServeConfig& config, const std::string& dir) {
  std::string tune_path = config.workers.train_config;
  if (tune_path.empty()) {
    TESSERA_ASSIGN_OR_RETURN(tune_path, WriteBenchFineTune(dir, config.seed));
  }
  TESSERA_ASSIGN_OR_RETURN(const ServingFineTuneConfig tune, ReadServingFineTuneConfig(tune_path));
  // As the trainer counts a step's tokens (its rows over every group, padding included), in
  // both places.
  const int groups = config.workers.train_groups;
  const int64_t tokens_per_step =
      int64_t{tune.micro_batch} * tune.grad_accum * tune.seq_len * groups;
  WorkerJobConfig alone_workers = config.workers;
  alone_workers.train_config.clear();
  WorkerJobConfig with_workers = config.workers;
  with_workers.train_config = tune_path;

  std::fprintf(stderr, "%s: %d requests over %d streams, serving alone...\n", kWho, config.requests,
               config.concurrency);
  TESSERA_ASSIGN_OR_RETURN(ServingRun alone, RunServing(config, alone_workers, dir + "/alone"));
  std::fprintf(stderr, "%s: the same with the fine-tune inside the first %d group(s)...\n", kWho,
               groups);
  TESSERA_ASSIGN_OR_RETURN(ServingRun with, RunServing(config, with_workers, dir + "/with"));
  const absl::Time with_start = with.end - absl::Seconds(with.figures.seconds);
  const LoggedSteps inside = StepsLogged(with.first_group_log, with_start, with.end);
  if (!inside.failure.empty()) {
    return absl::UnknownError(
        absl::StrCat("the fine-tune failed inside the serving group: ", inside.failure,
                     " (log: ", with.first_group_log_path, ")"));
  }
  if (inside.total_steps > 0 && inside.last_step >= inside.total_steps) {
    return absl::FailedPreconditionError(
        absl::StrCat("--train-config: the fine-tune's ", inside.total_steps,
                     " steps ended before the run with it did; give it more \"steps\""));
  }
  std::fprintf(stderr, "%s: the fine-tune alone (tessera train, %d steps)...\n", kWho,
               config.train_steps);
  TESSERA_ASSIGN_OR_RETURN(const StandaloneSteps standalone, RunFineTuneAlone(config, tune, dir));

  const engine::EngineOptions& engine = config.workers.engine;
  const std::string schedule =
      engine.interleaved_target_step > absl::ZeroDuration()
          ? absl::StrCat("--train-target-itl ",
                         absl::FormatDuration(engine.interleaved_target_step))
          : absl::StrCat("--train-share ", engine.interleaved_share);
  const PhaseFigures& served_alone = alone.figures;
  const PhaseFigures& served_with = with.figures;
  std::printf(
      "# tessera bench serve --train: coordinator in this process, %d group(s) of tp %d "
      "started afresh for each run; model %s\n"
      "# streaming requests (GenerateStream, greedy, ignore_eos), the same in both runs: "
      "prompts of %s random token ids in [0, %d), %s output tokens, seed %d\n"
      "# fine-tune (%s): LoRA r %d on %s, %d x %d x %d group(s) rows of %d tokens a step (%lld "
      "tokens); inside serving: in the first %d group(s), %s; alone: tessera train on as many, "
      "%d steps\n",
      config.workers.groups(), config.workers.tp, alone.model.c_str(), config.prompt_tokens.c_str(),
      alone.vocab, config.output_tokens.c_str(), config.seed,
      config.workers.train_config.empty() ? "written by the bench" : tune_path.c_str(), tune.lora_r,
      tune.lora_targets.c_str(), tune.micro_batch, tune.grad_accum, groups, tune.seq_len,
      static_cast<long long>(tokens_per_step), groups, schedule.c_str(), config.train_steps);
  std::printf("%-16s %7s %6s %6s %8s %8s %10s %7s %7s %7s %6s %6s %6s\n", "run", "streams", "reqs",
              "errors", "seconds", "req/s", "output t/s", "TTFT50", "TTFT90", "TTFT99", "ITL50",
              "ITL90", "ITL99");
  std::printf("%-16s %7s %6s %6s %8s %8s %10s %7s %7s %7s %6s %6s %6s\n", "", "", "", "", "", "",
              "", "ms", "ms", "ms", "ms", "ms", "ms");
  PrintPhase("serving alone", served_alone);
  PrintPhase("with fine-tune", served_with);

  const double inside_tokens_per_s =
      static_cast<double>(inside.steps * tokens_per_step) / served_with.seconds;
  const double alone_tokens_per_s = Percentile(standalone.tokens_per_s, 50);
  std::printf(
      "\n# fine-tune steps: inside serving, %lld ended in the %.1f s of the run with it (median "
      "%.1f ms a step); alone, %zu (median %.1f ms a step)\n",
      static_cast<long long>(inside.steps), served_with.seconds,
      PercentileMs(inside.step_seconds, 50), standalone.tokens_per_s.size(),
      PercentileMs(standalone.step_seconds, 50));
  std::printf("%-28s %12s %12s %8s\n", "", "alone", "together", "ratio");
  auto compare = [](const char* what, double alone_value, double together) {
    std::printf("%-28s %12.2f %12.2f %7.2fx\n", what, alone_value, together,
                together / alone_value);
  };
  const double p99_alone = PercentileMs(served_alone.inter_token_seconds, 99);
  const double p99_with = PercentileMs(served_with.inter_token_seconds, 99);
  compare("ITL P50 ms", PercentileMs(served_alone.inter_token_seconds, 50),
          PercentileMs(served_with.inter_token_seconds, 50));
  compare("ITL P99 ms", p99_alone, p99_with);
  compare("output tokens/s", served_alone.output_tokens / served_alone.seconds,
          served_with.output_tokens / served_with.seconds);
  compare("fine-tune tokens/s", alone_tokens_per_s, inside_tokens_per_s);

  const double itl_ratio = p99_with / p99_alone;
  const double train_ratio = inside_tokens_per_s / alone_tokens_per_s;
  std::printf("\n%-44s %10s %10s %7s\n", "figure", "value", "target", "ratio");
  std::printf("%-44s %9.2fx %9s %7.2f  %s\n", "ITL P99 with the fine-tune vs serving alone",
              itl_ratio, absl::StrCat("<= ", kTargetTrainItlP99, "x").c_str(),
              itl_ratio / kTargetTrainItlP99, itl_ratio <= kTargetTrainItlP99 ? "met" : "MISSED");
  std::printf("%-44s %9.2fx %9s %7.2f  %s\n", "fine-tune tokens/s inside serving vs alone",
              train_ratio, absl::StrCat(">= ", kTargetTrainThroughput, "x").c_str(),
              train_ratio / kTargetTrainThroughput,
              train_ratio >= kTargetTrainThroughput ? "met" : "MISSED");
  ErrorTally errors = served_alone.errors;
  errors.Merge(served_with.errors);
  return ReportFailedRequests(errors);
}

// --train in a temporary folder of its own, removed after a run that passes and named in the
// error of one that does not.
absl::Status BenchTrain(const BenchServeConfig& config) {
  char pattern[] = "/tmp/tessera-bench-serve-XXXXXX";
  if (mkdtemp(pattern) == nullptr) {
    return absl::InternalError("cannot create a temporary folder in /tmp");
  }
  const std::string dir = pattern;
  absl::Status status = BenchTrainIn(config, dir);
  if (status.ok()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
    return status;
  }
  return absl::Status(status.code(),
                      absl::StrCat(status.message(), " (the runs' files are in ", dir, ")"));
}

absl::Status BenchServe(const BenchServeConfig& config) {
  if (config.requests < 1 || config.concurrency < 1 || config.baseline_requests < 1 ||
      config.overhead_requests < 1) {
    return absl::InvalidArgumentError(
        "--requests, --concurrency, --baseline-requests and --overhead-requests must be >= 1");
  }
  TESSERA_RETURN_IF_ERROR(ParseTokenRange(config.prompt_tokens, "--prompt-tokens").status());
  TESSERA_RETURN_IF_ERROR(ParseTokenRange(config.output_tokens, "--output-tokens").status());
  if (config.api != "grpc" && config.api != "http" && config.api != "both") {
    return absl::InvalidArgumentError(
        absl::StrCat("--api: '", config.api, "' is not grpc, http or both"));
  }
  if (config.api != "grpc" && config.kill_rank_after > absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--kill-rank-after: measured over gRPC only (--api grpc)");
  }
  InstallShutdownHandlers();
  if (config.train) {
    if (!config.target.empty()) {
      return absl::InvalidArgumentError(
          "--train: measures serving that it starts itself, with and without the fine-tune; "
          "not a running coordinator (--target)");
    }
    if (config.api != "grpc") return absl::InvalidArgumentError("--api: --train runs over gRPC");
    if (config.kill_rank_after > absl::ZeroDuration()) {
      return absl::InvalidArgumentError("--kill-rank-after: not with --train");
    }
    if (config.train_steps < 1) {
      return absl::InvalidArgumentError("--train-steps: must be >= 1");
    }
    // Without --train-config the bench writes a fine-tune of its own (for --train-groups too).
    WorkerJobConfig with_fine_tune = config.workers;
    if (with_fine_tune.train_config.empty()) with_fine_tune.train_config = "(the bench's own)";
    TESSERA_RETURN_IF_ERROR(CheckWorkerJobConfig(with_fine_tune));
    return BenchTrain(config);
  }
  if (!config.target.empty()) {
    if (config.api != "grpc" && config.http_target.empty()) {
      return absl::InvalidArgumentError(
          "--api: with --target, HTTP needs --http-target HOST:PORT (its --http-listen)");
    }
    return Bench(
        config.target, config.leader, config.http_target, config,
        absl::StrCat("a running coordinator (--target)",
                     config.leader.empty() ? "" : absl::StrCat(", leader ", config.leader)));
  }
  TESSERA_RETURN_IF_ERROR(CheckWorkerJobConfig(config.workers));
  if (config.kill_rank_after > absl::ZeroDuration() &&
      (config.kill_rank < 0 || config.kill_rank >= config.workers.tp)) {
    return absl::InvalidArgumentError(absl::StrCat("--kill-rank: must be in [0, --tp ",
                                                   config.workers.tp, "), not ", config.kill_rank));
  }
  if (config.kill_rank_after > absl::ZeroDuration() && config.workers.groups() < 2) {
    return absl::InvalidArgumentError(
        "--kill-rank-after: needs two groups or more (--np at least 2 x --tp), so that "
        "requests have somewhere to go");
  }
  CoordinatorConfig coordinator_config;
  coordinator_config.listen = "127.0.0.1:0";
  coordinator_config.metrics_listen = "off";
  coordinator_config.http_listen = config.api == "grpc" ? "off" : "127.0.0.1:0";
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<RunningCoordinator> running,
                           StartCoordinator(coordinator_config));
  const int groups = config.workers.groups();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<WorkerGroups> workers,
                           WorkerGroups::StartLocal(config.workers, running->registry_port(),
                                                    *running->coordinator, nullptr, kWho));
  TESSERA_ASSIGN_OR_RETURN(bool ready, workers->WaitUntilHealthy(config.workers.ready_timeout));
  if (!ready) return absl::CancelledError("interrupted while the workers started");
  std::vector<std::string> leaders = running->coordinator->GroupEndpoints();
  if (leaders.empty()) return absl::InternalError("no group endpoint registered");
  std::string setup = absl::StrCat("coordinator in this process, ", groups, " mpirun job(s) of tp ",
                                   config.workers.tp);
  InjectedFault fault;
  fault.heartbeat = coordinator_config.heartbeat_interval;
  const bool inject = config.kill_rank_after > absl::ZeroDuration();
  // The benchmark's clients run on a thread; this one supervises the groups meanwhile (and
  // kills the rank when it is time), as tessera serve would.
  absl::Status status;
  absl::Notification done;
  std::thread bench([&] {
    status = Bench(absl::StrCat("127.0.0.1:", running->grpc.port), leaders.front(),
                   running->http_server != nullptr
                       ? absl::StrCat("127.0.0.1:", running->http_server->port())
                       : std::string(),
                   config, setup, inject ? &fault : nullptr);
    done.Notify();
  });
  const absl::Time kill_at = absl::Now() + config.kill_rank_after;
  bool killed = false;
  absl::Status supervised;
  while (!done.WaitForNotificationWithTimeout(absl::Milliseconds(20))) {
    if (inject && !killed && absl::Now() >= kill_at) {
      killed = true;
      absl::StatusOr<pid_t> pid = workers->RankPid(0, config.kill_rank);
      absl::MutexLock lock(&fault.mutex);
      if (!pid.ok()) {
        fault.what = absl::StrCat("no rank killed: ", pid.status().ToString());
      } else if (kill(*pid, SIGKILL) != 0) {
        fault.what = absl::StrCat("no rank killed: kill(", *pid, ") failed");
      } else {
        fault.killed_at = absl::Now();
        fault.what = absl::StrCat("SIGKILL to rank ", config.kill_rank, " of replica 0 (pid ", *pid,
                                  ") ", absl::FormatDuration(config.kill_rank_after),
                                  " into the run; collective deadline ",
                                  absl::FormatDuration(config.workers.timeout));
      }
    }
    if (supervised.ok()) supervised = workers->Supervise();
    if (killed && workers->restarts(0) > 0 && workers->serving(0)) {
      absl::MutexLock lock(&fault.mutex);
      if (fault.killed_at.has_value() && !fault.serving_again_at.has_value()) {
        fault.serving_again_at = absl::Now();
      }
    }
  }
  bench.join();
  workers->Stop();
  if (!supervised.ok()) return supervised;
  return status;
}

}  // namespace

int RunBenchServe(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  BenchServeConfig config;
  FlagSet flags(kWho,
                "The serving stack over gRPC or HTTP (--api): --concurrency streaming clients "
                "against the coordinator, then one at a time (the ratio of output tokens/s), "
                "then the median time to first token the coordinator adds over asking a group "
                "leader directly, and with --api both what HTTP adds over gRPC; with --train, "
                "what a fine-tune inside the serving job costs serving and what serving costs "
                "it.\nStarts a coordinator here and mpirun workers as `tessera serve` "
                "does, or measures --target (and --leader) instead.");
  flags.String("target", &config.target,
               "host:port of a running coordinator to measure (default: start our own)");
  flags.String("leader", &config.leader,
               "with --target: host:port of a group leader's Worker service, for the "
               "coordinator overhead");
  flags.String("api", &config.api,
               "grpc, http (the OpenAI-style API: POST /v1/completions, streamed), or both "
               "(the concurrent run over each, and what HTTP adds to TTFT and takes from "
               "output tokens/s)");
  flags.String("http-target", &config.http_target,
               "with --target and --api http or both: host:port of its HTTP API");
  flags.Int("requests", &config.requests, "requests of the concurrent run");
  flags.Int("concurrency", &config.concurrency, "streaming clients at once");
  flags.Int("baseline-requests", &config.baseline_requests, "requests of the one-stream run");
  flags.Int("overhead-requests", &config.overhead_requests,
            "requests each way for the coordinator overhead");
  flags.String("prompt-tokens", &config.prompt_tokens, "prompt lengths, MIN:MAX (uniform)");
  flags.String("output-tokens", &config.output_tokens,
               "output lengths (max_tokens, ignore_eos), MIN:MAX (uniform)");
  flags.Int("seed", &config.seed, "seed of the prompts and lengths");
  flags.Duration("request-timeout", &config.request_timeout, "deadline of each request");
  flags.Duration("kill-rank-after", &config.kill_rank_after,
                 "SIGKILL one rank of replica 0 this long into the concurrent run, and report "
                 "the failover: requests failed, the streams' extra wait, the restart time");
  flags.Int("kill-rank", &config.kill_rank, "with --kill-rank-after: which rank of the group");
  flags.Bool("train", &config.train,
             "instead of the one-at-a-time and overhead runs: the concurrent run served alone "
             "and with a LoRA fine-tune inside the first --train-groups group(s) (--train-config, "
             "or a small one written here), its inter-token latency and output tokens/s, and the "
             "fine-tune's "
             "tokens/s there against the same fine-tune alone (tessera train)");
  flags.Int("train-steps", &config.train_steps, "with --train: steps of the fine-tune alone");
  config.workers.engine.kv_cache_bytes = int64_t{256} << 20;
  AddWorkerJobFlags(flags, &config.workers);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  return ReportExit(BenchServe(config));
}

}  // namespace tessera::launcher
