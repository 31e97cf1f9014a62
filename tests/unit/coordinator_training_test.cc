// Fine-tunes through the coordinator (StartTraining, TrainingStatus, StopTraining), without
// MPI: a real Coordinator on loopback in front of fake group leaders whose Worker services
// answer the fine-tune calls as each test sets them (or not at all: a worker older than the
// calls). What is checked is the coordinator's own part: the request's checks, the group a
// fine-tune goes to (every group of a job of several), the fan-out and what it gathers or
// skips, errors naming the group, the operators' token, and the fine-tune a group
// registering again under its name gets back.

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "runtime/serve/bearer.h"
#include "runtime/serve/coordinator.h"
#include "runtime/serve/grpc_server.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/request_convert.h"
#include "tessera/v1/inference.grpc.pb.h"
#include "tessera/v1/worker.grpc.pb.h"
#include "tests/unit/status_test_util.h"

namespace tessera::serve {
namespace {

using ::tessera::testing::IsError;

// The smallest tokenizer.json registration takes: the coordinator parses it, nothing here
// encodes with it.
constexpr char kTokenizerJson[] =
    R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}, "decoder": {"type": "Fuse"}})";
constexpr char kConfig[] = R"({"data": "pairs.jsonl", "adapter": "tuned", "output": "runs/t"})";
constexpr char kJoinToken[] = "operators-token";

// A group leader that runs at most one fine-tune, as the real one does: FAILED_PRECONDITION
// while one runs, NOT_FOUND when asked to stop none. Records the requests it gets.
class FakeTrainer final : public v1::Worker::Service {
 public:
  grpc::Status StartTraining(grpc::ServerContext* /*context*/,
                             const v1::StartTrainingRequest* request,
                             v1::StartTrainingResponse* /*response*/) override {
    absl::MutexLock lock(&mutex_);
    started_.push_back(*request);
    if (!start_error_.ok()) return start_error_;
    if (state_.has_value() && state_->state() == "running") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "a fine-tune is running");
    }
    state_.emplace();
    state_->set_adapter("tuned");
    state_->set_state("running");
    state_->set_steps(300);
    state_->set_steps_done(12);
    state_->set_loss(1.5);
    // What a worker would not know: the coordinator puts its own names in.
    state_->set_model("worker's model name");
    state_->set_group("worker's group name");
    return grpc::Status::OK;
  }

  grpc::Status TrainingStatus(grpc::ServerContext* /*context*/,
                              const v1::TrainingStatusRequest* request,
                              v1::TrainingStatusResponse* response) override {
    absl::MutexLock lock(&mutex_);
    status_asked_for_.push_back(request->model());
    if (!status_error_.ok()) return status_error_;
    if (state_.has_value()) *response->add_trainings() = *state_;
    return grpc::Status::OK;
  }

  grpc::Status StopTraining(grpc::ServerContext* /*context*/,
                            const v1::StopTrainingRequest* /*request*/,
                            v1::StopTrainingResponse* /*response*/) override {
    absl::MutexLock lock(&mutex_);
    if (!state_.has_value() || state_->state() != "running") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no fine-tune is running");
    }
    state_->set_state("stopped");
    return grpc::Status::OK;
  }

  void set_start_error(grpc::Status error) {
    absl::MutexLock lock(&mutex_);
    start_error_ = std::move(error);
  }
  void set_status_error(grpc::Status error) {
    absl::MutexLock lock(&mutex_);
    status_error_ = std::move(error);
  }
  std::vector<v1::StartTrainingRequest> started() const {
    absl::MutexLock lock(&mutex_);
    return started_;
  }
  std::vector<std::string> status_asked_for() const {
    absl::MutexLock lock(&mutex_);
    return status_asked_for_;
  }

 private:
  mutable absl::Mutex mutex_;
  grpc::Status start_error_ ABSL_GUARDED_BY(mutex_);
  grpc::Status status_error_ ABSL_GUARDED_BY(mutex_);
  std::optional<v1::TrainingState> state_ ABSL_GUARDED_BY(mutex_);
  std::vector<v1::StartTrainingRequest> started_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> status_asked_for_ ABSL_GUARDED_BY(mutex_);
};

