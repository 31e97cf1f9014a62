// The coordinator's routing logic without gRPC: the group registry (heartbeats, expiry, load
// between heartbeats), the routing policies, weighted model versions, and tenant quotas.

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "runtime/engine/prefix_hash.h"
#include "runtime/serve/group_registry.h"
#include "runtime/serve/router.h"
#include "runtime/serve/tenant_quota.h"
#include "tests/unit/status_test_util.h"

namespace tessera::serve {
namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

std::vector<int32_t> Iota(int n, int32_t from = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

GroupInfo Info(const std::string& endpoint, const std::string& version = "v1") {
  GroupInfo info;
  info.name = endpoint;
  info.endpoint = endpoint;
  info.model = "tiny";
  info.version = version;
  info.topology.hosts = {"node-a"};
  info.topology.tp = 1;
  info.topology.zone = "zone-1";
  info.topology.interconnect = Interconnect::kSingleDevice;
  info.kv.block_size = 4;
  info.kv.blocks = 100;
  info.max_model_length = 1024;
  info.max_running = 8;
  return info;
}

// A group as the router sees it, built without a registry.
GroupSnapshot Group(const std::string& id, int64_t outstanding_tokens, int free_blocks = 100) {
  GroupSnapshot group;
  group.id = id;
  group.info = Info(id + ":50051");
  auto load = std::make_shared<GroupLoad>();
  load->kv_blocks_total = 100;
  load->kv_blocks_free = free_blocks;
  load->outstanding_tokens = outstanding_tokens;
  group.load = load;
  group.healthy = true;
  return group;
}

void SetCached(GroupSnapshot& group, const std::vector<uint64_t>& hashes) {
  auto load = std::make_shared<GroupLoad>(*group.load);
  load->cached_block_hashes.insert(hashes.begin(), hashes.end());
  group.load = load;
}

RouteRequest Request(int prompt_tokens = 10, int max_tokens = 10) {
  RouteRequest request;
  request.model = "tiny";
  request.prompt_tokens = prompt_tokens;
  request.max_tokens = max_tokens;
  return request;
}

std::string Choose(const Router& router, const RouteRequest& request,
                   const std::vector<GroupSnapshot>& groups) {
  absl::StatusOr<RouteDecision> decision = router.Route(request, groups);
  EXPECT_TRUE(decision.ok()) << decision.status();
  return decision.ok() ? decision->group_id : "";
}

// The version ChooseVersion picks for a request that names none; "<error>" (and a test
// failure) when it fails.
std::string Pick(Router& router, absl::string_view model, absl::string_view session,
                 absl::Span<const std::string> available) {
  absl::StatusOr<std::string> version = router.ChooseVersion(model, "", session, available);
  EXPECT_TRUE(version.ok()) << version.status();
  return version.ok() ? *version : std::string("<error>");
}

Router RouterWith(RoutingPolicy policy) {
  RouterOptions options;
  options.policy = policy;
  return Router(options);
}

// --- registry ---

TEST(GroupRegistryTest, RegisterAssignsIdsAndHeartbeatsReplaceTheLoad) {
  GroupRegistry registry;
  ASSERT_OK_AND_ASSIGN(std::string first, registry.Register(Info("a:1"), kStart));
  ASSERT_OK_AND_ASSIGN(std::string second, registry.Register(Info("b:1"), kStart));
  EXPECT_EQ(first, "g1");
  EXPECT_EQ(second, "g2");

  std::optional<GroupSnapshot> before = registry.Get(first, kStart);
  ASSERT_TRUE(before.has_value());
  EXPECT_TRUE(before->healthy);
  EXPECT_FALSE(before->heartbeat_received);
  EXPECT_EQ(before->load->kv_blocks_free, 100);  // idle until told otherwise

  GroupLoad load;
  load.running = 3;
  load.kv_blocks_free = 40;
  load.kv_blocks_total = 100;
  load.outstanding_tokens = 500;
  load.cached_block_hashes = {7, 8};
  EXPECT_TRUE(registry.Heartbeat(first, load, kStart + absl::Seconds(1)));
  EXPECT_FALSE(registry.Heartbeat("g99", load, kStart));
  std::optional<GroupSnapshot> after = registry.Get(first, kStart + absl::Seconds(1));
  ASSERT_TRUE(after.has_value());
  EXPECT_TRUE(after->heartbeat_received);
  EXPECT_EQ(after->load->running, 3);
  EXPECT_EQ(after->EstimatedOutstandingTokens(), 500);
  EXPECT_TRUE(after->load->cached_block_hashes.contains(8));
  // The snapshot taken before still sees the old load.
  EXPECT_EQ(before->load->running, 0);

  EXPECT_TRUE(registry.Deregister(second));
  EXPECT_FALSE(registry.Deregister(second));
  EXPECT_EQ(registry.Groups(kStart).size(), 1u);
  EXPECT_TRUE(registry.ExpireDead(kStart + absl::Seconds(1)).empty());
}

TEST(GroupRegistryTest, RejectsRegistrationsWithoutModelEndpointOrBlockSize) {
  GroupRegistry registry;
  GroupInfo no_model = Info("a:1");
  no_model.model.clear();
  EXPECT_TRUE(
      IsError(registry.Register(no_model, kStart), absl::StatusCode::kInvalidArgument, {"model"}));
  GroupInfo no_endpoint = Info("");
  EXPECT_TRUE(IsError(registry.Register(no_endpoint, kStart), absl::StatusCode::kInvalidArgument,
                      {"endpoint"}));
  GroupInfo no_blocks = Info("a:1");
  no_blocks.kv.block_size = 0;
  EXPECT_TRUE(IsError(registry.Register(no_blocks, kStart), absl::StatusCode::kInvalidArgument,
                      {"block_size"}));
  EXPECT_TRUE(registry.Groups(kStart).empty());
}

TEST(GroupRegistryTest, ExpiresAfterThreeMissedIntervalsAndNotBefore) {
  GroupRegistryOptions options;
  options.heartbeat_interval = absl::Seconds(1);
  GroupRegistry registry(options);
  ASSERT_OK_AND_ASSIGN(std::string quiet, registry.Register(Info("a:1"), kStart));
  ASSERT_OK_AND_ASSIGN(std::string chatty, registry.Register(Info("b:1"), kStart));
  const absl::Time last = kStart + absl::Seconds(1);
  ASSERT_TRUE(registry.Heartbeat(quiet, GroupLoad(), last));

  for (int second = 2; second <= 10; ++second) {
    ASSERT_TRUE(registry.Heartbeat(chatty, GroupLoad(), kStart + absl::Seconds(second)));
  }
  // Two intervals late: still registered, still routed to. Later: out of routing.
  EXPECT_TRUE(registry.Get(quiet, last + absl::Seconds(2))->healthy);
  EXPECT_FALSE(registry.Get(quiet, last + absl::Milliseconds(2500))->healthy);
  EXPECT_EQ(registry.HealthyGroups("tiny", "v1", last + absl::Milliseconds(2500)).size(), 1u);
  EXPECT_TRUE(registry.ExpireDead(last + absl::Seconds(2)).empty());
  // Exactly three intervals is not yet "older than three".
  EXPECT_TRUE(registry.ExpireDead(last + absl::Seconds(3)).empty());
  EXPECT_EQ(registry.ExpireDead(last + absl::Seconds(3) + absl::Milliseconds(1)),
            std::vector<std::string>{quiet});
  // Reported once.
  EXPECT_TRUE(registry.ExpireDead(last + absl::Seconds(5)).empty());
  EXPECT_FALSE(registry.Get(quiet, last + absl::Seconds(5)).has_value());
  EXPECT_FALSE(registry.Heartbeat(quiet, GroupLoad(), last + absl::Seconds(5)));
  EXPECT_TRUE(registry.Get(chatty, last + absl::Seconds(5)).has_value());
  // A group that never sends a heartbeat expires three intervals after registering.
  ASSERT_OK_AND_ASSIGN(std::string silent,
                       registry.Register(Info("c:1"), kStart + absl::Seconds(20)));
  ASSERT_TRUE(registry.Heartbeat(chatty, GroupLoad(), kStart + absl::Seconds(23)));
  EXPECT_TRUE(registry.ExpireDead(kStart + absl::Seconds(23)).empty());
  EXPECT_EQ(registry.ExpireDead(kStart + absl::Seconds(24)), std::vector<std::string>{silent});
}

// An engine whose loop stops turning is taken out of routing while its heartbeats go on; it
// comes back once the count moves.
TEST(GroupRegistryTest, AGroupWhoseEngineLoopStandsStillStallsUntilItTurns) {
  GroupRegistryOptions options;
  options.heartbeat_interval = absl::Seconds(1);
  options.engine_stall_after = absl::Seconds(5);
  GroupRegistry registry(options);
  ASSERT_OK_AND_ASSIGN(std::string stuck, registry.Register(Info("a:1"), kStart));
  ASSERT_OK_AND_ASSIGN(std::string turning, registry.Register(Info("b:1"), kStart));
  GroupLoad held;
  held.running = 2;
  held.queued = 1;
  held.engine_turns = 40;
  auto beat = [&](int second) {
    const absl::Time at = kStart + absl::Seconds(second);
    GroupLoad moving;
    moving.engine_turns = 10 * second;
    ASSERT_TRUE(registry.Heartbeat(stuck, held, at));
    ASSERT_TRUE(registry.Heartbeat(turning, moving, at));
  };
  for (int second = 1; second <= 6; ++second) beat(second);
  // The count was last seen moving at the first heartbeat (second 1): five seconds later is
  // not yet "longer than five".
  EXPECT_TRUE(registry.Get(stuck, kStart + absl::Seconds(6))->healthy);
  EXPECT_TRUE(registry.TakeNewlyStalled().empty());
  beat(7);
  std::optional<GroupSnapshot> snapshot = registry.Get(stuck, kStart + absl::Seconds(7));
  EXPECT_FALSE(snapshot->healthy);
  EXPECT_TRUE(snapshot->stalled);
  EXPECT_TRUE(registry.Get(turning, kStart + absl::Seconds(7))->healthy);
  EXPECT_EQ(registry.HealthyGroups("tiny", "v1", kStart + absl::Seconds(7)).size(), 1u);
  std::vector<StalledGroup> stalled = registry.TakeNewlyStalled();
  ASSERT_EQ(stalled.size(), 1u);
  EXPECT_EQ(stalled[0].id, stuck);
  EXPECT_EQ(stalled[0].since_progress, absl::Seconds(6));
  EXPECT_EQ(stalled[0].requests, 3);
  // Reported once per stall; it stays registered (its heartbeats are on time), and an idle
  // load does not clear it: only the count does.
  EXPECT_TRUE(registry.TakeNewlyStalled().empty());
  EXPECT_TRUE(registry.ExpireDead(kStart + absl::Seconds(7)).empty());
  GroupLoad idle;
  idle.engine_turns = 40;
  ASSERT_TRUE(registry.Heartbeat(stuck, idle, kStart + absl::Seconds(8)));
  EXPECT_TRUE(registry.Get(stuck, kStart + absl::Seconds(8))->stalled);
  // A turn: routed to again, and a later stall is reported anew.
  idle.engine_turns = 41;
  ASSERT_TRUE(registry.Heartbeat(stuck, idle, kStart + absl::Seconds(9)));
  EXPECT_TRUE(registry.Get(stuck, kStart + absl::Seconds(9))->healthy);
  EXPECT_FALSE(registry.Get(stuck, kStart + absl::Seconds(9))->stalled);
  ASSERT_TRUE(registry.Heartbeat(stuck, idle, kStart + absl::Seconds(14)));
  EXPECT_TRUE(registry.TakeNewlyStalled().empty());
  ASSERT_TRUE(registry.Heartbeat(stuck, idle, kStart + absl::Seconds(15)));
  // The silent `turning` group is the heartbeat rule's (dead), not stalled.
  std::vector<StalledGroup> again = registry.TakeNewlyStalled();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id, stuck);
  // Without the option no group stalls.
  GroupRegistry lenient;
  ASSERT_OK_AND_ASSIGN(std::string group, lenient.Register(Info("c:1"), kStart));
  ASSERT_TRUE(lenient.Heartbeat(group, held, kStart + absl::Hours(1)));
  ASSERT_TRUE(lenient.Heartbeat(group, held, kStart + absl::Hours(2)));
  EXPECT_TRUE(lenient.Get(group, kStart + absl::Hours(2))->healthy);
  EXPECT_TRUE(lenient.TakeNewlyStalled().empty());
}

// A group whose call failed as a dead group's does leaves routing at once, and comes back
// with its next heartbeat.
TEST(GroupRegistryTest, AFailedCallTakesAGroupOutOfRoutingUntilItsNextHeartbeat) {
  GroupRegistry registry;
  ASSERT_OK_AND_ASSIGN(std::string group, registry.Register(Info("a:1"), kStart));
  ASSERT_TRUE(registry.Heartbeat(group, GroupLoad(), kStart + absl::Milliseconds(100)));
  ASSERT_TRUE(registry.MarkFailed(group, kStart + absl::Milliseconds(200)));
  EXPECT_FALSE(registry.Get(group, kStart + absl::Milliseconds(200))->healthy);
  EXPECT_TRUE(registry.HealthyGroups("tiny", "v1", kStart + absl::Milliseconds(300)).empty());
  ASSERT_TRUE(registry.Heartbeat(group, GroupLoad(), kStart + absl::Milliseconds(400)));
  EXPECT_TRUE(registry.Get(group, kStart + absl::Milliseconds(400))->healthy);
  EXPECT_FALSE(registry.MarkFailed("g404", kStart));
}

TEST(GroupRegistryTest, ARestartedEndpointReplacesItsOldGroupWhichIsReportedDeadOnce) {
  GroupRegistry registry;
  ASSERT_OK_AND_ASSIGN(std::string old_id, registry.Register(Info("a:1"), kStart));
  ASSERT_OK_AND_ASSIGN(std::string new_id, registry.Register(Info("a:1"), kStart));
  EXPECT_NE(old_id, new_id);
  EXPECT_EQ(registry.Groups(kStart).size(), 1u);
  EXPECT_EQ(registry.ExpireDead(kStart), std::vector<std::string>{old_id});
  EXPECT_TRUE(registry.ExpireDead(kStart).empty());
}

TEST(GroupRegistryTest, DispatchedRequestsCountUntilAHeartbeatReportsThem) {
  GroupRegistry registry;
  ASSERT_OK_AND_ASSIGN(std::string id, registry.Register(Info("a:1"), kStart));
  GroupLoad load;
  load.kv_blocks_free = 50;
  load.kv_blocks_total = 100;
  load.outstanding_tokens = 100;
  ASSERT_TRUE(registry.Heartbeat(id, load, kStart));

  EXPECT_TRUE(registry.Dispatched(id, "r1", {.prompt_tokens = 10, .max_tokens = 20}));
  EXPECT_TRUE(registry.Dispatched(id, "r2", {.prompt_tokens = 3, .max_tokens = 7}));
  EXPECT_FALSE(registry.Dispatched("g99", "r3", {.prompt_tokens = 1, .max_tokens = 1}));
  GroupSnapshot group = *registry.Get(id, kStart);
  EXPECT_EQ(group.inflight_requests, 2);
  EXPECT_EQ(group.inflight_tokens, 40);
  EXPECT_EQ(group.EstimatedOutstandingTokens(), 140);
  // ceil((10 + 1) / 4) + ceil((3 + 1) / 4) blocks for the prompts.
  EXPECT_EQ(group.EstimatedFreeBlocks(), 50 - 3 - 1);

  // Done before any heartbeat saw it: no longer counted.
  EXPECT_TRUE(registry.Completed(id, "r2"));
  EXPECT_FALSE(registry.Completed(id, "r2"));
  group = *registry.Get(id, kStart);
  EXPECT_EQ(group.EstimatedOutstandingTokens(), 130);
  EXPECT_EQ(group.EstimatedFreeBlocks(), 47);

  // A heartbeat includes r1 in its own count; completing r1 later changes only the in-flight
  // tally, not the reported load.
  load.outstanding_tokens = 125;
  ASSERT_TRUE(registry.Heartbeat(id, load, kStart + absl::Seconds(1)));
  group = *registry.Get(id, kStart + absl::Seconds(1));
  EXPECT_EQ(group.EstimatedOutstandingTokens(), 125);
  EXPECT_EQ(group.inflight_requests, 1);
  EXPECT_TRUE(registry.Dispatched(id, "r3", {.prompt_tokens = 4, .max_tokens = 4}));
  EXPECT_TRUE(registry.Completed(id, "r1"));
  group = *registry.Get(id, kStart + absl::Seconds(1));
  EXPECT_EQ(group.EstimatedOutstandingTokens(), 125 + 8);
  EXPECT_EQ(group.inflight_requests, 1);
  EXPECT_EQ(group.inflight_tokens, 8);
}

TEST(GroupRegistryTest, SummarizesModelsVersionsAndHealthyGroups) {
  GroupRegistryOptions options;
  options.heartbeat_interval = absl::Seconds(1);
  GroupRegistry registry(options);
  GroupInfo short_context = Info("a:1", "v1");
  short_context.max_model_length = 512;
  ASSERT_OK(registry.Register(short_context, kStart).status());
  ASSERT_OK(registry.Register(Info("b:1", "v1"), kStart).status());
  ASSERT_OK_AND_ASSIGN(std::string canary, registry.Register(Info("c:1", "v2"), kStart));
  GroupInfo other = Info("d:1", "x");
  other.model = "other";
  ASSERT_OK(registry.Register(other, kStart).status());
  const absl::Time later = kStart + absl::Seconds(5);
  for (const GroupSnapshot& group : registry.Groups(kStart)) {
    if (group.id != canary) {
      ASSERT_TRUE(registry.Heartbeat(group.id, GroupLoad(), later));
    }
  }

  std::vector<ModelSummary> models = registry.Models(later);
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].model, "other");
  const ModelSummary& tiny = models[1];
  ASSERT_EQ(tiny.versions.size(), 2u);
  EXPECT_EQ(tiny.versions[0].version, "v1");
  EXPECT_EQ(tiny.versions[0].groups, 2);
  EXPECT_EQ(tiny.versions[0].healthy_groups, 2);
  EXPECT_EQ(tiny.versions[0].max_model_length, 512);
  EXPECT_EQ(tiny.versions[1].version, "v2");
  EXPECT_EQ(tiny.versions[1].groups, 1);
  EXPECT_EQ(tiny.versions[1].healthy_groups, 0);
  EXPECT_EQ(registry.HealthyVersions("tiny", later), std::vector<std::string>{"v1"});
  EXPECT_EQ(registry.HealthyGroups("tiny", "", later).size(), 2u);
  EXPECT_TRUE(registry.HealthyGroups("tiny", "v2", later).empty());
  EXPECT_TRUE(registry.HealthyVersions("absent", later).empty());
}

