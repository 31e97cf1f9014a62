#ifndef TESSERA_RUNTIME_SERVE_ROUTER_H_
#define TESSERA_RUNTIME_SERVE_ROUTER_H_

// The coordinator's routing decisions: which version of a model a request goes to (weighted
// canary roll-out, sticky per session) and which of that version's worker groups runs it.
//
// A request that names a LoRA adapter has as candidates only the groups that can run it (their
// latest load lists it); NOT_FOUND naming the ones loaded when none can.
//
// Group choice scores every candidate on four parts, each in [0, 1], higher is better:
//   load      1 / (1 + f), where f = (estimated outstanding tokens + this request's prompt and
//             max_tokens) / the group's KV capacity in tokens. A group is "without KV room"
//             when its estimated free blocks are fewer than the prompt needs (its blocks not
//             already cached, plus one);
//   prefix    the share of the prompt's tokens in its longest cached leading run of full
//             blocks (leading, consecutive block hashes found in the group's cache); 0 when
//             the group is overloaded: without KV room, or f > overload_factor * (the least f
//             among groups with KV room) + overload_slack;
//   topology  0.6 when the group's zone is the request's, plus 0.4 when its leader runs on
//             the request's node; 0 without a locality hint;
//   adapter   1 when the request's adapter is resident on the group (in memory), 0 when the
//             group must load it from its directory first (a step's wait), when the group is
//             overloaded (as prefix: a hot adapter must not pin its requests to one group), or
//             for a request on the base model.
// and on `fabric`, a property of the group alone: 0.5 when its all-reduce stays inside a node,
// plus 0.5 / (1 + all-reduce latency / allreduce_latency_scale_seconds).
//
// Every policy prefers groups with KV room; a group without is chosen only when none has
// room. Among them:
//   least-load  highest load, then fabric, then id;
//   prefix      most cached prompt tokens (0 when overloaded), then adapter, then load, then
//               fabric, id (a resident adapter is cached weights);
//   topology    highest topology, then fabric, then load, then id;
//   combined    highest total = load_weight * load + prefix_weight * prefix +
//               topology_weight * topology + adapter_weight * adapter, then fabric, then id.
//               With no locality hint, no cached prefix and no adapter it is least-load.
// least-load and topology do not look at the adapter part.
// Ties end on the group id (string order), so a decision is deterministic.
//
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "runtime/serve/group_registry.h"

namespace tessera::serve {

enum class RoutingPolicy { kLeastLoad, kPrefix, kTopology, kCombined };

// "least-load", "prefix", "topology", "combined".
absl::string_view RoutingPolicyName(RoutingPolicy policy);
// The inverse of RoutingPolicyName; INVALID_ARGUMENT listing the names otherwise.
absl::StatusOr<RoutingPolicy> ParseRoutingPolicy(absl::string_view name);

// Where the client would like to be served.
struct Locality {
  std::string zone;
  std::string node;  // a host name
};

struct RouteRequest {
  std::string model;
  std::string version;  // empty: any version among the candidates
  int64_t prompt_tokens = 0;
  int64_t max_tokens = 0;
  // The prompt's full-block prefix hashes (engine::PrefixBlockHashes) by block size. A
  // candidate whose block size is missing here counts as caching nothing. See HashPrompt.
  absl::flat_hash_map<int, std::vector<uint64_t>> block_hashes;
  Locality locality;
  std::string session_id;
  // The LoRA adapter the request runs with; empty: the base model.
  std::string adapter;

  // Sets prompt_tokens and the block hashes for every block size among `groups`, chained from
  // the root of `adapter` (engine::PrefixHashRoot: the groups' caches key an adapter's blocks
  // so), which must be set first.
  void HashPrompt(absl::Span<const int32_t> prompt, absl::Span<const GroupSnapshot> groups);
};

// One candidate's score, for the decision and its debug log.
struct CandidateScore {
  std::string group_id;
  double load_score = 0;
  double prefix_score = 0;
  double topology_score = 0;
  double fabric_score = 0;
  double adapter_score = 0;
  double total = 0;  // the combined policy's weighted sum (computed under every policy)

  // What the parts were made from.
  double load_fraction = 0;  // f above
  bool kv_room = false;
  bool overloaded = false;
  int64_t cached_blocks = 0;  // leading prompt blocks in the group's cache
  int64_t prompt_blocks = 0;  // full blocks of the prompt at the group's block size
  int64_t cached_tokens = 0;
  bool zone_match = false;
  bool node_match = false;
  bool multi_node = false;
  double allreduce_latency_seconds = 0;
  bool adapter_resident = false;  // the request names an adapter, in memory on the group

