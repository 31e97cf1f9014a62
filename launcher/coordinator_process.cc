#include "launcher/coordinator_process.h"

#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "launcher/request_limit_flags.h"
#include "launcher/secret_file.h"
#include "launcher/tls_flags.h"
#include "runtime/core/status_macros.h"
#include "runtime/serve/log.h"
#include "runtime/serve/openai_http.h"

namespace tessera::launcher {

void AddCoordinatorFlags(FlagSet& flags, CoordinatorConfig* config) {
  flags.String("listen", &config->listen,
               "host:port of the gRPC API (Inference, WorkerRegistry); loopback unless given, "
               "e.g. 0.0.0.0:50051 for every interface");
  flags.String("metrics-listen", &config->metrics_listen,
               "host:port of the Prometheus endpoint (/metrics, /healthz), loopback unless "
               "given; 'off' for none");
  flags.String("http-listen", &config->http_listen,
               "host:port of the OpenAI-style HTTP API (POST /v1/chat/completions, "
               "/v1/completions, GET /v1/models), with the same keys, tenants and routing as "
               "gRPC; loopback unless given; 'off' for none");
  flags.String("policy", &config->policy,
               "routing: combined (load, prefix and topology in one score), least-load, "
               "prefix or topology");
  flags.String("versions", &config->versions,
               "weights of model versions for requests that name none, e.g. "
               "\"tiny=v1:95,v2:5\" (models separated by ';'); default: equal shares");
  flags.String("tenants", &config->tenants_file,
               "a JSON file of tenants: priority class and token-rate quota");
  flags.String("tenant-quotas", &config->tenant_quotas,
               "tenants on the command line: NAME=PRIORITY:TOKENS_PER_SECOND:BURST,...");
  flags.Int("max-queue", &config->max_queue,
            "requests in flight at once; beyond it RESOURCE_EXHAUSTED (low priority first)");
  flags.Duration("heartbeat-interval", &config->heartbeat_interval,
                 "how often groups report; a group that misses 3 is dead");
  flags.DurationOrOff("engine-stall-timeout", &config->engine_stall_timeout,
                      "a group whose engine loop has not turned (stepped, or woken while idle) for "
                      "this long is taken out of routing, and its requests move to other groups; "
                      "longer than the longest step; off: never");
  flags.DurationOrOff("max-request-duration", &config->max_request_duration,
                      "the longest one request may run, whatever its client's deadline; past it "
                      "the request ends DEADLINE_EXCEEDED; off: no limit");
  flags.Duration("failover-wait", &config->failover_wait,
                 "how long a request whose group failed waits for another healthy group "
                 "(one being restarted, say) before it ends UNAVAILABLE");
  flags.Bytes("max-message-bytes", &config->max_message_bytes,
              "largest request message accepted (RESOURCE_EXHAUSTED beyond it)");
  flags.Bytes("max-registration-bytes", &config->max_registration_bytes,
              "largest worker registration accepted (it carries the model's tokenizer.json)");
  flags.String("worker-listen", &config->worker_listen,
               "host:port of a listener of its own for worker registration and heartbeats "
               "(WorkerRegistry); empty: --listen serves them too");
  flags.String("api-keys", &config->api_keys_file,
               "a file of API keys, stored hashed, each naming its tenant (`tessera api-key` "
               "adds one); clients then need a key, sent as \"authorization: Bearer KEY\". "
               "Re-read when it changes");
  flags.String("join-token-file", &config->join_token_file,
               "a file holding the token workers must show to register (also "
               "TESSERA_JOIN_TOKEN); empty: any worker that reaches the port may register");
  AddTlsFlags(flags, &config->tls, /*serves=*/true);
  AddRequestLimitFlags(flags, &config->request_limits);
  flags.Int("max-batch-requests", &config->max_batch_requests,
            "requests one GenerateBatch may hold (INVALID_ARGUMENT beyond)");
  flags.Int("max-batch-threads", &config->max_batch_threads,
            "threads all GenerateBatch calls in flight may take together");
}

void ConfigureCoordinatorProcess() {
  // MALLOC_ARENA_MAX, when set, is the operator's choice.
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
}

RunningCoordinator::~RunningCoordinator() {
  if (http_server != nullptr) http_server->Stop();
  if (metrics_server != nullptr) metrics_server->Stop();
  for (serve::RunningGrpcServer* server : {&grpc, &worker_grpc}) {
    if (server->server != nullptr) {
      server->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    }
  }
}

absl::StatusOr<std::unique_ptr<RunningCoordinator>> StartCoordinator(
    const CoordinatorConfig& config) {
  serve::CoordinatorOptions options;
  TESSERA_ASSIGN_OR_RETURN(options.router.policy, serve::ParseRoutingPolicy(config.policy));
  absl::StatusOr<serve::ModelVersionWeights> weights = serve::ParseVersionWeights(config.versions);
  if (!weights.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--versions: ", weights.status().message()));
  }
  options.version_weights = *std::move(weights);
  if (!config.tenants_file.empty()) {
    absl::StatusOr<serve::TenantQuotaConfig> tenants =
        serve::LoadTenantQuotaConfigFile(config.tenants_file);
    if (!tenants.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--tenants: ", tenants.status().message()));
    }
    options.tenants = *std::move(tenants);
  }
  if (!config.tenant_quotas.empty()) {
    absl::Status added = serve::AddTenantQuotasFromFlag(config.tenant_quotas, &options.tenants);
    if (!added.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--tenant-quotas: ", added.message()));
    }
  }
  if (config.max_queue < 1) return absl::InvalidArgumentError("--max-queue: must be >= 1");
  if (config.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--heartbeat-interval: must be > 0");
  }
  if (config.max_message_bytes < 1024 || config.max_message_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("--max-message-bytes: must be between 1K and 1G");
  }
  if (config.max_registration_bytes < 1024 || config.max_registration_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("--max-registration-bytes: must be between 1K and 1G");
  }
  options.max_request_bytes = config.worker_listen.empty() ? config.max_message_bytes : 0;
  if (config.engine_stall_timeout > absl::ZeroDuration() &&
      config.engine_stall_timeout < 2 * config.heartbeat_interval) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--engine-stall-timeout: ", absl::FormatDuration(config.engine_stall_timeout),
        " is under two heartbeat intervals (--heartbeat-interval ",
        absl::FormatDuration(config.heartbeat_interval), "); steps are seen only at heartbeats"));
  }
  options.max_queue = config.max_queue;
  options.registry.heartbeat_interval = config.heartbeat_interval;
  options.registry.engine_stall_after = config.engine_stall_timeout;
  if (config.failover_wait < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--failover-wait: must not be negative");
  }
  options.failover_wait = config.failover_wait;
  options.max_request_duration = config.max_request_duration == absl::ZeroDuration()
                                     ? absl::InfiniteDuration()
                                     : config.max_request_duration;

  TESSERA_RETURN_IF_ERROR(serve::CheckTlsFiles(config.tls));
  TESSERA_RETURN_IF_ERROR(CheckRequestLimits(config.request_limits));
  options.request_limits = config.request_limits;
  if (config.max_batch_requests < 1 || config.max_batch_threads < 0) {
    return absl::InvalidArgumentError(
        "--max-batch-requests must be >= 1 and --max-batch-threads >= 0");
  }
  options.max_batch_requests = config.max_batch_requests;
  options.max_batch_threads = config.max_batch_threads;
  TESSERA_ASSIGN_OR_RETURN(options.worker_credentials, serve::ChannelCredentialsFor(config.tls));
  TESSERA_ASSIGN_OR_RETURN(
      options.join_token,
      ReadSecret(config.join_token_file, "TESSERA_JOIN_TOKEN", "--join-token-file"));

  auto running = std::make_unique<RunningCoordinator>();
  running->join_token = options.join_token;
  if (!config.api_keys_file.empty()) {
    absl::StatusOr<std::unique_ptr<serve::ApiKeyStore>> keys =
        serve::ApiKeyStore::Open(config.api_keys_file);
    if (!keys.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--api-keys: ", keys.status().message()));
    }
    running->api_keys = *std::move(keys);
    options.api_keys = running->api_keys.get();
  }
  running->metrics = std::make_unique<serve::MetricsRegistry>();
  running->coordinator = std::make_unique<serve::Coordinator>(options, *running->metrics);
  serve::GrpcServerOptions grpc_options;
  grpc_options.address = config.listen;
  grpc_options.max_message_bytes = static_cast<int>(config.max_message_bytes);
  grpc_options.who = "tessera coordinator";
  TESSERA_ASSIGN_OR_RETURN(grpc_options.credentials, serve::ServerCredentialsFor(config.tls));
  if (config.worker_listen.empty()) {
    // One listener for both: it takes registrations' size, and the client API refuses
    // requests past --max-message-bytes itself.
    grpc_options.max_message_bytes =
        static_cast<int>(std::max(config.max_message_bytes, config.max_registration_bytes));
    TESSERA_ASSIGN_OR_RETURN(
        running->grpc,
        serve::StartGrpcServer(grpc_options, {running->coordinator->inference_service(),
                                              running->coordinator->registry_service()}));
  } else {
    TESSERA_ASSIGN_OR_RETURN(
        running->grpc,
        serve::StartGrpcServer(grpc_options, {running->coordinator->inference_service()}));
    serve::GrpcServerOptions worker_options = grpc_options;
    worker_options.address = config.worker_listen;
    worker_options.max_message_bytes = static_cast<int>(config.max_registration_bytes);
    TESSERA_ASSIGN_OR_RETURN(
        running->worker_grpc,
        serve::StartGrpcServer(worker_options, {running->coordinator->registry_service()}));
  }
  running->coordinator->AttachHealth(running->grpc.server.get());
  if (config.http_listen != "off") {
    serve::OpenAiHttpOptions http;
    http.max_body_bytes = static_cast<size_t>(config.max_message_bytes);
    http.tls = config.tls;
    TESSERA_ASSIGN_OR_RETURN(
        running->http_server,
        serve::StartOpenAiHttp(config.http_listen, *running->coordinator, http));
  }
  if (config.metrics_listen != "off") {
    serve::Coordinator* coordinator = running->coordinator.get();
    TESSERA_ASSIGN_OR_RETURN(
        running->metrics_server,
        serve::MetricsServer::Start(config.metrics_listen, running->metrics.get(),
                                    [coordinator] { return coordinator->Healthy(); }));
  }
  return running;
}

}  // namespace tessera::launcher
