// The coordinator's calls on LoRA fine-tunes inside serving groups (StartTraining,
// TrainingStatus, StopTraining in inference.proto): each is relayed to the leaders of the
// groups it is about (the Worker calls of the same names), which run the fine-tune between
// their serving steps (launcher/serving_finetune.h) and publish its adapter versions.
//
// A status is asked of the groups, and a published version reaches routing through the
// group's heartbeats, as any adapter the group holds; so nothing here needs undoing when a
// group leaves, and a restarted coordinator sees the fine-tunes its groups run. The one record
// kept is the configuration started on a group name (until it is stopped there): a group that
// registers again under that name (it failed, and its job was started again) gets it in its
// RegisterResponse and starts it again, resuming from the fine-tune's last checkpoint.

#include <algorithm>
#include <functional>
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
// The largest config_json forwarded: a --train-config file's keys; the data it names the
// workers read themselves.
constexpr size_t kMaxTrainingConfigBytes = 64 * 1024;
// A status call's deadline, per group: the leader answers from what it holds.
constexpr absl::Duration kStatusCallTimeout = absl::Seconds(10);

// What the coordinator checks of a StartTraining request; the configuration's keys are the
// worker's to check (it names the key it refuses).
absl::Status CheckStartTraining(const v1::StartTrainingRequest& request) {
  if (request.model().empty()) return absl::InvalidArgumentError("model: required");
  if (request.config_json().empty()) {
    return absl::InvalidArgumentError(
        "config_json: required (the JSON of a --train-config file: data, adapter, output, "
        "steps, ...)");
  }
  if (request.config_json().size() > kMaxTrainingConfigBytes) {
    return absl::InvalidArgumentError(absl::StrCat("config_json: ", request.config_json().size(),
                                                   " bytes; at most ", kMaxTrainingConfigBytes));
  }
  return absl::OkStatus();
}

std::string GroupIds(const std::vector<GroupSnapshot>& groups) {
  return absl::StrJoin(groups, ", ",
                       [](std::string* out, const GroupSnapshot& g) { out->append(g.id); });
}

// "model M" or "model M version V".
std::string ModelText(const std::string& model, const std::string& version) {
  return version.empty() ? absl::StrCat("model ", model)
                         : absl::StrCat("model ", model, " version ", version);
}

// The group with id `id` among `groups` (the registered groups of `model` at `version`);
// NOT_FOUND naming the field when none has it.
absl::StatusOr<GroupSnapshot> GroupWithId(const std::vector<GroupSnapshot>& groups,
                                          const std::string& id, const std::string& model,
                                          const std::string& version) {
  for (const GroupSnapshot& group : groups) {
    if (group.id == id) return group;
  }
  return absl::NotFoundError(absl::StrCat("group: '", id, "' is not a registered group of ",
                                          ModelText(model, version),
                                          "; its groups: ", GroupIds(groups)));
}

// Where StartTraining runs: the group the request names, else the first healthy one in
// registration order (the first when none is healthy: it may still answer).
absl::StatusOr<GroupSnapshot> TrainingGroup(const std::vector<GroupSnapshot>& groups,
                                            const v1::StartTrainingRequest& request) {
  if (!request.group().empty()) {
    return GroupWithId(groups, request.group(), request.model(), request.version());
  }
  for (const GroupSnapshot& group : groups) {
    if (group.healthy) return group;
  }
  return groups.front();
}

// The groups of `groups` in `group`'s job, in their order (`group` alone when it is its job's
// only group).
std::vector<GroupSnapshot> JobOf(const std::vector<GroupSnapshot>& groups,
                                 const GroupSnapshot& group) {
  if (group.info.job_groups <= 1) return {group};
  std::vector<GroupSnapshot> job;
  for (const GroupSnapshot& other : groups) {
    if (other.info.job_id == group.info.job_id) job.push_back(other);
  }
  return job;
}

// The groups a fine-tune started on `group` runs on: `group` alone, or every group of its job
// when the job runs several. The fine-tune is then data-parallel over them and their ranks
// create it together, so all must be registered and healthy, and none may run one (a group
// that refused would leave the others waiting out their collectives' deadline).
// `groups`: the registered groups of the model.
absl::StatusOr<std::vector<GroupSnapshot>> TrainingJob(const std::vector<GroupSnapshot>& groups,
                                                       const GroupSnapshot& group) {
  if (group.info.job_groups <= 1) return std::vector<GroupSnapshot>{group};
  const std::vector<GroupSnapshot> job = JobOf(groups, group);
  const std::string what =
      absl::StrCat("group ", group.id, " (", group.info.name, ") runs in a job of ",
                   group.info.job_groups, " groups, over which its fine-tune is data-parallel");
  if (static_cast<int>(job.size()) != group.info.job_groups) {
    return absl::FailedPreconditionError(absl::StrCat(what, "; ", job.size(),
                                                      " of them are registered (", GroupIds(job),
                                                      "): start it once all are"));
  }
  for (const GroupSnapshot& member : job) {
    if (!member.healthy) {
      return absl::FailedPreconditionError(absl::StrCat(what, "; its group ", member.id, " (",
                                                        member.info.name,
                                                        ") is not healthy: start it once it is"));
    }
  }
  return job;
}

