// LoRA adapters through the serving engine (EngineOptions::adapters,
// GenerationRequest::adapter) at whatever TP degree mpirun gives (ctest runs 1 and 2 ranks), on
// the tiny model tests/golden/models/llama with the PEFT adapters a, b and c of
// tests/golden/lora_serving: requests of different adapters and of none in one engine give
// each the tokens and log-probabilities it gets alone; the prefix cache never hands one
// adapter's blocks to another (or to the base); unknown adapters are refused by name; a rank
// refuses a plan naming a slot it never filled. While the engine runs: adapters load and
// unload beside running requests, a bounded set of resident adapters unloads the least
// recently used and reloads it on demand, and an adapter replaced under its name keeps its
// running requests on the old version.

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "runtime/engine/engine.h"
#include "runtime/engine/step_executor.h"
#include "runtime/model/transformer.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::engine {
namespace {

using ::tessera::testing::World;

const std::string kBase = std::string(TESSERA_GOLDEN_MODELS) + "/llama";
const std::string kAdapters = TESSERA_GOLDEN_LORA;

std::vector<AdapterSpec> GoldenAdapters() {
  return {{"a", kAdapters + "/a"}, {"b", kAdapters + "/b"}, {"c", kAdapters + "/c"}};
}

struct Finished {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  TokenEvent final;
};

class AdapterEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<model::Transformer>> loaded =
        model::Transformer::Load(kBase, World());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = loaded->release();
  }
  static void TearDownTestSuite() { delete model_; }

  static Finished Drain(RequestStream& stream) {
    Finished out;
    TokenEvent event;
    while (stream.Next(&event)) {
      if (event.final) {
        out.final = event;
        break;
      }
      out.tokens.push_back(event.token);
      out.logprobs.push_back(event.logprob);
    }
    return out;
  }

  // `requests` through a new engine on every rank (the leader submits them all, then runs
  // until idle); the leader's results in order.
  static std::vector<Finished> RunEngine(EngineOptions options,
                                         const std::vector<GenerationRequest>& requests) {
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(*model_, World(), /*tokenizer=*/nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return {};
    std::vector<std::shared_ptr<RequestStream>> streams;
    if ((*engine)->is_leader()) {
      for (const GenerationRequest& request : requests) {
        auto stream = (*engine)->Submit(request);
        EXPECT_TRUE(stream.ok()) << stream.status();
        if (stream.ok()) streams.push_back(*stream);
      }
      (*engine)->StopWhenIdle();
    }
    absl::Status run = (*engine)->Run();
    EXPECT_TRUE(run.ok()) << run;
    std::vector<Finished> results;
    for (auto& stream : streams) results.push_back(Drain(*stream));
    return results;
  }

  // A new engine on every rank; the leader runs `script` on a thread of its own while Run()
  // loops (then stops the engine once idle).
  static void RunWithScript(const EngineOptions& options,
                            const std::function<void(Engine&)>& script) {
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(*model_, World(), /*tokenizer=*/nullptr, options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::thread leader;
    if ((*engine)->is_leader()) {
      leader = std::thread([&] {
        script(**engine);
        (*engine)->StopWhenIdle();
      });
    }
    absl::Status run = (*engine)->Run();
    if (leader.joinable()) leader.join();
    EXPECT_TRUE(run.ok()) << run;
  }

  static Finished Submit(Engine& engine, const GenerationRequest& request) {
    absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine.Submit(request);
    EXPECT_TRUE(stream.ok()) << stream.status();
    return stream.ok() ? Drain(**stream) : Finished{};
  }

  // What `request` gives on an engine that serves every golden adapter from the start.
  static Finished Reference(const GenerationRequest& request) {
    std::vector<Finished> results = RunEngine(Options(), {request});
    return results.empty() ? Finished{} : results[0];
  }

  static const AdapterState* StateOf(const std::vector<AdapterState>& states,
                                     const std::string& name) {
    for (const AdapterState& state : states) {
      if (state.name == name) return &state;
    }
    return nullptr;
  }

  static EngineOptions Options() {
    EngineOptions options;
    options.block_size = 8;
    options.num_blocks = 128;
    options.adapters = GoldenAdapters();
    return options;
  }

  static GenerationRequest Request(std::vector<int32_t> prompt, std::string adapter,
                                   int max_tokens) {
    GenerationRequest request;
    request.prompt_tokens = std::move(prompt);
    request.adapter = std::move(adapter);
    request.sampling.max_tokens = max_tokens;
    request.sampling.ignore_eos = true;
    request.sampling.logprobs = true;
    return request;
  }

  static model::Transformer* model_;
};

model::Transformer* AdapterEngineTest::model_ = nullptr;

std::string Where() { return " at tp " + std::to_string(World().size()); }

TEST_F(AdapterEngineTest, MixedAdaptersInOneEngineEqualEachRequestAlone) {
  std::mt19937 random(11);
  auto tokens = [&](int count) {
    std::vector<int32_t> out(count);
    for (int32_t& t : out) t = static_cast<int32_t>(random() % 256);
    return out;
  };
  const std::vector<int32_t> shared = tokens(20);
  const char* const kNames[] = {"a", "", "b", "c", "a", "", "c", "b", "", "a"};
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 10; ++i) {
    // Half share a prompt, so the same tokens run under every adapter and the base at once.
    std::vector<int32_t> prompt = i % 2 == 0 ? shared : tokens(5 + i * 3);
    requests.push_back(Request(prompt, kNames[i], 4 + i % 5));
  }
  EngineOptions options = Options();
  options.max_step_tokens = 24;  // prompts arrive in chunks beside other requests' decodes
  std::vector<Finished> together = RunEngine(options, requests);
  std::vector<std::vector<Finished>> alone;
  for (const GenerationRequest& request : requests) alone.push_back(RunEngine(options, {request}));
  if (World().rank() != 0) return;
  ASSERT_EQ(together.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(alone[i].size(), 1u);
    const std::string what =
        "request " + std::to_string(i) + " (adapter \"" + requests[i].adapter + "\")" + Where();
    EXPECT_EQ(together[i].tokens, alone[i][0].tokens) << what;
    // Rows are computed the same way whatever else is in the batch (TP 1 and 2).
    EXPECT_EQ(together[i].logprobs, alone[i][0].logprobs) << what;
    EXPECT_EQ(together[i].final.finish_reason, FinishReason::kLength) << what;
    EXPECT_EQ(together[i].final.usage.completion_tokens, requests[i].sampling.max_tokens) << what;
  }
  // The shared prompt ran under a (request 0), b (2), c (6) and the base (8): each adapter
  // changes what the model computes, from the first generated token on.
  for (size_t i : {2, 6, 8}) {
    EXPECT_NE(together[0].logprobs[0], together[i].logprobs[0])
        << "requests 0 and " << i << Where();
  }
}

