#include "runtime/serve/coordinator.h"

#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "kernels/cpu/sampling.h"
#include "runtime/serve/bearer.h"
#include "runtime/serve/grpc_server.h"
#include "runtime/serve/log.h"
#include "runtime/serve/request_convert.h"
#include "runtime/serve/secrets.h"

namespace tessera::serve {
namespace {

constexpr char kComponent[] = "coordinator";
// Requests of one GenerateBatch in flight at once.
constexpr int kBatchParallelism = 128;

GroupInfo FromWire(const v1::RegisterRequest& request) {
  GroupInfo info;
  info.name = request.name();
  info.endpoint = request.endpoint();
  info.metrics_endpoint = request.metrics_endpoint();
  info.model = request.model();
  info.version = request.version();
  const v1::GroupTopology& topology = request.topology();
  info.topology.hosts.assign(topology.hosts().begin(), topology.hosts().end());
  info.topology.tp = topology.tp();
  info.topology.zone = topology.zone();
  info.topology.interconnect = static_cast<Interconnect>(topology.interconnect());
  info.topology.allreduce_latency_seconds = topology.allreduce_latency_seconds();
  info.kv.block_size = request.kv().block_size();
  info.kv.blocks = request.kv().blocks();
  info.kv.bytes_per_token = request.kv().bytes_per_token();
  info.max_model_length = request.max_model_length();
  info.max_running = request.max_running();
  if (request.job().groups() > 1) {
    info.job_id = request.job().id();
    info.job_groups = request.job().groups();
  }
  return info;
}

std::vector<GroupAdapter> FromWire(
    const google::protobuf::RepeatedPtrField<v1::GroupAdapter>& wire) {
  std::vector<GroupAdapter> adapters;
  for (const v1::GroupAdapter& adapter : wire) {
    adapters.push_back({adapter.name(), adapter.dir(), adapter.resident()});
  }
  return adapters;
}

GroupLoad FromWire(const v1::GroupLoad& wire) {
  GroupLoad load;
  load.running = wire.running();
  load.queued = wire.queued();
  load.kv_blocks_free = wire.kv_blocks_free();
  load.kv_blocks_total = wire.kv_blocks_total();
  load.outstanding_tokens = wire.outstanding_tokens();
  load.output_tokens_per_second = wire.output_tokens_per_second();
  load.engine_turns = wire.engine_turns();
  load.cached_block_hashes.insert(wire.cached_block_hashes().begin(),
                                  wire.cached_block_hashes().end());
  load.adapters = FromWire(wire.adapters());
  return load;
}

std::string TokenizerKey(const std::string& model, const std::string& version) {
  return absl::StrCat(model, "\n", version);
}

bool ClientGone(grpc::ServerContext* context) {
  return context != nullptr && context->IsCancelled();
}

// A client's own timer cancels its call at its deadline, which may reach the server just
// before the server's copy of the deadline (arrival + the timeout header) passes: a call
// cancelled this close to its deadline ended by the deadline.
constexpr auto kDeadlineSlack = std::chrono::milliseconds(100);

grpc::Status ClientEndStatus(grpc::ServerContext* context) {
  if (context->deadline() <= std::chrono::system_clock::now() + kDeadlineSlack) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
}

// Logs a refused call (who called, for what) as `event` and returns its status.
grpc::Status Refuse(const grpc::ServerContext& context, absl::string_view event,
                    absl::string_view call, absl::string_view subject, grpc::StatusCode code,
                    absl::string_view why) {
  Log(LogLevel::kWarning, kComponent,
      {{"event", std::string(event)},
       {"call", std::string(call)},
       {"subject", std::string(subject)},
       {"peer", context.peer()},
       {"reason", std::string(why)}});
  return grpc::Status(code, std::string(why));
}

grpc::Status RefuseRegistryCall(const grpc::ServerContext& context, absl::string_view call,
                                absl::string_view subject, grpc::StatusCode code,
                                absl::string_view why) {
  return Refuse(context, "registry_call_refused", call, subject, code, why);
}

}  // namespace

class Coordinator::InferenceImpl final : public v1::Inference::Service {
 public:
  explicit InferenceImpl(Coordinator& coordinator) : c_(coordinator) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::GenerateResponse* response) override {
    absl::StatusOr<std::string> tenant = Admit(*context, *request);
    if (!tenant.ok()) return ToGrpcStatus(tenant.status());
    RequestRecord record;
    grpc::Status status = c_.RunRequest(
        context, *request, *tenant,
        [response](const v1::GenerateStreamResponse& message) {
          AppendToResponse(message, response);
          return true;
        },
        &record);
    return status;
  }

  grpc::Status GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                              grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override {
    absl::StatusOr<std::string> tenant = Admit(*context, *request);
    if (!tenant.ok()) return ToGrpcStatus(tenant.status());
    RequestRecord record;
    return c_.RunRequest(
        context, *request, *tenant,
        [writer](const v1::GenerateStreamResponse& message) { return writer->Write(message); },
        &record);
  }

