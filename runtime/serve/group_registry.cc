#include "runtime/serve/group_registry.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::serve {
namespace {

bool BySequence(const GroupSnapshot& a, const GroupSnapshot& b) { return a.sequence < b.sequence; }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// `adapters` with adapter `name` as `change` says: loaded (in its place, else at the end) or,
// for none, unloaded.
void ApplyAdapterChange(std::vector<GroupAdapter>& adapters, const std::string& name,
                        const std::optional<GroupAdapter>& change) {
  auto held = std::find_if(adapters.begin(), adapters.end(),
                           [&](const GroupAdapter& adapter) { return adapter.name == name; });
  if (!change.has_value()) {
    if (held != adapters.end()) adapters.erase(held);
  } else if (held != adapters.end()) {
    *held = *change;
  } else {
    adapters.push_back(*change);
  }
}

// `adapters` (a heartbeat's) already show `change` to adapter `name`.
bool ShowsAdapterChange(const std::vector<GroupAdapter>& adapters, const std::string& name,
                        const std::optional<GroupAdapter>& change) {
  auto held = std::find_if(adapters.begin(), adapters.end(),
                           [&](const GroupAdapter& adapter) { return adapter.name == name; });
  if (!change.has_value()) return held == adapters.end();
  return held != adapters.end() && held->dir == change->dir;
}

}  // namespace

const GroupAdapter* GroupLoad::FindAdapter(absl::string_view name) const {
  for (const GroupAdapter& adapter : adapters) {
    if (adapter.name == name) return &adapter;
  }
  return nullptr;
}

absl::string_view InterconnectName(Interconnect interconnect) {
  switch (interconnect) {
    case Interconnect::kUnspecified:
      return "unspecified";
    case Interconnect::kSingleDevice:
      return "single-device";
    case Interconnect::kNvlink:
      return "nvlink";
    case Interconnect::kPcie:
      return "pcie";
    case Interconnect::kHostMemory:
      return "host-memory";
    case Interconnect::kMultiNode:
      return "multi-node";
  }
  return "unknown";
}

int64_t GroupSnapshot::EstimatedOutstandingTokens() const {
  return load->outstanding_tokens + unreported_tokens;
}

int64_t GroupSnapshot::EstimatedFreeBlocks() const {
  return std::max<int64_t>(0, load->kv_blocks_free - unreported_blocks);
}

int64_t GroupSnapshot::TotalBlocks() const {
  return load->kv_blocks_total > 0 ? load->kv_blocks_total : info.kv.blocks;
}

int64_t GroupSnapshot::KvTokenCapacity() const {
  return std::max<int64_t>(1, TotalBlocks() * std::max(info.kv.block_size, 1));
}

bool GroupSnapshot::MultiNode() const {
  if (info.topology.interconnect == Interconnect::kMultiNode) return true;
  const std::vector<std::string>& hosts = info.topology.hosts;
  return std::any_of(hosts.begin(), hosts.end(),
                     [&](const std::string& host) { return host != hosts.front(); });
}

absl::string_view GroupSnapshot::LeaderHost() const {
  return info.topology.hosts.empty() ? absl::string_view() : info.topology.hosts.front();
}

GroupRegistry::GroupRegistry(GroupRegistryOptions options) : options_(options) {}

absl::StatusOr<std::string> GroupRegistry::Register(GroupInfo info, absl::Time now,
                                                    std::vector<GroupAdapter> adapters) {
  if (info.model.empty()) return absl::InvalidArgumentError("register: model is empty");
  if (info.endpoint.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("register: endpoint is empty (model ", info.model, ")"));
  }
  if (info.kv.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("register: kv.block_size must be positive, got ",
                                                   info.kv.block_size, " (", info.endpoint, ")"));
  }
  if (info.kv.blocks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("register: kv.blocks must not be negative, got ",
                                                   info.kv.blocks, " (", info.endpoint, ")"));
  }
  absl::MutexLock lock(&mutex_);
  for (auto it = groups_.begin(); it != groups_.end();) {
    if (it->second.info.endpoint == info.endpoint) {
      replaced_.push_back(it->first);
      groups_.erase(it++);
    } else {
      ++it;
    }
  }
  Group group;
  group.sequence = next_sequence_++;
  group.id = absl::StrCat("g", group.sequence);
  auto load = std::make_shared<GroupLoad>();
  load->kv_blocks_free = info.kv.blocks;
  load->kv_blocks_total = info.kv.blocks;
  load->adapters = std::move(adapters);
  group.load = std::move(load);
  group.info = std::move(info);
  group.registered_at = now;
  group.last_heartbeat = now;
  group.progress_at = now;
  std::string id = group.id;
  groups_.emplace(id, std::move(group));
  return id;
}

