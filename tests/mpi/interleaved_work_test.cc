// Work interleaved with serving (EngineOptions::interleaved, engine/interleaved_work.h) at
// whatever TP degree mpirun gives (ctest runs 1 and 2 ranks), on the tiny model
// tests/golden/models/llama: every rank runs every unit at the same point of its step loop
// (each unit is an all-reduce, which would stall on a rank that skipped one), requests are
// served meanwhile with the tokens they get without the work, a unit may publish an adapter
// from the engine's own loop (LoadAdapterAsync) that later requests then run with, and a unit
// that fails ends the work but not the serving.

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core/stream.h"
#include "runtime/engine/engine.h"
#include "runtime/model/transformer.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::engine {
namespace {

using ::tessera::testing::World;

const std::string kBase = std::string(TESSERA_GOLDEN_MODELS) + "/llama";
const std::string kAdapters = TESSERA_GOLDEN_LORA;

// Units of an all-reduce each; at unit `publish_at` the leader publishes adapter a; unit
// `fail_at` fails on every rank; `leaving` units must run before the group stops.
class CountingWork final : public InterleavedWork {
 public:
  CountingWork(int units, int publish_at, int fail_at, int leaving = 0)
      : units_(units), publish_at_(publish_at), fail_at_(fail_at), leaving_(leaving) {}

  void set_engine(Engine* engine) { engine_ = engine; }

  absl::Status RunPiece() override {
    if (ran_ >= units_) return absl::OkStatus();  // none left: no collective
    ++ran_;
    int64_t one = 1;
    Tensor view = Tensor::Wrap(&one, DType::kI64, {1});
    Stream cpu = Stream::Cpu();
    if (absl::Status reduced = World().AllReduce(view, comm::ReduceOp::kSum, cpu); !reduced.ok()) {
      return reduced;
    }
    if (one != World().size()) sums_ok_ = false;
    if (ran_ == publish_at_ && engine_ != nullptr) {
      engine_->LoadAdapterAsync({"a", kAdapters + "/a"},
                                [this](absl::Status loaded) { published_ = loaded; });
    }
    if (ran_ == fail_at_) {
      failed_ = true;
      return absl::InternalError("the unit failed");
    }
    return absl::OkStatus();
  }
  std::optional<double> ExpectedPieceSeconds(int) const override { return std::nullopt; }
  int PiecesBeforeLeaving() override {
    ran_when_leaving_ = ran_.load();
    return leaving_;
  }
  bool finished() const override { return failed_ || stopped_ || ran_ >= units_; }
  void Stop() { stopped_ = true; }

  int ran() const { return ran_; }
  // The units run when the engine asked PiecesBeforeLeaving (the leader); -1: never asked.
  int ran_when_leaving() const { return ran_when_leaving_; }
  bool sums_ok() const { return sums_ok_; }
  const absl::Status& published() const { return published_; }