  grpc::Status GenerateBatch(grpc::ServerContext* context, const v1::GenerateBatchRequest* batch,
                             v1::GenerateBatchResponse* response) override {
    absl::StatusOr<std::string> tenant = Admit(*context, *batch);
    if (!tenant.ok()) return ToGrpcStatus(tenant.status());
    const int n = batch->requests_size();
    if (n > c_.options_.max_batch_requests) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("requests: ", n, " in one batch; at most ", c_.options_.max_batch_requests));
    }
    for (int i = 0; i < n; ++i) response->add_results();
    // Up to kBatchParallelism requests run at once, each on a thread that takes the next
    // unstarted one; the router spreads them over the groups and each group's engine batches
    // what it gets. The threads come from a budget shared by every call in flight
    // (max_batch_threads): a call that finds it spent runs its requests on its own thread.
    std::atomic<int> next{0};
    auto run_next = [this, context, batch, response, &next, &tenant] {
      for (int i = next.fetch_add(1); i < batch->requests_size(); i = next.fetch_add(1)) {
        v1::BatchResult* result = response->mutable_results(i);
        RequestRecord record;
        v1::GenerateResponse* out = result->mutable_response();
        grpc::Status status = c_.RunRequest(
            context, batch->requests(i), *tenant,
            [out](const v1::GenerateStreamResponse& message) {
              AppendToResponse(message, out);
              return true;
            },
            &record);
        if (!status.ok()) {
          result->set_error_code(status.error_code());
          result->set_error_message(absl::StrCat("requests[", i, "]: ", status.error_message()));
        }
      }
    };
    std::vector<std::thread> threads;
    const int wanted = std::min(n, kBatchParallelism) - 1;  // and this thread
    for (int t = 0; t < wanted; ++t) {
      if (c_.batch_threads_.fetch_add(1) >= c_.options_.max_batch_threads) {
        c_.batch_threads_.fetch_sub(1);
        break;
      }
      try {
        threads.emplace_back(run_next);
      } catch (const std::system_error&) {  // the system has no thread to give: go on with fewer
        c_.batch_threads_.fetch_sub(1);
        break;
      }
    }
    run_next();
    for (std::thread& thread : threads) thread.join();
    c_.batch_threads_.fetch_sub(static_cast<int>(threads.size()));
    if (ClientGone(context)) return ClientEndStatus(context);
    return grpc::Status::OK;
  }

  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override {
    if (absl::Status caller = Admit(*context, *request).status(); !caller.ok()) {
      return ToGrpcStatus(caller);
    }
    if (request->model().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model: required");
    }
    std::string version = request->version();
    if (version.empty()) {
      std::vector<std::string> versions =
          c_.registry_.HealthyVersions(request->model(), absl::Now());
      if (!versions.empty()) version = versions.front();
    }
    absl::StatusOr<std::shared_ptr<const PromptEncoder>> encoder =
        c_.EncoderFor(request->model(), version);
    if (!encoder.ok()) return ToGrpcStatus(encoder.status());
    absl::StatusOr<std::vector<int32_t>> tokens =
        (*encoder)->tokenizer().Encode(request->text(), request->add_special_tokens());
    if (!tokens.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("text: ", tokens.status().message()));
    }
    response->mutable_tokens()->Add(tokens->begin(), tokens->end());
    return grpc::Status::OK;
  }

  grpc::Status LoadAdapter(grpc::ServerContext* context, const v1::LoadAdapterRequest* request,
                           v1::LoadAdapterResponse* response) override {
    if (absl::Status caller = AdmitOperator(*context, *request, "LoadAdapter"); !caller.ok()) {
      return Refuse(*context, "operator_call_refused", "LoadAdapter", request->adapter().name(),
                    static_cast<grpc::StatusCode>(caller.code()), caller.message());
    }
    return c_.LoadAdapter(*request, response);
  }

  grpc::Status UnloadAdapter(grpc::ServerContext* context, const v1::UnloadAdapterRequest* request,
                             v1::UnloadAdapterResponse* response) override {
    if (absl::Status caller = AdmitOperator(*context, *request, "UnloadAdapter"); !caller.ok()) {
      return Refuse(*context, "operator_call_refused", "UnloadAdapter", request->name(),
                    static_cast<grpc::StatusCode>(caller.code()), caller.message());
    }
    return c_.UnloadAdapter(*request, response);
  }

  grpc::Status ListAdapters(grpc::ServerContext* context, const v1::ListAdaptersRequest* request,
                            v1::ListAdaptersResponse* response) override {
    if (absl::Status caller = Admit(*context, *request).status(); !caller.ok()) {
      return ToGrpcStatus(caller);
    }
    std::vector<AdapterListing> adapters = c_.Adapters(request->model());
    if (adapters.empty() && !request->model().empty() &&
        !c_.RegisteredGroups(request->model(), "").ok()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("model: no worker group serves '", request->model(), "'"));
    }
    for (const AdapterListing& adapter : adapters) {
      v1::AdapterInfo* info = response->add_adapters();
      info->set_model(adapter.model);
      info->set_version(adapter.version);
      info->set_name(adapter.name);
      info->set_dir(adapter.dir);
      info->set_groups(adapter.groups);
      info->set_resident(adapter.resident);
    }
    return grpc::Status::OK;
  }

  grpc::Status StartTraining(grpc::ServerContext* context, const v1::StartTrainingRequest* request,
                             v1::StartTrainingResponse* response) override {
    if (absl::Status caller = AdmitOperator(*context, *request, "StartTraining"); !caller.ok()) {
      return Refuse(*context, "operator_call_refused", "StartTraining", request->model(),
                    static_cast<grpc::StatusCode>(caller.code()), caller.message());
    }
    return c_.StartTraining(*request, response);
  }

  grpc::Status TrainingStatus(grpc::ServerContext* context,
                              const v1::TrainingStatusRequest* request,
                              v1::TrainingStatusResponse* response) override {
    if (absl::Status caller = Admit(*context, *request).status(); !caller.ok()) {
      return ToGrpcStatus(caller);
    }
    return c_.TrainingStatus(*request, response);
  }

  grpc::Status StopTraining(grpc::ServerContext* context, const v1::StopTrainingRequest* request,
                            v1::StopTrainingResponse* response) override {
    if (absl::Status caller = AdmitOperator(*context, *request, "StopTraining"); !caller.ok()) {
      return Refuse(*context, "operator_call_refused", "StopTraining", request->model(),
                    static_cast<grpc::StatusCode>(caller.code()), caller.message());
    }
    return c_.StopTraining(*request, response);
  }

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override {
    if (absl::Status caller = Admit(*context, *request).status(); !caller.ok()) {
      return ToGrpcStatus(caller);
    }
    absl::Time now = absl::Now();
    for (const ModelSummary& model : c_.registry_.Models(now)) {
      v1::ModelInfo* info = response->add_models();
      info->set_name(model.model);
      std::vector<std::string> healthy = c_.registry_.HealthyVersions(model.model, now);
      std::map<std::string, double> shares = c_.router_.VersionShares(model.model, healthy);
      for (const VersionSummary& version : model.versions) {
        v1::ModelVersion* out = info->add_versions();
        out->set_version(version.version);
        auto share = shares.find(version.version);
        out->set_weight(share == shares.end() ? 0.0 : share->second);
        out->set_groups(version.groups);
        out->set_healthy_groups(version.healthy_groups);
        out->set_max_model_length(version.max_model_length);
      }
    }
    return grpc::Status::OK;
  }

 private:
  // A request the client API takes: within the size limit, from a caller with a valid key
  // (when keys are required). The caller's tenant; empty without keys.
  absl::StatusOr<std::string> Admit(const grpc::ServerContext& context,
                                    const google::protobuf::Message& request) const {
    if (absl::Status size = CheckSize(request); !size.ok()) return size;
    return c_.Authenticate(context);
  }

  // An operator's call (`call`, for messages): within the size limit, from an operator.
  absl::Status AdmitOperator(const grpc::ServerContext& context,
                             const google::protobuf::Message& request,
                             absl::string_view call) const {
    if (absl::Status size = CheckSize(request); !size.ok()) return size;
    return c_.AuthorizeOperator(context, call);
  }

  absl::Status CheckSize(const google::protobuf::Message& request) const {
    const int64_t limit = c_.options_.max_request_bytes;
    if (limit > 0 && static_cast<int64_t>(request.ByteSizeLong()) > limit) {
      return absl::ResourceExhaustedError(absl::StrCat("request of ", request.ByteSizeLong(),
                                                       " bytes; at most ", limit,
                                                       " (--max-message-bytes)"));
    }
    return absl::OkStatus();
  }

  Coordinator& c_;
};