bool GroupRegistry::Heartbeat(absl::string_view id, GroupLoad load, absl::Time now) {
  const int64_t turns = load.engine_turns;
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return false;
  Group& group = it->second;
  absl::erase_if(group.adapter_changes, [&load](const auto& change) {
    return ShowsAdapterChange(load.adapters, change.first, change.second);
  });
  for (const auto& [name, change] : group.adapter_changes) {
    ApplyAdapterChange(load.adapters, name, change);
  }
  auto shared = std::make_shared<const GroupLoad>(std::move(load));
  if (turns != group.engine_turns) {
    group.progress_at = std::max(group.progress_at, now);
    group.stall_reported = false;
  }
  group.engine_turns = turns;
  group.load = std::move(shared);
  group.last_heartbeat = std::max(group.last_heartbeat, now);
  group.heartbeat_received = true;
  ++group.heartbeats;
  group.unreported_tokens = 0;
  group.unreported_blocks = 0;
  return true;
}

bool GroupRegistry::Deregister(absl::string_view id) {
  absl::MutexLock lock(&mutex_);
  return groups_.erase(id) > 0;
}

std::vector<std::string> GroupRegistry::ExpireDead(absl::Time now) {
  const absl::Duration dead_after = options_.heartbeat_interval * options_.dead_after_intervals;
  absl::MutexLock lock(&mutex_);
  std::vector<std::string> dead = std::move(replaced_);
  replaced_.clear();
  std::vector<std::pair<uint64_t, std::string>> expired;
  for (const auto& [id, group] : groups_) {
    if (now - group.last_heartbeat > dead_after) expired.emplace_back(group.sequence, id);
  }
  std::sort(expired.begin(), expired.end());
  for (auto& [sequence, id] : expired) {
    groups_.erase(id);
    dead.push_back(std::move(id));
  }
  return dead;
}

bool GroupRegistry::MarkFailed(absl::string_view id, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return false;
  it->second.failed_at = std::max(it->second.failed_at, now);
  return true;
}

std::vector<StalledGroup> GroupRegistry::TakeNewlyStalled() {
  absl::MutexLock lock(&mutex_);
  std::vector<std::pair<uint64_t, StalledGroup>> stalled;
  for (auto& [id, group] : groups_) {
    if (group.stall_reported || !Stalled(group)) continue;
    group.stall_reported = true;
    stalled.push_back(
        {group.sequence,
         {id, group.last_heartbeat - group.progress_at, group.load->running + group.load->queued}});
  }
  std::sort(stalled.begin(), stalled.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<StalledGroup> result;
  for (auto& entry : stalled) result.push_back(std::move(entry.second));
  return result;
}

void GroupRegistry::Forget(Group& group, const Group::Inflight& request) {
  const int64_t tokens = request.cost.prompt_tokens + request.cost.max_tokens;
  group.inflight_tokens -= tokens;
  if (request.heartbeats_before == group.heartbeats) {
    // No heartbeat since the dispatch: the request is still counted as unreported.
    group.unreported_tokens = std::max<int64_t>(0, group.unreported_tokens - tokens);
    group.unreported_blocks = std::max<int64_t>(0, group.unreported_blocks - request.blocks);
  }
}

bool GroupRegistry::Dispatched(absl::string_view id, absl::string_view request_id,
                               RequestCost cost) {
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return false;
  Group& group = it->second;
  Group::Inflight request;
  request.cost.prompt_tokens = std::max<int64_t>(0, cost.prompt_tokens);
  request.cost.max_tokens = std::max<int64_t>(0, cost.max_tokens);
  request.blocks = CeilDiv(request.cost.prompt_tokens + 1, group.info.kv.block_size);
  request.heartbeats_before = group.heartbeats;
  auto [slot, inserted] = group.inflight.try_emplace(request_id);
  if (!inserted) Forget(group, slot->second);
  slot->second = request;
  const int64_t tokens = request.cost.prompt_tokens + request.cost.max_tokens;
  group.inflight_tokens += tokens;
  group.unreported_tokens += tokens;
  group.unreported_blocks += request.blocks;
  return true;
}

bool GroupRegistry::Completed(absl::string_view id, absl::string_view request_id) {
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return false;
  Group& group = it->second;
  auto request = group.inflight.find(request_id);
  if (request == group.inflight.end()) return false;
  Forget(group, request->second);
  group.inflight.erase(request);
  return true;
}

void GroupRegistry::NoteAdapterChange(Group& group, const std::string& name,
                                      std::optional<GroupAdapter> adapter) {
  auto load = std::make_shared<GroupLoad>(*group.load);
  ApplyAdapterChange(load->adapters, name, adapter);
  group.load = std::move(load);
  group.adapter_changes[name] = std::move(adapter);
}

bool GroupRegistry::NoteAdapterLoaded(absl::string_view id, GroupAdapter adapter) {
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return false;
  const std::string name = adapter.name;
  NoteAdapterChange(it->second, name, std::move(adapter));
  return true;
}

bool GroupRegistry::NoteAdapterUnloaded(absl::string_view id, absl::string_view name) {
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return false;
  NoteAdapterChange(it->second, std::string(name), std::nullopt);
  return true;
}

bool GroupRegistry::Healthy(const Group& group, absl::Time now) const {
  return now - group.last_heartbeat <=
             options_.heartbeat_interval * options_.unhealthy_after_intervals &&
         group.last_heartbeat > group.failed_at && !Stalled(group);
}

bool GroupRegistry::Stalled(const Group& group) const {
  // Judged by what the heartbeats show: a group that went silent is the heartbeat rule's.
  return options_.engine_stall_after > absl::ZeroDuration() &&
         group.last_heartbeat - group.progress_at > options_.engine_stall_after;
}

GroupSnapshot GroupRegistry::SnapshotOf(const Group& group, absl::Time now) const {
  GroupSnapshot snapshot;
  snapshot.id = group.id;
  snapshot.sequence = group.sequence;
  snapshot.info = group.info;
  snapshot.load = group.load;
  snapshot.registered_at = group.registered_at;
  snapshot.last_heartbeat = group.last_heartbeat;
  snapshot.heartbeat_received = group.heartbeat_received;
  snapshot.healthy = Healthy(group, now);
  snapshot.stalled = Stalled(group);
  snapshot.inflight_requests = static_cast<int64_t>(group.inflight.size());
  snapshot.inflight_tokens = group.inflight_tokens;
  snapshot.unreported_tokens = group.unreported_tokens;
  snapshot.unreported_blocks = group.unreported_blocks;
  return snapshot;
}

std::optional<GroupSnapshot> GroupRegistry::Get(absl::string_view id, absl::Time now) const {
  absl::MutexLock lock(&mutex_);
  auto it = groups_.find(id);
  if (it == groups_.end()) return std::nullopt;
  return SnapshotOf(it->second, now);
}

std::vector<GroupSnapshot> GroupRegistry::Groups(absl::Time now) const {
  std::vector<GroupSnapshot> result;
  {
    absl::MutexLock lock(&mutex_);
    result.reserve(groups_.size());
    for (const auto& [id, group] : groups_) result.push_back(SnapshotOf(group, now));
  }
  std::sort(result.begin(), result.end(), BySequence);
  return result;
}

std::vector<GroupSnapshot> GroupRegistry::HealthyGroups(absl::string_view model,
                                                        absl::string_view version,
                                                        absl::Time now) const {
  std::vector<GroupSnapshot> result;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, group] : groups_) {
      if (group.info.model != model) continue;
      if (!version.empty() && group.info.version != version) continue;
      if (!Healthy(group, now)) continue;
      result.push_back(SnapshotOf(group, now));
    }
  }
  std::sort(result.begin(), result.end(), BySequence);
  return result;
}

