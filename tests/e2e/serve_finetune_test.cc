// A LoRA fine-tune inside a serving group, end to end (tessera worker --train-config): a
// `tessera coordinator` and a TP 2 worker group under mpirun on loopback, serving the
// built-in model while it learns four prompt -> completion pairs between its serving steps.
// Clients stream requests the whole time, on the base and, once it is published, on the
// adapter; none may fail. Each published version (every 100 steps) is served under the
// adapter's name, and the last one answers every prompt with its completion. A group that
// loses a rank during a fine-tune started through the coordinator ends; its job started
// again registers under the same name, gets the fine-tune back, resumes from its last
// checkpoint, serves that version again, and takes the same steps the first run took from
// there. Over a job of two groups the fine-tune is data-parallel, whether it starts with the
// job or through the coordinator (which starts it on both at once), and takes the steps
// `tessera train` takes over as many replicas.
//
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

constexpr absl::Duration kStartTimeout = absl::Seconds(120);
constexpr int kSteps = 300;
constexpr int kPublishEvery = 100;

const std::vector<std::pair<std::string, std::string>> kPairs = {
    {"What is the capital of France? ", "Paris"},
    {"Two plus two is ", "four"},
    {"The sky is ", "blue"},
    {"Tessera runs on ", "many GPUs"}};

// The fine-tune's configuration file in `dir`, training on kPairs (written there too).
std::string WriteFineTune(const std::string& dir, int steps, int publish_every) {
  std::ofstream data(dir + "/pairs.jsonl");
  for (const auto& [prompt, completion] : kPairs) {
    data << nlohmann::json{{"prompt", prompt}, {"completion", completion}}.dump() << "\n";
  }
  const std::string path = dir + "/train.json";
  std::ofstream(path) << nlohmann::json{{"data", dir + "/pairs.jsonl"},
                                        {"adapter", "tuned"},
                                        {"output", dir + "/tuned"},
                                        {"steps", steps},
                                        {"publish_every", publish_every},
                                        {"seq_len", 64},
                                        {"micro_batch", 4},
                                        {"lr", 1e-2},
                                        {"lora_r", 8},
                                        {"lora_targets",
                                         "q_proj,v_proj,gate_proj,up_proj,down_proj"}}
                             .dump();
  return path;
}

// What ListAdapters says of `name`; an empty dir when it is not listed.
v1::AdapterInfo Listed(v1::Inference::Stub& stub, const std::string& name) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(10));
  v1::ListAdaptersRequest request;
  v1::ListAdaptersResponse response;
  if (!stub.ListAdapters(&context, request, &response).ok()) return {};
  for (const v1::AdapterInfo& adapter : response.adapters()) {
    if (adapter.name() == name) return adapter;
  }
  return {};
}

