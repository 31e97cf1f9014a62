// The serving layer end to end, as a user runs it: a `tessera coordinator` and worker groups
// under mpirun on loopback, real gRPC clients, and /metrics read over HTTP. Each suite below
// shares one layout of processes among its tests (started in SetUpTestSuite, stopped in
// TearDownTestSuite, even when a test fails); their logs are printed when a test fails.
// Workers run the built-in default model (a tiny random Llama with a byte-level tokenizer:
// the text is meaningless but deterministic; ignore_eos makes lengths exact).
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

using ::grpc::StatusCode;

// Loading the model (made on first use) and registering.
constexpr absl::Duration kStartTimeout = absl::Seconds(120);

ServeHarness* harness = nullptr;

// One scratch folder for the whole run: logs, and the built-in model's cache (made once).
class ServeEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    char pattern[] = "/tmp/tessera-serve-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    harness_ = std::make_unique<ServeHarness>(
        TESSERA_BINARY,
        std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
        dir_);
    harness = harness_.get();
  }
  void TearDown() override {
    harness = nullptr;
    harness_.reset();
    if (::testing::UnitTest::GetInstance()->Failed()) {
      std::fprintf(stderr, "serve_test: logs kept in %s\n", dir_.c_str());
    } else {
      std::filesystem::remove_all(dir_);
    }
  }

 private:
  std::string dir_;
  std::unique_ptr<ServeHarness> harness_;
};

// The only model the coordinator lists, once one is listed.
absl::StatusOr<std::string> WaitForModel(CoordinatorProcess& coordinator) {
  std::string name;
  bool listed = WaitFor(
      [&] {
        grpc::ClientContext context;
        SetDeadline(context, absl::Seconds(2));
        v1::ListModelsResponse models;
        if (!coordinator.inference().ListModels(&context, {}, &models).ok()) return false;
        if (models.models_size() != 1) return false;
        name = models.models(0).name();
        return true;
      },
      kStartTimeout, absl::Milliseconds(100));
  if (!listed) return absl::DeadlineExceededError("no model listed");
  return name;
}

// Joins its threads when it goes, so that no early return leaves one running.
struct JoinAll {
  std::vector<std::thread>& threads;
  ~JoinAll() {
    for (std::thread& thread : threads) {
      if (thread.joinable()) thread.join();
    }
  }
};

// One coordinator and the worker jobs registered with it.
struct Layout {
  std::unique_ptr<CoordinatorProcess> coordinator;
  std::vector<std::unique_ptr<WorkerJob>> jobs;
  std::vector<std::vector<std::string>> leaders;  // per job: the leaders' endpoints
  std::string model;

  // The group id of job `job`'s replica `replica`.
  std::string GroupOf(int job, int replica = 0) const {
    absl::StatusOr<std::string> id = coordinator->GroupIdOf(leaders[job][replica]);
    return id.ok() ? *id : std::string(id.status().message());
  }

  // Workers first (in parallel: SIGTERM to every job, then wait), then the coordinator.
  void Stop() {
    for (auto& job : jobs) job->process().Terminate();
    for (auto& job : jobs) job->process().Stop(absl::Seconds(10));
    jobs.clear();
    if (coordinator != nullptr) coordinator->process().Stop(absl::Seconds(5));
    coordinator.reset();
  }

  std::string Logs() const {
    std::string text;
    if (coordinator != nullptr) {
      absl::StrAppend(&text, "--- coordinator (", coordinator->process().log_path(), "):\n",
                      Tail(coordinator->process().Log(), 40), "\n");
    }
    for (const auto& job : jobs) {
      absl::StrAppend(&text, "--- workers (", job->process().log_path(), "):\n",
                      Tail(job->process().Log(), 40), "\n");
    }
    return text;
  }
};

// Starts a coordinator with `coordinator_flags` and one mpirun job per entry of `jobs`, and
// waits until every group is healthy. `expected` is the healthy groups by version.
absl::StatusOr<std::unique_ptr<Layout>> StartLayout(
    const std::vector<std::string>& coordinator_flags, const std::vector<WorkerJobOptions>& jobs,
    const std::map<std::string, int>& expected) {
  auto layout = std::make_unique<Layout>();
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator =
      harness->StartCoordinator(coordinator_flags);
  if (!coordinator.ok()) return coordinator.status();
  layout->coordinator = *std::move(coordinator);
  for (const WorkerJobOptions& options : jobs) {
    absl::StatusOr<std::unique_ptr<WorkerJob>> job =
        harness->StartWorkers(layout->coordinator->grpc_port(), options);
    if (!job.ok()) return job.status();
    layout->jobs.push_back(*std::move(job));
  }
  for (auto& job : layout->jobs) {
    absl::StatusOr<std::vector<std::string>> leaders = job->WaitForLeaders(kStartTimeout);
    if (!leaders.ok()) {
      std::string logs = layout->Logs();
      layout->Stop();
      return absl::Status(leaders.status().code(),
                          absl::StrCat(leaders.status().message(), "\n", logs));
    }
    layout->leaders.push_back(*leaders);
  }
  absl::StatusOr<std::string> model = WaitForModel(*layout->coordinator);
  absl::Status healthy =
      model.ok() ? layout->coordinator->WaitForHealthyGroups(*model, expected, kStartTimeout)
                 : model.status();
  if (!healthy.ok()) {
    std::string logs = layout->Logs();
    layout->Stop();
    return absl::Status(healthy.code(), absl::StrCat(healthy.message(), "\n", logs));
  }
  layout->model = *model;
  return layout;
}

// A suite whose tests share one layout. `Derived` gives CoordinatorFlags(), Jobs() and
// Expected(), and may give Heartbeat().
template <typename Derived>
class LayoutTest : public ::testing::Test {
 public:
  // The interval the coordinator asks groups to send heartbeats at (3 missed: dead). Short
  // only where a test waits for a group to be declared dead: a loaded machine can delay
  // heartbeats.
  static absl::Duration Heartbeat() { return absl::Seconds(1); }