// A group leader older than the fine-tune calls: every one is UNIMPLEMENTED.
class OldWorker final : public v1::Worker::Service {};

class CoordinatorTrainingTest : public ::testing::Test {
 protected:
  ~CoordinatorTrainingTest() override {
    // The coordinator's server first: no call reaches a worker that is gone.
    if (server_.server != nullptr) server_.server->Shutdown();
    for (RunningGrpcServer& worker : workers_) worker.server->Shutdown();
  }

  // `join_token`: the coordinator's (empty: none).
  void StartCoordinator(const std::string& join_token = "") {
    CoordinatorOptions options;
    options.join_token = join_token;
    // No heartbeats come from the fake groups: none may expire while a test runs.
    options.registry.heartbeat_interval = absl::Hours(1);
    options.training_call_timeout = absl::Seconds(10);
    coordinator_ = std::make_unique<Coordinator>(options, metrics_);
    GrpcServerOptions server;
    server.address = "127.0.0.1:0";
    absl::StatusOr<RunningGrpcServer> running = StartGrpcServer(
        server, {coordinator_->inference_service(), coordinator_->registry_service()});
    ASSERT_TRUE(running.ok()) << running.status();
    server_ = *std::move(running);
    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_.port),
                                       grpc::InsecureChannelCredentials());
    inference_ = v1::Inference::NewStub(channel);
    registry_ = v1::WorkerRegistry::NewStub(channel);
    join_token_ = join_token;
  }

  // Group leaders' services, which outlive their servers.
  FakeTrainer& NewTrainer() { return trainers_.emplace_back(); }
  OldWorker& old_worker() { return old_worker_; }

  // Registers a group of `model` at `version` whose leader serves `worker`; its id ("" and a
  // test failure when registration fails).
  std::string AddGroup(grpc::Service* worker, const std::string& model = "tiny",
                       const std::string& version = "v1") {
    return Register(worker, model, version, absl::StrCat("host/replica", workers_.size()))
        .group_id();
  }
  // The same under the group name `name`, in `job` (unset: its job's only group); the
  // coordinator's answer.
  v1::RegisterResponse Register(grpc::Service* worker, const std::string& model,
                                const std::string& version, const std::string& name,
                                const v1::WorkerJob& job = {}) {
    GrpcServerOptions options;
    options.address = "127.0.0.1:0";
    absl::StatusOr<RunningGrpcServer> running = StartGrpcServer(options, {worker});
    EXPECT_TRUE(running.ok()) << running.status();
    if (!running.ok()) return {};
    const std::string endpoint = absl::StrCat("127.0.0.1:", running->port);
    workers_.push_back(*std::move(running));
    v1::RegisterRequest request;
    request.set_model(model);
    request.set_version(version);
    request.set_endpoint(endpoint);
    request.set_name(name);
    *request.mutable_job() = job;
    request.mutable_kv()->set_block_size(16);
    request.mutable_kv()->set_blocks(64);
    request.set_tokenizer_json(kTokenizerJson);
    grpc::ClientContext context;
    AddBearerToken(context, join_token_);
    v1::RegisterResponse response;
    grpc::Status status = registry_->Register(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  static v1::StartTrainingRequest Start(const std::string& model, const std::string& version = "",
                                        const std::string& group = "") {
    v1::StartTrainingRequest request;
    request.set_model(model);
    request.set_version(version);
    request.set_group(group);
    request.set_config_json(kConfig);
    return request;
  }

  // The calls as an operator (with `token`, or the coordinator's join token when null) or a
  // client (no token) makes them.
  absl::StatusOr<v1::StartTrainingResponse> StartTraining(const v1::StartTrainingRequest& request,
                                                          const char* token = nullptr) {
    grpc::ClientContext context;
    AddBearerToken(context, token != nullptr ? token : join_token_);
    v1::StartTrainingResponse response;
    grpc::Status status = inference_->StartTraining(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }
  absl::StatusOr<v1::TrainingStatusResponse> TrainingStatus(const std::string& model) {
    grpc::ClientContext context;
    v1::TrainingStatusRequest request;
    request.set_model(model);
    v1::TrainingStatusResponse response;
    grpc::Status status = inference_->TrainingStatus(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }
  absl::StatusOr<std::vector<std::string>> StopTraining(const std::string& model,
                                                        const std::string& version = "",
                                                        const std::string& group = "",
                                                        const char* token = nullptr) {
    grpc::ClientContext context;
    AddBearerToken(context, token != nullptr ? token : join_token_);
    v1::StopTrainingRequest request;
    request.set_model(model);
    request.set_version(version);
    request.set_group(group);
    v1::StopTrainingResponse response;
    grpc::Status status = inference_->StopTraining(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return std::vector<std::string>(response.groups().begin(), response.groups().end());
  }

  std::deque<FakeTrainer> trainers_;
  OldWorker old_worker_;
  MetricsRegistry metrics_;
  std::unique_ptr<Coordinator> coordinator_;
  RunningGrpcServer server_;
  std::vector<RunningGrpcServer> workers_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::WorkerRegistry::Stub> registry_;
  std::string join_token_;
};

TEST_F(CoordinatorTrainingTest, StartTrainingChecksTheRequestNamingTheField) {
  StartCoordinator();
  FakeTrainer& trainer = NewTrainer();
  const std::string g1 = AddGroup(&trainer);
  FakeTrainer& other_model = NewTrainer();
  const std::string g2 = AddGroup(&other_model, "other");

  EXPECT_TRUE(
      IsError(StartTraining(Start("")), absl::StatusCode::kInvalidArgument, {"model: required"}));
  v1::StartTrainingRequest no_config = Start("tiny");
  no_config.clear_config_json();
  EXPECT_TRUE(IsError(StartTraining(no_config), absl::StatusCode::kInvalidArgument,
                      {"config_json: required"}));
  v1::StartTrainingRequest too_long = Start("tiny");
  too_long.set_config_json(std::string(64 * 1024 + 1, ' '));
  EXPECT_TRUE(IsError(StartTraining(too_long), absl::StatusCode::kInvalidArgument,
                      {"config_json: 65537 bytes; at most 65536"}));
  EXPECT_TRUE(IsError(StartTraining(Start("unknown")), absl::StatusCode::kNotFound,
                      {"model: no worker group serves 'unknown'"}));
  EXPECT_TRUE(IsError(StartTraining(Start("tiny", "v9")), absl::StatusCode::kNotFound,
                      {"version: model tiny has no version 'v9'"}));
  EXPECT_TRUE(IsError(StartTraining(Start("tiny", "", "g99")), absl::StatusCode::kNotFound,
                      {"group: 'g99' is not a registered group of model tiny; its groups: ", g1}));
  // Another model's group is not one of this model's.
  EXPECT_TRUE(IsError(StartTraining(Start("tiny", "v1", g2)), absl::StatusCode::kNotFound,
                      {"group: '", g2, "' is not a registered group of model tiny version v1"}));
  EXPECT_TRUE(trainer.started().empty());
  EXPECT_TRUE(other_model.started().empty());

  // 64 KiB is within the limit: the worker gets it and says what it thinks of it.
  v1::StartTrainingRequest longest = Start("tiny");
  longest.set_config_json(std::string(64 * 1024, ' '));
  trainer.set_start_error(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "config_json: not a JSON object"));
  EXPECT_TRUE(IsError(StartTraining(longest), absl::StatusCode::kInvalidArgument,
                      {"group ", g1, " (host/replica0): config_json: not a JSON object"}));
  ASSERT_EQ(trainer.started().size(), 1u);
  EXPECT_EQ(trainer.started()[0].config_json().size(), 64u * 1024);
}

TEST_F(CoordinatorTrainingTest, StartTrainingGoesToTheNamedGroupOrTheModelsFirst) {
  StartCoordinator();
  FakeTrainer& first = NewTrainer();
  FakeTrainer& v2 = NewTrainer();
  FakeTrainer& third = NewTrainer();
  const std::string g1 = AddGroup(&first, "tiny", "v1");
  const std::string g2 = AddGroup(&v2, "tiny", "v2");
  const std::string g3 = AddGroup(&third, "tiny", "v1");

  ASSERT_OK_AND_ASSIGN(v1::StartTrainingResponse started, StartTraining(Start("tiny")));
  EXPECT_EQ(started.group(), g1);
  ASSERT_EQ(first.started().size(), 1u);
  const v1::StartTrainingRequest sent = first.started()[0];
  EXPECT_EQ(sent.model(), "tiny");
  EXPECT_EQ(sent.version(), "v1");  // the group's own, though the operator named none
  EXPECT_EQ(sent.config_json(), kConfig);

  // The first group runs one already: the worker's refusal, naming the group.
  EXPECT_TRUE(IsError(StartTraining(Start("tiny")), absl::StatusCode::kFailedPrecondition,
                      {"group ", g1, " (host/replica0): a fine-tune is running"}));
  // A version's first group; a group named.
  ASSERT_OK_AND_ASSIGN(started, StartTraining(Start("tiny", "v2")));
  EXPECT_EQ(started.group(), g2);
  ASSERT_OK_AND_ASSIGN(started, StartTraining(Start("tiny", "", g3)));
  EXPECT_EQ(started.group(), g3);
  ASSERT_EQ(third.started().size(), 1u);
  EXPECT_EQ(v2.started().size(), 1u);
  EXPECT_EQ(first.started().size(), 2u);
}

TEST_F(CoordinatorTrainingTest, StatusGathersEveryGroupsStateAndSkipsThoseThatCannotSay) {
  StartCoordinator();
  FakeTrainer& running = NewTrainer();
  FakeTrainer& idle = NewTrainer();
  FakeTrainer& failing = NewTrainer();
  FakeTrainer& other_model = NewTrainer();
  const std::string g1 = AddGroup(&running);
  AddGroup(&idle);
  AddGroup(&old_worker());
  const std::string g4 = AddGroup(&failing);
  const std::string g5 = AddGroup(&other_model, "other", "v7");
  ASSERT_OK(StartTraining(Start("tiny", "", g1)));
  ASSERT_OK(StartTraining(Start("tiny", "", g4)));
  ASSERT_OK(StartTraining(Start("other")));
  failing.set_status_error(grpc::Status(grpc::StatusCode::UNAVAILABLE, "leader restarting"));

  ASSERT_OK_AND_ASSIGN(v1::TrainingStatusResponse all, TrainingStatus(""));
  ASSERT_EQ(all.trainings_size(), 2) << all.DebugString();
  const v1::TrainingState& tiny = all.trainings(0);
  EXPECT_EQ(tiny.group(), g1);
  EXPECT_EQ(tiny.model(), "tiny");  // the coordinator's names, not the worker's
  EXPECT_EQ(tiny.version(), "v1");
  EXPECT_EQ(tiny.adapter(), "tuned");
  EXPECT_EQ(tiny.state(), "running");
  EXPECT_EQ(tiny.steps_done(), 12);
  EXPECT_EQ(tiny.steps(), 300);
  EXPECT_DOUBLE_EQ(tiny.loss(), 1.5);
  EXPECT_EQ(all.trainings(1).group(), g5);
  EXPECT_EQ(all.trainings(1).model(), "other");
  EXPECT_EQ(all.trainings(1).version(), "v7");

  ASSERT_OK_AND_ASSIGN(v1::TrainingStatusResponse of_tiny, TrainingStatus("tiny"));
  ASSERT_EQ(of_tiny.trainings_size(), 1);
  EXPECT_EQ(of_tiny.trainings(0).group(), g1);
  EXPECT_EQ(running.status_asked_for().back(), "tiny");
  EXPECT_EQ(other_model.status_asked_for().size(), 1u);  // asked by the first call only
  EXPECT_TRUE(IsError(TrainingStatus("unknown"), absl::StatusCode::kNotFound,
                      {"model: no worker group serves 'unknown'"}));
}

TEST_F(CoordinatorTrainingTest, StopTrainingAnswersTheGroupsThatStopped) {
  StartCoordinator();
  const std::string g1 = AddGroup(&NewTrainer());
  const std::string g2 = AddGroup(&NewTrainer(), "tiny", "v2");
  const std::string g3 = AddGroup(&NewTrainer());
  const std::string g4 = AddGroup(&old_worker());

  EXPECT_TRUE(IsError(StopTraining(""), absl::StatusCode::kInvalidArgument, {"model: required"}));
  EXPECT_TRUE(IsError(StopTraining("tiny"), absl::StatusCode::kNotFound,
                      {"no fine-tune is running on the groups of model tiny (", g1, ", ", g2, ", ",
                       g3, ", ", g4, ")"}));
  ASSERT_OK(StartTraining(Start("tiny", "", g1)));
  ASSERT_OK(StartTraining(Start("tiny", "", g2)));

  // One version's groups: g1 alone runs one there; the old worker counts as running none.
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> stopped, StopTraining("tiny", "v1"));
  EXPECT_EQ(stopped, std::vector<std::string>{g1});
  ASSERT_OK_AND_ASSIGN(v1::TrainingStatusResponse status, TrainingStatus("tiny"));
  ASSERT_EQ(status.trainings_size(), 2);
  EXPECT_EQ(status.trainings(0).state(), "stopped");
  EXPECT_EQ(status.trainings(1).state(), "running");

  // A group named: its own NOT_FOUND, or its worker's inability, named.
  EXPECT_TRUE(IsError(StopTraining("tiny", "", g1), absl::StatusCode::kNotFound,
                      {"group ", g1, " (host/replica0): no fine-tune is running"}));
  EXPECT_TRUE(IsError(StopTraining("tiny", "", g4), absl::StatusCode::kUnimplemented,
                      {"group ", g4, " (host/replica3): its worker runs no fine-tune calls"}));
  EXPECT_TRUE(IsError(StartTraining(Start("tiny", "", g4)), absl::StatusCode::kUnimplemented,
                      {"group ", g4, " (host/replica3): its worker runs no fine-tune calls"}));
  EXPECT_TRUE(IsError(StopTraining("tiny", "v1", g2), absl::StatusCode::kNotFound,
                      {"group: '", g2, "' is not a registered group of model tiny version v1"}));
  ASSERT_OK_AND_ASSIGN(stopped, StopTraining("tiny", "", g2));
  EXPECT_EQ(stopped, std::vector<std::string>{g2});
  EXPECT_TRUE(IsError(StopTraining("tiny"), absl::StatusCode::kNotFound));
}

TEST_F(CoordinatorTrainingTest, AGroupRegisteringAgainUnderItsNameGetsItsFineTuneBack) {
  StartCoordinator();
  const std::string g1 = AddGroup(&NewTrainer());  // host/replica0
  AddGroup(&NewTrainer());                         // host/replica1
  ASSERT_OK(StartTraining(Start("tiny", "", g1)));
  // host/replica0 failed and was started again: it gets the configuration to start again.
  // Another name, or the same name serving another model, gets none.
  const v1::RegisterResponse again = Register(&NewTrainer(), "tiny", "v2", "host/replica0");
  EXPECT_EQ(again.training_config_json(), kConfig);
  EXPECT_EQ(Register(&NewTrainer(), "tiny", "v1", "host/replica1").training_config_json(), "");
  EXPECT_EQ(Register(&NewTrainer(), "other", "v1", "host/replica0").training_config_json(), "");
  // Stopped there, it is not started again.
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> stopped, StopTraining("tiny", "", g1));
  EXPECT_EQ(stopped, std::vector<std::string>{g1});
  EXPECT_EQ(Register(&NewTrainer(), "tiny", "v1", "host/replica0").training_config_json(), "");
}

// A group of a job of several (tessera worker --np 4 --tp 2) runs a fine-tune data-parallel
// over the job's groups, which create it together: a start named on any of them goes to
// every one at once, marked job-wide, once all are registered and none runs one; a stop goes
// to them all; and each name gets the fine-tune back when the job registers again.
TEST_F(CoordinatorTrainingTest, AJobOfSeveralGroupsStartsAndStopsItsFineTuneTogether) {
  StartCoordinator();
  v1::WorkerJob job;
  job.set_id("job-a");
  job.set_groups(2);
  FakeTrainer& alone = NewTrainer();
  FakeTrainer& first = NewTrainer();
  FakeTrainer& second = NewTrainer();
  const std::string g1 = AddGroup(&alone);  // host/replica0, a job of its own
  const std::string g2 = Register(&first, "tiny", "v1", "host/replica1", job).group_id();

  // Half of the job is registered: refused, nothing sent.
  EXPECT_TRUE(IsError(StartTraining(Start("tiny", "", g2)), absl::StatusCode::kFailedPrecondition,
                      {"group ", g2, " (host/replica1) runs in a job of 2 groups",
                       "1 of them are registered (", g2, "): start it once all are"}));
  EXPECT_TRUE(first.started().empty());

  const std::string g3 = Register(&second, "tiny", "v1", "host/replica2", job).group_id();
  ASSERT_OK_AND_ASSIGN(v1::StartTrainingResponse started, StartTraining(Start("tiny", "", g3)));
  EXPECT_EQ(started.group(), g3);
  EXPECT_EQ(std::vector<std::string>(started.groups().begin(), started.groups().end()),
            (std::vector<std::string>{g2, g3}));
  for (FakeTrainer* member : {&first, &second}) {
    ASSERT_EQ(member->started().size(), 1u);
    EXPECT_TRUE(member->started()[0].job_wide());
    EXPECT_EQ(member->started()[0].config_json(), kConfig);
  }
  EXPECT_TRUE(alone.started().empty());
  // A group of its own job is started alone, not job-wide.
  ASSERT_OK_AND_ASSIGN(started, StartTraining(Start("tiny", "", g1)));
  EXPECT_EQ(std::vector<std::string>(started.groups().begin(), started.groups().end()),
            std::vector<std::string>{g1});
  ASSERT_EQ(alone.started().size(), 1u);
  EXPECT_FALSE(alone.started()[0].job_wide());

  // One runs there: refused before any group of the job is asked to start.
  EXPECT_TRUE(IsError(StartTraining(Start("tiny", "", g2)), absl::StatusCode::kFailedPrecondition,
                      {"group ", g2,
                       " (host/replica1): its fine-tune of adapter tuned is running "
                       "(step 12/300)"}));
  EXPECT_EQ(first.started().size(), 1u);
  EXPECT_EQ(second.started().size(), 1u);

  // The job started again (a new job, under the same names): each name gets it back.
  v1::WorkerJob again = job;
  again.set_id("job-b");
  EXPECT_EQ(Register(&NewTrainer(), "tiny", "v1", "host/replica1", again).training_config_json(),
            kConfig);
  EXPECT_EQ(Register(&NewTrainer(), "tiny", "v1", "host/replica2", again).training_config_json(),
            kConfig);

  // A stop named on one group stops the job's others with it, and forgets them all.
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> stopped, StopTraining("tiny", "", g2));
  EXPECT_EQ(stopped, (std::vector<std::string>{g2, g3}));
  EXPECT_EQ(Register(&NewTrainer(), "tiny", "v1", "host/replica1").training_config_json(), "");
  EXPECT_EQ(Register(&NewTrainer(), "tiny", "v1", "host/replica2").training_config_json(), "");
}

