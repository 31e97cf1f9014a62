#include "runtime/serve/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "runtime/engine/prefix_hash.h"
#include "runtime/serve/adapter_registry.h"

namespace tessera::serve {
namespace {

constexpr double kZoneMatchScore = 0.6;
constexpr double kNodeMatchScore = 0.4;

// FNV-1a over the bytes, then a SplitMix64 finish: fixed, so every coordinator process maps
// a session to the same point.
uint64_t StableHash(absl::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  hash += 0x9e3779b97f4a7c15ULL;
  hash = (hash ^ (hash >> 30)) * 0xbf58476d1ce4e5b9ULL;
  hash = (hash ^ (hash >> 27)) * 0x94d049bb133111ebULL;
  return hash ^ (hash >> 31);
}

// A 64-bit value as a point of [0, 1).
double UnitInterval(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// The n-th point of the golden-ratio (Weyl) sequence: any n consecutive points are spread
// evenly over [0, 1).
double LowDiscrepancyPoint(uint64_t n) { return UnitInterval(n * 0x9e3779b97f4a7c15ULL); }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

absl::Status CheckWeights(absl::string_view model, const VersionWeights& weights) {
  double sum = 0;
  for (const auto& [version, weight] : weights) {
    if (!std::isfinite(weight) || weight < 0) {
      return absl::InvalidArgumentError(absl::StrCat("version weights of model \"", model,
                                                     "\": version \"", version, "\": weight ",
                                                     weight, " is not a finite number >= 0"));
    }
    sum += weight;
  }
  if (!weights.empty() && sum <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("version weights of model \"", model, "\": every weight is 0"));
  }
  return absl::OkStatus();
}

// What `policy` ranks a candidate by, best highest; the group id is not part of it.
std::tuple<bool, double, double, double, double> RankKey(RoutingPolicy policy,
                                                         const CandidateScore& s) {
  const double prefix_tokens = s.overloaded ? 0.0 : static_cast<double>(s.cached_tokens);
  switch (policy) {
    case RoutingPolicy::kLeastLoad:
      return {s.kv_room, s.load_score, s.fabric_score, 0.0, 0.0};
    case RoutingPolicy::kPrefix:
      return {s.kv_room, prefix_tokens, s.adapter_score, s.load_score, s.fabric_score};
    case RoutingPolicy::kTopology:
      return {s.kv_room, s.topology_score, s.fabric_score, s.load_score, 0.0};
    case RoutingPolicy::kCombined:
      break;
  }
  return {s.kv_room, s.total, s.fabric_score, 0.0, 0.0};
}

}  // namespace

absl::string_view RoutingPolicyName(RoutingPolicy policy) {
  switch (policy) {
    case RoutingPolicy::kLeastLoad:
      return "least-load";
    case RoutingPolicy::kPrefix:
      return "prefix";
    case RoutingPolicy::kTopology:
      return "topology";
    case RoutingPolicy::kCombined:
      return "combined";
  }
  return "unknown";
}

absl::StatusOr<RoutingPolicy> ParseRoutingPolicy(absl::string_view name) {
  for (RoutingPolicy policy : {RoutingPolicy::kLeastLoad, RoutingPolicy::kPrefix,
                               RoutingPolicy::kTopology, RoutingPolicy::kCombined}) {
    if (name == RoutingPolicyName(policy)) return policy;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown routing policy \"", name,
                                                 "\" (least-load, prefix, topology or combined)"));
}

void RouteRequest::HashPrompt(absl::Span<const int32_t> prompt,
                              absl::Span<const GroupSnapshot> groups) {
  prompt_tokens = static_cast<int64_t>(prompt.size());
  block_hashes.clear();
  for (const GroupSnapshot& group : groups) {
    const int block_size = group.info.kv.block_size;
    if (block_size <= 0 || block_hashes.contains(block_size)) continue;
    block_hashes[block_size] =
        engine::PrefixBlockHashes(prompt, block_size, engine::PrefixHashRoot(adapter));
  }
}