// One request at a time (max_running 1), so that each finds the blocks the earlier ones left
// in the cache: only a request of the same adapter may reuse them.
TEST_F(AdapterEngineTest, PrefixCacheIsKeyedByAdapter) {
  std::vector<int32_t> prompt(41);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 5) % 256);
  EngineOptions options = Options();
  options.max_running = 1;
  std::vector<GenerationRequest> requests = {Request(prompt, "a", 3), Request(prompt, "b", 3),
                                             Request(prompt, "", 3), Request(prompt, "a", 3),
                                             Request(prompt, "", 3)};
  std::vector<Finished> results = RunEngine(options, requests);
  if (World().rank() != 0) return;
  ASSERT_EQ(results.size(), requests.size());
  EXPECT_EQ(results[0].final.usage.cached_tokens, 0) << "adapter a, first" << Where();
  EXPECT_EQ(results[1].final.usage.cached_tokens, 0) << "adapter b after a" << Where();
  EXPECT_EQ(results[2].final.usage.cached_tokens, 0) << "the base after a and b" << Where();
  // 40 tokens before the last one: 5 full blocks of 8.
  EXPECT_EQ(results[3].final.usage.cached_tokens, 40) << "adapter a again" << Where();
  EXPECT_EQ(results[4].final.usage.cached_tokens, 40) << "the base again" << Where();
  // Reusing the cache changes nothing.
  EXPECT_EQ(results[3].tokens, results[0].tokens) << Where();
  EXPECT_EQ(results[3].logprobs, results[0].logprobs) << Where();
  EXPECT_EQ(results[4].logprobs, results[2].logprobs) << Where();
}

TEST_F(AdapterEngineTest, RefusesUnknownAdaptersNamingTheLoadedOnes) {
  for (bool with_adapters : {true, false}) {
    EngineOptions options = Options();
    if (!with_adapters) options.adapters.clear();
    absl::StatusOr<std::unique_ptr<Engine>> created =
        Engine::Create(*model_, World(), nullptr, options);
    ASSERT_TRUE(created.ok()) << created.status();
    Engine& engine = **created;
    if (engine.is_leader()) {
      absl::StatusOr<std::shared_ptr<RequestStream>> refused =
          engine.Submit(Request({1, 2, 3}, "sql", 2));
      ASSERT_FALSE(refused.ok());
      EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
      const std::string expected = with_adapters
                                       ? "adapter: \"sql\" is not loaded; loaded adapters: a, b, c"
                                       : "adapter: \"sql\" is not loaded; this engine serves no "
                                         "adapters";
      EXPECT_NE(refused.status().message().find(expected), std::string::npos) << refused.status();
      engine.Shutdown();
    }
    absl::Status run = engine.Run();
    EXPECT_TRUE(run.ok()) << run;
  }
}

