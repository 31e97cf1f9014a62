// `tessera serve` keeps serving through the death of a rank, as a user runs it: two groups
// at TP 2, each its own mpirun job under serve's supervision. A rank killed mid-stream ends
// only its group; its streams continue on the other group with the text an undisturbed run
// gives; its job is started again, registers and serves; killed again while restarting, it
// comes back again; both groups killed, serve stays up and recovers; Ctrl-C leaves no
// process behind. Workers run the built-in default model (tiny, random weights;
// ignore_eos makes lengths exact). TESSERA_BINARY comes from CMake.

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "launcher/process_tree.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

constexpr int kStreams = 16;
constexpr int kTokens = 160;

using ::tessera::launcher::ReadWholeFile;

// What a client saw of one stream.
struct Streamed {
  grpc::Status status;
  std::vector<v1::GenerateStreamResponse> messages;

  std::vector<int32_t> Tokens() const {
    std::vector<int32_t> tokens;
    for (const auto& message : messages) {
      tokens.insert(tokens.end(), message.tokens().begin(), message.tokens().end());
    }
    return tokens;
  }
  std::string Text() const {
    std::string text;
    for (const auto& message : messages) text += message.text();
    return text;
  }
  std::string Group() const { return messages.empty() ? "" : messages.front().placement().group(); }
  int Resumptions() const { return messages.empty() ? 0 : messages.back().resumptions_size(); }
};

// Request i of a run: greedy when even, seeded sampling when odd.
v1::GenerateRequest RequestOf(const std::string& model, int i,
                              const std::string& prompt = "Supervised stream") {
  v1::GenerateRequest request;
  request.set_model(model);
  request.set_prompt(absl::StrCat(prompt, " ", i, " of ", kStreams));
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_max_tokens(kTokens);
  sampling.set_ignore_eos(true);
  if (i % 2 == 1) {
    sampling.set_temperature(0.8f);
    sampling.set_top_k(40);
    sampling.set_seed(500 + i);
  }
  return request;
}

class ServeSupervision : public ::testing::Test {
 protected:
  // Flags added to serve's (the directory dir_ is made by then).
  virtual std::vector<std::string> ExtraServeFlags() { return {}; }

  void SetUp() override {
    char pattern[] = "/tmp/tessera-serve-supervision-XXXXXX";
    dir_ = mkdtemp(pattern);
    std::vector<std::string> argv = {TESSERA_BINARY,
                                     "serve",
                                     "--np",
                                     "4",
                                     "--tp",
                                     "2",
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--metrics-listen",
                                     "127.0.0.1:0",
                                     "--http-listen",
                                     "off",
                                     "--timeout",
                                     "2s",
                                     "--max-running",
                                     "4",
                                     "--kv-cache-memory",
                                     "64M",
                                     "--restart-backoff",
                                     "500ms"};
    const std::vector<std::string> extra = ExtraServeFlags();
    argv.insert(argv.end(), extra.begin(), extra.end());
    serve_ = *ChildProcess::Start(argv, dir_ + "/serve.log",
                                  {absl::StrCat("TESSERA_CACHE_DIR=", dir_, "/cache"),
                                   "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
    const std::regex serving("serving on 127\\.0\\.0\\.1:(\\d+)");
    const std::regex metrics("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics");
    std::smatch match;
    ASSERT_TRUE(WaitFor(
        [&] {
          std::string log = serve_->Log();
          return std::regex_search(log, match, serving) || !serve_->Running();
        },
        absl::Seconds(120)))
        << Tail(serve_->Log(), 40);
    std::string log = serve_->Log();
    ASSERT_TRUE(std::regex_search(log, match, serving)) << Tail(log, 40);
    grpc_port_ = std::stoi(match[1]);
    ASSERT_TRUE(std::regex_search(log, match, metrics)) << Tail(log, 40);
    metrics_port_ = std::stoi(match[1]);
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_),
                                       grpc::InsecureChannelCredentials());
    inference_ = v1::Inference::NewStub(channel);
    grpc::ClientContext context;
    v1::ListModelsResponse models;
    ASSERT_TRUE(inference_->ListModels(&context, v1::ListModelsRequest(), &models).ok());
    ASSERT_GT(models.models_size(), 0);
    model_ = models.models(0).name();
  }