  std::string DebugString() const;
};

struct RouteDecision {
  std::string group_id;
  RoutingPolicy policy = RoutingPolicy::kCombined;
  // Every eligible candidate, best first; the chosen group is candidates[0]. Candidates tied
  // for best are rotated by the router's turn among them.
  std::vector<CandidateScore> candidates;
  // Candidates passed in but not eligible (other model or version, prompt too long, the
  // request's adapter not loaded), by id with the reason.
  std::vector<std::pair<std::string, std::string>> excluded;

  // One line: the policy, the choice, and each candidate's parts.
  std::string Explain() const;
};

// Weight of each version of one model for requests that name none; any non-negative
// numbers, normalized over the versions that can be chosen.
using VersionWeights = std::map<std::string, double>;
// Weights of every model that has any, by model.
using ModelVersionWeights = std::map<std::string, VersionWeights>;

// Parses "tiny=v1:95,v2:5;other=a:50,b:50" (spaces around names and numbers are ignored; an
// empty text is no weights). INVALID_ARGUMENT naming the bad part otherwise: a missing '=' or
// ':', an empty name, a repeated model or version, a weight that is not a finite number >= 0,
// or a model whose weights are all 0.
absl::StatusOr<ModelVersionWeights> ParseVersionWeights(absl::string_view text);

struct RouterOptions {
  RoutingPolicy policy = RoutingPolicy::kCombined;
  // Weights of the combined policy's total. With the defaults a whole prompt found cached is
  // worth going from an idle group to one at f = 1, and the request's zone is worth going
  // from an idle group to one at f = 0.43.
  double load_weight = 1.0;
  double prefix_weight = 0.5;
  double topology_weight = 0.5;
  // A resident adapter is worth going from an idle group to one at f = 0.33: loading one from
  // its directory takes a step, a queue takes many.
  double adapter_weight = 0.25;
  // A group is overloaded when its load fraction exceeds
  // overload_factor * least load fraction + overload_slack (or when it has no KV room).
  double overload_factor = 2.0;
  double overload_slack = 0.25;
  // All-reduce latency at which the latency half of the fabric score is halved.
  double allreduce_latency_scale_seconds = 100e-6;
};

class Router {
 public:
  explicit Router(RouterOptions options = {});

  const RouterOptions& options() const { return options_; }

  // Chooses one of `candidates` for `request` under the configured policy. Candidates of
  // another model, or another version when the request names one, are excluded, and so are
  // groups that cannot run the request's adapter and groups whose max_model_length leaves no
  // room for one output token after the prompt. UNAVAILABLE when no candidate is given or none
  // serves the model and version; NOT_FOUND when none of those can run the adapter
  // (AdapterNotLoaded); INVALID_ARGUMENT when the prompt is too long for every one of them.
  // Candidates that tie for best take turns from one call to the next. Thread-safe.
  absl::StatusOr<RouteDecision> Route(const RouteRequest& request,
                                      absl::Span<const GroupSnapshot> candidates) const;

  // Sets the weights of one model's versions (replacing any); empty removes them.
  // INVALID_ARGUMENT when a weight is negative or not finite, or all are 0.
  absl::Status SetVersionWeights(absl::string_view model, VersionWeights weights);
  // Replaces every model's weights (e.g. from ParseVersionWeights); INVALID_ARGUMENT (and no
  // change) as above.
  absl::Status SetAllVersionWeights(ModelVersionWeights weights);
  // The weights set for `model`; empty when none.
  VersionWeights VersionWeightsFor(absl::string_view model) const;

  // The share of requests naming no version that each of `available_versions` (those with
  // healthy groups) gets now: the model's weights normalized over the available versions
  // that have weight > 0, or equal shares among all available ones when the model has no
  // weights. Versions that get nothing are left out.
  std::map<std::string, double> VersionShares(
      absl::string_view model, absl::Span<const std::string> available_versions) const;

  // The version a request for `model` goes to. A requested version is returned as is (the
  // caller finds out whether it has groups). Otherwise a version is drawn by
  // VersionShares: with a session id, by a stable hash of it (the same session gets the same
  // version while the weights and the available versions are unchanged, in any coordinator
  // process); without one, by a per-model counter on a low-discrepancy sequence, so any run
  // of N requests splits within a few requests of the shares. UNAVAILABLE when no available
  // version can be chosen.
  absl::StatusOr<std::string> ChooseVersion(absl::string_view model,
                                            absl::string_view requested_version,
                                            absl::string_view session_id,
                                            absl::Span<const std::string> available_versions);

 private:
  static std::map<std::string, double> SharesLocked(const VersionWeights* weights,
                                                    absl::Span<const std::string> available);

  const RouterOptions options_;
  mutable absl::Mutex mutex_;
  ModelVersionWeights weights_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, uint64_t> counters_ ABSL_GUARDED_BY(mutex_);
  // Routes decided among candidates tied for best: whose turn it is among the next tie.
  mutable std::atomic<uint64_t> tie_turns_{0};
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_ROUTER_H_
