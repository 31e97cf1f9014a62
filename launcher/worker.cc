#include "launcher/worker.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "comm/agreement.h"
#include "comm/host_name.h"
#include "comm/node_share.h"
#include "launcher/engine_flags.h"
#include "launcher/flags.h"
#include "launcher/model_job.h"
#include "launcher/request_limit_flags.h"
#include "launcher/secret_file.h"
#include "launcher/serving_finetune.h"
#include "launcher/shutdown_signal.h"
#include "launcher/tls_flags.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"
#include "runtime/engine/engine.h"
#include "runtime/model/default_model.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/json_file.h"
#include "runtime/serve/coordinator_link.h"
#include "runtime/serve/grpc_server.h"
#include "runtime/serve/local_address.h"
#include "runtime/serve/log.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/metrics_http.h"
#include "runtime/serve/serve_metrics.h"
#include "runtime/serve/worker_service.h"

namespace tessera::launcher {
namespace {

struct WorkerConfig {
  std::string coordinator;
  std::string listen;  // empty: the address facing the coordinator, any port
  std::string advertise;
  std::string metrics_listen;  // empty: as listen
  std::string model_name;
  std::string version = "v1";
  std::string zone;
  int replica_offset = 0;       // the index of this job's first replica
  std::string join_token_file;  // empty: TESSERA_JOIN_TOKEN, or none
  serve::TlsFiles tls;          // its Worker listener's, and how it dials the coordinator
  serve::RequestLimits request_limits;
  ModelJobOptions job;
  engine::EngineOptions engine;
  std::string adapters;      // --adapters: name=DIR,...
  std::string train_config;  // --train-config: a fine-tune inside the group
};

// The median time of an all-reduce of one f32 activation row of the model (hidden_size
// values), over `tp`. Collective. Reported at registration for topology-aware routing.
absl::StatusOr<double> MeasureAllReduceLatency(comm::Communicator& tp, int64_t hidden_size) {
  if (tp.size() == 1) return 0.0;
  TESSERA_ASSIGN_OR_RETURN(Tensor row, Tensor::Zeros(DType::kF32, {hidden_size}));
  Stream cpu = Stream::Cpu();
  constexpr int kWarmup = 5, kTimed = 31;
  std::vector<double> seconds;
  for (int i = 0; i < kWarmup + kTimed; ++i) {
    auto start = std::chrono::steady_clock::now();
    TESSERA_RETURN_IF_ERROR(tp.AllReduce(row, comm::ReduceOp::kSum, cpu));
    if (i >= kWarmup) {
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::nth_element(seconds.begin(), seconds.begin() + kTimed / 2, seconds.end());
  return seconds[kTimed / 2];
}

v1::Interconnect GroupInterconnect(const std::vector<std::string>& hosts) {
  if (hosts.size() <= 1) return v1::INTERCONNECT_SINGLE_DEVICE;
  bool one_host = std::all_of(hosts.begin(), hosts.end(),
                              [&](const std::string& h) { return h == hosts.front(); });
  // The CPU backend: ranks of one node reduce through shared memory.
  return one_host ? v1::INTERCONNECT_HOST_MEMORY : v1::INTERCONNECT_MULTI_NODE;
}

// The engine's state of the moment, read at every scrape.
void AddEngineGauges(serve::MetricsRegistry& metrics, const engine::Engine& engine) {
  serve::GaugeFamily* queued = *metrics.AddGauge(
      "tessera_queue_depth", "Requests waiting for the engine (preempted ones included).", {});
  serve::GaugeFamily* running =
      *metrics.AddGauge("tessera_running_sequences", "Sequences holding KV blocks.", {});
  serve::GaugeFamily* blocks = *metrics.AddGauge(
      "tessera_kv_blocks", "KV cache blocks: used (held by running sequences) or free.", {"state"});
  serve::GaugeFamily* hit_rate = *metrics.AddGauge(
      "tessera_prefix_cache_hit_rate",
      "Share of full prompt blocks found in the prefix cache since the start.", {});
  metrics.AddCollector([&engine, queued, running, blocks, hit_rate] {
    engine::EngineStats stats = engine.Stats();
    queued->WithLabels({}).Set(stats.queued);
    running->WithLabels({}).Set(stats.running);
    blocks->WithLabels({"used"}).Set(stats.kv_blocks_used);
    blocks->WithLabels({"free"}).Set(stats.kv_blocks_total - stats.kv_blocks_used);
    hit_rate->WithLabels({}).Set(stats.prefix_lookups == 0
                                     ? 0.0
                                     : static_cast<double>(stats.prefix_hits) /
                                           static_cast<double>(stats.prefix_lookups));
  });
}

// host:port with the port moved by `offset` when fixed (replicas sharing a host each take
// their own); port 0 stays 0 (any free port).
absl::StatusOr<std::string> OffsetAddress(const std::string& address, const std::string& flag,
                                          int offset, std::string* host) {
  int port = 0;
  TESSERA_RETURN_IF_ERROR(serve::SplitHostPort(address, flag, host, &port));
  return absl::StrCat(*host, ":", port == 0 ? 0 : port + offset);
}

// An id that every group of this job shares and no other job has: world rank 0's random
// draw. Collective over the job.
absl::StatusOr<std::string> SharedJobId(comm::Communicator& world) {
  uint64_t words[2] = {0, 0};
  if (world.rank() == 0) {
    std::random_device random;
    for (uint64_t& word : words) word = (uint64_t{random()} << 32) ^ random();
  }
  Tensor shared = Tensor::Wrap(words, DType::kI64, {2});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(world.Broadcast(shared, 0, cpu));
  return absl::StrFormat("%016x%016x", words[0], words[1]);
}

absl::Status Serve(const WorkerConfig& config, int* argc, char*** argv) {
  if (config.coordinator.empty()) {
    return absl::InvalidArgumentError("--coordinator: required (host:port of the coordinator)");
  }
  std::string coordinator_host, listen_host, metrics_host;
  int coordinator_port = 0, unused_port = 0;
  TESSERA_RETURN_IF_ERROR(serve::SplitHostPort(config.coordinator, "--coordinator",
                                               &coordinator_host, &coordinator_port));
  // Unless told otherwise, listen only where the coordinator reaches this machine.
  std::string listen = config.listen, metrics_listen = config.metrics_listen;
  if (listen.empty() || metrics_listen.empty()) {
    absl::StatusOr<std::string> facing =
        serve::LocalAddressToward(coordinator_host, coordinator_port);
    if (!facing.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--coordinator: ", facing.status().message(), "; give --listen HOST:PORT"));
    }
    if (listen.empty()) listen = absl::StrCat(*facing, ":0");
    if (metrics_listen.empty()) metrics_listen = absl::StrCat(*facing, ":0");
  }
  TESSERA_ASSIGN_OR_RETURN(
      const std::string join_token,
      ReadSecret(config.join_token_file, "TESSERA_JOIN_TOKEN", "--join-token-file"));
  TESSERA_RETURN_IF_ERROR(serve::CheckTlsFiles(config.tls));
  TESSERA_RETURN_IF_ERROR(CheckRequestLimits(config.request_limits));
  TESSERA_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> coordinator_credentials,
                           serve::ChannelCredentialsFor(config.tls));
  TESSERA_RETURN_IF_ERROR(serve::SplitHostPort(listen, "--listen", &listen_host, &unused_port));
  if (metrics_listen != "off") {
    TESSERA_RETURN_IF_ERROR(
        serve::SplitHostPort(metrics_listen, "--metrics-listen", &metrics_host, &unused_port));
  }
  InstallShutdownHandlers();

  engine::EngineOptions engine_options = config.engine;
  TESSERA_ASSIGN_OR_RETURN(engine_options.adapters, ParseAdapterList(config.adapters));
  std::string train_config_json;
  if (!config.train_config.empty()) {
    // Read once; checked here, before MPI starts, as every rank will parse it again.
    TESSERA_ASSIGN_OR_RETURN(train_config_json, model::ReadTextFile(config.train_config));
    TESSERA_RETURN_IF_ERROR(
        ParseServingFineTuneConfig(train_config_json, config.train_config).status());
  }
  TESSERA_RETURN_IF_ERROR(CheckTrainScheduleFlags(engine_options));
  TESSERA_RETURN_IF_ERROR(ParseQuantizeFlags(config.job.quantize).status());
  TESSERA_ASSIGN_OR_RETURN(ModelJob job, StartModelJob(config.job, argc, argv));
  comm::Layout& layout = *job.layout;
  const bool leader = layout.tp_rank() == 0;
  // Fine-tunes inside the group: --train-config's from the start, the coordinator's later.
  FineTuneControl training(job);
  engine_options.interleaved_factory = training.Factory();
  engine_options.interleaved_spec = train_config_json;
  TESSERA_ASSIGN_OR_RETURN(
      std::unique_ptr<engine::Engine> engine,
      engine::Engine::Create(*job.model, layout.tp(), leader ? job.tokenizer.get() : nullptr,
                             EngineOptionsFor(job, engine_options)));
  // The leader's fine-tunes publish their adapters into its engine (from its first step).
  if (leader) training.set_engine(engine.get());
  TESSERA_ASSIGN_OR_RETURN(double allreduce_seconds,
                           MeasureAllReduceLatency(layout.tp(), job.model->config().hidden_size));
  // The groups of a job of several register as such: the coordinator starts a fine-tune on
  // all of them at once (it is data-parallel over them).
  std::string job_id;
  if (layout.dp_size() > 1) {
    TESSERA_ASSIGN_OR_RETURN(job_id, SharedJobId(*job.mpi.world));
  }
  // Every rank: its all-reduce latencies on a Prometheus endpoint of its own.
  serve::MetricsRegistry metrics;
  TESSERA_ASSIGN_OR_RETURN(
      serve::HistogramFamily * allreduce,
      metrics.AddHistogram("tessera_allreduce_latency_seconds",
                           "Latency of this rank's tensor-parallel all-reduces.", {"rank", "group"},
                           serve::ExponentialBuckets(5e-6, 2, 22)));
  serve::Histogram& allreduce_latency =
      allreduce->WithLabels({absl::StrCat(layout.world_rank()), layout.tp().name()});
  job.model_tp().set_allreduce_observer(
      [&allreduce_latency](int64_t, double seconds) { allreduce_latency.Observe(seconds); });
  std::unique_ptr<serve::MetricsServer> metrics_server;
  if (metrics_listen != "off") {
    // Port + this rank's slot on its node, counting the slots of the node's other jobs
    // (comm/node_share.h), so that every rank of a node has its own.
    TESSERA_ASSIGN_OR_RETURN(comm::NodeShare share, comm::NodeShare::FromEnvironment());
    TESSERA_ASSIGN_OR_RETURN(
        std::string metrics_address,
        OffsetAddress(metrics_listen, "--metrics-listen",
                      share.first_slot + job.topology->rank(layout.world_rank()).local_rank,
                      &metrics_host));
    TESSERA_ASSIGN_OR_RETURN(metrics_server,
                             serve::MetricsServer::Start(metrics_address, &metrics, nullptr));
  }
  if (!leader) {
    // Peers execute the leader's plans until it shuts down (or the group fails).
    return engine->Run();
  }
  serve::RequestMetrics request_metrics(metrics);
  AddEngineGauges(metrics, *engine);

  std::string model_name = config.model_name;
  if (model_name.empty()) {
    model_name = config.job.model_dir.empty() ? std::string(model::kDefaultModelName)
                                              : model::ModelName(config.job.model_dir);
  }
  const int replica = config.replica_offset + layout.dp_rank();
  const serve::PromptEncoder encoder(job.tokenizer, job.tokenizer_config);
  if (!encoder.chat_status().ok()) {
    std::fprintf(stderr, "tessera worker: chat requests will be refused: %s\n",
                 std::string(encoder.chat_status().message()).c_str());
  }
  serve::WorkerService service(*engine, encoder, model_name, config.version);
  service.set_request_limits(config.request_limits);
  service.set_training(&training);
  service.set_request_observer(
      [&request_metrics](const serve::RequestRecord& record) { request_metrics.Record(record); });
  serve::GrpcServerOptions grpc_options;
  TESSERA_ASSIGN_OR_RETURN(grpc_options.address,
                           OffsetAddress(listen, "--listen", replica, &listen_host));
  grpc_options.who = "tessera worker";
  TESSERA_ASSIGN_OR_RETURN(grpc_options.credentials, serve::ServerCredentialsFor(config.tls));
  TESSERA_ASSIGN_OR_RETURN(serve::RunningGrpcServer server,
                           serve::StartGrpcServer(grpc_options, {&service}));

  std::string advertise = config.advertise;
  if (advertise.empty()) {
    advertise = (listen_host == "0.0.0.0" || listen_host == "[::]" || listen_host == "::")
                    ? comm::LocalHostName()
                    : listen_host;
  }
  v1::RegisterRequest registration;
  registration.set_model(model_name);
  registration.set_version(config.version);
  registration.set_endpoint(absl::StrCat(advertise, ":", server.port));
  if (metrics_server != nullptr) {
    registration.set_metrics_endpoint(absl::StrCat(advertise, ":", metrics_server->port()));
  }
  registration.set_name(absl::StrCat(comm::LocalHostName(), "/replica", replica));
  if (!job_id.empty()) {
    registration.mutable_job()->set_id(job_id);
    registration.mutable_job()->set_groups(layout.dp_size());
  }
  v1::GroupTopology& topology = *registration.mutable_topology();
  std::vector<std::string> hosts;
  for (int world_rank : layout.TpGroupOf(layout.dp_rank())) {
    hosts.push_back(job.topology->rank(world_rank).host);
    topology.add_hosts(hosts.back());
  }
  topology.set_tp(layout.tp_size());
  topology.set_interconnect(GroupInterconnect(hosts));
  topology.set_zone(config.zone);
  topology.set_allreduce_latency_seconds(allreduce_seconds);
  v1::KvCapacity& kv = *registration.mutable_kv();
  kv.set_block_size(engine->block_size());
  kv.set_blocks(engine->num_blocks());
  kv.set_bytes_per_token(engine->kv_bytes_per_token());
  registration.set_max_model_length(engine->max_model_length());
  registration.set_max_running(config.engine.max_running);
  TESSERA_ASSIGN_OR_RETURN(*registration.mutable_tokenizer_json(),
                           model::ReadTextFile(job.model_dir + "/tokenizer.json"));
  *registration.mutable_tokenizer_config() = serve::ToWire(job.tokenizer_config);

  std::fprintf(stderr, "tessera worker: replica %d (tp %d) serving %s %s on %s\n", replica,
               layout.tp_size(), model_name.c_str(), config.version.c_str(),
               registration.endpoint().c_str());
  absl::Status ran;
  {
    serve::CoordinatorLink link(
        config.coordinator, coordinator_credentials, join_token, registration,
        [&service] { return service.Load(); },
        [&service](const v1::RegisterResponse& response) { service.Registered(response); });
    serve::SetServing(*server.server, {"tessera.v1.Worker"}, true);
    absl::Notification loop_done;
    std::thread watcher([&] {
      while (!loop_done.WaitForNotificationWithTimeout(absl::Milliseconds(50))) {
        if (ShutdownRequested()) {
          serve::LogEvent("worker", {{"event", "shutdown"}, {"reason", "signal"}});
          engine->Shutdown();
          return;
        }
      }
    });
    ran = engine->Run();
    loop_done.Notify();
    watcher.join();
    serve::SetServing(*server.server, {"tessera.v1.Worker"}, false);
  }  // deregisters
  server.server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  return ran;
}

}  // namespace

int RunWorker(const std::vector<std::string>& args, int* argc, char*** argv) {
  WorkerConfig config;
  config.job.timeout = absl::Seconds(10);
  FlagSet flags("tessera worker",
                "A serving worker, one process per rank under mpirun: each tensor-parallel "
                "group runs the serving engine and its leader registers with the coordinator:\n"
                "  mpirun -np 4 tessera worker --tp 2 --coordinator HOST:50051");
  flags.String("coordinator", &config.coordinator, "host:port of the coordinator (required)");
  flags.String("listen", &config.listen,
               "host:port of the leader's Worker gRPC service (port 0: any free port; a fixed "
               "port P: replica r listens on P + r); default: the address this machine reaches "
               "the coordinator from (loopback for a coordinator on this machine), any port");
  flags.String("advertise", &config.advertise,
               "host name the coordinator dials (default: the --listen host, or this host's "
               "name when that is a wildcard)");
  flags.String("metrics-listen", &config.metrics_listen,
               "host:port of each rank's Prometheus endpoint (port 0: any; a fixed port P: the "
               "rank in slot r of its node on P + r, slots counting the node's other jobs' "
               "(TESSERA_NODE_FIRST_SLOT); 'off': none); default: --listen's host, any port");
  flags.String("model", &config.job.model_dir,
               "Hugging Face model directory or GGUF file (default: built-in)");
  flags.String("model-name", &config.model_name,
               "the name clients ask for (default: the model folder's name)");
  flags.String("version", &config.version, "the model version this group serves");
  flags.Int("tp", &config.job.tp, "tensor-parallel degree (0: all ranks in one group)");
  flags.Bool("allow-cross-node-tp", &config.job.allow_cross_node_tp,
             "let a tensor-parallel group span nodes");
  flags.String("dtype", &config.job.dtype, "weights in memory: auto (as stored), f32 or bf16");
  AddQuantizeFlags(flags, &config.job.quantize);
  AddKvCacheDtypeFlag(flags, &config.job.kv_cache_dtype);
  AddDeviceFlag(flags, &config.job.device);
  AddKvCacheMemoryFractionFlag(flags, &config.job.kv_cache_memory_fraction);
  flags.String("zone", &config.zone, "a locality label (zone, rack) for topology-aware routing");
  flags.String("join-token-file", &config.join_token_file,
               "a file holding the coordinator's join token (also TESSERA_JOIN_TOKEN)");
  AddTlsFlags(flags, &config.tls, /*serves=*/true);
  AddRequestLimitFlags(flags, &config.request_limits);
  flags.Int("replica-offset", &config.replica_offset,
            "the index of this job's first replica, when each replica is a job of its own "
            "(tessera serve, tessera launch): it names the groups and offsets fixed ports");
  flags.Duration("timeout", &config.job.timeout,
                 "deadline of each collective: a failed peer stops the group within it");
  flags.Bool("validate", &config.job.validate, "ranks cross-check every collective");
  config.engine.kv_cache_bytes = int64_t{512} << 20;
  AddEngineFlags(flags, &config.engine);
  AddAdapterFlags(flags, &config.adapters, &config.engine);
  flags.String("train-config", &config.train_config,
               "a JSON file of a LoRA fine-tune to run inside this serving group, between its "
               "serving steps, publishing the adapter as it learns (launcher/serving_finetune.h)");
  AddTrainScheduleFlags(flags, &config.engine);
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  if (config.replica_offset < 0) {
    return ReportExit(absl::InvalidArgumentError(
        absl::StrCat("--replica-offset: must be >= 0, not ", config.replica_offset)));
  }
  return ReportExit(Serve(config, argc, argv));
}

}  // namespace tessera::launcher
