// LoRA adapters at the coordinator, without gRPC: adapter names, routing to groups that can run
// a request's adapter (preferring those that hold it in memory, prefix hashes rooted per
// adapter), the registry's view of a group's adapters between heartbeats, the record of
// operators' loads, per-adapter metrics, and the OpenAI API's "base:adapter" model names.

#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/engine/prefix_hash.h"
#include "runtime/serve/adapter_registry.h"
#include "runtime/serve/group_registry.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/openai_api.h"
#include "runtime/serve/router.h"
#include "runtime/serve/serve_metrics.h"
#include "tests/unit/status_test_util.h"

namespace tessera::serve {
namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;
using Json = nlohmann::json;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

GroupInfo Info(const std::string& endpoint, const std::string& version = "v1") {
  GroupInfo info;
  info.name = endpoint;
  info.endpoint = endpoint;
  info.model = "tiny";
  info.version = version;
  info.topology.hosts = {"node-a"};
  info.kv.block_size = 4;
  info.kv.blocks = 100;
  info.max_model_length = 1024;
  return info;
}

// A healthy group of model tiny that can run `adapters`.
GroupSnapshot Group(const std::string& id, int64_t outstanding_tokens,
                    std::vector<GroupAdapter> adapters = {}) {
  GroupSnapshot group;
  group.id = id;
  group.info = Info(id + ":50051");
  auto load = std::make_shared<GroupLoad>();
  load->kv_blocks_total = 100;
  load->kv_blocks_free = 100;
  load->outstanding_tokens = outstanding_tokens;
  load->adapters = std::move(adapters);
  group.load = load;
  group.healthy = true;
  return group;
}

GroupAdapter Resident(const std::string& name) { return {name, "/adapters/" + name, true}; }
GroupAdapter OnDisk(const std::string& name) { return {name, "/adapters/" + name, false}; }

RouteRequest Request(const std::string& adapter, int prompt_tokens = 10) {
  RouteRequest request;
  request.model = "tiny";
  request.prompt_tokens = prompt_tokens;
  request.max_tokens = 10;
  request.adapter = adapter;
  return request;
}

Router RouterWith(RoutingPolicy policy) {
  RouterOptions options;
  options.policy = policy;
  return Router(options);
}

std::vector<std::string> Names(const GroupLoad& load) {
  std::vector<std::string> names;
  for (const GroupAdapter& adapter : load.adapters) names.push_back(adapter.name);
  return names;
}

TEST(AdapterNameTest, LettersDigitsAndDotUnderscoreDashUpTo128Bytes) {
  EXPECT_OK(CheckAdapterName("sql", "adapter.name"));
  EXPECT_OK(CheckAdapterName("Support_v2.1-final", "adapter.name"));
  EXPECT_OK(CheckAdapterName(std::string(128, 'a'), "adapter.name"));
  EXPECT_TRUE(IsError(CheckAdapterName("", "adapter.name"), absl::StatusCode::kInvalidArgument,
                      {"adapter.name: required"}));
  EXPECT_TRUE(IsError(CheckAdapterName(std::string(129, 'a'), "name"),
                      absl::StatusCode::kInvalidArgument, {"name: 129 bytes; at most 128"}));
  for (const char* bad : {"a:b", "../etc", "a b", "caf\xc3\xa9", "a\nb", "a/b"}) {
    EXPECT_TRUE(IsError(CheckAdapterName(bad, "adapter.name"), absl::StatusCode::kInvalidArgument,
                        {"adapter.name: ", "letters, digits and \"._-\""}))
        << bad;
  }
}

TEST(AdapterRoutingTest, OnlyGroupsThatCanRunTheAdapterAreCandidates) {
  Router router;
  // g1, the idlest, cannot run sql.
  std::vector<GroupSnapshot> groups = {Group("g1", 0), Group("g2", 300, {OnDisk("sql")}),
                                       Group("g3", 400, {Resident("chat"), OnDisk("sql")})};
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(Request("sql"), groups));
  EXPECT_EQ(decision.group_id, "g2");
  ASSERT_EQ(decision.candidates.size(), 2u);
  ASSERT_EQ(decision.excluded.size(), 1u);
  EXPECT_EQ(decision.excluded[0].first, "g1");
  EXPECT_TRUE(Contains(decision.excluded[0].second, "adapter sql not loaded"));
  // The base model runs anywhere.
  ASSERT_OK_AND_ASSIGN(decision, router.Route(Request(""), groups));
  EXPECT_EQ(decision.group_id, "g1");