class Coordinator::RegistryImpl final : public v1::WorkerRegistry::Service {
 public:
  explicit RegistryImpl(Coordinator& coordinator) : c_(coordinator) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    // The join token before anything else is read.
    if (!c_.ShowsJoinToken(*context)) {
      return RefuseRegistryCall(*context, "Register", request->name(),
                                grpc::StatusCode::UNAUTHENTICATED,
                                "registration needs the coordinator's join token (worker flag "
                                "--join-token-file)");
    }
    absl::StatusOr<std::string> secret = RandomHex(16);
    if (!secret.ok()) return ToGrpcStatus(secret.status());
    // The tokenizer first: a group whose tokenizer cannot be read is not routable.
    std::shared_ptr<const PromptEncoder> encoder;
    const std::string encoder_digest =
        Sha256Hex(absl::StrCat(request->tokenizer_json(), std::string(1, '\0'),
                               request->tokenizer_config().SerializeAsString()));
    {
      absl::MutexLock lock(&c_.mutex_);
      auto found = c_.parsed_.find(encoder_digest);
      if (found != c_.parsed_.end()) encoder = found->second;
    }
    if (encoder == nullptr) {
      if (request->tokenizer_json().empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "tokenizer_json: required (the model's tokenizer.json)");
      }
      absl::StatusOr<std::shared_ptr<const PromptEncoder>> parsed = PromptEncoder::Create(
          request->tokenizer_json(), "tokenizer_json", FromWire(request->tokenizer_config()));
      if (!parsed.ok()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            std::string(parsed.status().message()));
      }
      encoder = *std::move(parsed);
      if (!encoder->chat_status().ok()) {
        LogEvent(kComponent, {{"event", "chat_unavailable"},
                              {"model", request->model()},
                              {"version", request->version()},
                              {"why", std::string(encoder->chat_status().message())}});
      }
    }
    absl::StatusOr<std::string> id =
        c_.registry_.Register(FromWire(*request), absl::Now(), FromWire(request->adapters()));
    if (!id.ok()) return ToGrpcStatus(id.status());

    auto link = std::make_shared<GroupLink>();
    link->id = *id;
    link->secret = *secret;
    link->model = request->model();
    link->version = request->version();
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    link->channel = grpc::CreateCustomChannel(request->endpoint(),
                                              c_.options_.worker_credentials != nullptr
                                                  ? c_.options_.worker_credentials
                                                  : grpc::InsecureChannelCredentials(),
                                              args);
    link->stub = v1::Worker::NewStub(link->channel);
    {
      absl::MutexLock lock(&c_.mutex_);
      c_.links_[*id] = link;
      c_.parsed_[encoder_digest] = encoder;
      c_.encoders_[TokenizerKey(request->model(), request->version())] = encoder;
      c_.ReleaseUnusedEncoders();  // the one this model and version had before, say
      auto training =
          c_.trainings_by_name_.find(Coordinator::TrainingKey(request->model(), request->name()));
      if (training != c_.trainings_by_name_.end()) {
        response->set_training_config_json(training->second);
      }
    }
    response->set_group_id(*id);
    response->set_group_secret(*secret);
    // Read after the group joined the registry: an adapter loaded from now on reaches it
    // through LoadAdapter's calls, one loaded before through this answer.
    for (const auto& [name, dir] : c_.adapters_.For(request->model(), request->version())) {
      v1::AdapterSource* adapter = response->add_adapters();
      adapter->set_name(name);
      adapter->set_dir(dir);
    }
    response->set_heartbeat_interval_seconds(
        absl::ToDoubleSeconds(c_.registry_.options().heartbeat_interval));
    LogEvent(kComponent, {{"event", "group_registered"},
                          {"group", *id},
                          {"name", request->name()},
                          {"model", request->model()},
                          {"version", request->version()},
                          {"endpoint", request->endpoint()},
                          {"metrics_endpoint", request->metrics_endpoint()},
                          {"tp", absl::StrCat(request->topology().tp())},
                          {"kv_blocks", absl::StrCat(request->kv().blocks())}});
    c_.CollectGauges();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    if (!SecretMatches(request->group_id(), request->group_secret())) {
      return RefuseRegistryCall(*context, "Heartbeat", request->group_id(),
                                grpc::StatusCode::PERMISSION_DENIED,
                                "the group secret does not match the one given at registration");
    }
    bool known =
        c_.registry_.Heartbeat(request->group_id(), FromWire(request->load()), absl::Now());
    response->set_registered(known);  // gauges and health follow on the reaper's next tick
    return grpc::Status::OK;
  }

  grpc::Status Deregister(grpc::ServerContext* context, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse* /*response*/) override {
    if (!SecretMatches(request->group_id(), request->group_secret())) {
      return RefuseRegistryCall(*context, "Deregister", request->group_id(),
                                grpc::StatusCode::PERMISSION_DENIED,
                                "the group secret does not match the one given at registration");
    }
    if (c_.registry_.Deregister(request->group_id())) {
      c_.OnGroupGone(request->group_id(), "it deregistered (shutting down)");
    }
    return grpc::Status::OK;
  }

 private:
  // True when `group` is unknown (nothing to protect: the call changes nothing) or `secret`
  // is its secret.
  bool SecretMatches(const std::string& group, const std::string& secret) const {
    absl::MutexLock lock(&c_.mutex_);
    auto link = c_.links_.find(group);
    return link == c_.links_.end() || SecretsEqual(secret, link->second->secret);
  }

  Coordinator& c_;
};