 protected:
  static void SetUpTestSuite() {
    absl::Time start = absl::Now();
    std::vector<std::string> flags = Derived::CoordinatorFlags();
    flags.insert(flags.end(), {"--heartbeat-interval", absl::FormatDuration(Derived::Heartbeat())});
    absl::StatusOr<std::unique_ptr<Layout>> layout =
        StartLayout(flags, Derived::Jobs(), Derived::Expected());
    if (layout.ok()) {
      layout_ = std::move(*layout);
      std::fprintf(stderr, "[ layout   ] ready in %.1f s\n",
                   absl::ToDoubleSeconds(absl::Now() - start));
    } else {
      setup_error_ = layout.status().ToString();
    }
  }
  static void TearDownTestSuite() {
    absl::Time start = absl::Now();
    if (layout_ != nullptr) layout_->Stop();
    layout_.reset();
    std::fprintf(stderr, "[ layout   ] stopped in %.1f s\n",
                 absl::ToDoubleSeconds(absl::Now() - start));
  }

  void SetUp() override {
    ASSERT_NE(layout_, nullptr) << "the layout did not start: " << setup_error_;
  }
  void TearDown() override {
    if (HasFailure() && layout_ != nullptr) std::fprintf(stderr, "%s", layout_->Logs().c_str());
  }

  Layout& layout() { return *layout_; }
  CoordinatorProcess& coordinator() { return *layout_->coordinator; }
  v1::Inference::Stub& inference() { return layout_->coordinator->inference(); }
  const std::string& model() const { return layout_->model; }

  MetricsSnapshot Metrics() {
    absl::StatusOr<MetricsSnapshot> metrics = coordinator().Metrics();
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? *std::move(metrics) : MetricsSnapshot();
  }

  // KV blocks the coordinator last heard `group` (every group when empty) hold for running
  // sequences: its tessera_group_kv_blocks gauge, which follows the groups' heartbeats. -1
  // when the gauge has no such sample.
  double UsedBlocks(const std::string& group = "") {
    std::map<std::string, std::string> labels = {{"state", "used"}};
    if (!group.empty()) labels["group"] = group;
    MetricsSnapshot metrics = Metrics();
    return metrics.Has("tessera_group_kv_blocks", labels)
               ? metrics.Sum("tessera_group_kv_blocks", labels)
               : -1;
  }

  static std::unique_ptr<Layout> layout_;
  static std::string setup_error_;
};

template <typename Derived>
std::unique_ptr<Layout> LayoutTest<Derived>::layout_;
template <typename Derived>
std::string LayoutTest<Derived>::setup_error_;

// ---------------------------------------------------------------------------------------
// Two groups of TP 2 in one `mpirun -np 4 tessera worker --tp 2`.

class TwoGroupsOfTp2 : public LayoutTest<TwoGroupsOfTp2> {
 public:
  static std::vector<std::string> CoordinatorFlags() { return {"--max-message-bytes", "256K"}; }
  static std::vector<WorkerJobOptions> Jobs() {
    WorkerJobOptions job;
    job.np = 4;
    job.tp = 2;
    return {job};
  }
  static std::map<std::string, int> Expected() { return {{"v1", 2}}; }

 protected:
  std::set<std::string> Groups() { return {layout().GroupOf(0, 0), layout().GroupOf(0, 1)}; }
};

// 1. A stream delivers every token once, in order, then exactly one final message; its text
// is the unary answer's.
TEST_F(TwoGroupsOfTp2, StreamIsOrderedCompleteAndEqualsTheUnaryAnswer) {
  constexpr int kTokens = 24;
  v1::GenerateRequest request = Request(model(), "Streaming order and completeness", kTokens);
  request.mutable_sampling()->set_logprobs(true);
  Streamed stream = Stream(inference(), request);
  ASSERT_TRUE(stream.status.ok()) << Describe(stream.status);
  ASSERT_FALSE(stream.messages.empty());

  int finals = 0;
  for (size_t i = 0; i < stream.messages.size(); ++i) {
    const v1::GenerateStreamResponse& message = stream.messages[i];
    finals += message.final() ? 1 : 0;
    EXPECT_EQ(message.final(), i + 1 == stream.messages.size()) << "message " << i;
    EXPECT_EQ(message.request_id(), stream.messages[0].request_id()) << "message " << i;
    EXPECT_EQ(message.logprobs_size(), message.tokens_size()) << "message " << i;
    for (float logprob : message.logprobs()) {
      EXPECT_TRUE(std::isfinite(logprob) && logprob <= 0) << logprob;
    }
  }
  EXPECT_EQ(finals, 1);
  EXPECT_FALSE(stream.messages[0].request_id().empty());
  const v1::Placement& placement = stream.messages[0].placement();
  EXPECT_EQ(placement.model(), model());
  EXPECT_EQ(placement.version(), "v1");
  EXPECT_TRUE(Groups().contains(placement.group())) << placement.ShortDebugString();

  const v1::GenerateStreamResponse& last = stream.messages.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(static_cast<int>(stream.Tokens().size()), kTokens);
  EXPECT_EQ(last.usage().completion_tokens(), kTokens);
  grpc::ClientContext tokenize_context;
  SetDeadline(tokenize_context, absl::Seconds(10));
  v1::TokenizeRequest tokenize;
  tokenize.set_model(model());
  tokenize.set_text(request.prompt());
  tokenize.set_add_special_tokens(true);
  v1::TokenizeResponse tokens;
  ASSERT_TRUE(inference().Tokenize(&tokenize_context, tokenize, &tokens).ok());
  EXPECT_EQ(last.usage().prompt_tokens(), tokens.tokens_size());
  EXPECT_GT(last.timings().total_seconds(), 0);

  // The same request, unary and without logprobs: the same tokens and text.
  request.mutable_sampling()->set_logprobs(false);
  Unary unary = Generate(inference(), request);
  ASSERT_TRUE(unary.status.ok()) << Describe(unary.status);
  EXPECT_EQ(unary.response.text(), stream.Text());
  EXPECT_EQ(std::vector<int32_t>(unary.response.tokens().begin(), unary.response.tokens().end()),
            stream.Tokens());
  EXPECT_EQ(unary.response.logprobs_size(), 0);
  EXPECT_EQ(unary.response.usage().completion_tokens(), kTokens);
  EXPECT_EQ(unary.response.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(unary.response.has_placement());

  // Without logprobs a stream carries none.
  Streamed plain = Stream(inference(), request);
  ASSERT_TRUE(plain.status.ok()) << Describe(plain.status);
  for (const auto& message : plain.messages) EXPECT_EQ(message.logprobs_size(), 0);
  EXPECT_EQ(plain.Text(), stream.Text());
}

// 2. A batch spread over both groups answers in order, each answer the request's alone.
TEST_F(TwoGroupsOfTp2, BatchOverTwoGroupsMatchesEachRequestSentAlone) {
  constexpr int kRequests = 16;
  v1::GenerateBatchRequest batch;
  for (int i = 0; i < kRequests; ++i) {
    std::string prompt = absl::StrCat("Batch request ", i, ":");
    for (int j = 0; j < i; ++j) absl::StrAppend(&prompt, " word", j * 7 % 11);
    *batch.add_requests() = Request(model(), prompt, 4 + 3 * i);
  }
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(120));
  v1::GenerateBatchResponse response;
  grpc::Status status = inference().GenerateBatch(&context, batch, &response);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_EQ(response.results_size(), kRequests);

  std::set<std::string> groups;
  for (int i = 0; i < kRequests; ++i) {
    const v1::BatchResult& result = response.results(i);
    ASSERT_EQ(result.error_code(), 0) << i << ": " << result.error_message();
    const v1::GenerateResponse& batched = result.response();
    groups.insert(batched.placement().group());
    EXPECT_EQ(batched.tokens_size(), 4 + 3 * i) << i;
    EXPECT_EQ(batched.usage().completion_tokens(), 4 + 3 * i) << i;
    Unary alone = Generate(inference(), batch.requests(i));
    ASSERT_TRUE(alone.status.ok()) << i << ": " << Describe(alone.status);
    EXPECT_EQ(batched.text(), alone.response.text()) << i;
    EXPECT_EQ(std::vector<int32_t>(batched.tokens().begin(), batched.tokens().end()),
              std::vector<int32_t>(alone.response.tokens().begin(), alone.response.tokens().end()))
        << i;
    EXPECT_EQ(batched.usage().prompt_tokens(), alone.response.usage().prompt_tokens()) << i;
  }
  EXPECT_EQ(groups, Groups()) << "the batch did not use both groups";
}

