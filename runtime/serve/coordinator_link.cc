#include "runtime/serve/coordinator_link.h"

#include <cstdio>
#include <utility>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "runtime/serve/bearer.h"
#include "runtime/serve/log.h"

namespace tessera::serve {
namespace {

// How long one registry call may take.
constexpr absl::Duration kCallDeadline = absl::Seconds(2);
// Between registration attempts while the coordinator is unreachable.
constexpr absl::Duration kRetryInterval = absl::Milliseconds(500);

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace

CoordinatorLink::CoordinatorLink(std::string address,
                                 std::shared_ptr<grpc::ChannelCredentials> credentials,
                                 std::string join_token, v1::RegisterRequest registration,
                                 std::function<v1::GroupLoad()> load,
                                 std::function<void(const v1::RegisterResponse&)> on_registered)
    : address_(std::move(address)),
      join_token_(std::move(join_token)),
      registration_(std::move(registration)),
      load_(std::move(load)),
      on_registered_(std::move(on_registered)) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  stub_ = v1::WorkerRegistry::NewStub(grpc::CreateCustomChannel(
      address_, credentials != nullptr ? credentials : grpc::InsecureChannelCredentials(), args));
  thread_ = std::thread([this] { Loop(); });
}

CoordinatorLink::~CoordinatorLink() {
  stop_.Notify();
  thread_.join();
  v1::DeregisterRequest request;
  {
    absl::MutexLock lock(&mutex_);
    if (group_id_.empty()) return;
    request.set_group_id(group_id_);
    request.set_group_secret(group_secret_);
  }
  grpc::ClientContext context;
  SetDeadline(context, kCallDeadline);
  v1::DeregisterResponse response;
  stub_->Deregister(&context, request, &response);  // best effort: the coordinator may be gone
}

bool CoordinatorLink::WaitRegistered(absl::Duration timeout) {
  return registered_once_.WaitForNotificationWithTimeout(timeout);
}

std::string CoordinatorLink::group_id() const {
  absl::MutexLock lock(&mutex_);
  return group_id_;
}

bool CoordinatorLink::Register() {
  grpc::ClientContext context;
  SetDeadline(context, kCallDeadline);
  AddBearerToken(context, join_token_);
  // The adapters as the group holds them now (loaded or unloaded since an earlier
  // registration), so that they are routable from this registration on.
  v1::RegisterRequest registration = registration_;
  *registration.mutable_adapters() = load_().adapters();
  v1::RegisterResponse response;
  grpc::Status status = stub_->Register(&context, registration, &response);
  if (!status.ok()) {
    LogEvent("worker", {{"event", "register_failed"},
                        {"coordinator", address_},
                        {"error", status.error_message()}});
    return false;
  }
  {
    absl::MutexLock lock(&mutex_);
    group_id_ = response.group_id();
    group_secret_ = response.group_secret();
    if (response.heartbeat_interval_seconds() > 0) {
      interval_ = absl::Seconds(response.heartbeat_interval_seconds());
    }
  }
  LogEvent("worker",
           {{"event", "registered"}, {"group", response.group_id()}, {"coordinator", address_}});
  if (on_registered_) on_registered_(response);
  if (!registered_once_.HasBeenNotified()) registered_once_.Notify();
  return true;
}

void CoordinatorLink::Loop() {
  while (!stop_.HasBeenNotified()) {
    if (group_id().empty()) {
      if (!Register()) stop_.WaitForNotificationWithTimeout(kRetryInterval);
      continue;
    }
    absl::Duration interval;
    {
      absl::MutexLock lock(&mutex_);
      interval = interval_;
    }
    if (stop_.WaitForNotificationWithTimeout(interval)) break;
    grpc::ClientContext context;
    SetDeadline(context, kCallDeadline);
    v1::HeartbeatRequest request;
    {
      absl::MutexLock lock(&mutex_);
      request.set_group_id(group_id_);
      request.set_group_secret(group_secret_);
    }
    *request.mutable_load() = load_();
    v1::HeartbeatResponse response;
    grpc::Status status = stub_->Heartbeat(&context, request, &response);
    if (status.ok() && !response.registered()) {
      // The coordinator restarted or declared the group dead: join again.
      LogEvent("worker", {{"event", "heartbeat_unknown"}, {"group", request.group_id()}});
      absl::MutexLock lock(&mutex_);
      group_id_.clear();
    }
  }
}

}  // namespace tessera::serve