  void TearDown() override {
    if (serve_ != nullptr) serve_->Stop();
    if (HasFailure()) {
      std::fprintf(stderr, "--- tessera serve (%s):\n%s\n", serve_->log_path().c_str(),
                   Tail(serve_->Log(), 80).c_str());
    } else {
      std::filesystem::remove_all(dir_);
    }
  }

  // The group id replica `replica` registered with last (the coordinator's log, in serve's).
  std::string GroupOfReplica(int replica) const {
    std::string id;
    for (absl::string_view line : absl::StrSplit(serve_->Log(), '\n')) {
      if (!absl::StartsWith(line, "{")) continue;
      nlohmann::json event = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (event.is_object() && event.value("event", "") == "group_registered" &&
          absl::EndsWith(event.value("name", ""), absl::StrCat("/replica", replica))) {
        id = event.value("group", "");
      }
    }
    return id;
  }

  // The pid of MPI rank `rank` of replica `replica`'s current job (a descendant of serve
  // whose command line names the replica), or nullopt.
  std::optional<pid_t> RankPid(int replica, int rank) const {
    for (pid_t pid : serve_->Descendants()) {
      std::vector<std::string> argv =
          absl::StrSplit(ReadWholeFile(absl::StrCat("/proc/", pid, "/cmdline")), '\0');
      bool worker = false;
      for (size_t i = 0; i + 1 < argv.size(); ++i) {
        worker |= argv[i] == "--replica-offset" && argv[i + 1] == absl::StrCat(replica);
      }
      if (!worker || argv.empty() || !absl::EndsWith(argv[0], "tessera")) continue;
      std::string environment = ReadWholeFile(absl::StrCat("/proc/", pid, "/environ"));
      for (absl::string_view setting : absl::StrSplit(environment, '\0')) {
        if (setting == absl::StrCat("OMPI_COMM_WORLD_RANK=", rank)) return pid;
      }
    }
    return std::nullopt;
  }

  int HealthyGroups() {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ListModelsResponse models;
    if (!inference_->ListModels(&context, v1::ListModelsRequest(), &models).ok()) return -1;
    int healthy = 0;
    for (const auto& model : models.models()) {
      for (const auto& version : model.versions()) healthy += version.healthy_groups();
    }
    return healthy;
  }

  double Restarts(int replica) {
    absl::StatusOr<MetricsSnapshot> metrics = ScrapeMetrics(metrics_port_);
    return metrics.ok()
               ? metrics->Sum("tessera_worker_restarts_total", {{"replica", absl::StrCat(replica)}})
               : -1;
  }

  Streamed Stream(const v1::GenerateRequest& request,
                  const std::function<void(const v1::GenerateStreamResponse&)>& on_message = {}) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    Streamed out;
    auto reader = inference_->GenerateStream(&context, request);
    v1::GenerateStreamResponse message;
    while (reader->Read(&message)) {
      if (on_message) on_message(message);
      out.messages.push_back(message);
    }
    out.status = reader->Finish();
    return out;
  }

  // Runs the kStreams requests at once; `on_message(i, message)` sees each message.
  std::vector<Streamed> RunAll(
      const std::function<void(int, const v1::GenerateStreamResponse&)>& on_message = {},
      const std::string& prompt = "Supervised stream") {
    std::vector<Streamed> results(kStreams);
    std::vector<std::thread> threads;
    for (int i = 0; i < kStreams; ++i) {
      threads.emplace_back([&, i] {
        results[i] =
            Stream(RequestOf(model_, i, prompt), [&, i](const v1::GenerateStreamResponse& m) {
              if (on_message) on_message(i, m);
            });
      });
    }
    for (std::thread& thread : threads) thread.join();
    return results;
  }

  std::string dir_;
  std::unique_ptr<ChildProcess> serve_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string model_;
  std::unique_ptr<v1::Inference::Stub> inference_;
};