// 3. Cancelling a stream cancels the request in its group, which frees its KV blocks.
TEST_F(TwoGroupsOfTp2, CancellingAStreamFreesItsBlocks) {
  const double cancelled_before = Metrics().Sum("tessera_requests_total", {{"code", "CANCELLED"}});
  // 2000 tokens after a short prompt: well inside the model's 4096-token context, and far
  // longer than this test waits.
  v1::GenerateRequest request = Request(model(), "A long story about cancellation", 2000);
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(60));
  auto reader = inference().GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  std::string group;
  int tokens = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(reader->Read(&message)) << Describe(reader->Finish());
    if (i == 0) group = message.placement().group();
    tokens += message.tokens_size();
  }
  ASSERT_TRUE(Groups().contains(group)) << group;
  // Cancelled at once: the whole request would take the group a good fraction of a second,
  // reading three messages a few milliseconds. (Waiting for a heartbeat to show its blocks
  // first would let a fast machine finish it.)
  context.TryCancel();
  while (reader->Read(&message)) tokens += message.tokens_size();
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), StatusCode::CANCELLED) << Describe(status);
  EXPECT_LT(tokens, 2000);
  absl::Time cancelled_at = absl::Now();
  // The group's gauge exists (so 0 below is a reading, not a missing sample), and the
  // heartbeats sent after the cancellation report no block used.
  EXPECT_GE(UsedBlocks(group), 0) << Metrics().text();
  EXPECT_TRUE(
      WaitFor([&] { return absl::Now() > cancelled_at + 2 * Heartbeat() && UsedBlocks() == 0; },
              5 * Heartbeat()))
      << "blocks still used after cancellation:\n"
      << Metrics().text();
  std::fprintf(stderr, "[ info     ] blocks freed %.2f s after the cancellation\n",
               absl::ToDoubleSeconds(absl::Now() - cancelled_at));
  EXPECT_TRUE(WaitFor(
      [&] {
        return Metrics().Sum("tessera_requests_total", {{"code", "CANCELLED"}}) > cancelled_before;
      },
      absl::Seconds(5)))
      << Metrics().text();
}

// 4. A deadline that passes mid-request ends it with DEADLINE_EXCEEDED and frees its blocks.
TEST_F(TwoGroupsOfTp2, DeadlineExceededFreesBlocks) {
  v1::GenerateRequest request = Request(model(), "A long story about deadlines", 2000);
  Unary unary = Generate(inference(), request, absl::Milliseconds(300));
  EXPECT_EQ(unary.status.error_code(), StatusCode::DEADLINE_EXCEEDED) << Describe(unary.status);

  // Streamed, the client sees tokens (so the request was running in a group) until the
  // deadline passes.
  Streamed stream = Stream(inference(), request, absl::Milliseconds(300));
  absl::Time expired_at = absl::Now();
  EXPECT_EQ(stream.status.error_code(), StatusCode::DEADLINE_EXCEEDED) << Describe(stream.status);
  EXPECT_FALSE(stream.messages.empty()) << "no token within 300 ms";
  EXPECT_LT(stream.Tokens().size(), 2000u);
  // Read only from heartbeats sent after the deadline.
  EXPECT_TRUE(
      WaitFor([&] { return absl::Now() > expired_at + 2 * Heartbeat() && UsedBlocks() == 0; },
              5 * Heartbeat()))
      << "blocks still used after the deadline:\n"
      << Metrics().text();
  std::fprintf(stderr, "[ info     ] blocks free %.2f s after the deadline\n",
               absl::ToDoubleSeconds(absl::Now() - expired_at));
}