// A worker's refusal as the caller sees it: the UNIMPLEMENTED of a worker that predates the
// calls comes from gRPC, with no message.
grpc::Status WorkerStatus(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNIMPLEMENTED || !status.error_message().empty()) {
    return status;
  }
  return grpc::Status(status.error_code(),
                      "its worker runs no fine-tune calls (a tessera older than the coordinator)");
}

}  // namespace

grpc::Status Coordinator::StartTraining(const v1::StartTrainingRequest& request,
                                        v1::StartTrainingResponse* response) {
  if (absl::Status valid = CheckStartTraining(request); !valid.ok()) return ToGrpcStatus(valid);
  // One start at a time: a job's groups must not take two starts in different orders.
  absl::MutexLock starting(&training_starts_mutex_);
  absl::StatusOr<std::vector<GroupSnapshot>> groups =
      RegisteredGroups(request.model(), request.version());
  if (!groups.ok()) return ToGrpcStatus(groups.status());
  absl::StatusOr<GroupSnapshot> group = TrainingGroup(*groups, request);
  if (!group.ok()) return ToGrpcStatus(group.status());
  absl::StatusOr<std::vector<GroupSnapshot>> job = TrainingJob(*groups, *group);
  if (!job.ok()) return ToGrpcStatus(job.status());
  const bool job_wide = job->size() > 1;
  if (job_wide) {
    // A group that refused the start (one runs) would leave the others waiting for it.
    if (grpc::Status idle = CheckNoneTrains(*job); !idle.ok()) return idle;
  }

  // The worker's model and version are the group's own, whatever the operator named.
  std::vector<v1::StartTrainingRequest> forwarded(job->size(), request);
  std::vector<v1::StartTrainingResponse> started(job->size());
  const std::vector<grpc::Status> statuses = CallGroups(
      *job, options_.training_call_timeout,
      [&](size_t i, v1::Worker::Stub& stub, grpc::ClientContext* context,
          std::function<void(grpc::Status)> done) {
        forwarded[i].set_version((*job)[i].info.version);
        forwarded[i].set_group((*job)[i].id);
        forwarded[i].set_job_wide(job_wide);
        stub.async()->StartTraining(context, &forwarded[i], &started[i], std::move(done));
      });
  grpc::Status failed = grpc::Status::OK;
  for (size_t i = 0; i < job->size() && failed.ok(); ++i) {
    if (!statuses[i].ok()) failed = GroupError((*job)[i], WorkerStatus(statuses[i]));
  }
  LogEvent(kComponent, {{"event", failed.ok() ? "training_started" : "training_start_failed"},
                        {"model", request.model()},
                        {"version", group->info.version},
                        {"groups", GroupIds(*job)},
                        {"why", failed.error_message()}});
  if (!failed.ok()) return failed;
  {
    absl::MutexLock lock(&mutex_);
    for (const GroupSnapshot& member : *job) {
      trainings_by_name_[TrainingKey(member.info.model, member.info.name)] = request.config_json();
    }
  }
  response->set_group(group->id);
  for (const GroupSnapshot& member : *job) response->add_groups(member.id);
  return grpc::Status::OK;
}

std::vector<grpc::Status> Coordinator::AskTrainingStates(
    const std::vector<GroupSnapshot>& groups, std::vector<v1::TrainingStatusResponse>* answers) {
  std::vector<v1::TrainingStatusRequest> asks(groups.size());
  answers->assign(groups.size(), {});
  return CallGroups(groups, kStatusCallTimeout,
                    [&](size_t i, v1::Worker::Stub& stub, grpc::ClientContext* context,
                        std::function<void(grpc::Status)> done) {
                      asks[i].set_model(groups[i].info.model);
                      stub.async()->TrainingStatus(context, &asks[i], &(*answers)[i],
                                                   std::move(done));
                    });
}

grpc::Status Coordinator::CheckNoneTrains(const std::vector<GroupSnapshot>& groups) {
  std::vector<v1::TrainingStatusResponse> answers;
  const std::vector<grpc::Status> statuses = AskTrainingStates(groups, &answers);
  for (size_t i = 0; i < groups.size(); ++i) {
    if (!statuses[i].ok()) return GroupError(groups[i], WorkerStatus(statuses[i]));
    for (const v1::TrainingState& state : answers[i].trainings()) {
      if (state.state() != "running") continue;
      return GroupError(groups[i],
                        grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                     absl::StrCat("its fine-tune of adapter ", state.adapter(),
                                                  " is running (step ", state.steps_done(), "/",
                                                  state.steps(), "); stop it or wait for it")));
    }
  }
  return grpc::Status::OK;
}

std::string Coordinator::TrainingKey(const std::string& model, const std::string& name) {
  return absl::StrCat(model, "\n", name);
}