Coordinator::Coordinator(CoordinatorOptions options, MetricsRegistry& metrics)
    : options_(std::move(options)),
      registry_(options_.registry),
      router_(options_.router),
      quotas_(options_.tenants),
      request_metrics_(metrics),
      adapter_metrics_(metrics),
      seed_base_(std::random_device()()),
      inference_(std::make_unique<InferenceImpl>(*this)),
      registry_service_(std::make_unique<RegistryImpl>(*this)) {
  absl::Status weights = router_.SetAllVersionWeights(options_.version_weights);
  if (!weights.ok())
    LogEvent(kComponent, {{"event", "bad_weights"}, {"error", weights.ToString()}});
  queue_depth_ = *metrics.AddGauge("tessera_queue_depth",
                                   "Requests admitted and not finished, at the coordinator.", {});
  groups_gauge_ =
      *metrics.AddGauge("tessera_groups", "Registered worker groups, by health.", {"state"});
  group_running_ = *metrics.AddGauge("tessera_group_running_sequences",
                                     "Sequences running on each group (last heartbeat).",
                                     {"group", "model", "version"});
  group_outstanding_ = *metrics.AddGauge(
      "tessera_group_outstanding_tokens",
      "Tokens each group has still to compute (its load), as the coordinator estimates it.",
      {"group", "model", "version"});
  group_kv_blocks_ = *metrics.AddGauge("tessera_group_kv_blocks",
                                       "KV blocks of each group (last heartbeat), used or free.",
                                       {"group", "state"});
  redispatches_ = *metrics.AddCounter(
      "tessera_redispatches_total",
      "Requests sent again to another group after theirs failed before streaming.", {});
  resumes_ = *metrics.AddCounter(
      "tessera_resumes_total",
      "Requests continued on another group after theirs failed mid-stream (the tokens streamed "
      "so far prefilled there).",
      {});
  tokenizers_gauge_ = *metrics.AddGauge(
      "tessera_tokenizers", "Tokenizers the coordinator holds for its registered groups.", {});
  metrics.AddCollector([this] { CollectGauges(); });
  reaper_ = std::thread([this] { ReapLoop(); });
}

Coordinator::~Coordinator() {
  stop_.Notify();
  reaper_.join();
}

grpc::Service* Coordinator::inference_service() { return inference_.get(); }
grpc::Service* Coordinator::registry_service() { return registry_service_.get(); }

void Coordinator::AttachHealth(grpc::Server* server) {
  absl::MutexLock lock(&mutex_);
  health_server_ = server;
  SetServing(*server, {"tessera.v1.Inference"}, healthy_);
}

bool Coordinator::Healthy() const {
  absl::MutexLock lock(&mutex_);
  return healthy_;
}

int Coordinator::HealthyGroupCount() const {
  int healthy = 0;
  for (const GroupSnapshot& group : registry_.Groups(absl::Now())) healthy += group.healthy;
  return healthy;
}

std::vector<Coordinator::NamedGroup> Coordinator::HealthyGroupNames() const {
  std::vector<NamedGroup> names;
  for (const GroupSnapshot& group : registry_.Groups(absl::Now())) {
    if (group.healthy) names.push_back({group.info.name, group.id});
  }
  return names;
}

std::vector<std::string> Coordinator::GroupEndpoints() const {
  std::vector<std::string> endpoints;
  for (const GroupSnapshot& group : registry_.Groups(absl::Now())) {
    endpoints.push_back(group.info.endpoint);
  }
  return endpoints;
}

void Coordinator::CollectGauges() {
  absl::Time now = absl::Now();
  std::vector<GroupSnapshot> groups = registry_.Groups(now);
  int healthy = 0;
  for (const GroupSnapshot& group : groups) {
    healthy += group.healthy ? 1 : 0;
    group_running_->WithLabels({group.id, group.info.model, group.info.version})
        .Set(group.load->running);
    group_outstanding_->WithLabels({group.id, group.info.model, group.info.version})
        .Set(static_cast<double>(group.EstimatedOutstandingTokens()));
    group_kv_blocks_->WithLabels({group.id, "free"}).Set(group.load->kv_blocks_free);
    group_kv_blocks_->WithLabels({group.id, "used"})
        .Set(group.load->kv_blocks_total - group.load->kv_blocks_free);
  }
  groups_gauge_->WithLabels({"healthy"}).Set(healthy);
  groups_gauge_->WithLabels({"unhealthy"}).Set(static_cast<double>(groups.size()) - healthy);
  queue_depth_->WithLabels({}).Set(in_flight_.load());
  absl::MutexLock lock(&mutex_);
  tokenizers_gauge_->WithLabels({}).Set(static_cast<double>(parsed_.size()));
  bool now_healthy = healthy > 0;
  if (now_healthy != healthy_) {
    healthy_ = now_healthy;
    LogEvent(kComponent, {{"event", now_healthy ? "serving" : "not_serving"},
                          {"healthy_groups", absl::StrCat(healthy)}});
    if (health_server_ != nullptr) {
      SetServing(*health_server_, {"tessera.v1.Inference"}, healthy_);
    }
  }
}

