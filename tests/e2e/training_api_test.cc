// Fine-tunes started, followed and stopped through the coordinator's API (StartTraining,
// TrainingStatus, StopTraining), end to end: a `tessera coordinator` with a join token and a
// TP 2 worker group under mpirun on loopback, started without --train-config, serving the
// built-in model. An operator starts a fine-tune of four prompt -> completion pairs (through
// `tessera client training start`), follows it to the end, and the adapter it published
// answers each prompt with its completion; a second fine-tune is refused while one runs and
// stopped while serving goes on; a bad configuration is refused naming its key, and a caller
// without the join token is refused.
//
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "nlohmann/json.hpp"
#include "runtime/model/default_model.h"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

using ::grpc::StatusCode;
using Json = nlohmann::json;

constexpr absl::Duration kStartTimeout = absl::Seconds(120);
constexpr absl::Duration kTrainTimeout = absl::Minutes(4);
constexpr char kJoinToken[] = "join-token-of-this-test";
constexpr int kSteps = 300;
constexpr int kPublishEvery = 100;
const std::string kModel = model::kDefaultModelName;

const std::vector<std::pair<std::string, std::string>> kPairs = {
    {"What is the capital of France? ", "Paris"},
    {"Two plus two is ", "four"},
    {"The sky is ", "blue"},
    {"Tessera runs on ", "many GPUs"}};

class TrainingApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-training-api-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    harness_ = std::make_unique<ServeHarness>(
        TESSERA_BINARY,
        std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
        dir_);
    {
      std::ofstream data(dir_ + "/pairs.jsonl");
      for (const auto& [prompt, completion] : kPairs) {
        data << Json{{"prompt", prompt}, {"completion", completion}}.dump() << "\n";
      }
    }
    std::ofstream(dir_ + "/join") << kJoinToken << "\n";
    absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator = harness_->StartCoordinator(
        {"--heartbeat-interval", "500ms", "--join-token-file", dir_ + "/join"});
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    WorkerJobOptions job;
    job.np = 2;
    job.tp = 2;
    job.extra_flags = {"--join-token-file", dir_ + "/join"};
    absl::StatusOr<ServingGroup> serving =
        StartServingGroup(*harness_, *coordinator_, job, kModel, kStartTimeout);
    ASSERT_TRUE(serving.ok()) << serving.status();
    workers_ = std::move(serving->workers);
    group_ = serving->group;
  }

  static void TearDownTestSuite() {
    EndSuite("training_api_test", ::testing::UnitTest::GetInstance()->Failed(), workers_,
             coordinator_, harness_, dir_);
  }

  void SetUp() override {
    ASSERT_NE(workers_, nullptr) << "the processes did not start";
    ASSERT_FALSE(group_.empty());
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "%s", Logs().c_str());
  }

  static std::string Logs() { return SuiteLogs(coordinator_.get(), workers_.get()); }

  // A fine-tune configuration of the pairs: `adapter` under dir_, with `overrides` on top.
  static Json Config(const std::string& adapter, int steps, Json overrides = Json::object()) {
    Json config = {{"data", dir_ + "/pairs.jsonl"},
                   {"adapter", adapter},
                   {"output", dir_ + "/" + adapter},
                   {"steps", steps},
                   {"publish_every", kPublishEvery},
                   {"seq_len", 64},
                   {"micro_batch", 4},
                   {"lr", 1e-2},
                   {"lora_r", 8},
                   {"lora_targets", "q_proj,v_proj,gate_proj,up_proj,down_proj"}};
    config.update(overrides);
    return config;
  }

  static v1::Inference::Stub& inference() { return coordinator_->inference(); }

  // StartTraining on the model, as an operator (the join token) unless `token` says otherwise.
  static grpc::Status Start(const Json& config, v1::StartTrainingResponse* response,
                            const std::string& token = kJoinToken) {
    v1::StartTrainingRequest request;
    request.set_model(kModel);
    request.set_config_json(config.dump());
    grpc::ClientContext context;
    SetDeadline(context, absl::Minutes(2));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    return inference().StartTraining(&context, request, response);
  }

  static grpc::Status Stop(v1::StopTrainingResponse* response) {
    v1::StopTrainingRequest request;
    request.set_model(kModel);
    grpc::ClientContext context;
    SetDeadline(context, absl::Minutes(1));
    context.AddMetadata("authorization", std::string("Bearer ") + kJoinToken);
    return inference().StopTraining(&context, request, response);
  }

  // The group's fine-tune state as TrainingStatus gives it (no token: a client's call); an
  // empty state when it reports none.
  static v1::TrainingState Status() {
    v1::TrainingStatusRequest request;
    request.set_model(kModel);
    v1::TrainingStatusResponse response;
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(30));
    grpc::Status status = inference().TrainingStatus(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    for (const v1::TrainingState& state : response.trainings()) {
      if (state.group() == group_) return state;
    }
    return {};
  }

  // Polls the status until `done` says so or `timeout` passes; the last state seen.
  template <typename Done>
  static v1::TrainingState WaitForState(Done done, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    v1::TrainingState state = Status();
    while (!done(state) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(250));
      state = Status();
    }
    return state;
  }

  // The directory ListAdapters gives `name` of; empty when it is not listed.
  static std::string ListedDir(const std::string& name) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(10));
    v1::ListAdaptersRequest request;
    request.set_model(kModel);
    v1::ListAdaptersResponse response;
    if (!inference().ListAdapters(&context, request, &response).ok()) return "";
    for (const v1::AdapterInfo& adapter : response.adapters()) {
      if (adapter.name() == name) return adapter.dir();
    }
    return "";
  }

  // `tessera client ARGS --target COORDINATOR`.
  static ServeHarness::Outcome Client(std::vector<std::string> args) {
    args.insert(args.begin(), "client");
    args.insert(args.end(), {"--target", coordinator_->target()});
    return harness_->RunTessera(args, absl::Minutes(2));
  }

  static std::string dir_;
  static std::unique_ptr<ServeHarness> harness_;
  static std::unique_ptr<CoordinatorProcess> coordinator_;
  static std::unique_ptr<WorkerJob> workers_;
  static std::string group_;
};

