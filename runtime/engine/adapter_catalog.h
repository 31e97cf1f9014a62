#ifndef TESSERA_RUNTIME_ENGINE_ADAPTER_CATALOG_H_
#define TESSERA_RUNTIME_ENGINE_ADAPTER_CATALOG_H_

// The group leader's record of the LoRA adapters requests may name.
//
// Each name has a current version: a directory, resident in a model slot or not. A request
// holds the version it started with (AdapterHold) until it ends, so a version replaced under
// its name (LoadAdapter of a name already served) or removed (UnloadAdapter) is unloaded only
// once no request holds it: nothing switches adapters mid-request. With a limit on resident
// adapters, the least recently used version that no request holds is unloaded to make room,
// and loaded again when a request names it (the request waits in the leader until then).
//
// Thread-safe: Submit and the API calls take holds and change names on their threads; the
// step loop plans the loads and unloads every rank then makes (adapter_slots.h).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "runtime/engine/adapter_slots.h"

namespace tessera::engine {

// An adapter requests may name, as Engine::Adapters reports it.
struct AdapterState {
  std::string name;
  std::string dir;
  bool resident = false;      // in memory now
  int64_t requests = 0;       // finished requests that ran on it (all its versions)
  int64_t output_tokens = 0;  // tokens they generated
  int64_t loads = 0;          // times it was read from its directory
};

// One version of a named adapter. Its fields other than the names are the catalog's.
struct AdapterVersion {
  std::string name;
  std::string dir;
  uint64_t prefix_root = 0;  // its prefix-hash chains' root (prefix_hash.h)
  int slot = -1;             // the model's slot while resident; -1 otherwise
  int holds = 0;             // requests holding it
  int64_t last_used = 0;     // the catalog's clock when a request last started on it
  bool retired = false;      // replaced or removed: no new request gets it
};

// Adapter names are what requests, prefix-cache roots and metric labels carry: at most
// kMaxAdapterNameBytes of letters, digits and "._-" (no ':', which separates an OpenAI-style
// "base:adapter" model name, nor '#', which versions take in prefix roots). INVALID_ARGUMENT
// "FIELD: why" otherwise, or when empty.
inline constexpr int kMaxAdapterNameBytes = 128;
absl::Status CheckAdapterName(absl::string_view name, absl::string_view field);

class AdapterCatalog;

// A request's hold on the adapter version it runs with; empty for the base model. While held,
// the version is not unloaded. Move-only; released when destroyed.
class AdapterHold {
 public:
  AdapterHold() = default;
  ~AdapterHold();
  AdapterHold(AdapterHold&& other) noexcept;
  AdapterHold& operator=(AdapterHold&& other) noexcept;

  bool is_base() const { return version_ == nullptr; }
  const AdapterVersion* version() const { return version_.get(); }
  const std::shared_ptr<AdapterVersion>& shared_version() const { return version_; }

 private:
  friend class AdapterCatalog;
  AdapterHold(AdapterCatalog* catalog, std::shared_ptr<AdapterVersion> version)
      : catalog_(catalog), version_(std::move(version)) {}
  void Release();

  AdapterCatalog* catalog_ = nullptr;
  std::shared_ptr<AdapterVersion> version_;
};

class AdapterCatalog {
 public:
  // `max_resident`: adapters in memory at once; 0: no limit.
  explicit AdapterCatalog(int max_resident) : max_resident_(max_resident) {}

  // At start: `adapters[i]` is resident in `slots[i]`, loaded in that order (the earliest is
  // the least recently used).
  void AddResident(const std::vector<AdapterSpec>& adapters, const std::vector<int>& slots);

  // A hold on the current version of `name` (the base for ""); INVALID_ARGUMENT naming the
  // served ones when no adapter has that name.
  absl::StatusOr<AdapterHold> Hold(const std::string& name);
  // The slot of a held version now; -1 for the base, or while it is not resident.
  int SlotOf(const AdapterHold& hold) const;
  // Marks `name` touched now (a request starts on it): the last to be unloaded for room.
  void Touch(const AdapterHold& hold);
  // A request on `hold` finished, having generated `output_tokens`.
  void CountFinished(const AdapterHold& hold, int64_t output_tokens);
  // No request may name `name` from now on; NOT_FOUND naming the served ones.
  absl::Status Remove(const std::string& name);
  // The names requests may use, in the order they were first loaded.
  std::vector<AdapterState> States() const;

  // A version of `adapter` that is not yet served: LoadAdapter's, published once it loaded.
  std::shared_ptr<AdapterVersion> NewVersion(const AdapterSpec& adapter);

  // What the next plan unloads and loads.
  struct Changes {
    std::vector<int> unload_slots;
    std::vector<std::shared_ptr<AdapterVersion>> loads;  // `fresh` ones first, all of them
    bool empty() const { return unload_slots.empty() && loads.empty(); }
  };
  // Unloads the resident versions that are retired and held by nobody; loads every `fresh`
  // version, and the `wanted` ones (that waiting requests hold) as far as the limit allows
  // after unloading the least recently used versions held by nobody; and unloads more of
  // those while over the limit. A wanted version that finds no room stays for a later plan.
  Changes Plan(const std::vector<std::shared_ptr<AdapterVersion>>& fresh,
               const std::vector<std::shared_ptr<AdapterVersion>>& wanted);
  // The plan ran: `changes.unload_slots` are free; load i gave `loaded[i]`. A fresh version that
  // loaded becomes its name's current version (the one it replaces is retired).
  void Applied(const Changes& changes, const std::vector<absl::StatusOr<int>>& loaded,
               size_t fresh_count);
  // Some resident version held by nobody is retired, or over the limit: the next plan
  // unloads it.
  bool HasUnloadsDue() const;

 private:
  friend class AdapterHold;
  struct Named {
    std::shared_ptr<AdapterVersion> current;
    int64_t requests = 0;
    int64_t output_tokens = 0;
    int64_t loads = 0;
  };
  void Release(AdapterVersion* version);
  absl::Status Unknown(const std::string& name) const ABSL_SHARED_LOCKS_REQUIRED(mutex_);

  const int max_resident_;
  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Named> names_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mutex_);  // first load order
  // Versions made per name so far, kept after a name is removed (prefix roots stay distinct).
  absl::flat_hash_map<std::string, int> versions_made_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::shared_ptr<AdapterVersion>> resident_ ABSL_GUARDED_BY(mutex_);
  int64_t clock_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_ADAPTER_CATALOG_H_