std::string CandidateScore::DebugString() const {
  return absl::StrFormat(
      "%s[total=%.3f load=%.3f (f=%.3f, kv %s%s) prefix=%.3f (%d/%d blocks) topology=%.3f "
      "(zone %s, node %s) fabric=%.3f (%s, all-reduce %.1fus) adapter=%.3f%s]",
      group_id, total, load_score, load_fraction, kv_room ? "room" : "full",
      overloaded ? ", overloaded" : "", prefix_score, cached_blocks, prompt_blocks, topology_score,
      zone_match ? "yes" : "no", node_match ? "yes" : "no", fabric_score,
      multi_node ? "multi-node" : "one node", allreduce_latency_seconds * 1e6, adapter_score,
      adapter_resident ? " (resident)" : "");
}

std::string RouteDecision::Explain() const {
  std::string text = absl::StrCat("policy=", RoutingPolicyName(policy), " chose ", group_id, ":");
  for (const CandidateScore& candidate : candidates) {
    absl::StrAppend(&text, " ", candidate.DebugString());
  }
  for (const auto& [id, reason] : excluded) {
    absl::StrAppend(&text, " ", id, "[excluded: ", reason, "]");
  }
  return text;
}

absl::StatusOr<ModelVersionWeights> ParseVersionWeights(absl::string_view text) {
  ModelVersionWeights result;
  for (absl::string_view entry : absl::StrSplit(text, ';')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) continue;
    auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("version weights: \"", entry, "\": ", what));
    };
    const size_t equals = entry.find('=');
    if (equals == absl::string_view::npos) return bad("expected model=version:weight,...");
    const std::string model(absl::StripAsciiWhitespace(entry.substr(0, equals)));
    if (model.empty()) return bad("empty model name");
    if (result.contains(model)) return bad(absl::StrCat("model \"", model, "\" given twice"));
    VersionWeights& weights = result[model];
    for (absl::string_view part : absl::StrSplit(entry.substr(equals + 1), ',')) {
      part = absl::StripAsciiWhitespace(part);
      const size_t colon = part.find(':');
      if (colon == absl::string_view::npos) {
        return bad(absl::StrCat("\"", part, "\": expected version:weight"));
      }
      const std::string version(absl::StripAsciiWhitespace(part.substr(0, colon)));
      const absl::string_view number = absl::StripAsciiWhitespace(part.substr(colon + 1));
      if (version.empty()) return bad(absl::StrCat("\"", part, "\": empty version name"));
      double weight = 0;
      if (!absl::SimpleAtod(number, &weight) || !std::isfinite(weight) || weight < 0) {
        return bad(absl::StrCat("version \"", version, "\": weight \"", number,
                                "\" is not a finite number >= 0"));
      }
      if (!weights.emplace(version, weight).second) {
        return bad(absl::StrCat("version \"", version, "\" given twice"));
      }
    }
    if (absl::Status status = CheckWeights(model, weights); !status.ok()) {
      return bad("every weight is 0");
    }
  }
  return result;
}

Router::Router(RouterOptions options) : options_(options) {}