  EXPECT_TRUE(IsError(router.Route(Request("legal"), groups), absl::StatusCode::kNotFound,
                      {"adapter: \"legal\" is not loaded for model tiny; loaded: chat, sql"}));
  EXPECT_TRUE(IsError(router.Route(Request("legal"), {Group("g1", 0)}), absl::StatusCode::kNotFound,
                      {"loaded: none"}));
  // Another version's adapters are not this version's.
  RouteRequest v2 = Request("chat");
  v2.version = "v2";
  GroupSnapshot other = Group("g4", 0);
  other.info.version = "v2";
  EXPECT_TRUE(IsError(router.Route(v2, {groups[2], other}), absl::StatusCode::kNotFound,
                      {"\"chat\" is not loaded", "loaded: none"}));
}

TEST(AdapterRoutingTest, ResidentAdaptersArePreferredUntilTheirGroupIsOverloaded) {
  Router router;
  // Alike but for residency: the group that holds sql in memory.
  std::vector<GroupSnapshot> groups = {Group("g1", 100, {OnDisk("sql")}),
                                       Group("g2", 100, {Resident("sql")})};
  for (int i = 0; i < 4; ++i) {  // no tie to take turns on
    ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(Request("sql"), groups));
    EXPECT_EQ(decision.group_id, "g2");
    EXPECT_TRUE(decision.candidates[0].adapter_resident);
    EXPECT_DOUBLE_EQ(decision.candidates[0].adapter_score, 1.0);
    EXPECT_DOUBLE_EQ(decision.candidates[1].adapter_score, 0.0);
    EXPECT_TRUE(Contains(decision.Explain(), "adapter=1.000 (resident)"));
  }
  // Somewhat busier, it still wins: residency is worth going from idle to f = 0.33 ...
  groups[1] = Group("g2", 150, {Resident("sql")});
  EXPECT_EQ(router.Route(Request("sql"), groups)->group_id, "g2");
  // ... but an overloaded group's residency counts for nothing (f 1.55 against 0.3).
  groups[1] = Group("g2", 600, {Resident("sql")});
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(Request("sql"), groups));
  EXPECT_EQ(decision.group_id, "g1");
  EXPECT_TRUE(decision.candidates.back().overloaded);
  EXPECT_DOUBLE_EQ(decision.candidates.back().adapter_score, 0.0);

  // The prefix policy ranks residency after cached prompt tokens, before load.
  Router prefix = RouterWith(RoutingPolicy::kPrefix);
  groups = {Group("g1", 0, {OnDisk("sql")}), Group("g2", 100, {Resident("sql")})};
  EXPECT_EQ(prefix.Route(Request("sql"), groups)->group_id, "g2");
  // least-load looks at the load alone.
  Router least = RouterWith(RoutingPolicy::kLeastLoad);
  EXPECT_EQ(least.Route(Request("sql"), groups)->group_id, "g1");
}

TEST(AdapterRoutingTest, BaseRequestsScoreAsBefore) {
  Router router;
  std::vector<GroupSnapshot> groups = {Group("g1", 100, {Resident("sql")}), Group("g2", 90)};
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(Request(""), groups));
  EXPECT_EQ(decision.group_id, "g2");
  for (const CandidateScore& score : decision.candidates) {
    EXPECT_FALSE(score.adapter_resident);
    EXPECT_DOUBLE_EQ(score.adapter_score, 0.0);
    EXPECT_DOUBLE_EQ(score.total, score.load_score);  // no prefix, no locality
  }
}

