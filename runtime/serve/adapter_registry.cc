#include "runtime/serve/adapter_registry.h"

#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::serve {

absl::Status AdapterNotLoaded(absl::string_view model, absl::string_view adapter,
                              absl::Span<const GroupSnapshot> groups) {
  std::set<std::string> loaded;
  for (const GroupSnapshot& group : groups) {
    if (group.info.model != model) continue;
    for (const GroupAdapter& held : group.load->adapters) loaded.insert(held.name);
  }
  return absl::NotFoundError(
      absl::StrCat("adapter: \"", adapter, "\" is not loaded for model ", model,
                   "; loaded: ", loaded.empty() ? "none" : absl::StrJoin(loaded, ", ")));
}

void AdapterRegistry::Load(const std::string& model, const std::string& version,
                           const std::string& name, const std::string& dir) {
  absl::MutexLock lock(&mutex_);
  ModelRecord& record = models_[model];
  if (version.empty()) {
    for (auto& [recorded_version, adapters] : record) adapters.erase(name);
  }
  record[version][name] = dir;
  std::erase_if(record, [](const auto& entry) { return entry.second.empty(); });
}

bool AdapterRegistry::Unload(const std::string& model, const std::string& version,
                             const std::string& name,
                             absl::Span<const std::string> other_versions) {
  absl::MutexLock lock(&mutex_);
  auto found = models_.find(model);
  if (found == models_.end()) return false;
  ModelRecord& record = found->second;
  bool dropped = false;
  if (version.empty()) {
    for (auto& [recorded_version, adapters] : record) dropped |= adapters.erase(name) > 0;
  } else {
    dropped = record[version].erase(name) > 0;
    auto every = record.find("");
    if (every != record.end()) {
      if (auto wide = every->second.find(name); wide != every->second.end()) {
        const std::string dir = wide->second;
        every->second.erase(wide);
        for (const std::string& other : other_versions) {
          if (other != version && !other.empty()) record[other].emplace(name, dir);
        }
        dropped = true;
      }
    }
  }
  std::erase_if(record, [](const auto& entry) { return entry.second.empty(); });
  if (record.empty()) models_.erase(found);
  return dropped;
}

AdapterRegistry::Adapters AdapterRegistry::For(const std::string& model,
                                               const std::string& version) const {
  absl::MutexLock lock(&mutex_);
  Adapters adapters;
  auto found = models_.find(model);
  if (found == models_.end()) return adapters;
  if (auto own = found->second.find(version); own != found->second.end()) adapters = own->second;
  if (auto every = found->second.find(""); every != found->second.end()) {
    adapters.insert(every->second.begin(), every->second.end());  // keeps the version's own
  }
  return adapters;
}

AdapterRegistry::ModelRecord AdapterRegistry::Record(const std::string& model) const {
  absl::MutexLock lock(&mutex_);
  auto found = models_.find(model);
  return found == models_.end() ? ModelRecord() : found->second;
}

void AdapterRegistry::Restore(const std::string& model, ModelRecord record) {
  absl::MutexLock lock(&mutex_);
  if (record.empty()) {
    models_.erase(model);
  } else {
    models_[model] = std::move(record);
  }
}

std::vector<AdapterListing> AdapterRegistry::List(const std::string& model,
                                                  absl::Span<const GroupSnapshot> groups) const {
  std::map<std::tuple<std::string, std::string, std::string>, AdapterListing> rows;
  auto row = [&rows](const std::string& m, const std::string& v,
                     const std::string& name) -> AdapterListing& {
    AdapterListing& listing = rows[{m, v, name}];
    listing.model = m;
    listing.version = v;
    listing.name = name;
    return listing;
  };
  std::map<std::string, std::set<std::string>> versions;  // registered, by model
  for (const GroupSnapshot& group : groups) {
    if (!model.empty() && group.info.model != model) continue;
    versions[group.info.model].insert(group.info.version);
    if (!group.healthy) continue;
    for (const GroupAdapter& adapter : group.load->adapters) {
      AdapterListing& listing = row(group.info.model, group.info.version, adapter.name);
      ++listing.groups;
      listing.resident += adapter.resident ? 1 : 0;
      if (listing.dir.empty()) listing.dir = adapter.dir;
    }
  }
  absl::MutexLock lock(&mutex_);
  for (const auto& [recorded_model, record] : models_) {
    if (!model.empty() && recorded_model != model) continue;
    for (const auto& [version, adapters] : record) {
      std::set<std::string> targets = {version};
      if (version.empty() && !versions[recorded_model].empty()) targets = versions[recorded_model];
      for (const std::string& target : targets) {
        for (const auto& [name, dir] : adapters) {
          // A version's own record wins over the model-wide one.
          if (version.empty() && !target.empty() && record.contains(target) &&
              record.at(target).contains(name)) {
            continue;
          }
          row(recorded_model, target, name).dir = dir;
        }
      }
    }
  }
  std::vector<AdapterListing> result;
  result.reserve(rows.size());
  for (auto& [key, listing] : rows) result.push_back(std::move(listing));
  return result;
}

}  // namespace tessera::serve