// --- group choice ---

TEST(RouterTest, LeastLoadPicksTheLessLoadedGroupAndAvoidsFullKv) {
  Router router = RouterWith(RoutingPolicy::kLeastLoad);
  std::vector<GroupSnapshot> groups = {Group("g1", 300), Group("g2", 100), Group("g3", 200)};
  EXPECT_EQ(Choose(router, Request(), groups), "g2");

  // Capacity matters: g1 has four times the KV of the others.
  groups[0].info.kv.blocks = 400;
  auto bigger = std::make_shared<GroupLoad>(*groups[0].load);
  bigger->kv_blocks_total = 400;
  groups[0].load = bigger;
  EXPECT_EQ(Choose(router, Request(), groups), "g1");

  // Without free blocks for the prompt a group is a last resort, however idle.
  std::vector<GroupSnapshot> full = {Group("g1", 0, /*free_blocks=*/2), Group("g2", 5000)};
  EXPECT_EQ(Choose(router, Request(/*prompt_tokens=*/40), full), "g2");
  full[1] = Group("g2", 5000, /*free_blocks=*/0);
  EXPECT_EQ(Choose(router, Request(/*prompt_tokens=*/40), full), "g1");
}

TEST(RouterTest, CandidatesTiedForBestTakeTurns) {
  for (RoutingPolicy policy : {RoutingPolicy::kLeastLoad, RoutingPolicy::kPrefix,
                               RoutingPolicy::kTopology, RoutingPolicy::kCombined}) {
    SCOPED_TRACE(RoutingPolicyName(policy));
    Router router = RouterWith(policy);
    // g1 and g3 alike and idle, g2 busier: six requests go three to each of g1 and g3, in
    // turn, and none to g2.
    const std::vector<GroupSnapshot> groups = {Group("g3", 0), Group("g2", 400), Group("g1", 0)};
    std::map<std::string, int> chosen;
    std::string previous;
    for (int i = 0; i < 6; ++i) {
      ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(Request(), groups));
      EXPECT_NE(decision.group_id, previous) << "request " << i;
      EXPECT_EQ(decision.candidates.front().group_id, decision.group_id);
      EXPECT_EQ(decision.candidates.back().group_id, "g2");
      previous = decision.group_id;
      ++chosen[decision.group_id];
    }
    EXPECT_EQ(chosen, (std::map<std::string, int>{{"g1", 3}, {"g3", 3}}));
  }
}