TEST_F(ServeSupervision, ARankKilledMidStreamEndsOnlyItsGroupAndTheGroupComesBack) {
  const std::string group_a = GroupOfReplica(0), group_b = GroupOfReplica(1);
  ASSERT_FALSE(group_a.empty());
  ASSERT_FALSE(group_b.empty());
  std::optional<pid_t> peer = RankPid(0, 1);
  ASSERT_TRUE(peer.has_value()) << "no rank 1 of replica 0 among serve's processes";

  // Undisturbed: every request's text with both groups up.
  std::vector<Streamed> undisturbed = RunAll();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(undisturbed[i].status.ok()) << i << ": " << undisturbed[i].status.error_message();
    ASSERT_EQ(undisturbed[i].Tokens().size(), static_cast<size_t>(kTokens)) << i;
  }

  // Again, with rank 1 of group A killed once A has streamed a few tokens of some request.
  std::atomic<int> a_tokens{0};
  std::atomic<bool> killed{false};
  std::vector<std::string> group_of(kStreams);  // each written by its stream's thread only
  std::vector<Streamed> disturbed = RunAll([&](int i, const v1::GenerateStreamResponse& message) {
    if (message.has_placement()) group_of[i] = message.placement().group();
    if (group_of[i] != group_a) return;
    if (a_tokens.fetch_add(message.tokens_size()) >= 8 && !killed.exchange(true)) {
      kill(*peer, SIGKILL);
    }
  });
  ASSERT_TRUE(killed.load()) << "group A streamed too little to be killed mid-stream";
  int resumed = 0;
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    const Streamed& r = disturbed[i];
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.Tokens(), undisturbed[i].Tokens());
    EXPECT_EQ(r.Text(), undisturbed[i].Text());
    ASSERT_FALSE(r.messages.empty());
    EXPECT_TRUE(r.messages.back().final());
    resumed += r.Resumptions() > 0 ? 1 : 0;
    if (r.Group() == group_b) {
      EXPECT_EQ(r.Resumptions(), 0) << "a request on the healthy group was interrupted";
    }
  }
  EXPECT_GE(resumed, 1) << "no stream was on group A when it died";

  // The dead group's job is started again, registers under a new id and serves.
  ASSERT_TRUE(WaitFor([&] { return HealthyGroups() == 2 && GroupOfReplica(0) != group_a; },
                      absl::Seconds(60)))
      << "replica 0 did not come back";
  EXPECT_EQ(Restarts(0), 1);
  EXPECT_EQ(Restarts(1), 0);
  const std::string group_a2 = GroupOfReplica(0);
  // New prompts: the old ones' prefixes are cached on B, and the router would follow them.
  std::vector<Streamed> after = RunAll({}, "After the restart");
  int on_a2 = 0;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(after[i].status.ok()) << i << ": " << after[i].status.error_message();
    EXPECT_EQ(after[i].Tokens().size(), static_cast<size_t>(kTokens)) << i;
    on_a2 += after[i].Group() == group_a2 ? 1 : 0;
  }
  EXPECT_GE(on_a2, 1) << "the restarted group took no request";

  // Killed again while it restarts: it comes back again.
  std::optional<pid_t> leader = RankPid(0, 0);
  ASSERT_TRUE(leader.has_value());
  ASSERT_EQ(kill(*leader, SIGKILL), 0);
  std::optional<pid_t> restarting;
  ASSERT_TRUE(WaitFor(
      [&] {
        restarting = RankPid(0, 0);
        return restarting.has_value() && *restarting != *leader;
      },
      absl::Seconds(30)))
      << "replica 0 was not started again";
  ASSERT_EQ(kill(*restarting, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return HealthyGroups() == 2 && Restarts(0) == 3; }, absl::Seconds(60)))
      << "replica 0 did not come back after being killed while it restarted";

  // Both groups killed: serve stays up, and serves again once they are back.
  std::optional<pid_t> a = RankPid(0, 1), b = RankPid(1, 1);
  ASSERT_TRUE(a.has_value() && b.has_value());
  kill(*a, SIGKILL);
  kill(*b, SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return Restarts(1) == 1 && Restarts(0) == 4; }, absl::Seconds(60)));
  ASSERT_TRUE(WaitFor([&] { return HealthyGroups() == 2; }, absl::Seconds(60)));
  EXPECT_TRUE(serve_->Running());
  Streamed last = Stream(RequestOf(model_, 0));
  ASSERT_TRUE(last.status.ok()) << last.status.error_message();
  EXPECT_EQ(last.Tokens(), undisturbed[0].Tokens());

  // Ctrl-C: serve exits 0 and leaves no process behind.
  std::vector<pid_t> processes = serve_->Descendants();
  ASSERT_FALSE(processes.empty());
  ASSERT_EQ(kill(serve_->pid(), SIGINT), 0);
  std::optional<int> exit_status = serve_->Wait(absl::Seconds(60));
  ASSERT_TRUE(exit_status.has_value()) << "tessera serve did not stop on SIGINT";
  EXPECT_EQ(*exit_status, 0) << Tail(serve_->Log(), 30);
  EXPECT_TRUE(WaitFor(
      [&] {
        for (pid_t pid : processes) {
          if (ProcessAlive(pid)) return false;
        }
        return true;
      },
      absl::Seconds(20)))
      << "processes of tessera serve outlived it";
}