// 4b. The coordinator's metrics count a request whose client deadline passed as
// DEADLINE_EXCEEDED (what dashboards and alerts on deadlines read), not as a cancellation.
//
// Fails today (product bug, runtime/serve/coordinator.cc ClientEndStatus): the client's own
// deadline timer fires first and cancels the call; the coordinator sees a cancellation while
// its copy of the deadline (arrival + grpc-timeout, so slightly later) has not quite passed,
// and records CANCELLED. The client itself does get DEADLINE_EXCEEDED (checked above).
TEST_F(TwoGroupsOfTp2, DeadlinesAreCountedAsDeadlineExceeded) {
  auto count = [](const MetricsSnapshot& metrics, const char* code) {
    return metrics.Sum("tessera_requests_total", {{"code", code}});
  };
  MetricsSnapshot before = Metrics();
  const double recorded_before = before.Sum("tessera_requests_total");
  // Many, because each is a race the coordinator loses only some of the time.
  constexpr int kRequests = 30;
  for (int i = 0; i < kRequests; ++i) {
    v1::GenerateRequest request = Request(model(), absl::StrCat("Deadline number ", i), 2000);
    grpc::Status status = i % 2 == 0
                              ? Generate(inference(), request, absl::Milliseconds(100)).status
                              : Stream(inference(), request, absl::Milliseconds(100)).status;
    EXPECT_EQ(status.error_code(), StatusCode::DEADLINE_EXCEEDED) << i << ": " << Describe(status);
  }
  // Every request whose handler ran is recorded when it ends (one that expired before it
  // reached the handler is not).
  MetricsSnapshot after = before;
  WaitFor(
      [&] {
        after = Metrics();
        return after.Sum("tessera_requests_total") >= recorded_before + kRequests;
      },
      absl::Seconds(3));
  const double exceeded = count(after, "DEADLINE_EXCEEDED") - count(before, "DEADLINE_EXCEEDED");
  const double cancelled = count(after, "CANCELLED") - count(before, "CANCELLED");
  std::fprintf(stderr,
               "[ info     ] %d deadlines counted as %.0f DEADLINE_EXCEEDED, %.0f CANCELLED\n",
               kRequests, exceeded, cancelled);
  EXPECT_EQ(cancelled, 0) << "deadlines counted as cancellations";
  EXPECT_GT(exceeded, 0);
}

// 9. Bad requests are refused with the code a client acts on and a message naming the field;
// they change nothing else.
TEST_F(TwoGroupsOfTp2, InvalidRequestsNameTheField) {
  struct Case {
    std::string what;
    v1::GenerateRequest request;
    StatusCode code;
    std::vector<std::string> message_parts;
  };
  std::vector<Case> cases;
  auto add = [&](std::string what, StatusCode code, std::vector<std::string> parts,
                 const std::function<void(v1::GenerateRequest&)>& change) {
    v1::GenerateRequest request = Request(model(), "A valid prompt", 8);
    change(request);
    cases.push_back({std::move(what), std::move(request), code, std::move(parts)});
  };
  add("top_p 1.5", StatusCode::INVALID_ARGUMENT, {"sampling.top_p"},
      [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); });
  add("temperature -1", StatusCode::INVALID_ARGUMENT, {"sampling.temperature"},
      [](auto& r) { r.mutable_sampling()->set_temperature(-1); });
  add("empty prompt", StatusCode::INVALID_ARGUMENT, {"prompt"}, [](auto& r) { r.clear_prompt(); });
  add("negative max_tokens", StatusCode::INVALID_ARGUMENT, {"max_tokens"},
      [](auto& r) { r.mutable_sampling()->set_max_tokens(-5); });
  add("negative top_k", StatusCode::INVALID_ARGUMENT, {"sampling.top_k"},
      [](auto& r) { r.mutable_sampling()->set_top_k(-1); });
  add("token id outside the vocabulary", StatusCode::INVALID_ARGUMENT, {"prompt_tokens[1]"},
      [](auto& r) {
        r.clear_prompt();
        r.add_prompt_tokens(72);
        r.add_prompt_tokens(1000000);
      });
  // The default model's context is 4096 tokens.
  add("prompt plus max_tokens beyond the context", StatusCode::INVALID_ARGUMENT,
      {"max_tokens", "context"}, [](auto& r) { r.mutable_sampling()->set_max_tokens(4090); });
  add("prompt beyond the context", StatusCode::INVALID_ARGUMENT, {"prompt"},
      [](auto& r) { r.set_prompt(std::string(5000, 'a')); });
  add("unknown model", StatusCode::NOT_FOUND, {"no-such-model"},
      [](auto& r) { r.set_model("no-such-model"); });
  add("unknown version", StatusCode::NOT_FOUND, {"version", "v9"},
      [](auto& r) { r.set_version("v9"); });
  add("missing model", StatusCode::INVALID_ARGUMENT, {"model"}, [](auto& r) { r.clear_model(); });
  // The coordinator accepts messages up to --max-message-bytes 256K.
  add("message beyond --max-message-bytes", StatusCode::RESOURCE_EXHAUSTED, {},
      [](auto& r) { r.set_prompt(std::string(1 << 20, 'a')); });

  for (const Case& c : cases) {
    Unary unary = Generate(inference(), c.request, absl::Seconds(20));
    EXPECT_EQ(unary.status.error_code(), c.code) << c.what << ": " << Describe(unary.status);
    for (const std::string& part : c.message_parts) {
      EXPECT_TRUE(absl::StrContains(unary.status.error_message(), part))
          << c.what << ": the message does not name '" << part
          << "': " << unary.status.error_message();
    }
    // A stream is refused the same way, before any message.
    Streamed stream = Stream(inference(), c.request, absl::Seconds(20));
    EXPECT_EQ(stream.status.error_code(), c.code) << c.what << " (stream)";
    EXPECT_TRUE(stream.messages.empty()) << c.what << " (stream)";
  }
  // None of it disturbed the groups.
  Unary valid = Generate(inference(), Request(model(), "A valid prompt", 8));
  EXPECT_TRUE(valid.status.ok()) << Describe(valid.status);
  EXPECT_EQ(valid.response.tokens_size(), 8);
  absl::Status healthy = coordinator().WaitForHealthyGroups(model(), {{"v1", 2}}, absl::Seconds(5));
  EXPECT_TRUE(healthy.ok()) << healthy;
}

// ---------------------------------------------------------------------------------------
// Admission: a coordinator with --max-queue 5 (normal tenants: 4 in flight; high: 5).

class QueueLimit : public LayoutTest<QueueLimit> {
 public:
  static std::vector<std::string> CoordinatorFlags() {
    return {"--max-queue", "5", "--tenant-quotas", "vip=high"};
  }
  static std::vector<WorkerJobOptions> Jobs() { return {WorkerJobOptions()}; }
  static std::map<std::string, int> Expected() { return {{"v1", 1}}; }
};