TEST_F(AdapterEngineTest, CreateRefusesBadAdaptersOnEveryRankAndLeavesNoneLoaded) {
  EngineOptions repeated = Options();
  repeated.adapters.push_back({"a", kAdapters + "/b"});
  absl::StatusOr<std::unique_ptr<Engine>> twice =
      Engine::Create(*model_, World(), nullptr, repeated);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.status().message().find("the name \"a\" twice"), std::string::npos)
      << twice.status();

  EngineOptions missing = Options();
  missing.adapters.push_back({"gone", "/nonexistent-adapter-dir"});
  absl::StatusOr<std::unique_ptr<Engine>> failed =
      Engine::Create(*model_, World(), nullptr, missing);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("adapter \"gone\" (/nonexistent-adapter-dir)"),
            std::string::npos)
      << failed.status();
  // Neither the failed engine nor the engines of the tests before kept an adapter loaded.
  for (int slot = 0; slot < 8; ++slot) EXPECT_FALSE(model_->HasAdapter(slot)) << "slot " << slot;
}

TEST_F(AdapterEngineTest, RankRefusesAPlanNamingAnEmptySlot) {
  absl::StatusOr<model::KvCache> cache = model_->AllocateKvCache(4, 8);
  ASSERT_TRUE(cache.ok()) << cache.status();
  StepExecutor executor(*model_, *cache);
  tessera::v1::StepPlan plan;
  plan.set_version(tessera::v1::STEP_PLAN_VERSION_1);
  plan.set_step(1);
  tessera::v1::NewSequence* added = plan.add_new_sequences();
  added->set_id(5);
  added->add_tokens(1);
  added->set_adapter(3);
  absl::StatusOr<std::vector<SampledToken>> executed = executor.Execute(plan);
  ASSERT_FALSE(executed.ok());
  EXPECT_EQ(executed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(executed.status().message().find(
                "step plan #1, sequence 5: adapter slot 3 holds no adapter on this rank"),
            std::string::npos)
      << executed.status();
}

std::vector<int32_t> Prompt(int length, int salt) {
  std::vector<int32_t> prompt(length);
  for (int i = 0; i < length; ++i) prompt[i] = static_cast<int32_t>((i * 31 + salt * 7 + 3) % 256);
  return prompt;
}

TEST_F(AdapterEngineTest, LoadsAndUnloadsWhileRequestsRun) {
  const GenerationRequest on_base = Request(Prompt(12, 1), "", 24);
  const GenerationRequest on_b = Request(Prompt(9, 2), "b", 6);
  // References first: every rank runs them (collective), the leader keeps the results.
  const Finished base_alone = Reference(on_base);
  const Finished b_alone = Reference(on_b);

  EngineOptions options = Options();
  options.adapters = {{"a", kAdapters + "/a"}};
  RunWithScript(options, [&](Engine& engine) {
    absl::StatusOr<std::shared_ptr<RequestStream>> running = engine.Submit(on_base);
    ASSERT_TRUE(running.ok()) << running.status();
    TokenEvent first;
    ASSERT_TRUE((*running)->Next(&first));  // the base request is under way
    ASSERT_TRUE(engine.LoadAdapter({"b", kAdapters + "/b"}).ok());
    const std::vector<AdapterState> loaded = engine.Adapters();
    ASSERT_EQ(loaded.size(), 2u);
    EXPECT_EQ(loaded[1].name, "b");
    EXPECT_TRUE(loaded[1].resident);

    Finished with_b = Submit(engine, on_b);
    EXPECT_EQ(with_b.tokens, b_alone.tokens) << Where();
    EXPECT_EQ(with_b.logprobs, b_alone.logprobs) << Where();

    EXPECT_TRUE(engine.UnloadAdapter("b").ok());
    absl::StatusOr<std::shared_ptr<RequestStream>> refused = engine.Submit(on_b);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    absl::Status again = engine.UnloadAdapter("b");
    EXPECT_EQ(again.code(), absl::StatusCode::kNotFound) << again;
    EXPECT_NE(again.message().find("loaded adapters: a"), std::string::npos) << again;

    // A directory that does not load fails its call, on every rank, and nothing else.
    absl::Status missing = engine.LoadAdapter({"gone", "/nonexistent-adapter-dir"});
    EXPECT_FALSE(missing.ok());
    EXPECT_NE(missing.message().find("adapter \"gone\" (/nonexistent-adapter-dir)"),
              std::string::npos)
        << missing;
    EXPECT_EQ(engine.LoadAdapter({"bad/name", kAdapters + "/b"}).code(),
              absl::StatusCode::kInvalidArgument);

    Finished rest = Drain(**running);
    rest.tokens.insert(rest.tokens.begin(), first.token);
    rest.logprobs.insert(rest.logprobs.begin(), first.logprob);
    EXPECT_EQ(rest.tokens, base_alone.tokens) << Where();
    EXPECT_EQ(rest.logprobs, base_alone.logprobs) << Where();
    EXPECT_EQ(rest.final.finish_reason, FinishReason::kLength);
  });
  for (int slot = 0; slot < 8; ++slot) EXPECT_FALSE(model_->HasAdapter(slot)) << "slot " << slot;
}

TEST_F(AdapterEngineTest, BoundedResidentAdaptersUnloadTheLeastRecentlyUsedAndReload) {
  const char* const kOrder[] = {"a", "b", "c", "a", "", "c", "b", "a"};
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(Request(Prompt(6 + i, i), kOrder[i], 3));
  std::vector<Finished> expected;
  for (const GenerationRequest& request : requests) expected.push_back(Reference(request));

  EngineOptions options = Options();  // a, b and c
  options.max_adapters = 1;
  RunWithScript(options, [&](Engine& engine) {
    // One after another, so that each needs the adapter the one before pushed out.
    for (size_t i = 0; i < requests.size(); ++i) {
      Finished got = Submit(engine, requests[i]);
      EXPECT_EQ(got.tokens, expected[i].tokens) << "request " << i << Where();
      EXPECT_EQ(got.logprobs, expected[i].logprobs) << "request " << i << Where();
      int resident = 0;
      for (const AdapterState& state : engine.Adapters()) resident += state.resident ? 1 : 0;
      EXPECT_LE(resident, 1) << "after request " << i;
    }
    std::vector<AdapterState> states = engine.Adapters();
    ASSERT_EQ(states.size(), 3u);
    // a: at start (b and c were unloaded to keep 1), then for requests 3 and 7.
    EXPECT_GE(StateOf(states, "a")->loads, 3);
    EXPECT_EQ(StateOf(states, "a")->requests, 3);
    EXPECT_EQ(StateOf(states, "a")->output_tokens, 9);
    EXPECT_TRUE(StateOf(states, "a")->resident);
    EXPECT_FALSE(StateOf(states, "b")->resident);
  });
  // All at once: more adapters wanted than may be resident; each request waits its turn.
  RunWithScript(options, [&](Engine& engine) {
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const GenerationRequest& request : requests) {
      absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine.Submit(request);
      ASSERT_TRUE(stream.ok()) << stream.status();
      streams.push_back(*stream);
    }
    for (size_t i = 0; i < streams.size(); ++i) {
      Finished got = Drain(*streams[i]);
      EXPECT_EQ(got.tokens, expected[i].tokens) << "request " << i << Where();
      EXPECT_EQ(got.logprobs, expected[i].logprobs) << "request " << i << Where();
    }
  });
}

