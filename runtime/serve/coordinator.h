#ifndef TESSERA_RUNTIME_SERVE_COORDINATOR_H_
#define TESSERA_RUNTIME_SERVE_COORDINATOR_H_

// The coordinator: the client API (tessera.v1.Inference) in front of the worker groups that
// register with it (tessera.v1.WorkerRegistry). It tokenizes each prompt with the model's
// tokenizer (sent at registration), picks a version (weighted, sticky per session) and a
// group (router.h), and relays the group's stream to the client.
//
// LoRA adapters: operators load them on every group of a model through the coordinator
// (LoadAdapter, UnloadAdapter; coordinator_adapters.cc), which records them for groups that
// register later (adapter_registry.h); a request naming an adapter goes to a group that can run
// it (router.h).
//
// Fine-tunes inside serving groups (StartTraining, TrainingStatus, StopTraining;
// coordinator_training.cc): the coordinator picks the group and relays the call to its leader,
// which runs the fine-tune and publishes its adapter. A group's status is asked of the group;
// the coordinator records only which configuration it started on a group name, until it is
// stopped there, so that the group registering again under that name (it failed and was
// started again) starts it again and resumes from its last checkpoint.
//
// Failure handling: a group that misses 3 heartbeats, deregisters, or whose stream fails is
// out; a group whose engine stalls (its loop stops turning) is out of routing until it turns
// again. Their requests are dispatched again to another group (continuing after the
// tokens already streamed), or end with UNAVAILABLE saying what happened. A client's
// cancellation or deadline, and the coordinator's own maximum duration of a request, reach
// the group (the propagated call is cancelled), which frees the request's KV blocks.

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server.h"
#include "runtime/serve/adapter_registry.h"
#include "runtime/serve/api_keys.h"
#include "runtime/serve/group_registry.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/prompt_encoder.h"
#include "runtime/serve/request_convert.h"
#include "runtime/serve/router.h"
#include "runtime/serve/serve_metrics.h"
#include "runtime/serve/tenant_quota.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tessera/v1/inference.grpc.pb.h"
#include "tessera/v1/worker.grpc.pb.h"

namespace tessera::serve {

struct CoordinatorOptions {
  RouterOptions router;
  GroupRegistryOptions registry;
  ModelVersionWeights version_weights;
  TenantQuotaConfig tenants;
  // Requests in flight at once (admitted, not finished). Past a share of it, lower
  // priority classes are refused first (RESOURCE_EXHAUSTED): low at 70%, normal at 90%.
  int max_queue = 1024;
  // Groups one request is tried on before it fails. A group that fails mid-stream hands its
  // request on: the next group continues after the tokens already streamed.
  int max_dispatch_attempts = 3;
  // After its group failed, how long a request waits for another healthy group (one that is
  // being restarted, say) before it ends UNAVAILABLE; its own deadline comes first.
  absl::Duration failover_wait = absl::Seconds(30);
  // The longest a request may run, from its arrival, whatever deadline its client set (or
  // none): past it the request ends DEADLINE_EXCEEDED. Infinite: no limit.
  absl::Duration max_request_duration = absl::InfiniteDuration();
  // When set (not owned; outlives the coordinator), every client call needs a key from it and
  // runs as the key's tenant; a request naming another tenant is PERMISSION_DENIED.
  const ApiKeyStore* api_keys = nullptr;
  // When not empty, Register needs it (metadata "authorization: Bearer TOKEN"), and so do the
  // operators' calls (LoadAdapter, UnloadAdapter, StartTraining, StopTraining). Without it
  // those are open to anyone when the coordinator takes no API keys, and refused when it does.
  std::string join_token;
  // What one request may carry.
  RequestLimits request_limits;
  // Requests one GenerateBatch may hold, and the threads every GenerateBatch in flight may
  // take together to run them (each call also runs requests on its own thread).
  int max_batch_requests = 1024;
  // When the client API shares a listener with registration (which takes larger messages):
  // the largest request message the client API takes (RESOURCE_EXHAUSTED beyond); 0: the
  // listener's own limit applies.
  int64_t max_request_bytes = 0;
  int max_batch_threads = 256;
  // How the coordinator dials the groups' leaders (tls.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> worker_credentials;
  // The longest a group may take to load or unload an adapter (Worker.LoadAdapter): reading
  // its weights from the directory on every rank.
  absl::Duration adapter_call_timeout = absl::Seconds(60);
  // The longest a group may take to start or stop a fine-tune (Worker.StartTraining,
  // StopTraining): starting loads the trainable copy of the base and reads the data on every
  // rank; stopping waits for the optimizer step in progress.
  absl::Duration training_call_timeout = absl::Minutes(5);
};

class Coordinator {
 public:
  // Adds its metrics to `metrics` (which must outlive it) and starts the thread that expires
  // dead groups.
  Coordinator(CoordinatorOptions options, MetricsRegistry& metrics);
  ~Coordinator();

