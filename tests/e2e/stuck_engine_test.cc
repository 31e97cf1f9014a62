// A worker group whose engine stops while its process lives on (its heartbeats keep coming),
// and requests that run too long, with real processes on loopback:
// - with --engine-stall-timeout, the coordinator takes the stalled group out of routing and
//   moves its requests to another group, or ends them with UNAVAILABLE naming the stall when
//   there is none; the group serves again once its engine runs;
// - with --max-request-duration, a request ends DEADLINE_EXCEEDED naming the flag, and its
//   group is not counted as failed.
// The engine is stopped for real: a worker runs its engine loop on its main thread, and
// ptrace's PTRACE_INTERRUPT stops that one thread, not the process.
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <errno.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

using ::grpc::StatusCode;

constexpr char kModel[] = "tessera-tiny-llama-random-v2";

// One thread of another process, stopped (ptrace-stopped: it runs no code and gets no
// signals) until this object goes. Only the thread that stopped it may let it go.
class StoppedThread {
 public:
  static absl::StatusOr<std::unique_ptr<StoppedThread>> Stop(pid_t tid) {
    if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("ptrace(PTRACE_SEIZE, ", tid, "): ", std::strerror(errno)));
    }
    auto stopped = std::unique_ptr<StoppedThread>(new StoppedThread(tid));
    if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0) {
      return absl::InternalError(
          absl::StrCat("ptrace(PTRACE_INTERRUPT, ", tid, "): ", std::strerror(errno)));
    }
    int status = 0;
    if (waitpid(tid, &status, __WALL) != tid || !WIFSTOPPED(status)) {
      return absl::InternalError(absl::StrCat("thread ", tid, " did not stop"));
    }
    return stopped;
  }
  ~StoppedThread() { ptrace(PTRACE_DETACH, tid_, nullptr, nullptr); }
  StoppedThread(const StoppedThread&) = delete;
  StoppedThread& operator=(const StoppedThread&) = delete;

 private:
  explicit StoppedThread(pid_t tid) : tid_(tid) {}
  const pid_t tid_;
};

// A coordinator with `flags` and one job of `groups` single-rank groups.
class StuckEngine {
 public:
  void Start(const std::vector<std::string>& flags, int groups) {
    char pattern[] = "/tmp/tessera-stuck-engine-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    harness_ = std::make_unique<ServeHarness>(
        TESSERA_BINARY,
        std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
        dir_);
    std::vector<std::string> all = {"--heartbeat-interval", "500ms"};
    all.insert(all.end(), flags.begin(), flags.end());
    absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator =
        harness_->StartCoordinator(all);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    WorkerJobOptions options;
    options.np = groups;
    absl::StatusOr<std::unique_ptr<WorkerJob>> workers =
        harness_->StartWorkers(coordinator_->grpc_port(), options);
    ASSERT_TRUE(workers.ok()) << workers.status();
    workers_ = *std::move(workers);
    absl::StatusOr<std::vector<std::string>> leaders = workers_->WaitForLeaders(absl::Seconds(120));
    ASSERT_TRUE(leaders.ok()) << leaders.status();
    leaders_ = *leaders;
    ASSERT_TRUE(WaitFor(
        [&] {
          for (const std::string& leader : leaders_) {
            if (!coordinator_->GroupIdOf(leader).ok()) return false;
          }
          return true;
        },
        absl::Seconds(30)))
        << Tail(coordinator_->process().Log(), 20);
    absl::Status healthy =
        coordinator_->WaitForHealthyGroups(kModel, {{"v1", groups}}, absl::Seconds(30));
    ASSERT_TRUE(healthy.ok()) << healthy;
  }

  void Stop() {
    workers_.reset();
    coordinator_.reset();
    if (!::testing::UnitTest::GetInstance()->Failed() && !dir_.empty()) {
      std::filesystem::remove_all(dir_);
    }
  }

  // The coordinator's id of replica `replica`'s group.
  std::string GroupOf(int replica) const { return *coordinator_->GroupIdOf(leaders_[replica]); }

  // Stops the engines of `replicas` (each replica's only rank's main thread), out of
  // `groups` groups. Done again when a thread happened to hold its engine's lock, which the
  // heartbeats also take: they would stop too, and the group be dead instead of stalled.
  absl::StatusOr<std::vector<std::unique_ptr<StoppedThread>>> StopEngines(
      const std::vector<int>& replicas, int groups) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      std::vector<std::unique_ptr<StoppedThread>> stopped;
      for (int replica : replicas) {
        absl::StatusOr<pid_t> pid = workers_->RankPid(replica);
        if (!pid.ok()) return pid.status();
        absl::StatusOr<std::unique_ptr<StoppedThread>> thread = StoppedThread::Stop(*pid);
        if (!thread.ok()) return thread.status();
        stopped.push_back(*std::move(thread));
      }
      // Heartbeats 500 ms apart: a group whose heartbeats stopped is out of routing within
      // 1 s, and a stall is declared no sooner than 2.5 s (3 s after the last turn seen).
      absl::SleepFor(absl::Milliseconds(1200));
      if (coordinator_->WaitForHealthyGroups(kModel, {{"v1", groups}}, absl::Milliseconds(1))
              .ok()) {
        return stopped;
      }
      stopped.clear();
      absl::Status back =
          coordinator_->WaitForHealthyGroups(kModel, {{"v1", groups}}, absl::Seconds(30));
      if (!back.ok()) return back;
    }
    return absl::InternalError("an engine thread held its lock at every attempt");
  }

  std::string Logs() const {
    return absl::StrCat("--- coordinator:\n", Tail(coordinator_->process().Log(), 30),
                        "\n--- workers:\n", Tail(workers_->process().Log(), 20));
  }

  std::string dir_;
  std::unique_ptr<ServeHarness> harness_;
  std::unique_ptr<CoordinatorProcess> coordinator_;
  std::unique_ptr<WorkerJob> workers_;
  std::vector<std::string> leaders_;
};