void Coordinator::ReapLoop() {
  absl::Duration tick = options_.registry.heartbeat_interval / 4;
  while (!stop_.WaitForNotificationWithTimeout(tick)) {
    for (const std::string& id : registry_.ExpireDead(absl::Now())) {
      OnGroupGone(id, "it missed 3 heartbeats");
    }
    for (const StalledGroup& stalled : registry_.TakeNewlyStalled()) {
      std::string why = absl::StrCat("its engine has not stepped for ",
                                     absl::FormatDuration(stalled.since_progress), " (stalled, ",
                                     stalled.requests, " requests held)");
      LogEvent(kComponent, {{"event", "group_stalled"}, {"group", stalled.id}, {"why", why}});
      FailOpenCalls(stalled.id, why);
    }
    CollectGauges();
  }
}

void Coordinator::OnGroupGone(const std::string& id, const std::string& why) {
  std::shared_ptr<GroupLink> link;
  {
    absl::MutexLock lock(&mutex_);
    auto found = links_.find(id);
    if (found == links_.end()) return;
    link = found->second;
    links_.erase(found);
    ReleaseUnusedEncoders();
  }
  int cancelled = 0;
  {
    absl::MutexLock lock(&link->mutex);
    link->gone = true;
    link->why_gone = why;
    for (auto& [call, ended_because] : link->calls) {
      call->TryCancel();
      ++cancelled;
    }
  }
  for (absl::string_view state : {"free", "used"}) group_kv_blocks_->Remove({id, state});
  group_running_->Remove({id, link->model, link->version});
  group_outstanding_->Remove({id, link->model, link->version});
  LogEvent(kComponent, {{"event", "group_gone"},
                        {"group", id},
                        {"why", why},
                        {"open_requests", absl::StrCat(cancelled)}});
  CollectGauges();
}

void Coordinator::FailOpenCalls(const std::string& id, const std::string& why) {
  std::shared_ptr<GroupLink> link;
  {
    absl::MutexLock lock(&mutex_);
    auto found = links_.find(id);
    if (found == links_.end()) return;
    link = found->second;
  }
  absl::MutexLock lock(&link->mutex);
  for (auto& [call, ended_because] : link->calls) {
    if (!ended_because.empty()) continue;
    ended_because = why;
    call->TryCancel();
  }
}

void Coordinator::ReleaseUnusedEncoders() {
  absl::flat_hash_set<std::string> served;
  for (const auto& [id, link] : links_) served.insert(TokenizerKey(link->model, link->version));
  absl::erase_if(encoders_, [&](const auto& entry) { return !served.contains(entry.first); });
  absl::flat_hash_set<const PromptEncoder*> used;
  for (const auto& [key, encoder] : encoders_) used.insert(encoder.get());
  absl::erase_if(parsed_, [&](const auto& entry) { return !used.contains(entry.second.get()); });
}

absl::StatusOr<std::shared_ptr<const PromptEncoder>> Coordinator::EncoderFor(
    const std::string& model, const std::string& version) const {
  absl::MutexLock lock(&mutex_);
  auto found = encoders_.find(TokenizerKey(model, version));
  if (found == encoders_.end()) {
    return absl::NotFoundError(absl::StrCat("model: no group serves ", model,
                                            version.empty() ? "" : " version ", version));
  }
  return found->second;
}