// 5. Past the queue limit requests are refused (RESOURCE_EXHAUSTED, "queue full") while the
// admitted ones complete; a high-priority tenant still gets in.
TEST_F(QueueLimit, RequestsBeyondTheQueueAreRefusedAndTheOthersComplete) {
  constexpr int kAdmitted = 4;  // 90% of --max-queue 5, rounded down
  constexpr int kLong = 800;
  struct Open {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader;
    int tokens = 0;
  };
  std::vector<Open> open(kAdmitted);
  for (int i = 0; i < kAdmitted; ++i) {
    open[i].context = std::make_unique<grpc::ClientContext>();
    SetDeadline(*open[i].context, absl::Seconds(120));
    open[i].reader = inference().GenerateStream(
        open[i].context.get(), Request(model(), absl::StrCat("Long request ", i), kLong));
  }
  // Each is admitted and running once it has streamed something.
  for (Open& stream : open) {
    v1::GenerateStreamResponse message;
    if (!stream.reader->Read(&message)) {
      ADD_FAILURE() << "a long request did not start: " << Describe(stream.reader->Finish());
      for (Open& other : open) other.context->TryCancel();
      return;
    }
    stream.tokens += message.tokens_size();
  }
  // Many more at once while those run: every one is refused.
  constexpr int kRefused = 8;
  std::vector<Unary> refused(kRefused);
  std::vector<std::thread> threads;
  JoinAll join_all{threads};
  for (int i = 0; i < kRefused; ++i) {
    threads.emplace_back([&, i] {
      refused[i] =
          Generate(inference(), Request(model(), absl::StrCat("Extra ", i), 4), absl::Seconds(30));
    });
  }
  for (std::thread& thread : threads) thread.join();
  // A high-priority tenant may use the last 10%.
  v1::GenerateRequest vip = Request(model(), "A request of tenant vip", 4);
  vip.set_tenant("vip");
  Unary vip_result = Generate(inference(), vip, absl::Seconds(60));
  // A normal one is still refused.
  Unary normal = Generate(inference(), Request(model(), "One more", 4), absl::Seconds(30));

  for (int i = 0; i < kRefused; ++i) {
    EXPECT_EQ(refused[i].status.error_code(), StatusCode::RESOURCE_EXHAUSTED)
        << i << ": " << Describe(refused[i].status);
    EXPECT_TRUE(absl::StrContains(refused[i].status.error_message(), "queue full"))
        << refused[i].status.error_message();
  }
  EXPECT_TRUE(vip_result.status.ok()) << Describe(vip_result.status);
  EXPECT_EQ(normal.status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << Describe(normal.status);
  // The admitted ones complete, whole.
  for (int i = 0; i < kAdmitted; ++i) {
    v1::GenerateStreamResponse message;
    bool final = false;
    while (open[i].reader->Read(&message)) {
      open[i].tokens += message.tokens_size();
      final |= message.final();
    }
    grpc::Status status = open[i].reader->Finish();
    EXPECT_TRUE(status.ok()) << i << ": " << Describe(status);
    EXPECT_TRUE(final) << i;
    EXPECT_EQ(open[i].tokens, kLong) << i;
  }
  // With the queue empty again, requests get in.
  Unary after = Generate(inference(), Request(model(), "After the rush", 4));
  EXPECT_TRUE(after.status.ok()) << Describe(after.status);
  EXPECT_GE(Metrics().Sum("tessera_requests_total", {{"code", "RESOURCE_EXHAUSTED"}}),
            kRefused + 1);

  // A burst of concurrent long requests: each either completes or is refused as full; never
  // more than the limit run at once, so some are refused.
  constexpr int kBurst = 12;
  std::vector<Streamed> burst(kBurst);
  threads.clear();
  for (int i = 0; i < kBurst; ++i) {
    threads.emplace_back([&, i] {
      burst[i] =
          Stream(inference(), Request(model(), absl::StrCat("Burst ", i), 300), absl::Seconds(120));
    });
  }
  for (std::thread& thread : threads) thread.join();
  int completed = 0, full = 0;
  for (int i = 0; i < kBurst; ++i) {
    if (burst[i].status.ok()) {
      ++completed;
      EXPECT_EQ(burst[i].Tokens().size(), 300u) << i;
    } else {
      ++full;
      EXPECT_EQ(burst[i].status.error_code(), StatusCode::RESOURCE_EXHAUSTED)
          << i << ": " << Describe(burst[i].status);
      EXPECT_TRUE(absl::StrContains(burst[i].status.error_message(), "queue full"))
          << burst[i].status.error_message();
      EXPECT_TRUE(burst[i].messages.empty()) << i;
    }
  }
  EXPECT_GE(completed, 1);
  EXPECT_GE(full, 1);
}

// ---------------------------------------------------------------------------------------
// Two groups in two mpirun jobs (one dies alone), each TP 2 with a 2 s collective deadline;
// --max-running 2 keeps most requests queued in the groups.

class Failover : public LayoutTest<Failover> {
 public:
  static absl::Duration Heartbeat() { return absl::Milliseconds(300); }
  static std::vector<std::string> CoordinatorFlags() { return {}; }
  static std::vector<WorkerJobOptions> Jobs() {
    WorkerJobOptions job;
    job.np = 2;
    job.tp = 2;
    job.collective_timeout = "2s";
    job.extra_flags = {"--max-running", "2"};
    return {job, job};
  }
  static std::map<std::string, int> Expected() { return {{"v1", 2}}; }
};

// 6. A group dies under load: the requests it had not started streaming run on the other
// group; those it was streaming continue there after the tokens already sent (the prompt and
// those tokens prefilled), and the client sees one stream with the text an undisturbed run
// gives (greedy, and seeded sampling: draws are keyed by seed and position). None is lost.
TEST_F(Failover, RequestsOfADeadGroupContinueOnTheOther) {
  const std::string group_a = layout().GroupOf(0), group_b = layout().GroupOf(1);
  ASSERT_NE(group_a, group_b);
  // Rank 1 (a TP peer) of group A is killed by the reader that sees A's first message, so
  // that request is mid-stream when A dies (a poller could miss a short request entirely);
  // A's other requests are still queued behind --max-running 2.
  constexpr int kRequests = 24, kTokens = 160;
  absl::StatusOr<pid_t> peer = layout().jobs[0]->RankPid(1);
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto request_of = [&](int i) {
    v1::GenerateRequest request =
        Request(model(), absl::StrCat("Failover request ", i, " of ", kRequests), kTokens);
    request.set_request_id(absl::StrCat("failover-", i));
    if (i % 2 == 1) {  // seeded sampling
      request.mutable_sampling()->set_temperature(0.8f);
      request.mutable_sampling()->set_top_k(40);
      request.mutable_sampling()->set_seed(1000 + i);
    }
    return request;
  };
  std::vector<Streamed> results(kRequests);
  std::atomic<int> streamed_on_a{0};
  std::atomic<int> kill_result{1};
  absl::Time killed_at;  // written by that reader alone, read after the join
  std::vector<std::thread> threads;
  JoinAll join_all{threads};
  absl::Time start = absl::Now();
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      SetDeadline(context, absl::Seconds(90));
      Streamed& out = results[i];
      auto reader = inference().GenerateStream(&context, request_of(i));
      v1::GenerateStreamResponse message;
      while (reader->Read(&message)) {
        if (out.messages.empty() && message.placement().group() == group_a &&
            streamed_on_a.fetch_add(1) == 0) {
          killed_at = absl::Now();
          kill_result.store(kill(*peer, SIGKILL));
        }
        out.messages.push_back(message);
      }
      out.status = reader->Finish();
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_GT(streamed_on_a.load(), 0) << "no request ran on group A";
  ASSERT_EQ(kill_result.load(), 0) << "could not kill rank 1 of group A";
  std::fprintf(stderr, "[ info     ] all %d requests ended %.2f s after the kill (%.2f s in all)\n",
               kRequests, absl::ToDoubleSeconds(absl::Now() - killed_at),
               absl::ToDoubleSeconds(absl::Now() - start));

  // Which requests the coordinator sent again, and which it resumed (its log names them).
  std::set<std::string> redispatched, resumed;
  for (const nlohmann::json& event : Events(coordinator().process().Log(), "redispatch")) {
    redispatched.insert(event.value("request_id", ""));
    EXPECT_EQ(event.value("failed_group", ""), group_a) << event.dump();
  }
  for (const nlohmann::json& event : Events(coordinator().process().Log(), "resume")) {
    resumed.insert(event.value("request_id", ""));
    EXPECT_EQ(event.value("failed_group", ""), group_a) << event.dump();
  }
  // Group A's job has ended; B serves on.
  EXPECT_TRUE(layout().jobs[0]->process().Wait(absl::Seconds(30)).has_value());
  EXPECT_TRUE(layout().jobs[1]->process().Running());
  int resumed_streams = 0;
  for (int i = 0; i < kRequests; ++i) {
    const Streamed& r = results[i];
    const std::string id = absl::StrCat("failover-", i);
    SCOPED_TRACE(id);
    ASSERT_TRUE(r.status.ok()) << Describe(r.status);
    ASSERT_FALSE(r.messages.empty());
    const v1::GenerateStreamResponse& last = r.messages.back();
    EXPECT_TRUE(last.final());
    EXPECT_EQ(r.Tokens().size(), static_cast<size_t>(kTokens));
    EXPECT_EQ(last.usage().completion_tokens(), kTokens);
    int placements = 0;
    for (const auto& message : r.messages) placements += message.has_placement() ? 1 : 0;
    EXPECT_EQ(placements, 1) << "one stream, one placement";
    if (redispatched.contains(id)) {
      EXPECT_EQ(r.Group(), group_b);
    }
    if (last.resumptions_size() == 0) {
      EXPECT_FALSE(resumed.contains(id));
      continue;
    }
    // Continued on B after the tokens A had streamed: the same text as an undisturbed run
    // (B alone, now).
    ++resumed_streams;
    EXPECT_TRUE(resumed.contains(id));
    EXPECT_EQ(r.Group(), group_a);
    ASSERT_EQ(last.resumptions_size(), 1);
    EXPECT_EQ(last.resumptions(0).failed_group(), group_a);
    EXPECT_GT(last.resumptions(0).at_token(), 0);
    EXPECT_LT(last.resumptions(0).at_token(), kTokens);
    Streamed undisturbed = Stream(inference(), request_of(i), absl::Seconds(60));
    ASSERT_TRUE(undisturbed.status.ok()) << Describe(undisturbed.status);
    EXPECT_EQ(undisturbed.Group(), group_b);
    EXPECT_EQ(r.Tokens(), undisturbed.Tokens());
    EXPECT_EQ(r.Text(), undisturbed.Text());
  }
  std::fprintf(stderr, "[ info     ] %zu re-dispatched before streaming, %d resumed mid-stream\n",
               redispatched.size(), resumed_streams);
  EXPECT_GE(resumed_streams, 1) << "no request was streaming on A when it died";
  EXPECT_GE(redispatched.size(), 1u) << "no request was waiting on A when it died";
  EXPECT_GE(Metrics().Sum("tessera_redispatches_total"), static_cast<double>(redispatched.size()));
  EXPECT_GE(Metrics().Sum("tessera_resumes_total"), static_cast<double>(resumed_streams));
  absl::Status healthy =
      coordinator().WaitForHealthyGroups(model(), {{"v1", 1}}, absl::Seconds(10));
  EXPECT_TRUE(healthy.ok()) << healthy;
}

// 10. gRPC health follows the groups: SERVING while one is up, NOT_SERVING soon after the
// last is killed; requests then get UNAVAILABLE. `tessera client health` says the same in
// its exit code.
TEST_F(Failover, HealthFollowsTheGroups) {
  auto check = [&](const std::string& service) {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(5));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = coordinator().health().Check(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    return response.status();
  };
  auto healthz = [&] {
    httplib::Client client("127.0.0.1", coordinator().metrics_port());
    client.set_connection_timeout(2, 0);
    client.set_read_timeout(5, 0);
    httplib::Result result = client.Get("/healthz");
    return result ? result->status : -1;
  };
  using Serving = grpc::health::v1::HealthCheckResponse;
  // Some group is up (group B alone when the failover test ran first).
  ASSERT_TRUE(WaitFor([&] { return check("tessera.v1.Inference") == Serving::SERVING; },
                      absl::Seconds(10)));
  EXPECT_EQ(healthz(), 200);
  ServeHarness::Outcome client =
      harness->RunTessera({"client", "health", "--target", coordinator().target()});
  EXPECT_EQ(client.exit_code, 0) << client.output;
  EXPECT_TRUE(absl::StrContains(client.output, "SERVING") &&
              !absl::StrContains(client.output, "NOT_SERVING"))
      << client.output;

  // Kill every group's job outright.
  absl::Time killed_at = absl::Now();
  for (auto& job : layout().jobs) job->process().KillAll();
  for (auto& job : layout().jobs) EXPECT_TRUE(job->process().Wait(absl::Seconds(10)).has_value());
  // Dead after 3 missed heartbeats; allow 10.
  EXPECT_TRUE(WaitFor([&] { return check("tessera.v1.Inference") == Serving::NOT_SERVING; },
                      10 * Heartbeat(), absl::Milliseconds(20)));
  std::fprintf(stderr, "[ info     ] NOT_SERVING %.2f s after the last group was killed\n",
               absl::ToDoubleSeconds(absl::Now() - killed_at));
  EXPECT_EQ(healthz(), 503);
  Unary refused = Generate(inference(), Request(model(), "Anyone there?", 4), absl::Seconds(10));
  EXPECT_EQ(refused.status.error_code(), StatusCode::UNAVAILABLE) << Describe(refused.status);
  Streamed stream = Stream(inference(), Request(model(), "Anyone there?", 4), absl::Seconds(10));
  EXPECT_EQ(stream.status.error_code(), StatusCode::UNAVAILABLE) << Describe(stream.status);
  client = harness->RunTessera({"client", "health", "--target", coordinator().target()});
  EXPECT_EQ(client.exit_code, 1) << client.output;
  EXPECT_TRUE(absl::StrContains(client.output, "NOT_SERVING")) << client.output;
}

// ---------------------------------------------------------------------------------------
// Prefix-aware routing: two groups of TP 1 in one job, --policy prefix.

class PrefixRouting : public LayoutTest<PrefixRouting> {
 public:
  static std::vector<std::string> CoordinatorFlags() { return {"--policy", "prefix"}; }
  static std::vector<WorkerJobOptions> Jobs() {
    WorkerJobOptions job;
    job.np = 2;
    job.tp = 1;
    return {job};
  }
  static std::map<std::string, int> Expected() { return {{"v1", 2}}; }
};

// 7. A prompt that extends one a group has cached goes to that group and reuses the cache.
TEST_F(PrefixRouting, ExtendedPromptsGoWhereTheirPrefixIsCached) {
  constexpr int kPrompts = 6;
  constexpr int kBlock = 16;  // the workers' default block size
  std::vector<std::string> prompts;
  for (int i = 0; i < kPrompts; ++i) {
    // Distinct from the first block on; 200+ tokens (one per byte): a dozen full blocks.
    std::string prompt = absl::StrCat(std::string(1, static_cast<char>('A' + i)),
                                      " distinct opening number ", i, ".");
    while (prompt.size() < 220) absl::StrAppend(&prompt, " tessera", i, " prefix words");
    prompts.push_back(prompt);
  }
  // One after another: two groups that cache nothing of these prompts differ only in load,
  // and when their loads tie (a short request done before the next is sent) they take turns,
  // so the prompts spread over both.
  struct Open {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader;
    Streamed seen;
  };
  std::vector<std::unique_ptr<Open>> first;
  for (int i = 0; i < kPrompts; ++i) {
    auto open = std::make_unique<Open>();
    SetDeadline(open->context, absl::Seconds(120));
    open->reader = inference().GenerateStream(&open->context, Request(model(), prompts[i], 64));
    v1::GenerateStreamResponse message;
    if (open->reader->Read(&message)) open->seen.messages.push_back(message);
    first.push_back(std::move(open));
  }
  std::vector<std::string> owner(kPrompts);
  std::vector<int> prompt_tokens(kPrompts);
  std::set<std::string> owners;
  for (int i = 0; i < kPrompts; ++i) {
    Open& open = *first[i];
    v1::GenerateStreamResponse message;
    while (open.reader->Read(&message)) open.seen.messages.push_back(message);
    open.seen.status = open.reader->Finish();
    ASSERT_TRUE(open.seen.status.ok()) << i << ": " << Describe(open.seen.status);
    ASSERT_TRUE(open.seen.messages.back().final()) << i;
    owner[i] = open.seen.Group();
    owners.insert(owner[i]);
    prompt_tokens[i] = open.seen.messages.back().usage().prompt_tokens();
    EXPECT_GE(prompt_tokens[i], 200) << i;
  }
  ASSERT_EQ(owners.size(), 2u) << "the first requests all went to one group; the test would "
                                  "prove nothing";
  // A few heartbeats, so that each group has reported the hashes of what it cached.
  absl::SleepFor(3 * Heartbeat());
  for (int i = 0; i < kPrompts; ++i) {
    v1::GenerateRequest extended =
        Request(model(), prompts[i] + " And then the prompt goes on a little further.", 8);
    Unary unary = Generate(inference(), extended);
    ASSERT_TRUE(unary.status.ok()) << i << ": " << Describe(unary.status);
    EXPECT_EQ(unary.response.placement().group(), owner[i]) << "prompt " << i;
    EXPECT_GT(unary.response.usage().cached_tokens(), 0) << "prompt " << i;
    // The whole shared prefix but its last partial block.
    EXPECT_GE(unary.response.usage().cached_tokens(), (prompt_tokens[i] / kBlock - 1) * kBlock)
        << "prompt " << i << " of " << prompt_tokens[i] << " tokens";
  }
}

// ---------------------------------------------------------------------------------------
// Canary: versions v1 and v2 of one model name, in two single-rank jobs, weighted 95:5.

class Canary : public LayoutTest<Canary> {
 public:
  static std::vector<std::string> CoordinatorFlags() { return {"--versions", "tiny=v1:95,v2:5"}; }
  static std::vector<WorkerJobOptions> Jobs() {
    WorkerJobOptions stable, candidate;
    stable.version = "v1";
    candidate.version = "v2";
    stable.model_name = candidate.model_name = "tiny";
    return {stable, candidate};
  }
  static std::map<std::string, int> Expected() { return {{"v1", 1}, {"v2", 1}}; }

 protected:
  // Runs `requests` as batches of at most 100; the version each ran on.
  std::vector<std::string> Versions(const std::vector<v1::GenerateRequest>& requests) {
    std::vector<std::string> versions;
    for (size_t begin = 0; begin < requests.size(); begin += 100) {
      v1::GenerateBatchRequest batch;
      for (size_t i = begin; i < std::min(requests.size(), begin + 100); ++i) {
        *batch.add_requests() = requests[i];
      }
      grpc::ClientContext context;
      SetDeadline(context, absl::Seconds(120));
      v1::GenerateBatchResponse response;
      grpc::Status status = inference().GenerateBatch(&context, batch, &response);
      EXPECT_TRUE(status.ok()) << Describe(status);
      for (const v1::BatchResult& result : response.results()) {
        EXPECT_EQ(result.error_code(), 0) << result.error_message();
        versions.push_back(result.response().placement().version());
      }
    }
    return versions;
  }
};

// 8. Requests that name no version split 95:5; a session keeps its version; a named version
// is honoured.
TEST_F(Canary, VersionsSplitByWeightAndSessionsStick) {
  ASSERT_EQ(model(), "tiny");
  {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(5));
    v1::ListModelsResponse models;
    ASSERT_TRUE(inference().ListModels(&context, {}, &models).ok());
    ASSERT_EQ(models.models_size(), 1);
    std::map<std::string, double> weights;
    for (const auto& version : models.models(0).versions()) {
      weights[version.version()] = version.weight();
    }
    EXPECT_NEAR(weights["v1"], 0.95, 1e-9);
    EXPECT_NEAR(weights["v2"], 0.05, 1e-9);
  }
  constexpr int kRequests = 1000;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kRequests; ++i) {
    requests.push_back(Request(model(), absl::StrCat("canary ", i), 1));
  }
  std::vector<std::string> versions = Versions(requests);
  ASSERT_EQ(versions.size(), static_cast<size_t>(kRequests));
  int v2 = 0;
  for (const std::string& version : versions) {
    EXPECT_TRUE(version == "v1" || version == "v2") << version;
    v2 += version == "v2" ? 1 : 0;
  }
  std::fprintf(stderr, "[ info     ] %d of %d requests went to v2\n", v2, kRequests);
  EXPECT_GE(v2, 30);
  EXPECT_LE(v2, 70);

  // Sessions: each asked twice, in separate batches; a session always gets one version.
  constexpr int kSessions = 200;
  std::vector<v1::GenerateRequest> sessions;
  for (int i = 0; i < kSessions; ++i) {
    v1::GenerateRequest request = Request(model(), absl::StrCat("session turn ", i), 1);
    request.set_session_id(absl::StrCat("session-", i));
    sessions.push_back(request);
  }
  std::vector<std::string> first = Versions(sessions);
  std::vector<std::string> second = Versions(sessions);
  ASSERT_EQ(first.size(), static_cast<size_t>(kSessions));
  ASSERT_EQ(second.size(), static_cast<size_t>(kSessions));
  std::set<std::string> seen;
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_EQ(first[i], second[i]) << "session-" << i;
    seen.insert(first[i]);
  }
  EXPECT_EQ(seen, (std::set<std::string>{"v1", "v2"})) << "sessions should land on both";

  // A named version is honoured, whatever the weights.
  for (const char* named : {"v2", "v1"}) {
    std::vector<v1::GenerateRequest> pinned;
    for (int i = 0; i < 20; ++i) {
      v1::GenerateRequest request = Request(model(), absl::StrCat("pinned ", i), 1);
      request.set_version(named);
      pinned.push_back(request);
    }
    for (const std::string& version : Versions(pinned)) EXPECT_EQ(version, named);
  }
  v1::GenerateRequest unknown = Request(model(), "v3 please", 1);
  unknown.set_version("v3");
  Unary refused = Generate(inference(), unknown);
  EXPECT_EQ(refused.status.error_code(), StatusCode::NOT_FOUND) << Describe(refused.status);
}