// A suite's processes, started by the suite's SetUpTestSuite (one set per suite).
template <typename Suite>
class WithProcesses : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { processes_.Stop(); }
  void SetUp() override {
    ASSERT_NE(processes_.coordinator_, nullptr) << "the processes did not start";
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "%s\n", processes_.Logs().c_str());
  }
  static v1::Inference::Stub& inference() { return processes_.coordinator_->inference(); }

  static inline StuckEngine processes_;
};

// Two groups; a stall is declared after 3 s, and a request whose group failed waits 4 s for
// another.
class EngineStall : public WithProcesses<EngineStall> {
 protected:
  static void SetUpTestSuite() {
    processes_.Start({"--engine-stall-timeout", "3s", "--failover-wait", "4s"}, 2);
  }
};

TEST_F(EngineStall, AStalledGroupLeavesRoutingItsRequestsMoveAndItReturnsWhenItRuns) {
  const std::string stalled = processes_.GroupOf(0), other = processes_.GroupOf(1);
  auto engine = processes_.StopEngines({0}, 2);
  if (absl::IsFailedPrecondition(engine.status())) GTEST_SKIP() << engine.status();
  ASSERT_TRUE(engine.ok()) << engine.status();

  // Tied idle groups take turns: some of these go to the stopped engine first.
  std::vector<Streamed> streams(6);
  std::vector<std::thread> clients;
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back([&, i] {
      streams[i] = Stream(inference(), Request(kModel, absl::StrCat("stall ", i), 6));
    });
    absl::SleepFor(absl::Milliseconds(50));
  }
  for (std::thread& client : clients) client.join();
  for (const Streamed& stream : streams) {
    ASSERT_TRUE(stream.status.ok()) << Describe(stream.status);
    EXPECT_EQ(stream.Tokens().size(), 6u);
    EXPECT_EQ(stream.Group(), other);
  }
  const std::string log = processes_.coordinator_->process().Log();
  std::vector<nlohmann::json> stalls = Events(log, "group_stalled");
  ASSERT_EQ(stalls.size(), 1u) << log;
  EXPECT_EQ(stalls[0].value("group", ""), stalled);
  EXPECT_TRUE(absl::StrContains(stalls[0].value("why", ""), "its engine has not stepped for 3"))
      << stalls[0].dump();
  int moved = 0;
  for (const nlohmann::json& redispatch : Events(log, "redispatch")) {
    moved += redispatch.value("failed_group", "") == stalled;
  }
  EXPECT_GE(moved, 1) << log;
  // Out of routing while it stands still, though it still sends heartbeats.
  absl::Status one =
      processes_.coordinator_->WaitForHealthyGroups(kModel, {{"v1", 1}}, absl::Milliseconds(1));
  EXPECT_TRUE(one.ok()) << one;
  for (int i = 0; i < 3; ++i) {
    Streamed later = Stream(inference(), Request(kModel, absl::StrCat("later ", i), 2));
    ASSERT_TRUE(later.status.ok()) << Describe(later.status);
    EXPECT_EQ(later.Group(), other);
  }

  engine->clear();  // the engine runs again
  absl::Status both =
      processes_.coordinator_->WaitForHealthyGroups(kModel, {{"v1", 2}}, absl::Seconds(10));
  ASSERT_TRUE(both.ok()) << both;
  bool served_again = false;
  for (int i = 0; i < 6 && !served_again; ++i) {
    Streamed again = Stream(inference(), Request(kModel, absl::StrCat("again ", i), 2));
    ASSERT_TRUE(again.status.ok()) << Describe(again.status);
    served_again = again.Group() == stalled;
  }
  EXPECT_TRUE(served_again);
}