  grpc::Service* inference_service();
  grpc::Service* registry_service();
  // Health of `server` follows the groups: SERVING while some group is healthy.
  void AttachHealth(grpc::Server* server);
  // Some group is healthy.
  bool Healthy() const;
  int HealthyGroupCount() const;
  // The healthy groups: the names they registered with ("host/replicaN") and their ids, in
  // registration order. A group that registers again (restarted) has a new id.
  struct NamedGroup {
    std::string name;
    std::string id;
  };
  std::vector<NamedGroup> HealthyGroupNames() const;
  // The Worker endpoints (host:port of each group's leader) of the registered groups, in
  // registration order: for tools that compare with talking to a leader directly.
  std::vector<std::string> GroupEndpoints() const;

  // The request path of callers other than the gRPC API (the HTTP API), the same one:
  // admission, routing, failover, quotas and metrics.
  // The tenant of an API key; empty when the coordinator takes no keys. UNAUTHENTICATED
  // when a key is needed and `key` is empty or unknown.
  absl::StatusOr<std::string> AuthenticateKey(const std::string& key) const;
  // Where a relayed message goes; false when the client is gone (the request is cancelled).
  using Sink = std::function<bool(const v1::GenerateStreamResponse&)>;
  // Runs `request` as the gRPC calls do, with no client deadline (the coordinator's
  // --max-request-duration still applies). `key_tenant`: AuthenticateKey's answer.
  grpc::Status Generate(const v1::GenerateRequest& request, const std::string& key_tenant,
                        const Sink& sink);
  // Every model with a registered group.
  std::vector<ModelSummary> Models() const;
  // The tokenizer and chat template of a served model version; NOT_FOUND when no group
  // serves it.
  absl::StatusOr<std::shared_ptr<const PromptEncoder>> EncoderFor(const std::string& model,
                                                                  const std::string& version) const;
  // The adapters of `model` (every model when empty), as ListAdapters reports them.
  std::vector<AdapterListing> Adapters(const std::string& model) const;

 private:
  class InferenceImpl;
  class RegistryImpl;

  // One registered group's channel and the calls the coordinator has open on it.
  struct GroupLink {
    std::string id;
    std::string secret;  // its heartbeats and deregistration carry it
    std::string model;
    std::string version;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Worker::Stub> stub;
    absl::Mutex mutex;
    // Each open call, with why the coordinator ended it (empty while it has not).
    absl::flat_hash_map<grpc::ClientContext*, std::string> calls ABSL_GUARDED_BY(mutex);
    bool gone ABSL_GUARDED_BY(mutex) = false;
    std::string why_gone ABSL_GUARDED_BY(mutex);
  };

  // Starts one call to a group's Worker service: the `index`-th of CallGroups' groups, on
  // `stub`, with `context` (its deadline set), ending with `done`. The call's request and
  // response must outlive CallGroups.
  using GroupCall =
      std::function<void(size_t index, v1::Worker::Stub& stub, grpc::ClientContext* context,
                         std::function<void(grpc::Status)> done)>;

  // One Worker.LoadAdapter or UnloadAdapter call to one group.
  struct AdapterCall {
    GroupSnapshot group;
    std::string name;
    std::string dir;  // load the adapter from it; empty: unload it
  };

  // The call shows the coordinator's join token, or the coordinator has none.
  bool ShowsJoinToken(const grpc::ServerContext& context) const;
  // May the caller of an operator's call (`call`, for messages) make it? UNAUTHENTICATED
  // without the join token, PERMISSION_DENIED with another token, or when the coordinator
  // takes API keys but has no join token to tell an operator by.
  absl::Status AuthorizeOperator(const grpc::ServerContext& context, absl::string_view call) const;
  // The operators' adapter calls (coordinator_adapters.cc), once authorized: every group of
  // the model loads it, or none keeps it; unloading drops it from every group that holds it.
  grpc::Status LoadAdapter(const v1::LoadAdapterRequest& request,
                           v1::LoadAdapterResponse* response);
  grpc::Status UnloadAdapter(const v1::UnloadAdapterRequest& request,
                             v1::UnloadAdapterResponse* response);
  // Every call at once, each within adapter_call_timeout; each call's status, in order.
  std::vector<grpc::Status> CallAdapters(const std::vector<AdapterCall>& calls);
  // Calls every group of `groups` at once (`call` starts each), each within `timeout`, and
  // waits for all; each call's status, in order: UNAVAILABLE for a group that has left.
  std::vector<grpc::Status> CallGroups(const std::vector<GroupSnapshot>& groups,
                                       absl::Duration timeout, const GroupCall& call);
  // A group's error, its code kept, its message naming the group: "group g3 (host/replica0):
  // message".
  static grpc::Status GroupError(const GroupSnapshot& group, const grpc::Status& status);
  // The operators' fine-tune calls (coordinator_training.cc), once authorized, and the status
  // call: see inference.proto.
  grpc::Status StartTraining(const v1::StartTrainingRequest& request,
                             v1::StartTrainingResponse* response);
  // FAILED_PRECONDITION naming the first of `groups` that runs a fine-tune (or the error of
  // one that cannot say).
  grpc::Status CheckNoneTrains(const std::vector<GroupSnapshot>& groups);
  // Worker.TrainingStatus of every group of `groups` at once: each call's status, and its
  // answer in (*answers)[i].
  std::vector<grpc::Status> AskTrainingStates(const std::vector<GroupSnapshot>& groups,
                                              std::vector<v1::TrainingStatusResponse>* answers);
  grpc::Status TrainingStatus(const v1::TrainingStatusRequest& request,
                              v1::TrainingStatusResponse* response);
  grpc::Status StopTraining(const v1::StopTrainingRequest& request,
                            v1::StopTrainingResponse* response);
  // The registered groups of `model` at `version` (any when empty); NOT_FOUND naming the
  // field when there are none.
  absl::StatusOr<std::vector<GroupSnapshot>> RegisteredGroups(const std::string& model,
                                                              const std::string& version) const;