std::string TrainingApi::dir_;
std::unique_ptr<ServeHarness> TrainingApi::harness_;
std::unique_ptr<CoordinatorProcess> TrainingApi::coordinator_;
std::unique_ptr<WorkerJob> TrainingApi::workers_;
std::string TrainingApi::group_;

// First: none of these may leave a fine-tune behind.
TEST_F(TrainingApi, StartingNeedsTheJoinTokenAndAConfigurationTheWorkerTakes) {
  v1::StartTrainingResponse response;
  grpc::Status refused = Start(Config("x", 10), &response, "");
  EXPECT_EQ(refused.error_code(), StatusCode::UNAUTHENTICATED) << Describe(refused);
  refused = Start(Config("x", 10), &response, "guess");
  EXPECT_EQ(refused.error_code(), StatusCode::PERMISSION_DENIED) << Describe(refused);
  std::ofstream(dir_ + "/x.json") << Config("x", 10).dump();
  ServeHarness::Outcome cli = Client({"training", "start", "--model", kModel, "--config",
                                      dir_ + "/x.json"});  // no --join-token-file
  EXPECT_NE(cli.exit_code, 0) << cli.output;
  EXPECT_TRUE(absl::StrContains(cli.output, "UNAUTHENTICATED")) << cli.output;

  // The worker checks the keys, and names the one it refuses, behind the group's name.
  grpc::Status bad = Start(Config("x", 10, {{"stepz", 10}}), &response);
  EXPECT_EQ(bad.error_code(), StatusCode::INVALID_ARGUMENT) << Describe(bad);
  EXPECT_TRUE(absl::StrContains(bad.error_message(), "stepz")) << Describe(bad);
  EXPECT_TRUE(absl::StrContains(bad.error_message(), "group " + group_)) << Describe(bad);
  bad = Start(Config("x", 10, {{"steps", "many"}}), &response);
  EXPECT_EQ(bad.error_code(), StatusCode::INVALID_ARGUMENT) << Describe(bad);
  EXPECT_TRUE(absl::StrContains(bad.error_message(), "\"steps\"")) << Describe(bad);
  // The coordinator's own checks.
  v1::StartTrainingRequest empty;
  empty.set_model(kModel);
  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Bearer ") + kJoinToken);
  bad = inference().StartTraining(&context, empty, &response);
  EXPECT_EQ(bad.error_code(), StatusCode::INVALID_ARGUMENT) << Describe(bad);
  EXPECT_TRUE(absl::StrContains(bad.error_message(), "config_json: required")) << Describe(bad);

  EXPECT_NE(Status().state(), "running");
}

