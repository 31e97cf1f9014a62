#include "runtime/serve/worker_service.h"

#include <chrono>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "runtime/serve/log.h"
#include "runtime/serve/request_convert.h"

namespace tessera::serve {
namespace {

// How often a waiting call looks at whether its client is still there.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(20);

// The client's timer cancels its call at its deadline, which may arrive just before this
// side's copy of the deadline passes: a cancellation this close to it is the deadline's.
bool DeadlinePassed(const grpc::ServerContext& context) {
  return context.deadline() <= std::chrono::system_clock::now() + std::chrono::milliseconds(100);
}

}  // namespace

WorkerService::WorkerService(engine::Engine& engine, const PromptEncoder& encoder,
                             std::string model, std::string version)
    : engine_(engine), encoder_(encoder), model_(std::move(model)), version_(std::move(version)) {}

WorkerService::~WorkerService() {
  std::vector<std::thread> work;
  {
    absl::MutexLock lock(&mutex_);
    work.swap(registration_work_);
  }
  for (std::thread& thread : work) thread.join();
}

void WorkerService::Registered(const v1::RegisterResponse& response) {
  std::vector<engine::AdapterSpec> missing;
  const std::vector<engine::AdapterState> served = engine_.Adapters();
  for (const v1::AdapterSource& adapter : response.adapters()) {
    bool same = false;
    for (const engine::AdapterState& state : served) {
      same = same || (state.name == adapter.name() && state.dir == adapter.dir());
    }
    if (!same) missing.push_back({adapter.name(), adapter.dir()});
  }
  const bool restart_training = !response.training_config_json().empty() && training_ != nullptr &&
                                !training_->State().has_value();
  absl::MutexLock lock(&mutex_);
  group_id_ = response.group_id();
  if (restart_training) {
    // Loading the trainable model takes a while: not on the registration's thread.
    registration_work_.emplace_back([this, config = response.training_config_json()] {
      // The coordinator keeps it for each group it started on: in a job of several groups,
      // every one of them (they register again together) starts it again.
      absl::Status started = training_->Start(config, /*job_wide=*/true);
      LogEvent("worker", {{"event", started.ok() ? "fine-tune started again"
                                                 : "fine-tune start again failed"},
                          {"error", std::string(started.message())}});
    });
  }
  if (missing.empty()) return;
  registration_work_.emplace_back([this, missing = std::move(missing)] {
    for (const engine::AdapterSpec& adapter : missing) {
      absl::Status loaded = engine_.LoadAdapter(adapter);
      LogEvent("worker", {{"event", loaded.ok() ? "adapter loaded" : "adapter load failed"},
                          {"adapter", adapter.name},
                          {"dir", adapter.dir},
                          {"error", std::string(loaded.message())}});
    }
  });
}

grpc::Status WorkerService::CheckModel(const std::string& model, const std::string& version) const {
  if (model != model_ || (!version.empty() && version != version_)) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("model: this group serves ", model_, " version ", version_,
                                     ", not ", model, " ", version));
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::LoadAdapter(grpc::ServerContext* /*context*/,
                                        const v1::LoadAdapterRequest* request,
                                        v1::LoadAdapterResponse* response) {
  grpc::Status model = CheckModel(request->model(), request->version());
  if (!model.ok()) return model;
  absl::Status loaded = engine_.LoadAdapter({request->adapter().name(), request->adapter().dir()});
  LogEvent("worker", {{"event", loaded.ok() ? "adapter loaded" : "adapter load failed"},
                      {"adapter", request->adapter().name()},
                      {"dir", request->adapter().dir()},
                      {"error", std::string(loaded.message())}});
  if (!loaded.ok()) return ToGrpcStatus(loaded);
  absl::MutexLock lock(&mutex_);
  response->add_groups(group_id_);
  return grpc::Status::OK;
}

grpc::Status WorkerService::UnloadAdapter(grpc::ServerContext* /*context*/,
                                          const v1::UnloadAdapterRequest* request,
                                          v1::UnloadAdapterResponse* response) {
  grpc::Status model = CheckModel(request->model(), request->version());
  if (!model.ok()) return model;
  if (absl::Status removed = engine_.UnloadAdapter(request->name()); !removed.ok()) {
    return ToGrpcStatus(removed);
  }
  LogEvent("worker", {{"event", "adapter unloaded"}, {"adapter", request->name()}});
  absl::MutexLock lock(&mutex_);
  response->add_groups(group_id_);
  return grpc::Status::OK;
}

grpc::Status WorkerService::Submit(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                   grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  RequestRecord record;
  record.request_id = request->request_id();
  record.tenant = request->tenant();
  {
    absl::MutexLock lock(&mutex_);
    record.group = group_id_;
  }
  absl::Time start = absl::Now();
  grpc::Status status = Run(context, *request, writer, &record);
  record.code = static_cast<absl::StatusCode>(status.error_code());
  record.total_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (observer_) observer_(record);
  return status;
}

grpc::Status WorkerService::Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                                grpc::ServerWriter<v1::GenerateStreamResponse>* writer,
                                RequestRecord* record) {
  if (absl::Status valid = ValidateGenerateRequest(request, limits_); !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  if (grpc::Status model = CheckModel(request.model(), request.version()); !model.ok()) {
    return model;
  }
  engine::GenerationRequest generation = ToEngineRequest(request);
  if (generation.prompt_tokens.empty()) {
    // Tokenized here rather than in the engine so the load report knows the prompt's length.
    absl::StatusOr<std::vector<int32_t>> tokens = encoder_.Encode(request);
    if (!tokens.ok()) return ToGrpcStatus(tokens.status());
    generation.prompt_tokens = *std::move(tokens);
    generation.prompt.clear();
  }
  const int64_t prompt_length = static_cast<int64_t>(generation.prompt_tokens.size());
  const int64_t max_tokens = generation.sampling.max_tokens;
  const bool logprobs = generation.sampling.logprobs;
  const int top_logprobs = generation.sampling.top_logprobs;
  absl::StatusOr<std::shared_ptr<engine::RequestStream>> submitted =
      engine_.Submit(std::move(generation));
  if (!submitted.ok()) return ToGrpcStatus(submitted.status());
  engine::RequestStream& stream = **submitted;
  const uint64_t id = stream.id();
  int64_t generated = 0;
  {
    absl::MutexLock lock(&mutex_);
    outstanding_[id] = prompt_length + max_tokens;
  }
  absl::Cleanup forget = [this, id] {
    absl::MutexLock lock(&mutex_);
    outstanding_.erase(id);
  };

  v1::Placement placement;
  placement.set_model(model_);
  placement.set_version(version_);
  placement.set_group(record->group);
  absl::Time start = absl::Now();
  absl::Time last_write = start;
  bool first = true;
  engine::TokenEvent event;
  while (true) {
    if (context->IsCancelled()) {
      engine_.Cancel(id);
      return DeadlinePassed(*context)
                 ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded")
                 : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    }
    if (!stream.Next(&event, kCancelPoll)) continue;
    // Every event already waiting goes into one message.
    v1::GenerateStreamResponse message;
    message.set_request_id(request.request_id());
    do {
      if (event.token >= 0) {
        message.add_tokens(event.token);
        if (logprobs) message.add_logprobs(event.logprob);
        if (top_logprobs > 0) {
          v1::TopLogprobs& top = *message.add_top_logprobs();
          for (const kernels::TokenLogprob& entry : event.top_logprobs) {
            top.add_tokens(static_cast<int32_t>(entry.token));
            top.add_logprobs(entry.logprob);
          }
        }
        ++generated;
      }
      message.mutable_text()->append(event.text);
      if (event.final) break;
    } while (stream.Next(&event, absl::ZeroDuration()));
    {
      absl::MutexLock lock(&mutex_);
      outstanding_[id] = max_tokens - generated;
    }
    if (event.final && event.finish_reason == engine::FinishReason::kError) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("the worker group failed: ", event.status.ToString()));
    }
    if (event.final && event.finish_reason == engine::FinishReason::kCancelled) {
      // Not the client's doing (that returns above): the group is shutting down.
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the worker group is shutting down");
    }
    absl::Time now = absl::Now();
    if (first) {
      *message.mutable_placement() = placement;
      record->time_to_first_token_seconds = absl::ToDoubleSeconds(now - start);
      first = false;
    } else {
      record->inter_token_seconds.push_back(absl::ToDoubleSeconds(now - last_write));
    }
    last_write = now;
    if (event.final) {
      message.set_final(true);
      message.set_finish_reason(ToWireFinishReason(event.finish_reason));
      *message.mutable_usage() = ToWireUsage(event.usage);
      *message.mutable_timings() = ToWireTimings(event.usage);
      record->finish_reason = engine::FinishReasonName(event.finish_reason);
      record->prompt_tokens = event.usage.prompt_tokens;
      record->completion_tokens = event.usage.completion_tokens;
      record->cached_tokens = event.usage.cached_tokens;
    }
    if (!writer->Write(message)) {
      engine_.Cancel(id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (event.final) return grpc::Status::OK;
  }
}

grpc::Status WorkerService::Tokenize(grpc::ServerContext* /*context*/,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) {
  if (request->model() != model_) {
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("model: this group serves ", model_, ", not ", request->model()));
  }
  absl::StatusOr<std::vector<int32_t>> tokens =
      encoder_.tokenizer().Encode(request->text(), request->add_special_tokens());
  if (!tokens.ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("text: ", tokens.status().message()));
  }
  response->mutable_tokens()->Add(tokens->begin(), tokens->end());
  return grpc::Status::OK;
}