absl::Status Coordinator::AdmitToQueue(TenantPriority priority) {
  double share = priority == TenantPriority::kHigh     ? 1.0
                 : priority == TenantPriority::kNormal ? 0.9
                                                       : 0.7;
  int limit = std::max(1, static_cast<int>(options_.max_queue * share));
  int before = in_flight_.fetch_add(1);
  if (before >= limit) {
    in_flight_.fetch_sub(1);
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full: ", before, " requests in flight (limit ", limit, " for priority ",
                     TenantPriorityName(priority), "); retry later"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Coordinator::Authenticate(const grpc::ServerContext& context) const {
  return AuthenticateKey(BearerToken(context));
}

bool Coordinator::ShowsJoinToken(const grpc::ServerContext& context) const {
  return options_.join_token.empty() || SecretsEqual(BearerToken(context), options_.join_token);
}

absl::Status Coordinator::AuthorizeOperator(const grpc::ServerContext& context,
                                            absl::string_view call) const {
  if (!options_.join_token.empty()) {
    if (ShowsJoinToken(context)) return absl::OkStatus();
    const std::string why = absl::StrCat(
        call,
        " is an operator's call: it needs the coordinator's join token (the token of its "
        "--join-token-file) as metadata \"authorization: Bearer TOKEN\"");
    return BearerToken(context).empty()
               ? absl::UnauthenticatedError(why)
               : absl::PermissionDeniedError(absl::StrCat(why, "; the token sent is not it"));
  }
  if (options_.api_keys != nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(
        call,
        " is an operator's call, and this coordinator takes API keys but has no join token "
        "to tell an operator by: start it with --join-token-file"));
  }
  return absl::OkStatus();
}

grpc::Status Coordinator::GroupError(const GroupSnapshot& group, const grpc::Status& status) {
  return grpc::Status(status.error_code(), absl::StrCat("group ", group.id, " (", group.info.name,
                                                        "): ", status.error_message()));
}

std::vector<grpc::Status> Coordinator::CallGroups(const std::vector<GroupSnapshot>& groups,
                                                  absl::Duration timeout, const GroupCall& call) {
  // Shared with the calls' callbacks, which may still be returning when the wait below ends.
  struct Pending {
    grpc::ClientContext context;
    grpc::Status status;
  };
  struct Wait {
    absl::Mutex mutex;
    int outstanding ABSL_GUARDED_BY(mutex) = 0;
  };
  auto wait = std::make_shared<Wait>();
  std::vector<std::shared_ptr<Pending>> pending;
  for (size_t i = 0; i < groups.size(); ++i) {
    auto one = pending.emplace_back(std::make_shared<Pending>());
    std::shared_ptr<GroupLink> link;
    {
      absl::MutexLock lock(&mutex_);
      auto found = links_.find(groups[i].id);
      if (found != links_.end()) link = found->second;
    }
    if (link == nullptr) {
      one->status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "it left the coordinator");
      continue;
    }
    one->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    {
      absl::MutexLock lock(&wait->mutex);
      ++wait->outstanding;
    }
    call(i, *link->stub, &one->context, [wait, one](grpc::Status result) {
      absl::MutexLock lock(&wait->mutex);
      one->status = std::move(result);
      --wait->outstanding;
    });
  }
  std::vector<grpc::Status> statuses;
  absl::MutexLock lock(&wait->mutex);
  wait->mutex.Await(absl::Condition(
      +[](Wait* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mutex) { return w->outstanding == 0; },
      wait.get()));
  for (const auto& one : pending) statuses.push_back(one->status);
  return statuses;
}

grpc::Status Coordinator::Generate(const v1::GenerateRequest& request,
                                   const std::string& key_tenant, const Sink& sink) {
  RequestRecord record;
  return RunRequest(nullptr, request, key_tenant, sink, &record);
}

std::vector<ModelSummary> Coordinator::Models() const { return registry_.Models(absl::Now()); }

absl::StatusOr<std::string> Coordinator::AuthenticateKey(const std::string& key) const {
  if (options_.api_keys == nullptr) return std::string();
  if (key.empty()) {
    return absl::UnauthenticatedError(
        "an API key is required: send it as metadata \"authorization: Bearer KEY\"");
  }
  std::optional<std::string> tenant = options_.api_keys->TenantOf(key);
  if (!tenant.has_value()) return absl::UnauthenticatedError("the API key is not valid");
  return *std::move(tenant);
}

grpc::Status Coordinator::RunRequest(grpc::ServerContext* context,
                                     const v1::GenerateRequest& request,
                                     const std::string& key_tenant, const Sink& sink,
                                     RequestRecord* record) {
  absl::Time start = absl::Now();
  v1::GenerateRequest forwarded = request;
  if (forwarded.request_id().empty()) {
    forwarded.set_request_id(absl::StrCat("r-", next_request_.fetch_add(1)));
  }
  // With API keys the request runs as the key's tenant; naming another is refused (and
  // recorded as the caller's).
  const std::string named_tenant = forwarded.tenant();
  if (!key_tenant.empty()) forwarded.set_tenant(key_tenant);
  if (forwarded.tenant().empty()) forwarded.set_tenant("default");
  record->request_id = forwarded.request_id();
  record->tenant = forwarded.tenant();

  grpc::Status status = [&]() -> grpc::Status {
    if (!key_tenant.empty() && !named_tenant.empty() && named_tenant != key_tenant) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          absl::StrCat("tenant: the API key belongs to tenant \"", key_tenant,
                                       "\", not \"", named_tenant, "\""));
    }
    if (absl::Status valid = ValidateGenerateRequest(forwarded, options_.request_limits);
        !valid.ok()) {
      return ToGrpcStatus(valid);
    }
    // A sampled request gets its seed here, so that a group that takes it over mid-stream
    // draws what the first would have (draws are keyed by seed and position).
    if (forwarded.sampling().temperature() > 0 && !forwarded.sampling().has_seed()) {
      forwarded.mutable_sampling()->set_seed(
          kernels::MixSeed(seed_base_, next_request_.fetch_add(1)));
    }
    TenantPriority priority = quotas_.PriorityOf(forwarded.tenant());
    if (absl::Status queued = AdmitToQueue(priority); !queued.ok()) return ToGrpcStatus(queued);
    struct Leave {
      std::atomic<int>& count;
      ~Leave() { count.fetch_sub(1); }
    } leave{in_flight_};

    // The version, then the tokens (the version's tokenizer).
    absl::Time now = absl::Now();
    std::vector<std::string> healthy = registry_.HealthyVersions(forwarded.model(), now);
    if (healthy.empty()) {
      bool known = false;
      for (const ModelSummary& model : registry_.Models(now))
        known |= model.model == forwarded.model();
      return known ? grpc::Status(
                         grpc::StatusCode::UNAVAILABLE,
                         absl::StrCat("no healthy worker group serves model ", forwarded.model()))
                   : grpc::Status(
                         grpc::StatusCode::NOT_FOUND,
                         absl::StrCat("model: no worker group serves '", forwarded.model(), "'"));
    }
    // A request naming an adapter draws among the versions that can run it.
    if (!forwarded.adapter().empty()) {
      healthy = registry_.HealthyVersions(forwarded.model(), now, forwarded.adapter());
      if (healthy.empty()) {
        return ToGrpcStatus(AdapterNotLoaded(forwarded.model(), forwarded.adapter(),
                                             registry_.HealthyGroups(forwarded.model(), "", now)));
      }
    }
    absl::StatusOr<std::string> version = router_.ChooseVersion(
        forwarded.model(), forwarded.version(), forwarded.session_id(), healthy);
    if (!version.ok()) return ToGrpcStatus(version.status());
    forwarded.set_version(*version);
    absl::StatusOr<std::shared_ptr<const PromptEncoder>> encoder =
        EncoderFor(forwarded.model(), *version);
    if (!encoder.ok()) {
      return grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("version: model ", forwarded.model(), " has no version '", *version, "'"));
    }
    absl::StatusOr<std::vector<int32_t>> encoded = (*encoder)->Encode(forwarded);
    if (!encoded.ok()) return ToGrpcStatus(encoded.status());
    const std::vector<int32_t> prompt = *std::move(encoded);
    if (forwarded.prompt_tokens().empty()) {
      forwarded.clear_prompt();
      forwarded.clear_messages();
      forwarded.mutable_prompt_tokens()->Add(prompt.begin(), prompt.end());
    }
    int max_tokens = forwarded.sampling().max_tokens() == 0 ? kDefaultMaxTokens
                                                            : forwarded.sampling().max_tokens();
    const int64_t asked = static_cast<int64_t>(prompt.size()) + max_tokens;
    if (absl::Status admitted = quotas_.Admit(forwarded.tenant(), asked, now); !admitted.ok()) {
      return ToGrpcStatus(admitted);
    }
    const absl::Time deadline = options_.max_request_duration == absl::InfiniteDuration()
                                    ? absl::InfiniteFuture()
                                    : start + options_.max_request_duration;
    grpc::Status dispatched = Dispatch(context, forwarded, prompt, deadline, sink, record);
    // The quota pays for what the request used, not what it could have.
    quotas_.Refund(forwarded.tenant(),
                   asked - static_cast<int64_t>(prompt.size()) - record->completion_tokens,
                   absl::Now());
    return dispatched;
  }();

  record->code = static_cast<absl::StatusCode>(status.error_code());
  record->total_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (record->code != absl::StatusCode::kOk && record->finish_reason.empty()) {
    record->finish_reason = record->code == absl::StatusCode::kCancelled ||
                                    record->code == absl::StatusCode::kDeadlineExceeded
                                ? "cancelled"
                                : "error";
  }
  quotas_.Charge(record->tenant, record->prompt_tokens, record->completion_tokens);
  request_metrics_.Record(*record);
  adapter_metrics_.Record(forwarded.model(), forwarded.adapter(), *record);
  if (!status.ok() || LogEnabled(LogLevel::kDebug)) {
    Log(status.ok() ? LogLevel::kDebug : LogLevel::kInfo, kComponent,
        {{"event", "request_done"},
         {"request_id", record->request_id},
         {"tenant", record->tenant},
         {"group", record->group},
         {"code", StatusCodeName(record->code)},
         {"message", status.error_message()},
         {"completion_tokens", absl::StrCat(record->completion_tokens)}});
  }
  return status;
}

