#include "runtime/engine/adapter_catalog.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/engine/prefix_hash.h"

namespace tessera::engine {

absl::Status CheckAdapterName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  if (name.size() > kMaxAdapterNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", name.size(), " bytes; at most ", kMaxAdapterNameBytes));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": \"", absl::CHexEscape(name),
                       "\" has a character other than letters, digits and \"._-\""));
    }
  }
  return absl::OkStatus();
}

AdapterHold::~AdapterHold() { Release(); }

AdapterHold::AdapterHold(AdapterHold&& other) noexcept
    : catalog_(other.catalog_), version_(std::move(other.version_)) {
  other.catalog_ = nullptr;
}

AdapterHold& AdapterHold::operator=(AdapterHold&& other) noexcept {
  if (this != &other) {
    Release();
    catalog_ = other.catalog_;
    version_ = std::move(other.version_);
    other.catalog_ = nullptr;
  }
  return *this;
}

void AdapterHold::Release() {
  if (catalog_ != nullptr && version_ != nullptr) catalog_->Release(version_.get());
  catalog_ = nullptr;
  version_.reset();
}

void AdapterCatalog::Release(AdapterVersion* version) {
  absl::MutexLock lock(&mutex_);
  --version->holds;
}

std::shared_ptr<AdapterVersion> AdapterCatalog::NewVersion(const AdapterSpec& adapter) {
  absl::MutexLock lock(&mutex_);
  auto version = std::make_shared<AdapterVersion>();
  version->name = adapter.name;
  version->dir = adapter.dir;
  const int made = ++versions_made_[adapter.name];
  version->prefix_root =
      PrefixHashRoot(made == 1 ? adapter.name : absl::StrCat(adapter.name, "#", made));
  return version;
}

void AdapterCatalog::AddResident(const std::vector<AdapterSpec>& adapters,
                                 const std::vector<int>& slots) {
  for (size_t i = 0; i < adapters.size(); ++i) {
    std::shared_ptr<AdapterVersion> version = NewVersion(adapters[i]);
    absl::MutexLock lock(&mutex_);
    version->slot = slots[i];
    version->last_used = ++clock_;
    resident_.push_back(version);
    Named& named = names_[adapters[i].name];
    named.current = std::move(version);
    named.loads = 1;
    order_.push_back(adapters[i].name);
  }
}

absl::Status AdapterCatalog::Unknown(const std::string& name) const {
  if (order_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter: \"", name, "\" is not loaded; this engine serves no adapters"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "adapter: \"", name, "\" is not loaded; loaded adapters: ", absl::StrJoin(order_, ", ")));
}

absl::StatusOr<AdapterHold> AdapterCatalog::Hold(const std::string& name) {
  if (name.empty()) return AdapterHold();
  absl::MutexLock lock(&mutex_);
  auto it = names_.find(name);
  if (it == names_.end()) return Unknown(name);
  ++it->second.current->holds;
  return AdapterHold(this, it->second.current);
}

int AdapterCatalog::SlotOf(const AdapterHold& hold) const {
  if (hold.is_base()) return -1;
  absl::MutexLock lock(&mutex_);
  return hold.version()->slot;
}

void AdapterCatalog::Touch(const AdapterHold& hold) {
  if (hold.is_base()) return;
  absl::MutexLock lock(&mutex_);
  hold.version_->last_used = ++clock_;
}

void AdapterCatalog::CountFinished(const AdapterHold& hold, int64_t output_tokens) {
  if (hold.is_base()) return;
  absl::MutexLock lock(&mutex_);
  auto it = names_.find(hold.version()->name);
  if (it == names_.end()) return;
  ++it->second.requests;
  it->second.output_tokens += output_tokens;
}

absl::Status AdapterCatalog::Remove(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  auto it = names_.find(name);
  if (it == names_.end()) {
    absl::Status unknown = Unknown(name);
    return absl::NotFoundError(unknown.message());
  }
  it->second.current->retired = true;
  names_.erase(it);
  order_.erase(std::find(order_.begin(), order_.end(), name));
  return absl::OkStatus();
}

