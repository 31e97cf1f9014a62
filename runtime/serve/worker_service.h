#ifndef TESSERA_RUNTIME_SERVE_WORKER_SERVICE_H_
#define TESSERA_RUNTIME_SERVE_WORKER_SERVICE_H_

// The gRPC Worker service of a group leader (TP rank 0): runs requests on the group's engine
// and streams their tokens. The coordinator calls it; so can a client that wants one group.
//
// A call that is cancelled, or whose deadline passes, cancels its request in the engine,
// which frees the request's KV blocks at the next step boundary.

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "runtime/engine/engine.h"
#include "runtime/serve/prompt_encoder.h"
#include "runtime/serve/request_convert.h"
#include "runtime/serve/request_record.h"
#include "runtime/serve/training_control.h"
#include "tessera/v1/worker.grpc.pb.h"

namespace tessera::serve {

class WorkerService final : public v1::Worker::Service {
 public:
  // `engine` must be the leader's; both outlive the service.
  WorkerService(engine::Engine& engine, const PromptEncoder& encoder, std::string model,
                std::string version);

  grpc::Status Submit(grpc::ServerContext* context, const v1::GenerateRequest* request,
                      grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  // Loads (or replaces) an adapter on the group's engine, and answers once every rank has it.
  grpc::Status LoadAdapter(grpc::ServerContext* context, const v1::LoadAdapterRequest* request,
                           v1::LoadAdapterResponse* response) override;
  grpc::Status UnloadAdapter(grpc::ServerContext* context, const v1::UnloadAdapterRequest* request,
                             v1::UnloadAdapterResponse* response) override;
  // The group's fine-tune (training_control.h); UNIMPLEMENTED without set_training.
  grpc::Status StartTraining(grpc::ServerContext* context, const v1::StartTrainingRequest* request,
                             v1::StartTrainingResponse* response) override;
  grpc::Status TrainingStatus(grpc::ServerContext* context,
                              const v1::TrainingStatusRequest* request,
                              v1::TrainingStatusResponse* response) override;
  grpc::Status StopTraining(grpc::ServerContext* context, const v1::StopTrainingRequest* request,
                            v1::StopTrainingResponse* response) override;
  // Before serving; outlives the service.
  void set_training(TrainingControl* training) { training_ = training; }

  // The coordinator's answer to a registration: the group's id (reported in placements), and
  // the adapters loaded on the coordinator for this model version, which the group loads (on
  // a thread of its own, so that heartbeats go on) unless it serves them from that directory.
  void Registered(const v1::RegisterResponse& response);
  // Waits for the adapter loads Registered started. Before the engine stops looping.
  ~WorkerService() override;
  // What one request may carry (default: RequestLimits' defaults). Before serving.
  void set_request_limits(const RequestLimits& limits) { limits_ = limits; }
  // Called once for every Submit that ends (metrics, logs). Set before serving.
  void set_request_observer(std::function<void(const RequestRecord&)> observer) {
    observer_ = std::move(observer);
  }

  // The group's load as a heartbeat reports it.
  v1::GroupLoad Load() const;

 private:
  RequestLimits limits_;
  grpc::Status Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                   grpc::ServerWriter<v1::GenerateStreamResponse>* writer, RequestRecord* record);
  // NOT_FOUND unless `model` is this group's and `version` empty or this group's.
  grpc::Status CheckModel(const std::string& model, const std::string& version) const;

  engine::Engine& engine_;
  const PromptEncoder& encoder_;
  const std::string model_;
  const std::string version_;
  std::function<void(const RequestRecord&)> observer_;
  TrainingControl* training_ = nullptr;

  mutable absl::Mutex mutex_;
  std::string group_id_ ABSL_GUARDED_BY(mutex_);
  // Tokens each request in flight still has to compute (prompt until its first token, then
  // the rest of max_tokens), by engine id.
  absl::flat_hash_map<uint64_t, int64_t> outstanding_ ABSL_GUARDED_BY(mutex_);
  // Registered's: adapter loads, and a fine-tune started again.
  std::vector<std::thread> registration_work_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_WORKER_SERVICE_H_