std::vector<GroupSnapshot> Coordinator::Candidates(const v1::GenerateRequest& request,
                                                   const absl::flat_hash_set<std::string>& failed) {
  std::vector<GroupSnapshot> candidates;
  for (GroupSnapshot& group :
       registry_.HealthyGroups(request.model(), request.version(), absl::Now())) {
    if (!failed.contains(group.id)) candidates.push_back(std::move(group));
  }
  return candidates;
}

grpc::Status Coordinator::Dispatch(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                   const std::vector<int32_t>& prompt, absl::Time deadline,
                                   const Sink& sink, RequestRecord* record) {
  absl::Time start = absl::Now();
  absl::Time last_message = start;
  // What goes to the next group: after a failure mid-stream, the tokens streamed so far
  // travel as resumed_tokens, and that group continues the stream where it broke off.
  v1::GenerateRequest forwarded = request;
  int64_t streamed_tokens = 0;
  bool placement_sent = false;
  std::vector<v1::Resumption> resumptions;
  absl::flat_hash_set<std::string> failed;
  std::string last_failure;
  auto PastMaxDuration = [this](int64_t streamed) {
    return grpc::Status(
        grpc::StatusCode::DEADLINE_EXCEEDED,
        absl::StrCat("the request ran for the longest this server allows, ",
                     absl::FormatDuration(options_.max_request_duration),
                     " (--max-request-duration), and was stopped after ", streamed, " tokens"));
  };
  for (int attempt = 0; attempt < options_.max_dispatch_attempts; ++attempt) {
    std::vector<GroupSnapshot> candidates = Candidates(forwarded, failed);
    // A request a group dropped waits a while for another (one being restarted, say).
    absl::Time wait_until = std::min(
        {absl::Now() + options_.failover_wait, deadline,
         context != nullptr ? absl::FromChrono(context->deadline()) : absl::InfiniteFuture()});
    while (candidates.empty() && attempt > 0 && absl::Now() < wait_until && !ClientGone(context)) {
      absl::SleepFor(absl::Milliseconds(50));
      candidates = Candidates(forwarded, failed);
    }
    if (ClientGone(context)) return ClientEndStatus(context);
    if (absl::Now() >= deadline) return PastMaxDuration(streamed_tokens);
    if (candidates.empty()) {
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          absl::StrCat(
              "no healthy worker group serves model ", forwarded.model(), " version ",
              forwarded.version(),
              last_failure.empty()
                  ? ""
                  : absl::StrCat(" (", last_failure, "; waited ",
                                 absl::FormatDuration(options_.failover_wait), " for another)"),
              streamed_tokens > 0
                  ? absl::StrCat("; the request had streamed ", streamed_tokens, " tokens")
                  : ""));
    }
    RouteRequest route;
    route.model = forwarded.model();
    route.version = forwarded.version();
    route.max_tokens = forwarded.sampling().max_tokens() == 0 ? kDefaultMaxTokens
                                                              : forwarded.sampling().max_tokens();
    route.locality = {forwarded.locality().zone(), forwarded.locality().node()};
    route.session_id = forwarded.session_id();
    route.adapter = forwarded.adapter();
    route.HashPrompt(prompt, candidates);
    absl::StatusOr<RouteDecision> decision = router_.Route(route, candidates);
    if (!decision.ok()) return ToGrpcStatus(decision.status());
    if (LogEnabled(LogLevel::kDebug)) {
      Log(LogLevel::kDebug, kComponent,
          {{"event", "route"},
           {"request_id", forwarded.request_id()},
           {"decision", decision->Explain()}});
    }
    std::shared_ptr<GroupLink> link;
    {
      absl::MutexLock lock(&mutex_);
      auto found = links_.find(decision->group_id);
      if (found != links_.end()) link = found->second;
    }
    if (link == nullptr) {  // gone between the snapshot and now
      failed.insert(decision->group_id);
      continue;
    }
    record->group = link->id;
    registry_.Dispatched(link->id, forwarded.request_id(),
                         {static_cast<int64_t>(prompt.size()), route.max_tokens});

    std::unique_ptr<grpc::ClientContext> call =
        context != nullptr ? grpc::ClientContext::FromServerContext(*context)
                           : std::make_unique<grpc::ClientContext>();
    // The earlier of the client's deadline (propagated) and the coordinator's.
    if (deadline != absl::InfiniteFuture()) call->set_deadline(absl::ToChronoTime(deadline));
    {
      absl::MutexLock lock(&link->mutex);
      if (link->gone) {
        registry_.Completed(link->id, forwarded.request_id());
        failed.insert(link->id);
        continue;
      }
      link->calls.emplace(call.get(), std::string());
    }
    std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
        link->stub->Submit(call.get(), forwarded);
    v1::GenerateStreamResponse message;
    bool client_left = false;
    const int64_t streamed_before = streamed_tokens;
    while (reader->Read(&message)) {
      absl::Time at = absl::Now();
      if (streamed_tokens == 0 && !placement_sent) {
        record->time_to_first_token_seconds = absl::ToDoubleSeconds(at - start);
      } else {
        record->inter_token_seconds.push_back(absl::ToDoubleSeconds(at - last_message));
      }
      last_message = at;
      streamed_tokens += message.tokens_size();
      forwarded.mutable_resumed_tokens()->Add(message.tokens().begin(), message.tokens().end());
      // The client sees one stream: one placement (the first group's), and in the end what
      // failed on the way.
      if (placement_sent) message.clear_placement();
      // The group as the coordinator names it: a worker learns its own id only when its
      // registration returns, and may already be sent requests before that.
      if (message.has_placement()) {
        message.mutable_placement()->set_group(link->id);
        message.mutable_placement()->set_adapter(forwarded.adapter());
      }
      placement_sent |= message.has_placement();
      if (message.final()) {
        record->finish_reason = absl::AsciiStrToLower(
            absl::StripPrefix(v1::FinishReason_Name(message.finish_reason()), "FINISH_REASON_"));
        record->prompt_tokens = message.usage().prompt_tokens();
        record->completion_tokens = message.usage().completion_tokens();
        record->cached_tokens = message.usage().cached_tokens();
        if (!resumptions.empty()) {
          message.mutable_resumptions()->Add(resumptions.begin(), resumptions.end());
          // The last group's clock started at its resumption; the client's at its request.
          message.mutable_timings()->set_time_to_first_token_seconds(
              record->time_to_first_token_seconds);
          message.mutable_timings()->set_total_seconds(absl::ToDoubleSeconds(at - start));
        }
      }
      if (!sink(message)) {
        client_left = true;
        call->TryCancel();
        break;
      }
    }
    grpc::Status status = reader->Finish();
    bool gone;
    std::string why_gone, ended_because;
    {
      absl::MutexLock lock(&link->mutex);
      auto open = link->calls.find(call.get());
      ended_because = std::move(open->second);
      link->calls.erase(open);
      gone = link->gone;
      why_gone = link->why_gone;
    }
    registry_.Completed(link->id, forwarded.request_id());
    if (client_left || ClientGone(context)) {
      return context != nullptr ? ClientEndStatus(context)
                                : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    if (status.ok()) return status;
    // The coordinator's maximum duration, not the group's failure: the request ends here.
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
        absl::Now() + absl::FromChrono(kDeadlineSlack) >= deadline) {
      return PastMaxDuration(streamed_tokens);
    }
    // The group failed, left, stalled, or refused the request.
    bool group_failed =
        gone || !ended_because.empty() || status.error_code() == grpc::StatusCode::UNAVAILABLE;
    if (!group_failed) return status;
    if (!gone && ended_because.empty()) registry_.MarkFailed(link->id, absl::Now());
    std::string what = gone ? absl::StrCat("group ", link->id, " went away: ", why_gone)
                       : !ended_because.empty()
                           ? absl::StrCat("group ", link->id, ": ", ended_because)
                           : absl::StrCat("group ", link->id, ": ", status.error_message());
    failed.insert(link->id);
    last_failure = what;
    if (streamed_tokens > 0) {
      // Mid-stream: the next group prefills the prompt and the tokens sent so far.
      v1::Resumption& resumption = resumptions.emplace_back();
      resumption.set_failed_group(link->id);
      resumption.set_at_token(static_cast<int32_t>(streamed_tokens));
      LogEvent(kComponent, {{"event", "resume"},
                            {"request_id", forwarded.request_id()},
                            {"failed_group", link->id},
                            {"at_token", absl::StrCat(streamed_tokens)},
                            {"streamed_here", absl::StrCat(streamed_tokens - streamed_before)},
                            {"why", what}});
      resumes_->WithLabels({}).Inc();
      if (streamed_tokens >= route.max_tokens) {
        // Every token had been sent; only the final message was lost with the group. Another
        // group would have nothing to generate: the request ends here, as it would have.
        v1::GenerateStreamResponse last;
        last.set_request_id(forwarded.request_id());
        last.set_final(true);
        last.set_finish_reason(v1::FINISH_REASON_LENGTH);
        last.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(prompt.size()));
        last.mutable_usage()->set_completion_tokens(static_cast<int32_t>(streamed_tokens));
        last.mutable_timings()->set_time_to_first_token_seconds(
            record->time_to_first_token_seconds);
        last.mutable_timings()->set_total_seconds(absl::ToDoubleSeconds(absl::Now() - start));
        last.mutable_resumptions()->Add(resumptions.begin(), resumptions.end());
        record->finish_reason = "length";
        record->prompt_tokens = static_cast<int>(prompt.size());
        record->completion_tokens = static_cast<int>(streamed_tokens);
        if (!sink(last)) {
          return context != nullptr ? ClientEndStatus(context)
                                    : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
        }
        return grpc::Status::OK;
      }
      continue;
    }
    LogEvent(kComponent, {{"event", "redispatch"},
                          {"request_id", forwarded.request_id()},
                          {"failed_group", link->id},
                          {"why", what}});
    redispatches_->WithLabels({}).Inc();
  }
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      absl::StrCat("the request failed on ", options_.max_dispatch_attempts,
                                   " groups; last: ", last_failure,
                                   streamed_tokens > 0 ? absl::StrCat("; the request had streamed ",
                                                                      streamed_tokens, " tokens")
                                                       : ""));
}

}  // namespace tessera::serve
