#ifndef TESSERA_RUNTIME_SERVE_ADAPTER_REGISTRY_H_
#define TESSERA_RUNTIME_SERVE_ADAPTER_REGISTRY_H_

// The coordinator's record of the LoRA adapters operators loaded (Inference.LoadAdapter), by
// model and version, so that groups that register later load them too; and the view of
// adapters clients get (ListAdapters, GET /v1/models): that record joined with what the groups'
// heartbeats say they can run, which also covers adapters a worker was started with
// (--adapters).
//
// A record under version "" holds for every version of the model, those that register later
// included; one under a version holds for that version alone and, for that version, wins over
// the model-wide one of the same name.
//
// Plain C++ types, no protobuf. Thread-safe.

#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "runtime/engine/adapter_catalog.h"
#include "runtime/serve/group_registry.h"

namespace tessera::serve {

// Adapter names: engine::CheckAdapterName (runtime/engine/adapter_catalog.h).
using engine::CheckAdapterName;

// NOT_FOUND `adapter: "NAME" is not loaded for model MODEL; loaded: a, b`, the names listed
// being those `groups` of the model can run ("none" when there are none).
absl::Status AdapterNotLoaded(absl::string_view model, absl::string_view adapter,
                              absl::Span<const GroupSnapshot> groups);

// One adapter of one model version as clients see it.
struct AdapterListing {
  std::string model;
  std::string version;
  std::string name;
  std::string dir;   // the recorded one, else the one the first group reports
  int groups = 0;    // healthy groups of the version whose latest load lists it
  int resident = 0;  // ... of which hold it in memory
};

class AdapterRegistry {
 public:
  // Adapter directories by name.
  using Adapters = std::map<std::string, std::string>;
  // One model's record: adapters by version ("": every version).
  using ModelRecord = std::map<std::string, Adapters>;

  // Records adapter `name` at `dir` for `model` at `version` ("": every version, replacing
  // the per-version records of that name).
  void Load(const std::string& model, const std::string& version, const std::string& name,
            const std::string& dir);
  // Drops adapter `name` of `model` at `version` ("": at every version). Unloading one version
  // of a model-wide record narrows it: the record then names each of `other_versions` (the
  // model's versions that keep the adapter) instead. False when nothing was recorded.
  bool Unload(const std::string& model, const std::string& version, const std::string& name,
              absl::Span<const std::string> other_versions);

  // What a group serving `model` at `version` loads when it registers.
  Adapters For(const std::string& model, const std::string& version) const;

  // One model's record as it is, and back (an operator's call that failed restores it).
  ModelRecord Record(const std::string& model) const;
  void Restore(const std::string& model, ModelRecord record);

  // Every adapter of `model` ("": of every model), from the record and from `groups` (all the
  // registered groups), by model, version and name. A model-wide record is listed under each
  // version with a registered group, or under version "" when the model has none.
  std::vector<AdapterListing> List(const std::string& model,
                                   absl::Span<const GroupSnapshot> groups) const;

 private:
  mutable absl::Mutex mutex_;
  std::map<std::string, ModelRecord> models_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_ADAPTER_REGISTRY_H_