TEST(RouterTest, PrefixPicksTheLongestCachedLeadingRunAndFallsBackWhenOverloaded) {
  Router router = RouterWith(RoutingPolicy::kPrefix);
  const std::vector<int32_t> prompt = Iota(20);  // 5 blocks of 4
  const std::vector<uint64_t> hashes = engine::PrefixBlockHashes(prompt, 4);
  std::vector<GroupSnapshot> groups = {Group("g1", 100), Group("g2", 120), Group("g3", 0)};
  SetCached(groups[0], {hashes[0], hashes[2], hashes[3], hashes[4]});  // leading run: 1
  SetCached(groups[1], {hashes[0], hashes[1], hashes[2]});             // leading run: 3
  RouteRequest request = Request(0, 10);
  request.HashPrompt(prompt, groups);
  EXPECT_EQ(request.prompt_tokens, 20);

  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(request, groups));
  EXPECT_EQ(decision.group_id, "g2");
  EXPECT_EQ(decision.candidates[0].cached_blocks, 3);
  EXPECT_DOUBLE_EQ(decision.candidates[0].prefix_score, 12.0 / 20.0);

  // g2 overloaded (far above 2 x the least load + slack): the next longest prefix, g1.
  groups[1] = Group("g2", 2000);
  SetCached(groups[1], {hashes[0], hashes[1], hashes[2]});
  ASSERT_OK_AND_ASSIGN(decision, router.Route(request, groups));
  EXPECT_EQ(decision.group_id, "g1");
  EXPECT_TRUE(decision.candidates.back().overloaded);
  // g2 out of KV: overloaded too.
  groups[1] = Group("g2", 0, /*free_blocks=*/0);
  SetCached(groups[1], {hashes[0], hashes[1], hashes[2]});
  EXPECT_EQ(Choose(router, request, groups), "g1");

  // Nobody holds the prefix: least load.
  RouteRequest fresh = Request(0, 10);
  fresh.HashPrompt(Iota(20, 1000), groups);
  EXPECT_EQ(Choose(router, fresh, groups), "g3");
}