  // The tenant of the call's API key; empty when the coordinator takes no keys.
  // UNAUTHENTICATED when a key is needed and missing or unknown.
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContext& context) const;
  // `key_tenant`: the tenant of the caller's API key, or empty (no keys: the request's own).
  grpc::Status RunRequest(grpc::ServerContext* context, const v1::GenerateRequest& request,
                          const std::string& key_tenant, const Sink& sink, RequestRecord* record);
  // Runs `request` on a group and relays its stream; when the group fails, on another
  // (continuing after the tokens already streamed), up to max_dispatch_attempts groups.
  // `deadline`: the coordinator's own (max_request_duration), before any client deadline.
  grpc::Status Dispatch(grpc::ServerContext* context, const v1::GenerateRequest& request,
                        const std::vector<int32_t>& prompt, absl::Time deadline, const Sink& sink,
                        RequestRecord* record);
  // The healthy groups that serve `request`'s model and version, less `failed`.
  std::vector<GroupSnapshot> Candidates(const v1::GenerateRequest& request,
                                        const absl::flat_hash_set<std::string>& failed);
  absl::Status AdmitToQueue(TenantPriority priority);
  void ReapLoop();
  void OnGroupGone(const std::string& id, const std::string& why);
  // Ends the calls open on a group that stays registered (its engine stalled): their requests
  // move to other groups.
  void FailOpenCalls(const std::string& id, const std::string& why);
  // Drops the encoders no registered group uses any more.
  // trainings_by_name_'s key of a group name serving `model`.
  static std::string TrainingKey(const std::string& model, const std::string& name);
  void ReleaseUnusedEncoders() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void CollectGauges();

  const CoordinatorOptions options_;
  GroupRegistry registry_;
  Router router_;
  TenantQuotas quotas_;
  AdapterRegistry adapters_;
  RequestMetrics request_metrics_;
  AdapterMetrics adapter_metrics_;
  GaugeFamily* queue_depth_;
  GaugeFamily* groups_gauge_;
  GaugeFamily* group_running_;
  GaugeFamily* group_outstanding_;
  GaugeFamily* group_kv_blocks_;
  CounterFamily* redispatches_;
  CounterFamily* resumes_;
  const uint64_t seed_base_;  // for sampled requests that name no seed
  std::unique_ptr<InferenceImpl> inference_;
  std::unique_ptr<RegistryImpl> registry_service_;
  std::atomic<int> in_flight_{0};
  std::atomic<int> batch_threads_{0};  // GenerateBatch's helper threads, all calls
  std::atomic<uint64_t> next_request_{1};

  // Operators' adapter calls run one at a time: each reads the record and the groups, and
  // changes both.
  absl::Mutex adapter_calls_mutex_;
  // ... and so do fine-tune starts: a start on a job of several groups reaches them all, and
  // two must not reach them in different orders.
  absl::Mutex training_starts_mutex_;

  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, std::shared_ptr<GroupLink>> links_ ABSL_GUARDED_BY(mutex_);
  // Prompt encoders (tokenizer and chat template) by model and version, and by the SHA-256
  // of the tokenizer.json and tokenizer configuration they came from (groups that send the
  // same files share one). Held while a registered group uses them.
  absl::flat_hash_map<std::string, std::shared_ptr<const PromptEncoder>> encoders_
      ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, std::shared_ptr<const PromptEncoder>> parsed_
      ABSL_GUARDED_BY(mutex_);
  GaugeFamily* tokenizers_gauge_;
  grpc::Server* health_server_ ABSL_GUARDED_BY(mutex_) = nullptr;
  bool healthy_ ABSL_GUARDED_BY(mutex_) = false;
  // The configuration StartTraining started on each group name (by TrainingKey), until
  // StopTraining stops it there: RegisterResponse.training_config_json.
  absl::flat_hash_map<std::string, std::string> trainings_by_name_ ABSL_GUARDED_BY(mutex_);

  absl::Notification stop_;
  std::thread reaper_;
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_COORDINATOR_H_