 private:
  const int units_, publish_at_, fail_at_, leaving_;
  Engine* engine_ = nullptr;
  std::atomic<int> ran_{0};  // read by the test's thread while the engine runs units
  std::atomic<int> ran_when_leaving_{-1};
  bool sums_ok_ = true;
  bool failed_ = false;
  std::atomic<bool> stopped_{false};
  absl::Status published_ = absl::UnknownError("not published");
};

class InterleavedWorkTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<model::Transformer>> loaded =
        model::Transformer::Load(kBase, World());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = loaded->release();
  }
  static void TearDownTestSuite() { delete model_; }

  static GenerationRequest Request(int salt, std::string adapter = "") {
    GenerationRequest request;
    for (int i = 0; i < 10 + salt; ++i) request.prompt_tokens.push_back((i * 13 + salt) % 256);
    request.sampling.max_tokens = 6;
    request.sampling.ignore_eos = true;
    request.adapter = std::move(adapter);
    return request;
  }

  // Engine options of a small cache (64 blocks of 8).
  static EngineOptions SmallCache() {
    EngineOptions options;
    options.block_size = 8;
    options.num_blocks = 64;
    return options;
  }

  static std::vector<int32_t> Drain(RequestStream& stream) {
    std::vector<int32_t> tokens;
    TokenEvent event;
    while (stream.Next(&event) && !event.final) tokens.push_back(event.token);
    return tokens;
  }

  // The requests' tokens through an engine that starts `work` (every rank's own); every rank
  // calls it.
  static std::vector<std::vector<int32_t>> Serve(std::shared_ptr<CountingWork> work,
                                                 const std::vector<GenerationRequest>& requests,
                                                 EngineStats* stats) {
    EngineOptions options = SmallCache();
    options.interleaved_factory =
        [work](const std::string& spec) -> absl::StatusOr<std::shared_ptr<InterleavedWork>> {
      if (spec != "count") return absl::InvalidArgumentError("unknown work: " + spec);
      return work;
    };
    options.interleaved_spec = "count";
    options.interleaved_share = 0.5;
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(*model_, World(), nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return {};
    std::vector<std::vector<int32_t>> results;
    std::thread leader;
    if ((*engine)->is_leader()) {
      work->set_engine(engine->get());
      leader = std::thread([&] {
        for (const GenerationRequest& request : requests) {
          // Adapter requests wait for the work to publish it.
          while (!request.adapter.empty() && (*engine)->Adapters().empty()) {
            absl::SleepFor(absl::Milliseconds(1));
          }
          absl::StatusOr<std::shared_ptr<RequestStream>> stream = (*engine)->Submit(request);
          EXPECT_TRUE(stream.ok()) << stream.status();
          results.push_back(stream.ok() ? Drain(**stream) : std::vector<int32_t>{});
        }
        (*engine)->StopWhenIdle();
      });
    }
    absl::Status run = (*engine)->Run();
    if (leader.joinable()) leader.join();
    EXPECT_TRUE(run.ok()) << run;
    *stats = (*engine)->Stats();
    return results;
  }

  static model::Transformer* model_;
};

model::Transformer* InterleavedWorkTest::model_ = nullptr;

TEST_F(InterleavedWorkTest, EveryRankRunsEveryUnitBesideServingAndAUnitPublishesAnAdapter) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 6; ++i) requests.push_back(Request(i));
  requests.push_back(Request(7, "a"));
  // References: the same requests without the work (a loaded from the start).
  EngineStats stats;
  std::vector<std::vector<int32_t>> expected;
  {
    EngineOptions options = SmallCache();
    options.adapters = {{"a", kAdapters + "/a"}};
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(*model_, World(), nullptr, options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<std::shared_ptr<RequestStream>> streams;
    if ((*engine)->is_leader()) {
      for (const GenerationRequest& request : requests)
        streams.push_back(*(*engine)->Submit(request));
      (*engine)->StopWhenIdle();
    }
    ASSERT_TRUE((*engine)->Run().ok());
    for (auto& stream : streams) expected.push_back(Drain(*stream));
  }

  auto work = std::make_shared<CountingWork>(/*units=*/40, /*publish_at=*/5, /*fail_at=*/-1);
  std::vector<std::vector<int32_t>> served = Serve(work, requests, &stats);
  // Run() returned on every rank once the work was done and the requests served.
  EXPECT_EQ(work->ran(), 40) << "rank " << World().rank();
  EXPECT_TRUE(work->sums_ok());
  if (World().rank() != 0) return;
  EXPECT_TRUE(work->published().ok()) << work->published();
  EXPECT_EQ(stats.interleaved_pieces, 40);
  ASSERT_EQ(served.size(), expected.size());
  for (size_t i = 0; i < served.size(); ++i) {
    EXPECT_EQ(served[i], expected[i])
        << "request " << i << " (adapter \"" << requests[i].adapter << "\")";
  }
}

TEST_F(InterleavedWorkTest, AFailedUnitEndsTheWorkNotTheServing) {
  auto work = std::make_shared<CountingWork>(/*units=*/40, /*publish_at=*/-1, /*fail_at=*/3);
  EngineStats stats;
  std::vector<std::vector<int32_t>> served = Serve(work, {Request(1), Request(2)}, &stats);
  EXPECT_EQ(work->ran(), 3) << "rank " << World().rank();
  if (World().rank() != 0) return;
  ASSERT_EQ(served.size(), 2u);
  EXPECT_EQ(served[0].size(), 6u);
  EXPECT_EQ(served[1].size(), 6u);
}

