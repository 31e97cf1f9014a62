#ifndef TESSERA_RUNTIME_SERVE_GROUP_REGISTRY_H_
#define TESSERA_RUNTIME_SERVE_GROUP_REGISTRY_H_

// The coordinator's registry of worker groups: what each group serves (model, version), where
// it runs (topology), what it holds (KV capacity), its load as of its last heartbeat plus
// the requests the coordinator has sent it since, and the LoRA adapters it can run (as of its
// last heartbeat, or its registration before the first, plus those the coordinator has loaded
// or unloaded on it since). A group that misses heartbeats is first taken out of routing and
// then declared dead. A group whose engine's loop has stood still for a while (its heartbeats
// carry the loop's turn count) is stalled: taken out of routing until the loop turns again.
//
// Plain C++ types, no protobuf: the coordinator's gRPC service converts from worker.proto.
// Every call takes the current time, so tests control the clock. Thread-safe.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::serve {

// How the ranks of a group reach each other for their all-reduce; mirrors
// tessera.v1.Interconnect value for value.
enum class Interconnect {
  kUnspecified = 0,
  kSingleDevice = 1,  // TP = 1: no all-reduce
  kNvlink = 2,        // GPUs with peer access inside one node
  kPcie = 3,          // GPUs without peer access inside one node
  kHostMemory = 4,    // CPU ranks inside one node
  kMultiNode = 5,     // the group spans nodes
};

// "single-device", "nvlink", ... for logs.
absl::string_view InterconnectName(Interconnect interconnect);

struct GroupTopology {
  std::vector<std::string> hosts;  // the hosts of the group's ranks, leader's first
  int tp = 1;
  std::string zone;  // a label: rack, zone, region
  Interconnect interconnect = Interconnect::kUnspecified;
  double allreduce_latency_seconds = 0;  // median, measured at start-up; 0 when none
};

struct KvCapacity {
  int block_size = 16;  // tokens per block
  int blocks = 0;
  int64_t bytes_per_token = 0;  // per rank
};

// What a group registers with.
struct GroupInfo {
  std::string name;      // for logs
  std::string endpoint;  // host:port of the leader's Worker service
  std::string metrics_endpoint;
  std::string model;
  std::string version;
  GroupTopology topology;
  KvCapacity kv;
  int64_t max_model_length = 0;  // 0: unknown
  int max_running = 0;
  // The job (one mpirun) it runs in with others, whose groups start a fine-tune together;
  // empty (and 1) when it is its job's only group.
  std::string job_id;
  int job_groups = 1;
};

// An adapter a group can run requests with.
struct GroupAdapter {
  std::string name;
  std::string dir;
  bool resident = false;  // in memory now; otherwise loaded when a request needs it
};

// A group's load as its heartbeat reports it.
struct GroupLoad {
  int running = 0;
  int queued = 0;
  int kv_blocks_free = 0;  // free or reusable (cached and unreferenced)
  int kv_blocks_total = 0;
  int64_t outstanding_tokens = 0;  // prompt and output tokens still to compute
  double output_tokens_per_second = 0;
  int64_t engine_turns = 0;  // turns of the group's engine loop so far (steps, idle wake-ups)
  // Prefix hashes (runtime/engine/prefix_hash.h) of the full blocks the group's cache holds.
  absl::flat_hash_set<uint64_t> cached_block_hashes;
  // The LoRA adapters it can run, with what the coordinator has loaded and unloaded on it
  // since (GroupRegistry::NoteAdapterLoaded).
  std::vector<GroupAdapter> adapters;

  // The adapter named `name`; null when the group cannot run it.
  const GroupAdapter* FindAdapter(absl::string_view name) const;
};

// What the coordinator expects a request to cost the group it sends it to.
struct RequestCost {
  int64_t prompt_tokens = 0;
  int64_t max_tokens = 0;
};