std::vector<std::string> GroupRegistry::HealthyVersions(absl::string_view model, absl::Time now,
                                                        absl::string_view adapter) const {
  std::vector<std::string> versions;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, group] : groups_) {
      if (group.info.model != model || !Healthy(group, now)) continue;
      if (!adapter.empty() && group.load->FindAdapter(adapter) == nullptr) continue;
      versions.push_back(group.info.version);
    }
  }
  std::sort(versions.begin(), versions.end());
  versions.erase(std::unique(versions.begin(), versions.end()), versions.end());
  return versions;
}

std::vector<ModelSummary> GroupRegistry::Models(absl::Time now) const {
  struct Tally {
    VersionSummary summary;
    int64_t healthy_length = 0;  // smallest known max_model_length among healthy groups
    int64_t any_length = 0;      // ... among all groups
  };
  auto smaller_known = [](int64_t current, int64_t length) {
    if (length <= 0) return current;
    return current <= 0 ? length : std::min(current, length);
  };
  std::map<std::string, std::map<std::string, Tally>> models;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, group] : groups_) {
      Tally& tally = models[group.info.model][group.info.version];
      ++tally.summary.groups;
      tally.any_length = smaller_known(tally.any_length, group.info.max_model_length);
      if (Healthy(group, now)) {
        ++tally.summary.healthy_groups;
        tally.healthy_length = smaller_known(tally.healthy_length, group.info.max_model_length);
      }
    }
  }
  std::vector<ModelSummary> result;
  for (auto& [model, versions] : models) {
    ModelSummary& summary = result.emplace_back();
    summary.model = model;
    for (auto& [version, tally] : versions) {
      tally.summary.version = version;
      tally.summary.max_model_length =
          tally.summary.healthy_groups > 0 ? tally.healthy_length : tally.any_length;
      summary.versions.push_back(std::move(tally.summary));
    }
  }
  return result;
}

}  // namespace tessera::serve