TEST_F(CoordinatorTrainingTest, StartingAndStoppingNeedTheJoinTokenTheStatusDoesNot) {
  StartCoordinator(kJoinToken);
  FakeTrainer& trainer = NewTrainer();
  const std::string g1 = AddGroup(&trainer);

  EXPECT_TRUE(IsError(StartTraining(Start("tiny"), ""), absl::StatusCode::kUnauthenticated,
                      {"StartTraining is an operator's call", "join token"}));
  EXPECT_TRUE(IsError(StartTraining(Start("tiny"), "a client's key"),
                      absl::StatusCode::kPermissionDenied, {"the token sent is not it"}));
  EXPECT_TRUE(trainer.started().empty());
  ASSERT_OK_AND_ASSIGN(v1::StartTrainingResponse started, StartTraining(Start("tiny")));
  EXPECT_EQ(started.group(), g1);

  ASSERT_OK_AND_ASSIGN(v1::TrainingStatusResponse status, TrainingStatus("tiny"));
  EXPECT_EQ(status.trainings_size(), 1);

  EXPECT_TRUE(IsError(StopTraining("tiny", "", "", ""), absl::StatusCode::kUnauthenticated,
                      {"StopTraining is an operator's call"}));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> stopped, StopTraining("tiny"));
  EXPECT_EQ(stopped, std::vector<std::string>{g1});
}

}  // namespace
}  // namespace tessera::serve