// One group as of one moment. Cheap to copy: the last heartbeat's load is shared, not copied.
struct GroupSnapshot {
  std::string id;
  uint64_t sequence = 0;  // registration order
  GroupInfo info;
  // Never null. Before the first heartbeat: idle, every KV block free, the adapters it
  // registered with.
  std::shared_ptr<const GroupLoad> load;
  absl::Time registered_at;
  absl::Time last_heartbeat;  // the registration counts as the first
  bool heartbeat_received = false;
  // Heartbeats are recent enough and the engine is not stalled: the group is routed to (see
  // GroupRegistryOptions).
  bool healthy = false;
  bool stalled = false;

  // The coordinator's own accounting, current between heartbeats.
  int64_t inflight_requests = 0;  // dispatched and not completed
  int64_t inflight_tokens = 0;    // their prompt + max_tokens
  // Dispatched after the last heartbeat was received and not completed: work the load above
  // does not show yet. Blocks count each prompt's blocks plus one.
  int64_t unreported_tokens = 0;
  int64_t unreported_blocks = 0;

  // Tokens the group has still to compute: the heartbeat's count plus the unreported ones.
  int64_t EstimatedOutstandingTokens() const;
  // KV blocks the heartbeat reported free, less those the unreported requests will take.
  int64_t EstimatedFreeBlocks() const;
  int64_t TotalBlocks() const;  // from the heartbeat, else from the registration
  // Tokens the group's KV cache holds when full (at least 1).
  int64_t KvTokenCapacity() const;
  // The TP all-reduce crosses nodes: interconnect multi-node, or ranks on several hosts.
  bool MultiNode() const;
  // Leader's host; empty when the group named none.
  absl::string_view LeaderHost() const;
};

struct VersionSummary {
  std::string version;
  int groups = 0;
  int healthy_groups = 0;
  // The smallest max_model_length among the version's healthy groups (among all its groups
  // when none is healthy): a request that fits it fits any group. 0 when unknown.
  int64_t max_model_length = 0;
};

struct ModelSummary {
  std::string model;
  std::vector<VersionSummary> versions;  // by version name
};

struct GroupRegistryOptions {
  // The interval groups are told to send heartbeats at.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A group whose last heartbeat is older than this many intervals is not routed to (it
  // stays registered and may recover).
  double unhealthy_after_intervals = 2;
  // Older than this many intervals: dead; ExpireDead removes it.
  double dead_after_intervals = 3;
  // A group whose heartbeats show the same engine turn count for longer than this (from the
  // first heartbeat with that count to the last) is stalled: not routed to until its count
  // moves. Longer than the longest step. Zero: never.
  absl::Duration engine_stall_after = absl::ZeroDuration();
};

// A group that has just stalled (GroupRegistry::TakeNewlyStalled).
struct StalledGroup {
  std::string id;
  absl::Duration since_progress;  // its heartbeats showed no turn for this long
  int requests = 0;               // running and queued, as its last heartbeat said
};

class GroupRegistry {
 public:
  explicit GroupRegistry(GroupRegistryOptions options = {});

  const GroupRegistryOptions& options() const { return options_; }

  // Adds a group and returns its id ("g1", "g2", ...; never reused). INVALID_ARGUMENT naming
  // the field when the model, endpoint or KV block size is missing. A group registering with
  // the endpoint of a registered group replaces it (the process behind the endpoint restarted):
  // the old id is reported by the next ExpireDead. `adapters`: those it registers with (its
  // own), its load's until its first heartbeat says otherwise.
  absl::StatusOr<std::string> Register(GroupInfo info, absl::Time now,
                                       std::vector<GroupAdapter> adapters = {});

  // Records a heartbeat. False when the id is unknown (expired or never registered): the
  // group should register again.
  bool Heartbeat(absl::string_view id, GroupLoad load, absl::Time now);

  // Removes a group that leaves on its own; false when unknown. Its id is not reported by
  // ExpireDead.
  bool Deregister(absl::string_view id);

  // Removes the groups whose last heartbeat is older than dead_after_intervals heartbeat
  // intervals and returns their ids, each once: first the groups replaced since the last call,
  // then the expired ones in registration order. The caller re-dispatches the requests it had
  // sent them.
  std::vector<std::string> ExpireDead(absl::Time now);