TEST(AdapterRoutingTest, PromptHashesStartFromTheAdaptersRoot) {
  std::vector<int32_t> prompt(20);
  std::iota(prompt.begin(), prompt.end(), 0);
  const std::vector<uint64_t> base = engine::PrefixBlockHashes(prompt, 4);
  const std::vector<uint64_t> sql =
      engine::PrefixBlockHashes(prompt, 4, engine::PrefixHashRoot("sql"));
  ASSERT_NE(base, sql);
  // g1 cached the prompt under the base model, g2 under sql: an sql request's blocks are
  // g2's alone, a base request's g1's.
  std::vector<GroupSnapshot> groups = {Group("g1", 0, {OnDisk("sql")}),
                                       Group("g2", 0, {OnDisk("sql")})};
  auto cache = [](GroupSnapshot& group, const std::vector<uint64_t>& hashes) {
    auto load = std::make_shared<GroupLoad>(*group.load);
    load->cached_block_hashes.insert(hashes.begin(), hashes.end());
    group.load = load;
  };
  cache(groups[0], base);
  cache(groups[1], sql);
  Router router = RouterWith(RoutingPolicy::kPrefix);

  RouteRequest with_sql = Request("sql", 0);
  with_sql.HashPrompt(prompt, groups);
  EXPECT_EQ(with_sql.block_hashes.at(4), sql);
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(with_sql, groups));
  EXPECT_EQ(decision.group_id, "g2");
  EXPECT_EQ(decision.candidates[0].cached_blocks, 5);
  EXPECT_EQ(decision.candidates[1].cached_blocks, 0);

  RouteRequest on_base = Request("", 0);
  on_base.HashPrompt(prompt, groups);
  EXPECT_EQ(on_base.block_hashes.at(4), base);
  EXPECT_EQ(router.Route(on_base, groups)->group_id, "g1");
}

TEST(GroupAdaptersTest, CoordinatorLoadsShowAtOnceAndOutliveHeartbeatsSentBefore) {
  GroupRegistry registry;
  ASSERT_OK_AND_ASSIGN(std::string id, registry.Register(Info("a:1"), kStart));
  GroupLoad started;
  started.adapters = {Resident("chat")};
  ASSERT_TRUE(registry.Heartbeat(id, started, kStart));
  EXPECT_EQ(registry.HealthyVersions("tiny", kStart, "chat"), std::vector<std::string>{"v1"});
  EXPECT_TRUE(registry.HealthyVersions("tiny", kStart, "sql").empty());

  ASSERT_TRUE(registry.NoteAdapterLoaded(id, Resident("sql")));
  ASSERT_TRUE(registry.NoteAdapterUnloaded(id, "chat"));
  EXPECT_FALSE(registry.NoteAdapterLoaded("g99", Resident("sql")));
  EXPECT_EQ(Names(*registry.Get(id, kStart)->load), std::vector<std::string>{"sql"});
  EXPECT_EQ(registry.HealthyVersions("tiny", kStart, "sql"), std::vector<std::string>{"v1"});

  // A heartbeat sent before the calls: the calls' effect stays.
  ASSERT_TRUE(registry.Heartbeat(id, started, kStart + absl::Seconds(1)));
  EXPECT_EQ(Names(*registry.Get(id, kStart)->load), std::vector<std::string>{"sql"});
  // One sent after: it shows them, and from then on the heartbeats say.
  GroupLoad after;
  after.adapters = {OnDisk("sql")};
  ASSERT_TRUE(registry.Heartbeat(id, after, kStart + absl::Seconds(2)));
  std::shared_ptr<const GroupLoad> load = registry.Get(id, kStart)->load;
  ASSERT_EQ(Names(*load), std::vector<std::string>{"sql"});
  EXPECT_FALSE(load->FindAdapter("sql")->resident);
  ASSERT_TRUE(registry.Heartbeat(id, started, kStart + absl::Seconds(3)));
  EXPECT_EQ(Names(*registry.Get(id, kStart)->load), std::vector<std::string>{"chat"});

  // A replaced directory counts as shown only once a heartbeat names the new one.
  ASSERT_TRUE(registry.NoteAdapterLoaded(id, {"chat", "/adapters/chat-2", true}));
  ASSERT_TRUE(registry.Heartbeat(id, started, kStart + absl::Seconds(4)));
  EXPECT_EQ(registry.Get(id, kStart)->load->FindAdapter("chat")->dir, "/adapters/chat-2");
}