// ---------------------------------------------------------------------------------------
// One single-rank group whose leader is stopped (SIGSTOP) past its heartbeats, then resumed.

class Rejoin : public LayoutTest<Rejoin> {
 public:
  static absl::Duration Heartbeat() { return absl::Milliseconds(300); }
  static std::vector<std::string> CoordinatorFlags() { return {}; }
  static std::vector<WorkerJobOptions> Jobs() { return {WorkerJobOptions()}; }
  static std::map<std::string, int> Expected() { return {{"v1", 1}}; }
};

// 11. A group declared dead while it stalled registers again once it runs, and serves: what
// a worker does when its coordinator forgets it ("heartbeat_unknown": the group was expired,
// or the coordinator restarted). It once aborted instead: CoordinatorLink::Register notified
// its absl::Notification on every registration, and the second Notify() aborts.
TEST_F(Rejoin, AGroupDeclaredDeadRegistersAgainAndServes) {
  const std::string first_id = layout().GroupOf(0);
  Unary before = Generate(inference(), Request(model(), "Before the stall", 4));
  ASSERT_TRUE(before.status.ok()) << Describe(before.status);
  absl::StatusOr<pid_t> leader = layout().jobs[0]->RankPid(0);
  ASSERT_TRUE(leader.ok()) << leader.status();
  ASSERT_EQ(kill(*leader, SIGSTOP), 0);
  auto gone = [&] {
    for (const nlohmann::json& event : Events(coordinator().process().Log(), "group_gone")) {
      if (event.value("group", "") == first_id) return true;
    }
    return false;
  };
  bool expired = WaitFor(gone, 20 * Heartbeat());
  kill(*leader, SIGCONT);
  ASSERT_TRUE(expired) << "the stopped group was not declared dead";

  // Back under a new id, healthy, serving; and it stays up.
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<std::string> id = coordinator().GroupIdOf(layout().leaders[0][0]);
        return id.ok() && *id != first_id;
      },
      absl::Seconds(10)));
  const std::string second_id = layout().GroupOf(0);
  absl::SleepFor(3 * Heartbeat());
  ASSERT_TRUE(ProcessAlive(*leader)) << "the worker died after registering again";
  absl::Status healthy =
      coordinator().WaitForHealthyGroups(model(), {{"v1", 1}}, absl::Seconds(10));
  EXPECT_TRUE(healthy.ok()) << healthy;
  Unary after = Generate(inference(), Request(model(), "After the stall", 4), absl::Seconds(20));
  EXPECT_TRUE(after.status.ok()) << Describe(after.status);
  EXPECT_EQ(after.response.placement().group(), second_id);
}

}  // namespace
}  // namespace tessera::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new tessera::e2e::ServeEnvironment());
  return RUN_ALL_TESTS();
}