absl::StatusOr<RouteDecision> Router::Route(const RouteRequest& request,
                                            absl::Span<const GroupSnapshot> candidates) const {
  RouteDecision decision;
  decision.policy = options_.policy;
  std::vector<const GroupSnapshot*> eligible;
  int too_long = 0;
  int without_adapter = 0;
  for (const GroupSnapshot& group : candidates) {
    if (group.info.model != request.model) {
      decision.excluded.emplace_back(group.id, absl::StrCat("serves model ", group.info.model));
    } else if (!request.version.empty() && group.info.version != request.version) {
      decision.excluded.emplace_back(group.id, absl::StrCat("serves version ", group.info.version));
    } else if (!request.adapter.empty() && group.load->FindAdapter(request.adapter) == nullptr) {
      ++without_adapter;
      decision.excluded.emplace_back(group.id,
                                     absl::StrCat("adapter ", request.adapter, " not loaded"));
    } else if (group.info.max_model_length > 0 &&
               request.prompt_tokens >= group.info.max_model_length) {
      ++too_long;
      decision.excluded.emplace_back(
          group.id, absl::StrCat("max_model_length ", group.info.max_model_length));
    } else {
      eligible.push_back(&group);
    }
  }
  if (eligible.empty()) {
    const std::string what = request.version.empty() ? absl::StrCat("model ", request.model)
                                                     : absl::StrCat("model ", request.model,
                                                                    " version ", request.version);
    if (too_long > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt of ", request.prompt_tokens,
                       " tokens leaves no room for output in any group serving ", what));
    }
    if (without_adapter > 0) {
      std::vector<GroupSnapshot> version_groups;
      for (const GroupSnapshot& group : candidates) {
        if (request.version.empty() || group.info.version == request.version) {
          version_groups.push_back(group);
        }
      }
      return AdapterNotLoaded(request.model, request.adapter, version_groups);
    }
    return absl::UnavailableError(absl::StrCat("no healthy worker group serves ", what));
  }

  const int64_t request_tokens =
      std::max<int64_t>(0, request.prompt_tokens) + std::max<int64_t>(0, request.max_tokens);
  std::vector<CandidateScore> scores;
  scores.reserve(eligible.size());
  for (const GroupSnapshot* group : eligible) {
    CandidateScore& score = scores.emplace_back();
    score.group_id = group->id;
    const int block_size = std::max(group->info.kv.block_size, 1);
    score.prompt_blocks = request.prompt_tokens / block_size;
    if (auto hashes = request.block_hashes.find(block_size); hashes != request.block_hashes.end()) {
      for (uint64_t hash : hashes->second) {
        if (!group->load->cached_block_hashes.contains(hash)) break;
        ++score.cached_blocks;
      }
    }
    score.cached_tokens = score.cached_blocks * block_size;
    const int64_t blocks_needed =
        CeilDiv(std::max<int64_t>(0, request.prompt_tokens) + 1, block_size) - score.cached_blocks;
    score.kv_room = group->EstimatedFreeBlocks() >= blocks_needed;
    score.load_fraction =
        static_cast<double>(group->EstimatedOutstandingTokens() + request_tokens) /
        static_cast<double>(group->KvTokenCapacity());
    score.load_score = 1.0 / (1.0 + score.load_fraction);
    score.zone_match =
        !request.locality.zone.empty() && group->info.topology.zone == request.locality.zone;
    score.node_match =
        !request.locality.node.empty() && group->LeaderHost() == request.locality.node;
    score.topology_score =
        (score.zone_match ? kZoneMatchScore : 0.0) + (score.node_match ? kNodeMatchScore : 0.0);
    score.multi_node = group->MultiNode();
    score.allreduce_latency_seconds = std::max(0.0, group->info.topology.allreduce_latency_seconds);
    const double scale = options_.allreduce_latency_scale_seconds > 0
                             ? options_.allreduce_latency_scale_seconds
                             : 100e-6;
    score.fabric_score =
        (score.multi_node ? 0.0 : 0.5) + 0.5 / (1.0 + score.allreduce_latency_seconds / scale);
    if (!request.adapter.empty()) {
      score.adapter_resident = group->load->FindAdapter(request.adapter)->resident;
    }
  }

  double least_fraction = std::numeric_limits<double>::infinity();
  for (const CandidateScore& score : scores) {
    if (score.kv_room) least_fraction = std::min(least_fraction, score.load_fraction);
  }
  for (CandidateScore& score : scores) {
    score.overloaded =
        !score.kv_room ||
        score.load_fraction > options_.overload_factor * least_fraction + options_.overload_slack;
    if (!score.overloaded && request.prompt_tokens > 0) {
      score.prefix_score =
          static_cast<double>(score.cached_tokens) / static_cast<double>(request.prompt_tokens);
    }
    score.adapter_score = !score.overloaded && score.adapter_resident ? 1.0 : 0.0;
    score.total = options_.load_weight * score.load_score +
                  options_.prefix_weight * score.prefix_score +
                  options_.topology_weight * score.topology_score +
                  options_.adapter_weight * score.adapter_score;
  }

  const RoutingPolicy policy = options_.policy;
  std::sort(scores.begin(), scores.end(),
            [policy](const CandidateScore& a, const CandidateScore& b) {
              const auto key_a = RankKey(policy, a), key_b = RankKey(policy, b);
              if (key_a != key_b) return key_a > key_b;
              return a.group_id < b.group_id;
            });
  // Candidates that tie for best take turns, so that requests to groups alike (say idle ones
  // caching nothing the prompt starts with) spread over them instead of all going to the
  // lowest id.
  const auto best = RankKey(policy, scores.front());
  size_t tied = 1;
  while (tied < scores.size() && RankKey(policy, scores[tied]) == best) ++tied;
  if (tied > 1) {
    const size_t turn = tie_turns_.fetch_add(1, std::memory_order_relaxed) % tied;
    std::rotate(scores.begin(), scores.begin() + turn, scores.begin() + tied);
  }
  decision.group_id = scores.front().group_id;
  decision.candidates = std::move(scores);
  return decision;
}