TEST(AdapterRegistryTest, ModelWideAndPerVersionRecords) {
  AdapterRegistry record;
  EXPECT_TRUE(record.For("tiny", "v1").empty());
  record.Load("tiny", "", "sql", "/a/sql");
  record.Load("tiny", "v2", "chat", "/a/chat-v2");
  record.Load("tiny", "v2", "sql", "/a/sql-v2");
  EXPECT_EQ(record.For("tiny", "v1"), (AdapterRegistry::Adapters{{"sql", "/a/sql"}}));
  EXPECT_EQ(record.For("tiny", "v3"), (AdapterRegistry::Adapters{{"sql", "/a/sql"}}));
  EXPECT_EQ(record.For("tiny", "v2"),
            (AdapterRegistry::Adapters{{"chat", "/a/chat-v2"}, {"sql", "/a/sql-v2"}}));
  EXPECT_TRUE(record.For("other", "v1").empty());

  // A model-wide load replaces the versions' own records of that name.
  const AdapterRegistry::ModelRecord before = record.Record("tiny");
  record.Load("tiny", "", "sql", "/a/sql-2");
  EXPECT_EQ(record.For("tiny", "v2"),
            (AdapterRegistry::Adapters{{"chat", "/a/chat-v2"}, {"sql", "/a/sql-2"}}));
  record.Restore("tiny", before);
  EXPECT_EQ(record.For("tiny", "v2").at("sql"), "/a/sql-v2");

  // Unloading one version of a model-wide record leaves it on the others.
  EXPECT_TRUE(record.Unload("tiny", "v1", "sql", {"v1", "v2", "v3"}));
  EXPECT_TRUE(record.For("tiny", "v1").empty());
  EXPECT_EQ(record.For("tiny", "v3"), (AdapterRegistry::Adapters{{"sql", "/a/sql"}}));
  EXPECT_EQ(record.For("tiny", "v2").at("sql"), "/a/sql-v2");
  EXPECT_EQ(record.For("tiny", "v9"), AdapterRegistry::Adapters());  // no longer model-wide
  // Unloading without a version: every version.
  EXPECT_TRUE(record.Unload("tiny", "", "sql", {}));
  EXPECT_EQ(record.For("tiny", "v2"), (AdapterRegistry::Adapters{{"chat", "/a/chat-v2"}}));
  EXPECT_TRUE(record.For("tiny", "v3").empty());
  EXPECT_FALSE(record.Unload("tiny", "", "sql", {}));
  EXPECT_FALSE(record.Unload("other", "", "sql", {}));
}

TEST(AdapterRegistryTest, ListingJoinsTheRecordWithTheGroupsHeartbeats) {
  AdapterRegistry record;
  record.Load("tiny", "", "sql", "/a/sql");
  record.Load("gone", "", "x", "/a/x");
  std::vector<GroupSnapshot> groups = {Group("g1", 0, {Resident("sql"), OnDisk("chat")}),
                                       Group("g2", 0, {OnDisk("sql")}), Group("g3", 0)};
  groups[2].info.version = "v2";
  GroupSnapshot unhealthy = Group("g4", 0, {Resident("sql")});
  unhealthy.healthy = false;
  groups.push_back(unhealthy);

  std::vector<AdapterListing> listed = record.List("tiny", groups);
  ASSERT_EQ(listed.size(), 3u);
  // chat: started with the worker (no record).
  EXPECT_EQ(listed[0].name, "chat");
  EXPECT_EQ(listed[0].version, "v1");
  EXPECT_EQ(listed[0].dir, "/adapters/chat");
  EXPECT_EQ(listed[0].groups, 1);
  EXPECT_EQ(listed[0].resident, 0);
  // sql at v1: the record's directory, two healthy groups, one resident.
  EXPECT_EQ(listed[1].name, "sql");
  EXPECT_EQ(listed[1].version, "v1");
  EXPECT_EQ(listed[1].dir, "/a/sql");
  EXPECT_EQ(listed[1].groups, 2);
  EXPECT_EQ(listed[1].resident, 1);
  // sql at v2: recorded model-wide, not loaded there (yet).
  EXPECT_EQ(listed[2].version, "v2");
  EXPECT_EQ(listed[2].groups, 0);

  // A model whose groups are all gone keeps its record, under version "".
  listed = record.List("", groups);
  ASSERT_EQ(listed.size(), 4u);
  EXPECT_EQ(listed[0].model, "gone");
  EXPECT_EQ(listed[0].version, "");
  EXPECT_EQ(listed[0].dir, "/a/x");
}

TEST(AdapterMetricsTest, CountsRequestsThatRanByModelAndAdapter) {
  MetricsRegistry registry;
  AdapterMetrics metrics(registry);
  RequestRecord ran;
  ran.group = "g1";
  ran.completion_tokens = 7;
  metrics.Record("tiny", "sql", ran);
  metrics.Record("tiny", "sql", ran);
  metrics.Record("tiny", "", ran);
  RequestRecord refused;  // never reached a group: a name a client made up
  metrics.Record("tiny", "made-up", refused);
  const std::string text = registry.RenderText();
  EXPECT_TRUE(Contains(text, "tessera_adapter_requests_total{model=\"tiny\",adapter=\"sql\"} 2"));
  EXPECT_TRUE(Contains(text, "tessera_adapter_requests_total{model=\"tiny\",adapter=\"\"} 1"));
  EXPECT_TRUE(
      Contains(text, "tessera_adapter_completion_tokens_total{model=\"tiny\",adapter=\"sql\"} 14"));
  EXPECT_FALSE(absl::StrContains(text, "made-up"));
}

