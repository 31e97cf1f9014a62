// The coordinator's operators' calls on LoRA adapters: LoadAdapter and UnloadAdapter fan out
// to the model's groups (Worker.LoadAdapter, UnloadAdapter) and keep the record that groups
// registering later load from (adapter_registry.h).
//
// Records before calls: LoadAdapter records the adapter, then lists the groups to call, and
// Register adds a group to the registry before it reads the record, so a group registering
// meanwhile is either called or told at registration (or both: loading the same directory
// twice changes nothing). An adapter that fails to load is taken back from the groups called;
// a group that registered during that call keeps it (logged by the group's own load).

#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "runtime/serve/coordinator.h"
#include "runtime/serve/log.h"
#include "runtime/serve/request_convert.h"

namespace tessera::serve {
namespace {

constexpr char kComponent[] = "coordinator";
// The longest adapter directory a call may name: it reaches every group's file system.
constexpr size_t kMaxAdapterDirBytes = 4096;

}  // namespace

std::vector<AdapterListing> Coordinator::Adapters(const std::string& model) const {
  return adapters_.List(model, registry_.Groups(absl::Now()));
}

absl::StatusOr<std::vector<GroupSnapshot>> Coordinator::RegisteredGroups(
    const std::string& model, const std::string& version) const {
  if (model.empty()) return absl::InvalidArgumentError("model: required");
  std::vector<GroupSnapshot> groups;
  bool model_served = false;
  for (GroupSnapshot& group : registry_.Groups(absl::Now())) {
    if (group.info.model != model) continue;
    model_served = true;
    if (version.empty() || group.info.version == version) groups.push_back(std::move(group));
  }
  if (!model_served) {
    return absl::NotFoundError(absl::StrCat("model: no worker group serves '", model, "'"));
  }
  if (groups.empty()) {
    return absl::NotFoundError(
        absl::StrCat("version: model ", model, " has no version '", version, "'"));
  }
  return groups;
}

std::vector<grpc::Status> Coordinator::CallAdapters(const std::vector<AdapterCall>& calls) {
  std::vector<GroupSnapshot> groups;
  for (const AdapterCall& call : calls) groups.push_back(call.group);
  std::vector<v1::LoadAdapterRequest> loads(calls.size());
  std::vector<v1::LoadAdapterResponse> loaded(calls.size());
  std::vector<v1::UnloadAdapterRequest> unloads(calls.size());
  std::vector<v1::UnloadAdapterResponse> unloaded(calls.size());
  return CallGroups(groups, options_.adapter_call_timeout,
                    [&](size_t i, v1::Worker::Stub& stub, grpc::ClientContext* context,
                        std::function<void(grpc::Status)> done) {
                      // The worker's model and version are the group's own, whatever the operator
                      // named.
                      const AdapterCall& call = calls[i];
                      if (!call.dir.empty()) {
                        loads[i].set_model(call.group.info.model);
                        loads[i].set_version(call.group.info.version);
                        loads[i].mutable_adapter()->set_name(call.name);
                        loads[i].mutable_adapter()->set_dir(call.dir);
                        stub.async()->LoadAdapter(context, &loads[i], &loaded[i], std::move(done));
                      } else {
                        unloads[i].set_model(call.group.info.model);
                        unloads[i].set_version(call.group.info.version);
                        unloads[i].set_name(call.name);
                        stub.async()->UnloadAdapter(context, &unloads[i], &unloaded[i],
                                                    std::move(done));
                      }
                    });
}

grpc::Status Coordinator::LoadAdapter(const v1::LoadAdapterRequest& request,
                                      v1::LoadAdapterResponse* response) {
  const std::string& name = request.adapter().name();
  const std::string& dir = request.adapter().dir();
  if (absl::Status valid = CheckAdapterName(name, "adapter.name"); !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  if (dir.empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "adapter.dir: required (the PEFT adapter's directory, as the workers' "
                        "hosts see it)");
  }
  if (dir.size() > kMaxAdapterDirBytes) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("adapter.dir: ", dir.size(), " bytes; at most ", kMaxAdapterDirBytes));
  }
  if (absl::Status served = RegisteredGroups(request.model(), request.version()).status();
      !served.ok()) {
    return ToGrpcStatus(served);
  }
  absl::MutexLock calls(&adapter_calls_mutex_);
  AdapterRegistry::ModelRecord before = adapters_.Record(request.model());
  adapters_.Load(request.model(), request.version(), name, dir);
  absl::StatusOr<std::vector<GroupSnapshot>> groups =
      RegisteredGroups(request.model(), request.version());
  if (!groups.ok()) {  // every group left meanwhile
    adapters_.Restore(request.model(), std::move(before));
    return ToGrpcStatus(groups.status());
  }
  std::vector<AdapterCall> loads;
  for (const GroupSnapshot& group : *groups) loads.push_back({group, name, dir});
  std::vector<grpc::Status> loaded = CallAdapters(loads);

  grpc::Status first_error = grpc::Status::OK;
  for (size_t i = 0; i < loads.size() && first_error.ok(); ++i) {
    if (!loaded[i].ok()) first_error = GroupError(loads[i].group, loaded[i]);
  }
  if (first_error.ok()) {
    for (const AdapterCall& call : loads) {
      registry_.NoteAdapterLoaded(call.group.id, {name, dir, /*resident=*/true});
      response->add_groups(call.group.id);
    }
    LogEvent(kComponent, {{"event", "adapter_loaded"},
                          {"model", request.model()},
                          {"version", request.version()},
                          {"adapter", name},
                          {"dir", dir},
                          {"groups", absl::StrJoin(response->groups(), ",")}});
    return grpc::Status::OK;
  }

  // Take it back: each group that loaded it returns to what it had under that name (the
  // directory it had before, or none).
  adapters_.Restore(request.model(), std::move(before));
  std::vector<AdapterCall> undo;
  for (size_t i = 0; i < loads.size(); ++i) {
    if (!loaded[i].ok()) continue;
    const GroupAdapter* had = loads[i].group.load->FindAdapter(name);
    undo.push_back({loads[i].group, name, had != nullptr ? had->dir : std::string()});
  }
  std::vector<grpc::Status> undone = CallAdapters(undo);
  for (size_t i = 0; i < undo.size(); ++i) {
    const std::string& group = undo[i].group.id;
    if (!undone[i].ok()) {  // it runs the new adapter still
      registry_.NoteAdapterLoaded(group, {name, dir, /*resident=*/true});
      LogEvent(kComponent, {{"event", "adapter_load_not_undone"},
                            {"group", group},
                            {"adapter", name},
                            {"why", undone[i].error_message()}});
    } else if (undo[i].dir.empty()) {
      registry_.NoteAdapterUnloaded(group, name);
    } else {
      registry_.NoteAdapterLoaded(group, {name, undo[i].dir, /*resident=*/true});
    }
  }
  LogEvent(kComponent, {{"event", "adapter_load_failed"},
                        {"model", request.model()},
                        {"version", request.version()},
                        {"adapter", name},
                        {"dir", dir},
                        {"why", first_error.error_message()}});
  return first_error;
}