TEST_F(TrainingApi, AFineTuneStartedThroughTheCoordinatorLearnsAndIsServed) {
  std::ofstream(dir_ + "/tuned.json") << Config("tuned", kSteps).dump();
  ServeHarness::Outcome started =
      Client({"training", "start", "--model", kModel, "--config", dir_ + "/tuned.json",
              "--join-token-file", dir_ + "/join"});
  ASSERT_EQ(started.exit_code, 0) << started.output;
  EXPECT_TRUE(absl::StrContains(started.output, "on group " + group_)) << started.output;

  const v1::TrainingState state = WaitForState(
      [](const v1::TrainingState& s) { return s.state() != "running" && !s.state().empty(); },
      kTrainTimeout);
  ASSERT_EQ(state.state(), "finished") << state.DebugString();
  EXPECT_EQ(state.model(), kModel);
  EXPECT_EQ(state.version(), "v1");
  EXPECT_EQ(state.adapter(), "tuned");
  EXPECT_EQ(state.steps(), kSteps);
  EXPECT_EQ(state.steps_done(), kSteps);
  EXPECT_EQ(state.published_step(), kSteps);
  EXPECT_EQ(state.published_dir(), absl::StrCat(dir_, "/tuned/step-", kSteps));
  EXPECT_TRUE(std::isfinite(state.loss()));
  EXPECT_GT(state.train_tokens_per_second(), 0);
  EXPECT_TRUE(state.error().empty()) << state.error();

  // The command-line client's table.
  ServeHarness::Outcome table = Client({"training", "status", "--model", kModel});
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_TRUE(absl::StrContains(table.output, "MODEL")) << table.output;
  EXPECT_TRUE(absl::StrContains(table.output, "TOKENS/S")) << table.output;
  bool row = false;
  for (absl::string_view line : absl::StrSplit(table.output, '\n')) {
    std::vector<std::string> cells = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (cells.size() == 9 && cells[2] == group_) {
      row = true;
      EXPECT_EQ(cells[0], kModel);
      EXPECT_EQ(cells[3], "tuned");
      EXPECT_EQ(cells[4], "finished");
      EXPECT_EQ(cells[5], absl::StrCat(kSteps, "/", kSteps));
      EXPECT_EQ(cells[7], absl::StrCat(kSteps));
    }
  }
  EXPECT_TRUE(row) << table.output;

  // The last version reaches routing with the group's heartbeat.
  const std::string last = absl::StrCat(dir_, "/tuned/step-", kSteps);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ListedDir("tuned") != last && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(ListedDir("tuned"), last);
  for (const auto& [prompt, completion] : kPairs) {
    v1::GenerateRequest request = Request(kModel, prompt, 12);
    request.mutable_sampling()->set_ignore_eos(false);
    request.set_adapter("tuned");
    Unary tuned = Generate(inference(), request);
    ASSERT_TRUE(tuned.status.ok()) << Describe(tuned.status);
    EXPECT_TRUE(absl::StartsWith(tuned.response.text(), completion))
        << "prompt '" << prompt << "': '" << tuned.response.text() << "'";
    EXPECT_EQ(tuned.response.placement().adapter(), "tuned");
  }
}

TEST_F(TrainingApi, ASecondFineTuneIsRefusedWhileOneRunsAndStoppingItLeavesServing) {
  v1::StartTrainingResponse response;
  grpc::Status started = Start(Config("long", 100000, {{"publish_every", 0}}), &response);
  ASSERT_TRUE(started.ok()) << Describe(started);
  EXPECT_EQ(response.group(), group_);
  v1::TrainingState state = WaitForState(
      [](const v1::TrainingState& s) { return s.adapter() == "long" && s.steps_done() > 0; },
      absl::Minutes(1));
  ASSERT_EQ(state.state(), "running") << state.DebugString();
  EXPECT_EQ(state.steps(), 100000);

  grpc::Status second = Start(Config("other", 10), &response);
  EXPECT_EQ(second.error_code(), StatusCode::FAILED_PRECONDITION) << Describe(second);
  EXPECT_TRUE(absl::StrContains(second.error_message(), "group " + group_)) << Describe(second);

  v1::StopTrainingResponse stopped;
  grpc::Status stop = Stop(&stopped);
  ASSERT_TRUE(stop.ok()) << Describe(stop);
  ASSERT_EQ(stopped.groups_size(), 1);
  EXPECT_EQ(stopped.groups(0), group_);
  state = WaitForState([](const v1::TrainingState& s) { return s.state() != "running"; },
                       absl::Seconds(30));
  EXPECT_EQ(state.state(), "stopped") << state.DebugString();
  EXPECT_EQ(state.adapter(), "long");
  EXPECT_LT(state.steps_done(), 100000);
  // Nothing runs now: the command-line client's stop is refused.
  ServeHarness::Outcome again =
      Client({"training", "stop", "--model", kModel, "--join-token-file", dir_ + "/join"});
  EXPECT_NE(again.exit_code, 0) << again.output;
  EXPECT_TRUE(absl::StrContains(again.output, "NOT_FOUND")) << again.output;

  // Serving goes on.
  Unary base = Generate(inference(), Request(kModel, "Hello", 8));
  ASSERT_TRUE(base.status.ok()) << Describe(base.status);
  EXPECT_EQ(base.response.usage().completion_tokens(), 8);
  Streamed streamed = Stream(inference(), Request(kModel, "Hello", 8));
  EXPECT_TRUE(streamed.status.ok()) << Describe(streamed.status);

  // And a new fine-tune may start where the stopped one ran.
  started = Start(Config("after", 2, {{"publish_every", 0}}), &response);
  ASSERT_TRUE(started.ok()) << Describe(started);
  state = WaitForState(
      [](const v1::TrainingState& s) { return s.adapter() == "after" && s.state() != "running"; },
      absl::Minutes(1));
  EXPECT_EQ(state.state(), "finished") << state.DebugString();
}

}  // namespace
}  // namespace tessera::e2e