TEST(OpenAiModelNameTest, BaseColonAdapterSplitsAtTheLastColonUnlessTheWholeIsServed) {
  auto served = [](absl::string_view name) { return name == "tiny" || name == "llama3:8b"; };
  auto split = [&](absl::string_view name) {
    ModelAndAdapter result = SplitModelName(name, served);
    return std::make_pair(result.model, result.adapter);
  };
  using Pair = std::pair<std::string, std::string>;
  EXPECT_EQ(split("tiny"), Pair("tiny", ""));
  EXPECT_EQ(split("tiny:sql"), Pair("tiny", "sql"));
  EXPECT_EQ(split("llama3:8b"), Pair("llama3:8b", ""));
  EXPECT_EQ(split("llama3:8b:sql"), Pair("llama3:8b", "sql"));
  // Not an adapter name after the colon, or nothing before it: the model as named.
  EXPECT_EQ(split("unknown:a/b"), Pair("unknown:a/b", ""));
  EXPECT_EQ(split(":sql"), Pair(":sql", ""));
  EXPECT_EQ(split("tiny:"), Pair("tiny:", ""));
  // An unknown base is split all the same: the coordinator names the model it lacks.
  EXPECT_EQ(split("other:sql"), Pair("other", "sql"));
}

TEST(OpenAiModelNameTest, AnswersEchoTheModelTheClientSent) {
  ASSERT_OK_AND_ASSIGN(CompletionCall call,
                       ParseCompletionRequest({{"model", "tiny:sql"}, {"prompt", "hi"}}));
  EXPECT_EQ(call.model, "tiny:sql");
  EXPECT_EQ(call.request.model(), "tiny:sql");
  ModelAndAdapter target =
      SplitModelName(call.model, [](absl::string_view n) { return n == "tiny"; });
  call.request.set_model(target.model);
  call.request.set_adapter(target.adapter);
  EXPECT_EQ(ChoiceRequest(call, "cmpl-1", 0).adapter(), "sql");
  EXPECT_EQ(ChoiceRequest(call, "cmpl-1", 0).model(), "tiny");
  auto none = [](int, int32_t, bool) { return std::string(); };
  auto alone = [](int, int32_t) { return std::string(); };
  std::vector<ChoiceResult> choices(1);
  EXPECT_EQ(CompletionBody(call, "cmpl-1", 0, choices, none, alone)["model"], "tiny:sql");
  v1::GenerateStreamResponse message;
  EXPECT_EQ(CompletionChunk(call, "cmpl-1", 0, 0, message, true, 0, none, alone)["model"],
            "tiny:sql");
  EXPECT_EQ(UsageChunk(call, "cmpl-1", 0, v1::Usage())["model"], "tiny:sql");
}

TEST(OpenAiModelNameTest, ModelsListAdaptersAsBaseColonAdapterWithTheirParent) {
  ModelSummary tiny;
  tiny.model = "tiny";
  AdapterListing sql_v1{"tiny", "v1", "sql", "/a/sql", 1, 1};
  AdapterListing sql_v2{"tiny", "v2", "sql", "/a/sql", 2, 0};
  AdapterListing recorded_only{"tiny", "v1", "chat", "/a/chat", 0, 0};
  const Json body = ModelsBody({tiny}, {sql_v1, sql_v2, recorded_only});
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 2u) << body.dump();
  EXPECT_EQ(body["data"][0]["id"], "tiny");
  EXPECT_TRUE(body["data"][0]["parent"].is_null());
  EXPECT_EQ(body["data"][1]["id"], "tiny:sql");
  EXPECT_EQ(body["data"][1]["parent"], "tiny");
  EXPECT_EQ(body["data"][1]["object"], "model");
  EXPECT_FALSE(absl::StrContains(body.dump(), "/a/sql"));  // the server's paths stay its own
}

}  // namespace
}  // namespace tessera::serve