grpc::Status Coordinator::UnloadAdapter(const v1::UnloadAdapterRequest& request,
                                        v1::UnloadAdapterResponse* response) {
  const std::string& name = request.name();
  if (absl::Status valid = CheckAdapterName(name, "name"); !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  absl::MutexLock calls(&adapter_calls_mutex_);
  absl::StatusOr<std::vector<GroupSnapshot>> groups =
      RegisteredGroups(request.model(), request.version());
  if (!groups.ok()) return ToGrpcStatus(groups.status());
  std::set<std::string> versions;  // of the whole model: where a model-wide record narrows to
  for (const GroupSnapshot& group : registry_.Groups(absl::Now())) {
    if (group.info.model == request.model()) versions.insert(group.info.version);
  }
  const bool recorded =
      adapters_.Unload(request.model(), request.version(), name,
                       std::vector<std::string>(versions.begin(), versions.end()));
  // Every group of the version, not only those whose heartbeat lists it: one that registered
  // a moment ago may be loading it from its registration.
  std::vector<AdapterCall> unloads;
  for (const GroupSnapshot& group : *groups) unloads.push_back({group, name, ""});
  std::vector<grpc::Status> unloaded = CallAdapters(unloads);
  grpc::Status first_error = grpc::Status::OK;
  for (size_t i = 0; i < unloads.size(); ++i) {
    const grpc::Status& status = unloaded[i];
    // NOT_FOUND: the group does not hold it, which is what was asked.
    if (status.ok() || status.error_code() == grpc::StatusCode::NOT_FOUND) {
      registry_.NoteAdapterUnloaded(unloads[i].group.id, name);
      if (status.ok()) response->add_groups(unloads[i].group.id);
    } else if (first_error.ok()) {
      first_error = GroupError(unloads[i].group, status);
    }
  }
  LogEvent(kComponent, {{"event", first_error.ok() ? "adapter_unloaded" : "adapter_unload_failed"},
                        {"model", request.model()},
                        {"version", request.version()},
                        {"adapter", name},
                        {"groups", absl::StrJoin(response->groups(), ",")},
                        {"why", first_error.error_message()}});
  if (!first_error.ok()) return first_error;
  if (!recorded && response->groups().empty()) {
    return ToGrpcStatus(AdapterNotLoaded(request.model(), name, *groups));
  }
  return grpc::Status::OK;
}

}  // namespace tessera::serve