absl::Status Router::SetVersionWeights(absl::string_view model, VersionWeights weights) {
  if (absl::Status status = CheckWeights(model, weights); !status.ok()) return status;
  absl::MutexLock lock(&mutex_);
  if (weights.empty()) {
    weights_.erase(std::string(model));
  } else {
    weights_[std::string(model)] = std::move(weights);
  }
  return absl::OkStatus();
}

absl::Status Router::SetAllVersionWeights(ModelVersionWeights weights) {
  for (auto it = weights.begin(); it != weights.end();) {
    if (absl::Status status = CheckWeights(it->first, it->second); !status.ok()) return status;
    if (it->second.empty()) {
      it = weights.erase(it);
    } else {
      ++it;
    }
  }
  absl::MutexLock lock(&mutex_);
  weights_ = std::move(weights);
  return absl::OkStatus();
}

VersionWeights Router::VersionWeightsFor(absl::string_view model) const {
  absl::MutexLock lock(&mutex_);
  auto it = weights_.find(std::string(model));
  return it == weights_.end() ? VersionWeights() : it->second;
}

std::map<std::string, double> Router::SharesLocked(const VersionWeights* weights,
                                                   absl::Span<const std::string> available) {
  std::map<std::string, double> shares;
  for (const std::string& version : available) {
    if (weights == nullptr) {
      shares[version] = 1.0;
    } else if (auto it = weights->find(version); it != weights->end() && it->second > 0) {
      shares[version] = it->second;
    }
  }
  double sum = 0;
  for (const auto& [version, share] : shares) sum += share;
  for (auto& [version, share] : shares) share /= sum;
  return shares;
}

std::map<std::string, double> Router::VersionShares(
    absl::string_view model, absl::Span<const std::string> available_versions) const {
  absl::MutexLock lock(&mutex_);
  auto it = weights_.find(std::string(model));
  return SharesLocked(it == weights_.end() ? nullptr : &it->second, available_versions);
}

absl::StatusOr<std::string> Router::ChooseVersion(
    absl::string_view model, absl::string_view requested_version, absl::string_view session_id,
    absl::Span<const std::string> available_versions) {
  if (!requested_version.empty()) return std::string(requested_version);
  std::map<std::string, double> shares;
  double point = 0;
  {
    absl::MutexLock lock(&mutex_);
    auto weights = weights_.find(std::string(model));
    const VersionWeights* model_weights = weights == weights_.end() ? nullptr : &weights->second;
    shares = SharesLocked(model_weights, available_versions);
    if (shares.empty()) {
      std::vector<std::string> weighted;
      if (model_weights != nullptr) {
        for (const auto& [version, weight] : *model_weights) {
          if (weight > 0) weighted.push_back(version);
        }
      }
      return absl::UnavailableError(absl::StrCat(
          "no healthy worker group serves model ", model,
          model_weights == nullptr
              ? std::string()
              : absl::StrCat(" in a weighted version (", absl::StrJoin(weighted, ", "),
                             "; healthy: ", absl::StrJoin(available_versions, ", "), ")")));
    }
    if (session_id.empty()) point = LowDiscrepancyPoint(counters_[std::string(model)]++);
  }
  if (!session_id.empty()) point = UnitInterval(StableHash(session_id));
  double cumulative = 0;
  for (const auto& [version, share] : shares) {
    cumulative += share;
    if (point < cumulative) return version;
  }
  return shares.rbegin()->first;  // rounding left the point past the last share
}

}  // namespace tessera::serve