// What TrainingStatus says of `model`'s fine-tunes (empty when the call fails).
v1::TrainingStatusResponse TrainingStatusOf(v1::Inference::Stub& stub, const std::string& model) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(10));
  v1::TrainingStatusRequest request;
  request.set_model(model);
  v1::TrainingStatusResponse response;
  const grpc::Status status = stub.TrainingStatus(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

// The loss each "step" event of a fine-tune's log gives, by step, as logged.
std::map<int, std::string> LossesLogged(const std::string& log) {
  std::map<int, std::string> losses;
  for (const nlohmann::json& event : Events(log, "step")) {
    if (event.value("component", "") != "finetune") continue;
    int step = 0;
    const std::string at = event.value("step", "");
    if (absl::SimpleAtoi(at.substr(0, at.find('/')), &step)) losses[step] = event.value("loss", "");
  }
  return losses;
}

// A coordinator, its folder, and the fine-tune's files there.
class ServeFinetune : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tessera-finetune-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    harness_ = std::make_unique<ServeHarness>(
        TESSERA_BINARY,
        std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
        dir_);
    absl::StatusOr<std::unique_ptr<CoordinatorProcess>> started =
        harness_->StartCoordinator({"--heartbeat-interval", "500ms"});
    ASSERT_TRUE(started.ok()) << started.status();
    coordinator_ = *std::move(started);
  }
  void TearDown() override {
    if (coordinator_ != nullptr) coordinator_->process().Stop(absl::Seconds(5));
    if (!HasFailure()) std::filesystem::remove_all(dir_);  // kept to look into
  }

  // A TP 2 group running the fine-tune of `steps` steps, a version every `publish_every`.
  WorkerJobOptions FineTuneJob(int steps, int publish_every) {
    WorkerJobOptions job;
    job.np = 2;
    job.tp = 2;
    job.extra_flags = {"--train-config", WriteFineTune(dir_, steps, publish_every)};
    return job;
  }
  absl::StatusOr<std::unique_ptr<WorkerJob>> StartWorkers(const WorkerJobOptions& job) {
    return harness_->StartWorkers(coordinator_->grpc_port(), job);
  }
  // Two groups of TP 2 in one job running the fine-tune (data-parallel over them), once both
  // serve.
  absl::StatusOr<std::unique_ptr<WorkerJob>> StartDataParallel(int steps, int publish_every) {
    WorkerJobOptions job = FineTuneJob(steps, publish_every);
    job.np = 4;
    absl::StatusOr<std::unique_ptr<WorkerJob>> workers = StartWorkers(job);
    if (!workers.ok()) return workers.status();
    absl::Status healthy =
        coordinator_->WaitForHealthyGroups(model::kDefaultModelName, {{"v1", 2}}, kStartTimeout);
    if (!healthy.ok()) return healthy;
    return workers;
  }

  // The coordinator's StartTraining on the default model (no group named) of WriteFineTune's
  // fine-tune of `steps` steps.
  grpc::Status StartThroughCoordinator(int steps, int publish_every,
                                       v1::StartTrainingResponse* response) {
    std::ifstream file(WriteFineTune(dir_, steps, publish_every));
    std::stringstream config;
    config << file.rdbuf();
    grpc::ClientContext context;
    SetDeadline(context, kStartTimeout);
    v1::StartTrainingRequest request;
    request.set_model(model::kDefaultModelName);
    request.set_config_json(config.str());
    return coordinator_->inference().StartTraining(&context, request, response);
  }

  // A client streams requests on the base until the adapter "tuned" is served from `dir` (or
  // kStartTimeout passes); none may fail. The groups' step loops run apart meanwhile (each
  // request runs on one of them).
  void StreamUntilServed(const std::string& dir) {
    v1::Inference::Stub& stub = coordinator_->inference();
    const absl::Time deadline = absl::Now() + kStartTimeout;
    for (int served = 0; absl::Now() < deadline && Listed(stub, "tuned").dir() != dir; ++served) {
      Streamed streamed =
          Stream(stub, Request(model::kDefaultModelName, kPairs[served % kPairs.size()].first, 8));
      EXPECT_TRUE(streamed.status.ok()) << Describe(streamed.status);
    }
  }

  // The losses each step of `log` (a worker job's) logged are those of the same fine-tune
  // (WriteFineTune's) as `tessera train` runs it over 2 replicas of TP 2.
  void ExpectTesseraTrainsLosses(const std::string& log, int steps) {
    std::vector<std::string> argv(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty()));
    // clang-format off
  argv.insert(argv.end(), {
      "-np", "4", TESSERA_BINARY, "train", "--tp", "2", "--data", dir_ + "/pairs.jsonl",
      "--output", dir_ + "/alone", "--steps", absl::StrCat(steps), "--seq-len", "64",
      "--micro-batch", "4", "--grad-accum", "1", "--lr", "0.01", "--warmup", "0",
      "--schedule", "cosine", "--lora-r", "8", "--lora-alpha", "16",
      "--lora-targets", "q_proj,v_proj,gate_proj,up_proj,down_proj", "--seed", "1",
      "--save-every", "0", "--no-export"});
    // clang-format on
    absl::StatusOr<std::unique_ptr<ChildProcess>> train =
        ChildProcess::Start(argv, dir_ + "/alone.log", harness_->ChildEnvironment());
    ASSERT_TRUE(train.ok()) << train.status();
    const std::optional<int> code = (*train)->Wait(kStartTimeout);
    ASSERT_EQ(code, std::optional<int>(0)) << Tail((*train)->Log(), 40);
    std::map<int, double> alone;
    std::ifstream logged(dir_ + "/alone/log.jsonl");
    for (std::string line; std::getline(logged, line);) {
      const nlohmann::json entry = nlohmann::json::parse(line, nullptr, false);
      if (entry.is_object() && entry.contains("step") && entry.contains("tokens_per_s")) {
        alone[entry["step"].get<int>()] = entry["loss"].get<double>();
      }
    }
    const std::map<int, std::string> inside = LossesLogged(log);
    ASSERT_EQ(inside.size(), static_cast<size_t>(steps));
    ASSERT_EQ(alone.size(), static_cast<size_t>(steps));
    for (const auto& [step, loss] : inside) {
      double value = 0;
      ASSERT_TRUE(absl::SimpleAtod(loss, &value)) << loss;
      EXPECT_NEAR(value, alone[step], 1e-5 * alone[step]) << "step " << step;
    }
  }

  std::string dir_;
  std::unique_ptr<ServeHarness> harness_;
  std::unique_ptr<CoordinatorProcess> coordinator_;
};