TEST(RouterTest, PrefixHashesFollowEachGroupsBlockSize) {
  Router router = RouterWith(RoutingPolicy::kPrefix);
  const std::vector<int32_t> prompt = Iota(32);
  std::vector<GroupSnapshot> groups = {Group("g1", 0), Group("g2", 0)};
  groups[1].info.kv.block_size = 16;
  SetCached(groups[0], {engine::PrefixBlockHashes(prompt, 4)[0]});  // 4 tokens
  SetCached(groups[1], engine::PrefixBlockHashes(prompt, 16));      // 32 tokens
  RouteRequest request = Request(0, 1);
  request.HashPrompt(prompt, groups);
  ASSERT_EQ(request.block_hashes.size(), 2u);
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(request, groups));
  EXPECT_EQ(decision.group_id, "g2");
  EXPECT_EQ(decision.candidates[0].cached_tokens, 32);
  EXPECT_EQ(decision.candidates[1].cached_tokens, 4);
}

TEST(RouterTest, TopologyPrefersZoneThenNodeThenSingleNodeGroups) {
  Router router = RouterWith(RoutingPolicy::kTopology);
  std::vector<GroupSnapshot> groups = {Group("g1", 0), Group("g2", 500), Group("g3", 900)};
  groups[0].info.topology.zone = "zone-2";
  groups[1].info.topology.hosts = {"node-b"};
  groups[2].info.topology.hosts = {"node-c"};
  RouteRequest request = Request();
  request.locality.zone = "zone-1";
  EXPECT_EQ(Choose(router, request, groups), "g2");  // in the zone, less loaded
  request.locality.node = "node-c";
  EXPECT_EQ(Choose(router, request, groups), "g3");  // in the zone and on the node

  // Same zone and node: the group whose all-reduce stays in the node, then lower latency.
  std::vector<GroupSnapshot> tp = {Group("g1", 0), Group("g2", 400), Group("g3", 800)};
  tp[0].info.topology.hosts = {"node-a", "node-b"};
  tp[0].info.topology.interconnect = Interconnect::kMultiNode;
  tp[0].info.topology.allreduce_latency_seconds = 5e-6;  // fastest, but across nodes
  tp[1].info.topology.interconnect = Interconnect::kPcie;
  tp[1].info.topology.allreduce_latency_seconds = 30e-6;
  tp[2].info.topology.interconnect = Interconnect::kNvlink;
  tp[2].info.topology.allreduce_latency_seconds = 10e-6;
  RouteRequest local = Request();
  local.locality = {"zone-1", "node-a"};
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(local, tp));
  EXPECT_EQ(decision.group_id, "g3");
  EXPECT_EQ(decision.candidates.back().group_id, "g1");
  EXPECT_TRUE(decision.candidates.back().multi_node);
}