TEST_F(InterleavedWorkTest, StartsOneWorkAtATimeAndRefusesBadSpecsOnEveryRank) {
  auto first = std::make_shared<CountingWork>(/*units=*/2000000, -1, -1);
  auto second = std::make_shared<CountingWork>(/*units=*/5, -1, -1);
  int made = 0;
  EngineOptions options = SmallCache();
  options.interleaved_factory =
      [&](const std::string& spec) -> absl::StatusOr<std::shared_ptr<InterleavedWork>> {
    if (spec == "first") return first;
    if (spec == "second") return second;
    return absl::InvalidArgumentError("unknown work: " + spec);
  };
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(*model_, World(), nullptr, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::thread leader;
  if ((*engine)->is_leader()) {
    leader = std::thread([&] {
      Engine& e = **engine;
      absl::Status bad = e.StartInterleaved("nonsense");
      EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
      EXPECT_NE(bad.message().find("unknown work: nonsense"), std::string::npos) << bad;
      EXPECT_TRUE(e.StartInterleaved("first").ok());
      ++made;
      absl::Status busy = e.StartInterleaved("second");
      EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition) << busy;
      // Served beside it.
      absl::StatusOr<std::shared_ptr<RequestStream>> stream = e.Submit(Request(3));
      ASSERT_TRUE(stream.ok()) << stream.status();
      EXPECT_EQ(Drain(**stream).size(), 6u);
      first->Stop();
      // Once the first is dropped, the second starts.
      absl::Status started = absl::UnknownError("not tried");
      for (int tries = 0; tries < 1000; ++tries) {
        started = e.StartInterleaved("second");
        if (started.ok()) break;
        absl::SleepFor(absl::Milliseconds(2));
      }
      EXPECT_TRUE(started.ok()) << started;
      e.StopWhenIdle();
    });
  }
  absl::Status run = (*engine)->Run();
  if (leader.joinable()) leader.join();
  EXPECT_TRUE(run.ok()) << run;
  // Both ran on every rank the same units; the second to its end.
  EXPECT_EQ(second->ran(), 5) << "rank " << World().rank();
  EXPECT_GT(first->ran(), 0);
  EXPECT_TRUE(first->sums_ok());
  EXPECT_TRUE(second->sums_ok());
}

// A shutdown with the work unfinished first runs, on every rank, the units the work says
// must finish before the group leaves (as a data-parallel fine-tune's update, which the other
// groups wait in), then stops.
TEST_F(InterleavedWorkTest, AShutdownFirstRunsTheUnitsTheWorkMustFinish) {
  auto work = std::make_shared<CountingWork>(/*units=*/2000000, -1, -1, /*leaving=*/3);
  EngineOptions options = SmallCache();
  options.interleaved_factory =
      [work](const std::string&) -> absl::StatusOr<std::shared_ptr<InterleavedWork>> {
    return work;
  };
  options.interleaved_spec = "count";
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(*model_, World(), nullptr, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::thread leader;
  if ((*engine)->is_leader()) {
    leader = std::thread([&] {
      while (work->ran() < 5) absl::SleepFor(absl::Milliseconds(1));  // units run while idle
      (*engine)->Shutdown();
    });
  }
  absl::Status run = (*engine)->Run();
  if (leader.joinable()) leader.join();
  EXPECT_TRUE(run.ok()) << run;
  EXPECT_TRUE(work->sums_ok());
  // Every rank ran the same units (each an all-reduce).
  int64_t ran = work->ran();
  Tensor sum = Tensor::Wrap(&ran, DType::kI64, {1});
  Stream cpu = Stream::Cpu();
  ASSERT_TRUE(World().AllReduce(sum, comm::ReduceOp::kSum, cpu).ok());
  EXPECT_EQ(ran, static_cast<int64_t>(work->ran()) * World().size());
  if (World().rank() != 0) return;
  ASSERT_GE(work->ran_when_leaving(), 5);
  EXPECT_EQ(work->ran(), work->ran_when_leaving() + 3);
}

}  // namespace
}  // namespace tessera::engine