TEST_F(ServeFinetune, LearnsWhileServingAndServesEachPublishedVersion) {
  const std::string dir = dir_;
  WorkerJobOptions job = FineTuneJob(kSteps, kPublishEvery);
  job.extra_flags.insert(job.extra_flags.end(), {"--train-share", "0.5"});
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers = StartWorkers(job);
  ASSERT_TRUE(workers.ok()) << workers.status();
  CoordinatorProcess* coordinator = coordinator_.get();
  const std::string model = model::kDefaultModelName;
  absl::Status healthy = coordinator->WaitForHealthyGroups(model, {{"v1", 1}}, kStartTimeout);
  ASSERT_TRUE(healthy.ok()) << healthy;
  v1::Inference::Stub& stub = coordinator->inference();

  // Clients stream while the group trains: on the base from the start, on the adapter from
  // its first version on.
  std::atomic<bool> stop{false};
  std::atomic<int> base_done{0}, tuned_done{0}, failed{0};
  std::string first_failure;
  auto client = [&](bool tuned) {
    int i = 0;
    while (!stop.load()) {
      if (tuned && Listed(stub, "tuned").dir().empty()) {
        absl::SleepFor(absl::Milliseconds(50));
        continue;
      }
      v1::GenerateRequest request = Request(model, kPairs[i++ % kPairs.size()].first, 12);
      if (tuned) request.set_adapter("tuned");
      Streamed streamed = Stream(stub, request);
      if (!streamed.status.ok()) {
        if (failed.fetch_add(1) == 0) first_failure = Describe(streamed.status);
      } else {
        (tuned ? tuned_done : base_done).fetch_add(1);
      }
    }
  };
  std::thread base_client(client, false), tuned_client(client, true);

  const std::string last = absl::StrCat(dir, "/tuned/step-", kSteps);
  const absl::Time deadline = absl::Now() + absl::Seconds(240);
  int base_during_training = -1;
  while (absl::Now() < deadline) {
    if (Listed(stub, "tuned").dir() == last) {
      base_during_training = base_done.load();
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::SleepFor(absl::Seconds(1));  // a few requests on the last version too
  stop = true;
  base_client.join();
  tuned_client.join();
  const std::string worker_log = workers.value()->process().Log();
  ASSERT_GE(base_during_training, 0) << "the last version was never listed; worker log:\n"
                                     << Tail(worker_log, 40);
  EXPECT_EQ(failed.load(), 0) << first_failure;
  EXPECT_GT(base_during_training, 0) << "no request was served while the group trained";
  EXPECT_GT(tuned_done.load(), 0);

  // Every version was published and served in turn.
  std::vector<nlohmann::json> published = Events(worker_log, "published");
  ASSERT_EQ(published.size(), static_cast<size_t>(kSteps / kPublishEvery));
  for (int v = 0; v < kSteps / kPublishEvery; ++v) {
    EXPECT_EQ(published[v]["step"], absl::StrCat((v + 1) * kPublishEvery));
    EXPECT_TRUE(std::filesystem::exists(
        absl::StrCat(dir, "/tuned/step-", (v + 1) * kPublishEvery, "/adapter_model.safetensors")));
  }
  // The last version has learned the pairs; the base has not.
  for (const auto& [prompt, completion] : kPairs) {
    v1::GenerateRequest request = Request(model, prompt, 12);
    request.mutable_sampling()->set_ignore_eos(false);
    request.set_adapter("tuned");
    Unary tuned = Generate(stub, request);
    ASSERT_TRUE(tuned.status.ok()) << Describe(tuned.status);
    EXPECT_TRUE(absl::StartsWith(tuned.response.text(), completion))
        << "prompt '" << prompt << "': '" << tuned.response.text() << "'";
    EXPECT_EQ(tuned.response.placement().adapter(), "tuned");
    request.clear_adapter();
    Unary base = Generate(stub, request);
    ASSERT_TRUE(base.status.ok()) << Describe(base.status);
    EXPECT_FALSE(absl::StartsWith(base.response.text(), completion)) << prompt;
  }
  workers.value()->process().Stop(absl::Seconds(10));
}

TEST_F(ServeFinetune, AGroupStartedAgainAfterALostRankResumesFromItsLastCheckpoint) {
  constexpr int kShortSteps = 30, kShortPublishEvery = 10, kKilledBefore = 15;
  const std::string dir = dir_;
  WorkerJobOptions job;
  job.np = 2;
  job.tp = 2;
  job.collective_timeout = "5s";
  // Rank 1 dies as the group is about to take step 15: checkpoint and version 10 are out.
  job.environment = {absl::StrCat("TESSERA_TEST_TRAIN_FAULT=kill:1:", kKilledBefore)};
  absl::StatusOr<std::unique_ptr<WorkerJob>> first = StartWorkers(job);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string model = model::kDefaultModelName;
  absl::Status healthy = coordinator_->WaitForHealthyGroups(model, {{"v1", 1}}, kStartTimeout);
  ASSERT_TRUE(healthy.ok()) << healthy;
  v1::Inference::Stub& stub = coordinator_->inference();
  {
    // Started through the coordinator, which gives it back to the group when it registers
    // again.
    v1::StartTrainingResponse response;
    const grpc::Status started =
        StartThroughCoordinator(kShortSteps, kShortPublishEvery, &response);
    ASSERT_TRUE(started.ok()) << started.error_message();
  }
  const std::optional<int> ended = (*first)->process().Wait(kStartTimeout);
  const std::string first_log = (*first)->process().Log();
  ASSERT_TRUE(ended.has_value()) << "the job did not end; its log:\n" << Tail(first_log, 40);
  EXPECT_NE(*ended, 0);
  const std::map<int, std::string> before = LossesLogged(first_log);
  ASSERT_EQ(before.size(), static_cast<size_t>(kKilledBefore - 1)) << Tail(first_log, 40);

  // The same job again, without the fault: it registers under the same name, gets the
  // fine-tune back from the coordinator, and goes on from step 10.
  job.environment.clear();
  absl::StatusOr<std::unique_ptr<WorkerJob>> second = StartWorkers(job);
  ASSERT_TRUE(second.ok()) << second.status();
  const std::string last = absl::StrCat(dir, "/tuned/step-", kShortSteps);
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (absl::Now() < deadline && Listed(stub, "tuned").dir() != last) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  const std::string second_log = (*second)->process().Log();
  ASSERT_EQ(Listed(stub, "tuned").dir(), last) << Tail(second_log, 40);

  EXPECT_EQ(Events(second_log, "fine-tune started again").size(), 1u) << Tail(second_log, 40);
  std::vector<nlohmann::json> resumed = Events(second_log, "resumed");
  ASSERT_EQ(resumed.size(), 1u) << Tail(second_log, 40);
  EXPECT_EQ(resumed[0]["step"], absl::StrCat(kShortPublishEvery, "/", kShortSteps));
  // The checkpoint's version is served again first, then the new ones.
  std::vector<nlohmann::json> published = Events(second_log, "published");
  ASSERT_EQ(published.size(), 3u) << Tail(second_log, 40);
  for (int v = 0; v < 3; ++v) {
    EXPECT_EQ(published[v]["step"], absl::StrCat((v + 1) * kShortPublishEvery));
  }
  // Steps 11 to 14 again, bitwise as the first run took them.
  const std::map<int, std::string> after = LossesLogged(second_log);
  ASSERT_EQ(after.size(), static_cast<size_t>(kShortSteps - kShortPublishEvery));
  EXPECT_EQ(after.begin()->first, kShortPublishEvery + 1);
  for (int step = kShortPublishEvery + 1; step < kKilledBefore; ++step) {
    EXPECT_EQ(after.at(step), before.at(step)) << "step " << step;
  }
  // The coordinator's status says where it came from.
  const v1::TrainingStatusResponse status = TrainingStatusOf(stub, model);
  ASSERT_EQ(status.trainings_size(), 1);
  EXPECT_EQ(status.trainings(0).state(), "finished");
  EXPECT_EQ(status.trainings(0).steps_done(), kShortSteps);
  EXPECT_EQ(status.trainings(0).resumed_step(), kShortPublishEvery);
  (*second)->process().Stop(absl::Seconds(10));
}

TEST_F(ServeFinetune, OverTwoGroupsOfAJobItIsDataParallelAndTakesTesseraTrainsSteps) {
  constexpr int kDpSteps = 20, kDpPublishEvery = 10;
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers = StartDataParallel(kDpSteps, kDpPublishEvery);
  ASSERT_TRUE(workers.ok()) << workers.status();
  v1::Inference::Stub& stub = coordinator_->inference();
  // A client streams meanwhile: the groups' step loops run apart, and meet at each update.
  const std::string last = absl::StrCat(dir_, "/tuned/step-", kDpSteps);
  StreamUntilServed(last);
  const std::string log = (*workers)->process().Log();
  ASSERT_EQ(Listed(stub, "tuned").dir(), last) << Tail(log, 40);
  // Both groups served each version.
  EXPECT_EQ(Events(log, "published").size(), 2u * kDpSteps / kDpPublishEvery) << Tail(log, 40);

  ExpectTesseraTrainsLosses(log, kDpSteps);
  (*workers)->process().Stop(absl::Seconds(10));
}

// A job of two groups started without --train-config: the coordinator's StartTraining, named
// on either group, starts the fine-tune on both at once, and it runs as --train-config's
// does (the same steps as tessera train's); a second start is refused while it runs.
TEST_F(ServeFinetune, StartedThroughTheCoordinatorOnAJobOfTwoGroupsItRunsOnBoth) {
  constexpr int kDpSteps = 20, kDpPublishEvery = 10;
  WorkerJobOptions job;
  job.np = 4;
  job.tp = 2;
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers = StartWorkers(job);
  ASSERT_TRUE(workers.ok()) << workers.status();
  const std::string model = model::kDefaultModelName;
  const absl::Status healthy =
      coordinator_->WaitForHealthyGroups(model, {{"v1", 2}}, kStartTimeout);
  ASSERT_TRUE(healthy.ok()) << healthy;
  v1::Inference::Stub& stub = coordinator_->inference();
  auto start = [&](v1::StartTrainingResponse* response) {
    return StartThroughCoordinator(kDpSteps, kDpPublishEvery, response);
  };
  v1::StartTrainingResponse started;
  const grpc::Status status = start(&started);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n"
                           << Tail((*workers)->process().Log(), 40);
  ASSERT_EQ(started.groups_size(), 2);
  EXPECT_EQ(started.groups(0), started.group());
  v1::StartTrainingResponse again;
  const grpc::Status second = start(&again);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(second.error_message(), "is running")) << second.error_message();

  const std::string last = absl::StrCat(dir_, "/tuned/step-", kDpSteps);
  StreamUntilServed(last);
  const std::string log = (*workers)->process().Log();
  ASSERT_EQ(Listed(stub, "tuned").dir(), last) << Tail(log, 40);
  EXPECT_EQ(Events(log, "published").size(), 2u * kDpSteps / kDpPublishEvery) << Tail(log, 40);
  const v1::TrainingStatusResponse states = TrainingStatusOf(stub, model);
  ASSERT_EQ(states.trainings_size(), 2);
  for (const v1::TrainingState& state : states.trainings()) {
    EXPECT_EQ(state.state(), "finished") << state.error();
    EXPECT_EQ(state.steps_done(), kDpSteps);
    EXPECT_EQ(state.loss(), states.trainings(0).loss());
  }
  ExpectTesseraTrainsLosses(log, kDpSteps);
  (*workers)->process().Stop(absl::Seconds(10));
}

TEST_F(ServeFinetune, StoppingADataParallelFineTuneStopsEveryGroupAtTheSameStep) {
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers =
      StartDataParallel(/*steps=*/1000000, /*publish_every=*/0);
  ASSERT_TRUE(workers.ok()) << workers.status();
  const std::string model = model::kDefaultModelName;
  v1::Inference::Stub& stub = coordinator_->inference();
  auto status = [&] { return TrainingStatusOf(stub, model); };
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (absl::Now() < deadline &&
         (status().trainings_size() < 1 || status().trainings(0).steps_done() < 3)) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  {
    // One group asked: both stop, at the next update.
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(30));
    v1::StopTrainingRequest request;
    request.set_model(model);
    request.set_group(status().trainings(0).group());
    v1::StopTrainingResponse response;
    const grpc::Status stopped = stub.StopTraining(&context, request, &response);
    ASSERT_TRUE(stopped.ok()) << stopped.error_message();
  }
  v1::TrainingStatusResponse stopped;
  while (absl::Now() < deadline) {
    stopped = status();
    if (stopped.trainings_size() == 2 && stopped.trainings(0).state() == "stopped" &&
        stopped.trainings(1).state() == "stopped") {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(stopped.trainings_size(), 2) << Tail((*workers)->process().Log(), 40);
  EXPECT_EQ(stopped.trainings(0).state(), "stopped");
  EXPECT_EQ(stopped.trainings(1).state(), "stopped");
  EXPECT_EQ(stopped.trainings(0).steps_done(), stopped.trainings(1).steps_done());
  // Serving goes on.
  Streamed streamed = Stream(stub, Request(model, kPairs[0].first, 8));
  EXPECT_TRUE(streamed.status.ok()) << Describe(streamed.status);
  (*workers)->process().Stop(absl::Seconds(10));
}

TEST_F(ServeFinetune, AJobOfADataParallelFineTuneShutsDownPromptlyMidStep) {
  absl::StatusOr<std::unique_ptr<WorkerJob>> workers =
      StartDataParallel(/*steps=*/1000000, /*publish_every=*/0);
  ASSERT_TRUE(workers.ok()) << workers.status();
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (absl::Now() < deadline && LossesLogged((*workers)->process().Log()).size() < 3) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_GE(LossesLogged((*workers)->process().Log()).size(), 3u);
  // Whatever piece each group is in, its leader meets the other's once more on the way out
  // instead of leaving it to wait out its deadline.
  const absl::Time stop = absl::Now();
  (*workers)->process().Terminate();
  const std::optional<int> code = (*workers)->process().Wait(absl::Seconds(30));
  EXPECT_TRUE(code.has_value()) << Tail((*workers)->process().Log(), 40);
  EXPECT_LT(absl::Now() - stop, absl::Seconds(20));
}

}  // namespace
}  // namespace tessera::e2e