grpc::Status WorkerService::StartTraining(grpc::ServerContext* /*context*/,
                                          const v1::StartTrainingRequest* request,
                                          v1::StartTrainingResponse* response) {
  grpc::Status model = CheckModel(request->model(), request->version());
  if (!model.ok()) return model;
  if (training_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this group runs no fine-tunes");
  }
  absl::Status started = training_->Start(request->config_json(), request->job_wide());
  LogEvent("worker", {{"event", started.ok() ? "training started" : "training refused"},
                      {"error", std::string(started.message())}});
  if (!started.ok()) return ToGrpcStatus(started);
  absl::MutexLock lock(&mutex_);
  response->set_group(group_id_);
  return grpc::Status::OK;
}

grpc::Status WorkerService::TrainingStatus(grpc::ServerContext* /*context*/,
                                           const v1::TrainingStatusRequest* request,
                                           v1::TrainingStatusResponse* response) {
  if (!request->model().empty() && request->model() != model_) return grpc::Status::OK;
  if (training_ == nullptr) return grpc::Status::OK;
  std::optional<v1::TrainingState> state = training_->State();
  if (!state.has_value()) return grpc::Status::OK;
  state->set_model(model_);
  state->set_version(version_);
  {
    absl::MutexLock lock(&mutex_);
    state->set_group(group_id_);
  }
  *response->add_trainings() = *std::move(state);
  return grpc::Status::OK;
}