std::vector<AdapterState> AdapterCatalog::States() const {
  absl::MutexLock lock(&mutex_);
  std::vector<AdapterState> states;
  for (const std::string& name : order_) {
    const Named& named = names_.at(name);
    states.push_back({.name = name,
                      .dir = named.current->dir,
                      .resident = named.current->slot >= 0,
                      .requests = named.requests,
                      .output_tokens = named.output_tokens,
                      .loads = named.loads});
  }
  return states;
}

bool AdapterCatalog::HasUnloadsDue() const {
  absl::MutexLock lock(&mutex_);
  const bool over = max_resident_ > 0 && static_cast<int>(resident_.size()) > max_resident_;
  for (const auto& version : resident_) {
    if (version->holds == 0 && (version->retired || over)) return true;
  }
  return false;
}

AdapterCatalog::Changes AdapterCatalog::Plan(
    const std::vector<std::shared_ptr<AdapterVersion>>& fresh,
    const std::vector<std::shared_ptr<AdapterVersion>>& wanted) {
  absl::MutexLock lock(&mutex_);
  Changes changes;
  // Held by nobody: retired ones go now; the others, least recently used first, for room.
  std::vector<AdapterVersion*> spare;
  for (const auto& version : resident_) {
    if (version->holds > 0) continue;
    if (version->retired) {
      changes.unload_slots.push_back(version->slot);
    } else {
      spare.push_back(version.get());
    }
  }
  std::sort(spare.begin(), spare.end(), [](const AdapterVersion* a, const AdapterVersion* b) {
    return a->last_used < b->last_used;
  });
  size_t next_spare = 0;
  int resident = static_cast<int>(resident_.size() - changes.unload_slots.size());
  // Makes room for one more; false when every resident version is held.
  auto room_for_one = [&] {
    if (max_resident_ <= 0) return true;
    while (resident + static_cast<int>(changes.loads.size()) + 1 > max_resident_) {
      if (next_spare == spare.size()) return false;
      changes.unload_slots.push_back(spare[next_spare++]->slot);
      --resident;
    }
    return true;
  };
  for (const auto& version : fresh) {
    room_for_one();  // loaded even without room: LoadAdapter's caller waits for an answer
    changes.loads.push_back(version);
  }
  absl::flat_hash_set<const AdapterVersion*> planned;
  for (const auto& version : wanted) {
    if (version->slot >= 0 || !planned.insert(version.get()).second) continue;
    if (!room_for_one()) break;
    changes.loads.push_back(version);
  }
  // Back within the limit (after a LoadAdapter without room, or more adapters at start).
  while (max_resident_ > 0 && resident + static_cast<int>(changes.loads.size()) > max_resident_ &&
         next_spare < spare.size()) {
    changes.unload_slots.push_back(spare[next_spare++]->slot);
    --resident;
  }
  return changes;
}

void AdapterCatalog::Applied(const Changes& changes, const std::vector<absl::StatusOr<int>>& loaded,
                             size_t fresh_count) {
  absl::MutexLock lock(&mutex_);
  for (int slot : changes.unload_slots) {
    auto it = std::find_if(resident_.begin(), resident_.end(),
                           [slot](const auto& version) { return version->slot == slot; });
    if (it == resident_.end()) continue;
    (*it)->slot = -1;
    resident_.erase(it);
  }
  for (size_t i = 0; i < changes.loads.size() && i < loaded.size(); ++i) {
    if (!loaded[i].ok()) continue;
    const std::shared_ptr<AdapterVersion>& version = changes.loads[i];
    version->slot = *loaded[i];
    version->last_used = ++clock_;
    resident_.push_back(version);
    if (i < fresh_count) {
      auto [it, added] = names_.try_emplace(version->name);
      if (added) order_.push_back(version->name);
      if (it->second.current != nullptr) it->second.current->retired = true;
      it->second.current = version;
    }
    auto named = names_.find(version->name);
    if (named != names_.end() && named->second.current == version) ++named->second.loads;
  }
}

}  // namespace tessera::engine