TEST(RouterTest, CombinedWithoutHintsOrCachedPrefixIsLeastLoad) {
  Router combined = RouterWith(RoutingPolicy::kCombined);
  Router least = RouterWith(RoutingPolicy::kLeastLoad);
  uint64_t state = 12345;
  auto next = [&state](int bound) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<int>((state >> 33) % static_cast<uint64_t>(bound));
  };
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<GroupSnapshot> groups;
    const int count = 2 + next(5);
    for (int i = 0; i < count; ++i) {
      groups.push_back(Group(absl::StrCat("g", i + 1), next(600), next(30)));
      groups.back().info.topology.zone = absl::StrCat("zone-", next(3));
    }
    RouteRequest request = Request(1 + next(60), next(100));
    request.HashPrompt(Iota(static_cast<int>(request.prompt_tokens)), groups);
    ASSERT_EQ(Choose(combined, request, groups), Choose(least, request, groups)) << trial;
  }
}

TEST(RouterTest, CombinedWeighsPrefixAndZoneAgainstLoad) {
  Router router;  // combined, default weights
  const std::vector<int32_t> prompt = Iota(40);
  std::vector<GroupSnapshot> groups = {Group("g1", 0), Group("g2", 60)};
  SetCached(groups[1], engine::PrefixBlockHashes(prompt, 4));
  RouteRequest request = Request(0, 0);
  request.HashPrompt(prompt, groups);
  EXPECT_EQ(Choose(router, request, groups), "g2");  // whole prompt cached, lightly loaded

  RouteRequest zoned = Request(10, 10);
  groups = {Group("g1", 0), Group("g2", 80)};
  groups[0].info.topology.zone = "zone-9";
  zoned.locality.zone = "zone-1";
  EXPECT_EQ(Choose(router, zoned, groups), "g2");  // in the zone at f = 0.25
  groups[1] = Group("g2", 300);
  EXPECT_EQ(Choose(router, zoned, groups), "g1");  // at f = 0.8 the other zone wins
}

TEST(RouterTest, ExplanationNamesEveryPart) {
  Router router;
  std::vector<GroupSnapshot> groups = {Group("g1", 10), Group("g2", 20)};
  GroupSnapshot other = Group("g3", 0);
  other.info.version = "v2";
  groups.push_back(other);
  RouteRequest request = Request();
  request.version = "v1";
  ASSERT_OK_AND_ASSIGN(RouteDecision decision, router.Route(request, groups));
  EXPECT_EQ(decision.group_id, "g1");
  ASSERT_EQ(decision.candidates.size(), 2u);
  EXPECT_GT(decision.candidates[0].total, decision.candidates[1].total);
  const std::string text = decision.Explain();
  for (const char* part : {"combined", "chose g1", "g2[",
                           "load=", "prefix=", "topology=", "fabric=", "total=", "g3[excluded"}) {
    EXPECT_TRUE(Contains(text, part));
  }
}

