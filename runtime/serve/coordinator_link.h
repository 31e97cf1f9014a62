#ifndef TESSERA_RUNTIME_SERVE_COORDINATOR_LINK_H_
#define TESSERA_RUNTIME_SERVE_COORDINATOR_LINK_H_

// A group leader's side of the worker API: registers the group with the coordinator, then
// sends a heartbeat every interval the coordinator asked for. A coordinator that is not up
// yet, restarts, or forgets the group is handled by registering again; the leader keeps
// serving meanwhile.

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "tessera/v1/worker.grpc.pb.h"

namespace tessera::serve {

class CoordinatorLink {
 public:
  // Starts registering with the coordinator at `address` (host:port) on a thread of its own,
  // showing `join_token` when not empty. `load` is called for every heartbeat and
  // registration (whose adapters it gives);
  // `on_registered` with each registration's answer (the group id, the adapters to load).
  // `credentials`: how to dial it (tls.h); null: plaintext.
  CoordinatorLink(std::string address, std::shared_ptr<grpc::ChannelCredentials> credentials,
                  std::string join_token, v1::RegisterRequest registration,
                  std::function<v1::GroupLoad()> load,
                  std::function<void(const v1::RegisterResponse&)> on_registered);
  // Deregisters (best effort) and stops.
  ~CoordinatorLink();

  // Waits up to `timeout` for the first registration. False when it did not happen.
  bool WaitRegistered(absl::Duration timeout);
  std::string group_id() const;

 private:
  void Loop();
  bool Register();

  const std::string address_;
  const std::string join_token_;
  const v1::RegisterRequest registration_;
  std::function<v1::GroupLoad()> load_;
  std::function<void(const v1::RegisterResponse&)> on_registered_;
  std::unique_ptr<v1::WorkerRegistry::Stub> stub_;
  absl::Notification stop_;
  absl::Notification registered_once_;

  mutable absl::Mutex mutex_;
  std::string group_id_ ABSL_GUARDED_BY(mutex_);
  std::string group_secret_ ABSL_GUARDED_BY(mutex_);  // what the coordinator gave with the id
  absl::Duration interval_ ABSL_GUARDED_BY(mutex_) = absl::Seconds(1);

  std::thread thread_;
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_COORDINATOR_LINK_H_