TEST_F(AdapterEngineTest, ReplacedAdapterKeepsRunningRequestsOnTheOldVersion) {
  const std::vector<int32_t> prompt = Prompt(33, 5);
  const Finished as_a = Reference(Request(prompt, "a", 20));
  const Finished as_c = Reference(Request(prompt, "c", 4));

  EngineOptions options = Options();
  options.adapters = {{"live", kAdapters + "/a"}};
  RunWithScript(options, [&](Engine& engine) {
    absl::StatusOr<std::shared_ptr<RequestStream>> old_version =
        engine.Submit(Request(prompt, "live", 20));
    ASSERT_TRUE(old_version.ok()) << old_version.status();
    TokenEvent first;
    ASSERT_TRUE((*old_version)->Next(&first));
    // "live" becomes adapter c's weights while a request runs on a's.
    ASSERT_TRUE(engine.LoadAdapter({"live", kAdapters + "/c"}).ok());
    Finished new_version = Submit(engine, Request(prompt, "live", 4));
    EXPECT_EQ(new_version.tokens, as_c.tokens) << Where();
    EXPECT_EQ(new_version.logprobs, as_c.logprobs) << Where();
    // The old version's cached blocks are not the new one's.
    EXPECT_EQ(new_version.final.usage.cached_tokens, 0) << Where();

    Finished rest = Drain(**old_version);
    rest.tokens.insert(rest.tokens.begin(), first.token);
    EXPECT_EQ(rest.tokens, as_a.tokens) << Where();
    const std::vector<AdapterState> states = engine.Adapters();
    ASSERT_EQ(states.size(), 1u);
    EXPECT_EQ(states[0].dir, kAdapters + "/c");
    EXPECT_EQ(states[0].requests, 2);
  });
  for (int slot = 0; slot < 8; ++slot) EXPECT_FALSE(model_->HasAdapter(slot)) << "slot " << slot;
}

}  // namespace
}  // namespace tessera::engine