// tessera serve --train-config F --train-groups 2: the fine-tune is data-parallel over both
// groups, which serve's supervision runs as one mpirun job. Both take every step with the same
// loss, publish each version, and the last one answers every prompt with its completion. A
// rank killed in either ends both; the job started again registers both groups, and each
// resumes the fine-tune from its last checkpoint.
class ServeSupervisionOfAFineTune : public ServeSupervision {
 protected:
  static constexpr int kSteps = 300;
  static constexpr int kPublishEvery = 150;
  const std::vector<std::pair<std::string, std::string>> kPairs = {
      {"What is the capital of France? ", "Paris"},
      {"Two plus two is ", "four"},
      {"The sky is ", "blue"},
      {"Tessera runs on ", "many GPUs"}};

  std::vector<std::string> ExtraServeFlags() override {
    std::ofstream data(dir_ + "/pairs.jsonl");
    for (const auto& [prompt, completion] : kPairs) {
      data << nlohmann::json{{"prompt", prompt}, {"completion", completion}}.dump() << "\n";
    }
    const std::string config = dir_ + "/train.json";
    std::ofstream(config) << nlohmann::json{{"data", dir_ + "/pairs.jsonl"},
                                            {"adapter", "tuned"},
                                            {"output", dir_ + "/tuned"},
                                            {"steps", kSteps},
                                            {"publish_every", kPublishEvery},
                                            {"seq_len", 64},
                                            // Two rows a group: a step's pieces are short, so that
                                            // the time the engine gives them can hold a whole step
                                            // (which must still wait for the other group's update).
                                            {"micro_batch", 2},
                                            {"lr", 1e-2},
                                            {"lora_r", 8},
                                            {"lora_targets",
                                             "q_proj,v_proj,gate_proj,up_proj,down_proj"}}
                                 .dump();
    return {"--train-config", config, "--train-groups", "2"};
  }