TEST_F(EngineStall, WithEveryGroupStalledRequestsEndUnavailableNamingTheStall) {
  auto engines = processes_.StopEngines({0, 1}, 2);
  if (absl::IsFailedPrecondition(engines.status())) GTEST_SKIP() << engines.status();
  ASSERT_TRUE(engines.ok()) << engines.status();

  absl::Time start = absl::Now();
  Streamed stream = Stream(inference(), Request(kModel, "nowhere to go", 4));
  EXPECT_EQ(stream.status.error_code(), StatusCode::UNAVAILABLE) << Describe(stream.status);
  EXPECT_TRUE(absl::StrContains(stream.status.error_message(), "its engine has not stepped for"))
      << Describe(stream.status);
  EXPECT_TRUE(absl::StrContains(stream.status.error_message(), "waited 4s for another"))
      << Describe(stream.status);
  // Each group's stall is declared within about 3.5 s of its stop, then up to 4 s of waiting.
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  Unary refused = Generate(inference(), Request(kModel, "no group", 2));
  EXPECT_EQ(refused.status.error_code(), StatusCode::UNAVAILABLE) << Describe(refused.status);

  engines->clear();
  absl::Status both =
      processes_.coordinator_->WaitForHealthyGroups(kModel, {{"v1", 2}}, absl::Seconds(10));
  ASSERT_TRUE(both.ok()) << both;
  Unary served = Generate(inference(), Request(kModel, "after the stall", 3));
  ASSERT_TRUE(served.status.ok()) << Describe(served.status);
  EXPECT_EQ(served.response.usage().completion_tokens(), 3);
}

// One group, no stall detection, and requests limited to 3 s.
class MaxRequestDuration : public WithProcesses<MaxRequestDuration> {
 protected:
  static void SetUpTestSuite() {
    processes_.Start({"--engine-stall-timeout", "off", "--max-request-duration", "3s"}, 1);
  }
};

TEST_F(MaxRequestDuration, ARequestPastItEndsDeadlineExceededAndItsGroupServesOn) {
  auto engine = processes_.StopEngines({0}, 1);
  if (absl::IsFailedPrecondition(engine.status())) GTEST_SKIP() << engine.status();
  ASSERT_TRUE(engine.ok()) << engine.status();

  absl::Time start = absl::Now();
  // The client would wait a minute; the server allows 3 s.
  Streamed stream = Stream(inference(), Request(kModel, "too long", 4), absl::Seconds(60));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(stream.status.error_code(), StatusCode::DEADLINE_EXCEEDED) << Describe(stream.status);
  EXPECT_TRUE(absl::StrContains(stream.status.error_message(), "--max-request-duration"))
      << Describe(stream.status);
  EXPECT_GE(took, absl::Seconds(3));
  EXPECT_LT(took, absl::Seconds(10));
  // Not a group failure: nothing was sent elsewhere, and the group is still routed to.
  const std::string log = processes_.coordinator_->process().Log();
  EXPECT_TRUE(Events(log, "redispatch").empty()) << log;
  EXPECT_TRUE(Events(log, "group_gone").empty()) << log;

  engine->clear();
  Unary served = Generate(inference(), Request(kModel, "in time", 3));
  ASSERT_TRUE(served.status.ok()) << Describe(served.status);
  EXPECT_EQ(served.response.usage().completion_tokens(), 3);
}

}  // namespace
}  // namespace tessera::e2e