  // A call to group `id` failed the way a dead group's does (UNAVAILABLE: refused, reset):
  // it is not routed to until a heartbeat received after `now` shows it alive, instead of
  // drawing requests until its heartbeats time out. False when the id is unknown.
  bool MarkFailed(absl::string_view id, absl::Time now);

  // The groups that have stalled since they last made progress, each reported once per stall
  // (again only after it stepped and stalled anew), in registration order. The caller ends or
  // moves the requests it had sent them.
  std::vector<StalledGroup> TakeNewlyStalled();

  // The coordinator sent request `request_id` to group `id` / the request ended there (done,
  // failed or cancelled). Keeps the group's load current between heartbeats. False when the
  // group (or, for Completed, the request on it) is unknown. Dispatching an id twice to one
  // group replaces the first.
  bool Dispatched(absl::string_view id, absl::string_view request_id, RequestCost cost);
  bool Completed(absl::string_view id, absl::string_view request_id);

  // The coordinator loaded `adapter` on group `id` / unloaded adapter `name` from it. Its
  // load shows the change at once, and so do its later heartbeats until one shows it too: a
  // heartbeat sent before the call may arrive after it. False when the group is unknown.
  bool NoteAdapterLoaded(absl::string_view id, GroupAdapter adapter);
  bool NoteAdapterUnloaded(absl::string_view id, absl::string_view name);

  std::optional<GroupSnapshot> Get(absl::string_view id, absl::Time now) const;
  // Every registered group, in registration order.
  std::vector<GroupSnapshot> Groups(absl::Time now) const;
  // The healthy groups serving `model` at `version` (any version when empty), in
  // registration order.
  std::vector<GroupSnapshot> HealthyGroups(absl::string_view model, absl::string_view version,
                                           absl::Time now) const;
  // The versions of `model` with at least one healthy group (one that can run `adapter`, when
  // named), by name.
  std::vector<std::string> HealthyVersions(absl::string_view model, absl::Time now,
                                           absl::string_view adapter = "") const;
  // Every model with a registered group, by name.
  std::vector<ModelSummary> Models(absl::Time now) const;

 private:
  struct Group {
    std::string id;
    uint64_t sequence = 0;
    GroupInfo info;
    std::shared_ptr<const GroupLoad> load;
    absl::Time registered_at;
    absl::Time last_heartbeat;
    bool heartbeat_received = false;
    uint64_t heartbeats = 0;  // received so far; tags dispatches
    // The engine's turn count as last reported, and when it last moved.
    int64_t engine_turns = -1;
    absl::Time progress_at;
    bool stall_reported = false;
    absl::Time failed_at = absl::InfinitePast();  // MarkFailed
    // Adapters loaded (a value) or unloaded (none) by the coordinator that no heartbeat has
    // shown yet, by name.
    absl::flat_hash_map<std::string, std::optional<GroupAdapter>> adapter_changes;
    struct Inflight {
      RequestCost cost;
      int64_t blocks = 0;
      uint64_t heartbeats_before = 0;  // heartbeats received before the dispatch
    };
    absl::flat_hash_map<std::string, Inflight> inflight;
    int64_t inflight_tokens = 0;
    int64_t unreported_tokens = 0;
    int64_t unreported_blocks = 0;
  };

  bool Healthy(const Group& group, absl::Time now) const;
  bool Stalled(const Group& group) const;
  GroupSnapshot SnapshotOf(const Group& group, absl::Time now) const;
  static void Forget(Group& group, const Group::Inflight& request);
  // Records a change of one adapter on `group` and applies it to its load.
  static void NoteAdapterChange(Group& group, const std::string& name,
                                std::optional<GroupAdapter> adapter);

  const GroupRegistryOptions options_;
  mutable absl::Mutex mutex_;
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_) = 1;
  absl::flat_hash_map<std::string, Group> groups_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> replaced_ ABSL_GUARDED_BY(mutex_);  // for the next ExpireDead
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_GROUP_REGISTRY_H_
