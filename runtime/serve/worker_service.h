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

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "runtime/engine/engine.h"
#include "runtime/serve/prompt_encoder.h"
#include "runtime/serve/request_convert.h"
#include "runtime/serve/request_record.h"
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

  // The group's id once the coordinator has given one (reported in placements).
  void set_group_id(std::string id);
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

  engine::Engine& engine_;
  const PromptEncoder& encoder_;
  const std::string model_;
  const std::string version_;
  std::function<void(const RequestRecord&)> observer_;

  mutable absl::Mutex mutex_;
  std::string group_id_ ABSL_GUARDED_BY(mutex_);
  // Tokens each request in flight still has to compute (prompt until its first token, then
  // the rest of max_tokens), by engine id.
  absl::flat_hash_map<uint64_t, int64_t> outstanding_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_WORKER_SERVICE_H_