  // The fine-tunes the coordinator reports (one per group that runs one).
  std::vector<v1::TrainingState> Trainings() {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::TrainingStatusRequest request;
    request.set_model(model_);
    v1::TrainingStatusResponse response;
    if (!inference_->TrainingStatus(&context, request, &response).ok()) return {};
    return {response.trainings().begin(), response.trainings().end()};
  }
  // Where the coordinator routes adapter `name` from (its directory); empty while it routes
  // none (a published version reaches routing with the group's next heartbeat).
  std::string RoutedAdapterDir(const std::string& name) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ListAdaptersResponse response;
    if (!inference_->ListAdapters(&context, v1::ListAdaptersRequest(), &response).ok()) return "";
    for (const v1::AdapterInfo& adapter : response.adapters()) {
      if (adapter.name() == name) return adapter.dir();
    }
    return "";
  }
  // Both groups report the fine-tune finished (resumed from `resumed_step`).
  bool BothFinished(int64_t resumed_step) {
    std::vector<v1::TrainingState> trainings = Trainings();
    return trainings.size() == 2 &&
           std::all_of(trainings.begin(), trainings.end(), [&](const v1::TrainingState& t) {
             return t.state() == "finished" && t.resumed_step() == resumed_step;
           });
  }
};

TEST_F(ServeSupervisionOfAFineTune, ItsGroupsAreOneJobThatRestartsAndResumesTogether) {
  EXPECT_TRUE(absl::StrContains(serve_->Log(), "2 worker group(s) in 1 mpirun job(s)"))
      << Tail(serve_->Log(), 20);
  // Both groups serve while they learn.
  ASSERT_TRUE(Stream(RequestOf(model_, 0)).status.ok());
  ASSERT_TRUE(WaitFor([&] { return BothFinished(0); }, absl::Seconds(120)))
      << Tail(serve_->Log(), 40);
  std::vector<v1::TrainingState> first = Trainings();
  ASSERT_EQ(first.size(), 2u);
  EXPECT_NE(first[0].group(), first[1].group());
  for (const v1::TrainingState& training : first) {
    EXPECT_EQ(training.steps_done(), kSteps);
    EXPECT_EQ(training.published_step(), kSteps);
    // Data-parallel: the loss is the global batch's, the same on both.
    EXPECT_EQ(training.loss(), first[0].loss());
  }
  const std::string last = absl::StrCat(dir_, "/tuned/step-", kSteps);
  ASSERT_TRUE(WaitFor([&] { return RoutedAdapterDir("tuned") == last; }, absl::Seconds(30)));
  // The adapter learned the pairs (greedy, on either group).
  for (const auto& [prompt, completion] : kPairs) {
    v1::GenerateRequest request;
    request.set_model(model_);
    request.set_adapter("tuned");
    request.set_prompt(prompt);
    request.mutable_sampling()->set_max_tokens(12);
    Streamed streamed = Stream(request);
    ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
    EXPECT_TRUE(absl::StartsWith(streamed.Text(), completion))
        << prompt << " -> '" << streamed.Text() << "'";
  }
  v1::GenerateRequest tuned = RequestOf(model_, 0);
  tuned.set_adapter("tuned");
  Streamed answered = Stream(tuned);
  ASSERT_TRUE(answered.status.ok()) << answered.status.error_message();

  // A rank of the second group killed: the job ends, and both groups come back from it.
  const std::string group_a = GroupOfReplica(0), group_b = GroupOfReplica(1);
  std::optional<pid_t> rank = RankPid(0, 3);
  ASSERT_TRUE(rank.has_value()) << "no rank 3 in the job of --replica-offset 0";
  ASSERT_EQ(kill(*rank, SIGKILL), 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        return Restarts(0) == 1 && HealthyGroups() == 2 && GroupOfReplica(0) != group_a &&
               GroupOfReplica(1) != group_b;
      },
      absl::Seconds(90)))
      << Tail(serve_->Log(), 40);
  EXPECT_TRUE(absl::StrContains(serve_->Log(), "starting replicas 0-1 again (restart 1)"))
      << Tail(serve_->Log(), 40);
  // Each group resumed from the last checkpoint (the end), and serves its adapter again.
  ASSERT_TRUE(WaitFor([&] { return BothFinished(kSteps); }, absl::Seconds(60)))
      << Tail(serve_->Log(), 40);
  ASSERT_TRUE(WaitFor([&] { return RoutedAdapterDir("tuned") == last; }, absl::Seconds(30)));
  Streamed again = Stream(tuned);
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.Tokens(), answered.Tokens());
}

}  // namespace
}  // namespace tessera::e2e