grpc::Status WorkerService::StopTraining(grpc::ServerContext* /*context*/,
                                         const v1::StopTrainingRequest* request,
                                         v1::StopTrainingResponse* response) {
  grpc::Status model = CheckModel(request->model(), request->version());
  if (!model.ok()) return model;
  if (training_ == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no fine-tune is running in this group");
  }
  if (absl::Status stopped = training_->Stop(); !stopped.ok()) return ToGrpcStatus(stopped);
  LogEvent("worker", {{"event", "training stopped"}});
  absl::MutexLock lock(&mutex_);
  response->add_groups(group_id_);
  return grpc::Status::OK;
}

v1::GroupLoad WorkerService::Load() const {
  engine::EngineStats stats = engine_.Stats();
  v1::GroupLoad load;
  load.set_running(stats.running);
  load.set_queued(stats.queued);
  load.set_kv_blocks_total(stats.kv_blocks_total);
  load.set_kv_blocks_free(stats.kv_blocks_total - stats.kv_blocks_used);
  load.set_output_tokens_per_second(stats.output_tokens_per_second);
  load.set_engine_turns(stats.loop_turns);
  int64_t outstanding = 0;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, tokens] : outstanding_) outstanding += tokens;
  }
  load.set_outstanding_tokens(outstanding);
  for (uint64_t hash : engine_.CachedBlockHashes()) load.add_cached_block_hashes(hash);
  for (const engine::AdapterState& state : engine_.Adapters()) {
    v1::GroupAdapter* adapter = load.add_adapters();
    adapter->set_name(state.name);
    adapter->set_dir(state.dir);
    adapter->set_resident(state.resident);
  }
  return load;
}

}  // namespace tessera::serve