grpc::Status Coordinator::TrainingStatus(const v1::TrainingStatusRequest& request,
                                         v1::TrainingStatusResponse* response) {
  std::vector<GroupSnapshot> groups;
  if (request.model().empty()) {
    groups = registry_.Groups(absl::Now());
  } else {
    absl::StatusOr<std::vector<GroupSnapshot>> of_model = RegisteredGroups(request.model(), "");
    if (!of_model.ok()) return ToGrpcStatus(of_model.status());
    groups = *std::move(of_model);
  }
  std::vector<v1::TrainingStatusResponse> answers;
  const std::vector<grpc::Status> statuses = AskTrainingStates(groups, &answers);
  for (size_t i = 0; i < groups.size(); ++i) {
    const GroupSnapshot& group = groups[i];
    if (!statuses[i].ok()) {
      // The others' states still answer the call. UNIMPLEMENTED: a worker older than the
      // call, which every poll would log again at a higher level.
      const bool old_worker = statuses[i].error_code() == grpc::StatusCode::UNIMPLEMENTED;
      Log(old_worker ? LogLevel::kDebug : LogLevel::kWarning, kComponent,
          {{"event", "training_status_skipped"},
           {"group", group.id},
           {"name", group.info.name},
           {"code", absl::StrCat(statuses[i].error_code())},
           {"why", statuses[i].error_message()}});
      continue;
    }
    for (const v1::TrainingState& state : answers[i].trainings()) {
      v1::TrainingState* out = response->add_trainings();
      *out = state;
      // The coordinator's names for the group, whatever the worker wrote.
      out->set_model(group.info.model);
      out->set_version(group.info.version);
      out->set_group(group.id);
    }
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::StopTraining(const v1::StopTrainingRequest& request,
                                       v1::StopTrainingResponse* response) {
  absl::StatusOr<std::vector<GroupSnapshot>> groups =
      RegisteredGroups(request.model(), request.version());
  if (!groups.ok()) return ToGrpcStatus(groups.status());
  const bool named = !request.group().empty();
  if (named) {
    absl::StatusOr<GroupSnapshot> group =
        GroupWithId(*groups, request.group(), request.model(), request.version());
    if (!group.ok()) return ToGrpcStatus(group.status());
    // The group's job's others with it: their fine-tune is one (each stops at its next update).
    *groups = JobOf(*groups, *group);
    // The named one first: its refusal is the one reported when none stops.
    std::stable_partition(groups->begin(), groups->end(),
                          [&](const GroupSnapshot& g) { return g.id == group->id; });
  }
  std::vector<v1::StopTrainingRequest> stops(groups->size());
  std::vector<v1::StopTrainingResponse> stopped(groups->size());
  const std::vector<grpc::Status> statuses =
      CallGroups(*groups, options_.training_call_timeout,
                 [&](size_t i, v1::Worker::Stub& stub, grpc::ClientContext* context,
                     std::function<void(grpc::Status)> done) {
                   const GroupSnapshot& group = (*groups)[i];
                   stops[i].set_model(group.info.model);
                   stops[i].set_version(group.info.version);
                   stops[i].set_group(group.id);
                   stub.async()->StopTraining(context, &stops[i], &stopped[i], std::move(done));
                 });
  grpc::Status first_error = grpc::Status::OK;
  for (size_t i = 0; i < groups->size(); ++i) {
    const grpc::Status& status = statuses[i];
    if (status.ok()) {
      response->add_groups((*groups)[i].id);
      absl::MutexLock lock(&mutex_);
      trainings_by_name_.erase(TrainingKey((*groups)[i].info.model, (*groups)[i].info.name));
      continue;
    }
    // NOT_FOUND: it runs none, which is what was asked. A group the operator did not name
    // that predates the call (UNIMPLEMENTED) runs none the API started either.
    const bool runs_none = status.error_code() == grpc::StatusCode::NOT_FOUND ||
                           (!named && status.error_code() == grpc::StatusCode::UNIMPLEMENTED);
    if (!runs_none && first_error.ok()) {
      first_error = GroupError((*groups)[i], WorkerStatus(status));
    }
  }
  if (!first_error.ok() || !response->groups().empty()) {
    LogEvent(kComponent, {{"event", first_error.ok() ? "training_stopped" : "training_stop_failed"},
                          {"model", request.model()},
                          {"version", request.version()},
                          {"groups", absl::StrJoin(response->groups(), ",")},
                          {"why", first_error.error_message()}});
  }
  if (!first_error.ok()) {
    if (response->groups().empty()) return first_error;
    // The caller learns from the message alone which did stop: an error carries no response.
    return grpc::Status(first_error.error_code(),
                        absl::StrCat(first_error.error_message(), " (stopped on ",
                                     absl::StrJoin(response->groups(), ", "), ")"));
  }
  if (response->groups().empty()) {
    if (named) return GroupError(groups->front(), statuses.front());
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("no fine-tune is running on the groups of ",
                     ModelText(request.model(), request.version()), " (", GroupIds(*groups), ")"));
  }
  return grpc::Status::OK;
}

}  // namespace tessera::serve