TEST(RouterTest, NoCandidateIsUnavailableAndAnOverlongPromptIsInvalid) {
  Router router;
  EXPECT_TRUE(IsError(router.Route(Request(), {}), absl::StatusCode::kUnavailable, {"tiny"}));
  GroupSnapshot other = Group("g1", 0);
  other.info.model = "other";
  EXPECT_TRUE(IsError(router.Route(Request(), {other}), absl::StatusCode::kUnavailable));
  EXPECT_TRUE(IsError(router.Route(Request(/*prompt_tokens=*/1024), {Group("g1", 0)}),
                      absl::StatusCode::kInvalidArgument, {"1024"}));
  EXPECT_TRUE(router.Route(Request(/*prompt_tokens=*/1023), {Group("g1", 0)}).ok());
}

TEST(RouterTest, ParsesPolicyNames) {
  for (RoutingPolicy policy : {RoutingPolicy::kLeastLoad, RoutingPolicy::kPrefix,
                               RoutingPolicy::kTopology, RoutingPolicy::kCombined}) {
    ASSERT_OK_AND_ASSIGN(RoutingPolicy parsed, ParseRoutingPolicy(RoutingPolicyName(policy)));
    EXPECT_EQ(parsed, policy);
  }
  EXPECT_TRUE(
      IsError(ParseRoutingPolicy("random"), absl::StatusCode::kInvalidArgument, {"random"}));
}

// --- versions ---

TEST(VersionTest, WeightsSplitSessionlessRequestsWithinTwoPoints) {
  Router router;
  ASSERT_OK(router.SetVersionWeights("tiny", {{"v1", 95}, {"v2", 5}}));
  const std::vector<std::string> available = {"v1", "v2"};
  int canary = 0;
  for (int i = 0; i < 1000; ++i) {
    canary += Pick(router, "tiny", "", available) == "v2";
  }
  EXPECT_GE(canary, 30);
  EXPECT_LE(canary, 70);

  // Sessions follow the weights statistically (a hash each, so binomial noise: sd 0.7 points).
  int canary_sessions = 0;
  for (int i = 0; i < 1000; ++i) {
    canary_sessions += Pick(router, "tiny", absl::StrCat("session-", i), available) == "v2";
  }
  EXPECT_GE(canary_sessions, 20);
  EXPECT_LE(canary_sessions, 80);

  std::map<std::string, double> shares = router.VersionShares("tiny", available);
  EXPECT_DOUBLE_EQ(shares["v2"], 0.05);
}

TEST(VersionTest, SessionsStayOnOneVersion) {
  Router router;
  ASSERT_OK(router.SetVersionWeights("tiny", {{"v1", 50}, {"v2", 50}}));
  const std::vector<std::string> available = {"v1", "v2"};
  std::map<std::string, int> first_choice;
  for (int session = 0; session < 50; ++session) {
    const std::string id = absl::StrCat("user-", session);
    const std::string first = Pick(router, "tiny", id, available);
    ++first_choice[first];
    for (int again = 0; again < 20; ++again) {
      // Sessionless requests in between move the counter, not the session.
      ASSERT_OK(router.ChooseVersion("tiny", "", "", available).status());
      ASSERT_EQ(Pick(router, "tiny", id, available), first) << id;
    }
    // The same in another coordinator process (a fresh router).
    Router other;
    ASSERT_OK(other.SetVersionWeights("tiny", {{"v1", 50}, {"v2", 50}}));
    EXPECT_EQ(Pick(other, "tiny", id, available), first);
  }
  EXPECT_EQ(first_choice.size(), 2u);  // sessions spread over both versions
}

TEST(VersionTest, NamedVersionsAreHonoredAndVersionsWithoutHealthyGroupsSkipped) {
  Router router;
  ASSERT_OK(router.SetVersionWeights("tiny", {{"v1", 95}, {"v2", 5}}));
  ASSERT_OK_AND_ASSIGN(std::string named, router.ChooseVersion("tiny", "v2", "s", {"v1"}));
  EXPECT_EQ(named, "v2");
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(Pick(router, "tiny", "", {"v2"}), "v2");
    // v3 has no weight, v2 no healthy group.
    ASSERT_EQ(Pick(router, "tiny", absl::StrCat("s", i), {"v1", "v3"}), "v1");
  }
  EXPECT_TRUE(IsError(router.ChooseVersion("tiny", "", "", {"v3"}), absl::StatusCode::kUnavailable,
                      {"tiny", "v3"}));
  EXPECT_TRUE(IsError(router.ChooseVersion("tiny", "", "", {}), absl::StatusCode::kUnavailable));
  // A model without weights: equal shares among the versions it has.
  int a = 0;
  for (int i = 0; i < 1000; ++i) {
    a += Pick(router, "other", "", {"a", "b"}) == "a";
  }
  EXPECT_NEAR(a, 500, 20);
}

TEST(VersionTest, ParsesWeightFlags) {
  ASSERT_OK_AND_ASSIGN(ModelVersionWeights weights,
                       ParseVersionWeights("tiny=v1:95,v2:5; other = a:50 , b:50.5;"));
  ASSERT_EQ(weights.size(), 2u);
  EXPECT_EQ(weights["tiny"], (VersionWeights{{"v1", 95}, {"v2", 5}}));
  EXPECT_EQ(weights["other"], (VersionWeights{{"a", 50}, {"b", 50.5}}));
  ASSERT_OK_AND_ASSIGN(ModelVersionWeights none, ParseVersionWeights(""));
  EXPECT_TRUE(none.empty());
  Router router;
  ASSERT_OK(router.SetAllVersionWeights(weights));
  EXPECT_EQ(router.VersionWeightsFor("tiny").size(), 2u);
  EXPECT_TRUE(router.VersionWeightsFor("absent").empty());

  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny"), kInvalid, {"\"tiny\"", "model="}));
  EXPECT_TRUE(
      IsError(ParseVersionWeights("tiny=v1:95,v2"), kInvalid, {"\"v2\"", "version:weight"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=v1:x"), kInvalid, {"v1", "\"x\""}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=v1:-5"), kInvalid, {"v1", "-5"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=v1:inf"), kInvalid, {"v1"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=v1:0,v2:0"), kInvalid, {"tiny", "0"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("=v1:1"), kInvalid, {"empty model"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=:1"), kInvalid, {"empty version"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=v1:1,v1:2"), kInvalid, {"v1", "twice"}));
  EXPECT_TRUE(IsError(ParseVersionWeights("tiny=v1:1;tiny=v2:1"), kInvalid, {"tiny", "twice"}));
  EXPECT_TRUE(IsError(router.SetVersionWeights("tiny", {{"v1", -1}}), kInvalid, {"v1"}));
}

// --- tenants ---

TenantQuotaConfig AcmeConfig() {
  TenantQuotaConfig config;
  config.tenants["acme"] = {TenantPriority::kHigh, /*tokens_per_second=*/100, /*burst=*/200};
  return config;
}

TEST(TenantQuotaTest, TokenBucketRefillsAtTheRateUpToTheBurst) {
  TenantQuotas quotas(AcmeConfig());
  EXPECT_OK(quotas.Admit("acme", 150, kStart));
  EXPECT_DOUBLE_EQ(quotas.Available("acme", kStart), 50);
  absl::Status refused = quotas.Admit("acme", 100, kStart);
  EXPECT_TRUE(IsError(refused, absl::StatusCode::kResourceExhausted,
                      {"acme", "100 tokens/s", "burst 200", "retry in 500ms"}));
  // Half a second later: 50 + 50 tokens.
  EXPECT_DOUBLE_EQ(quotas.Available("acme", kStart + absl::Milliseconds(500)), 100);
  EXPECT_OK(quotas.Admit("acme", 100, kStart + absl::Milliseconds(500)));
  EXPECT_DOUBLE_EQ(quotas.Available("acme", kStart + absl::Milliseconds(500)), 0);
  EXPECT_DOUBLE_EQ(quotas.Available("acme", kStart + absl::Milliseconds(750)), 25);
  // Never more than the burst.
  EXPECT_DOUBLE_EQ(quotas.Available("acme", kStart + absl::Seconds(60)), 200);

  // Larger than the burst: only from a full bucket, which goes into debt.
  const absl::Time full = kStart + absl::Seconds(60);
  EXPECT_OK(quotas.Admit("acme", 500, full));
  EXPECT_DOUBLE_EQ(quotas.Available("acme", full), -300);
  EXPECT_TRUE(IsError(quotas.Admit("acme", 1, full + absl::Seconds(3)),
                      absl::StatusCode::kResourceExhausted, {"retry in 10ms"}));
  EXPECT_OK(quotas.Admit("acme", 1, full + absl::Seconds(3) + absl::Milliseconds(10)));
  EXPECT_TRUE(IsError(quotas.Admit("acme", 500, full + absl::Seconds(4)),
                      absl::StatusCode::kResourceExhausted));

  // Unused tokens come back, up to the burst.
  quotas.Refund("acme", 1000, full + absl::Seconds(4));
  EXPECT_DOUBLE_EQ(quotas.Available("acme", full + absl::Seconds(4)), 200);
}

TEST(TenantQuotaTest, UnknownTenantsGetTheDefaultsWithTheirOwnBucket) {
  TenantQuotaConfig config = AcmeConfig();
  config.default_settings = {TenantPriority::kLow, /*tokens_per_second=*/10, /*burst=*/0};
  TenantQuotaOptions options;
  options.max_unconfigured_tenants = 2;
  TenantQuotas quotas(config, options);
  EXPECT_EQ(quotas.PriorityOf("acme"), TenantPriority::kHigh);
  EXPECT_EQ(quotas.PriorityOf("stranger"), TenantPriority::kLow);
  EXPECT_DOUBLE_EQ(quotas.SettingsOf("stranger").burst, 10);  // one second of the rate
  EXPECT_OK(quotas.Admit("stranger", 10, kStart));
  EXPECT_TRUE(IsError(quotas.Admit("stranger", 1, kStart), absl::StatusCode::kResourceExhausted,
                      {"stranger", "10 tokens/s"}));
  EXPECT_OK(quotas.Admit("passer-by", 10, kStart));  // a bucket of its own
  // Past the limit on tracked names, newcomers share "default".
  EXPECT_OK(quotas.Admit("third", 10, kStart));
  EXPECT_TRUE(IsError(quotas.Admit("fourth", 1, kStart), absl::StatusCode::kResourceExhausted));

  // Without a rate there is no limit.
  TenantQuotas unlimited;
  EXPECT_OK(unlimited.Admit("anyone", 1'000'000'000, kStart));
  EXPECT_TRUE(std::isinf(unlimited.Available("anyone", kStart)));
}

TEST(TenantQuotaTest, CountsAdmittedAndChargedTokensPerTenant) {
  TenantQuotas quotas(AcmeConfig());
  EXPECT_OK(quotas.Admit("acme", 120, kStart));
  EXPECT_FALSE(quotas.Admit("acme", 120, kStart).ok());
  quotas.Charge("acme", 20, 80);
  quotas.Charge("acme", 5, 5);
  quotas.Charge("default", 1, 2);
  std::vector<TenantUsage> usage = quotas.Usage();
  ASSERT_EQ(usage.size(), 2u);
  EXPECT_EQ(usage[0].tenant, "acme");
  EXPECT_EQ(usage[0].priority, TenantPriority::kHigh);
  EXPECT_EQ(usage[0].admitted_requests, 1);
  EXPECT_EQ(usage[0].rejected_requests, 1);
  EXPECT_EQ(usage[0].admitted_tokens, 120);
  EXPECT_EQ(usage[0].prompt_tokens, 25);
  EXPECT_EQ(usage[0].completion_tokens, 85);
  EXPECT_EQ(usage[1].tenant, "default");
  EXPECT_EQ(usage[1].completion_tokens, 2);
}

TEST(TenantQuotaTest, ParsesTheJsonConfiguration) {
  ASSERT_OK_AND_ASSIGN(TenantQuotaConfig config, ParseTenantQuotaConfigJson(R"({
      "default": {"priority": "normal", "tokens_per_second": 0, "burst": 0},
      "tenants": {"acme": {"priority": "high", "tokens_per_second": 5000, "burst": 20000},
                  "beta": {"priority": "low"}}})"));
  EXPECT_EQ(config.default_settings.priority, TenantPriority::kNormal);
  ASSERT_EQ(config.tenants.size(), 2u);
  EXPECT_EQ(config.tenants["acme"].priority, TenantPriority::kHigh);
  EXPECT_EQ(config.tenants["acme"].tokens_per_second, 5000);
  EXPECT_EQ(config.tenants["acme"].burst, 20000);
  EXPECT_EQ(config.tenants["beta"].priority, TenantPriority::kLow);
  EXPECT_EQ(config.tenants["beta"].tokens_per_second, 0);

  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(IsError(ParseTenantQuotaConfigJson("{", "t.json"), kInvalid, {"t.json", "JSON"}));
  EXPECT_TRUE(IsError(ParseTenantQuotaConfigJson(R"({"tenant": {}})"), kInvalid, {"tenant"}));
  EXPECT_TRUE(IsError(
      ParseTenantQuotaConfigJson(R"({"tenants": {"acme": {"priority": "urgent"}}})", "t.json"),
      kInvalid, {"t.json", "acme", "priority", "urgent"}));
  EXPECT_TRUE(
      IsError(ParseTenantQuotaConfigJson(R"({"tenants": {"acme": {"tokens_per_second": -1}}})"),
              kInvalid, {"acme", "tokens_per_second", "-1"}));
  EXPECT_TRUE(IsError(ParseTenantQuotaConfigJson(R"({"tenants": {"acme": {"burst": "big"}}})"),
                      kInvalid, {"acme", "burst", "string"}));
  EXPECT_TRUE(IsError(ParseTenantQuotaConfigJson(R"({"tenants": {"acme": {"rate": 5}}})"), kInvalid,
                      {"acme", "rate", "unknown field"}));
  EXPECT_TRUE(IsError(ParseTenantQuotaConfigJson(R"({"default": {"priority": 1}})"), kInvalid,
                      {"default", "priority"}));
  EXPECT_TRUE(IsError(ParseTenantQuotaConfigJson(R"({"tenants": {"default": {}}})"), kInvalid,
                      {"default"}));
  EXPECT_TRUE(IsError(LoadTenantQuotaConfigFile("/nonexistent/tenants.json"),
                      absl::StatusCode::kNotFound, {"tenants.json"}));
}

TEST(TenantQuotaTest, ParsesTheFlag) {
  TenantQuotaConfig config = AcmeConfig();
  ASSERT_OK(
      AddTenantQuotasFromFlag("acme=normal:5000:20000, beta=low:100:1000,gamma=high,"
                              "default=low:7",
                              &config));
  EXPECT_EQ(config.tenants["acme"].priority, TenantPriority::kNormal);
  EXPECT_EQ(config.tenants["acme"].tokens_per_second, 5000);
  EXPECT_EQ(config.tenants["beta"].burst, 1000);
  // Fields left out come from the default, whatever the order of the entries.
  EXPECT_EQ(config.tenants["gamma"].priority, TenantPriority::kHigh);
  EXPECT_EQ(config.tenants["gamma"].tokens_per_second, 7);
  EXPECT_EQ(config.default_settings.priority, TenantPriority::kLow);

  const TenantQuotaConfig before = config;
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(IsError(AddTenantQuotasFromFlag("acme", &config), kInvalid, {"acme", "NAME="}));
  EXPECT_TRUE(IsError(AddTenantQuotasFromFlag("zeta=low:1:1,acme=high:fast:1", &config), kInvalid,
                      {"acme", "tokens_per_second", "fast"}));
  EXPECT_TRUE(IsError(AddTenantQuotasFromFlag("acme=high:1:-2", &config), kInvalid,
                      {"acme", "burst", "-2"}));
  EXPECT_TRUE(IsError(AddTenantQuotasFromFlag("acme=top:1:1", &config), kInvalid,
                      {"acme", "priority", "top"}));
  EXPECT_TRUE(
      IsError(AddTenantQuotasFromFlag("acme=high:1:1:1", &config), kInvalid, {"acme", "too many"}));
  EXPECT_TRUE(
      IsError(AddTenantQuotasFromFlag("acme=high,acme=low", &config), kInvalid, {"acme", "twice"}));
  EXPECT_TRUE(IsError(AddTenantQuotasFromFlag("=high", &config), kInvalid, {"empty tenant"}));
  EXPECT_EQ(config.tenants.size(), before.tenants.size());
  EXPECT_FALSE(config.tenants.contains("zeta"));  // a failed flag changes nothing
}

}  // namespace
}  // namespace tessera::serve
