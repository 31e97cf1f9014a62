#include "runtime/serve/tenant_quota.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "runtime/model/json_file.h"

namespace tessera::serve {
namespace {

using nlohmann::json;

// One second of the rate when the burst is left at 0.
TenantSettings Resolved(TenantSettings settings) {
  if (settings.tokens_per_second > 0 && settings.burst <= 0) {
    settings.burst = settings.tokens_per_second;
  }
  return settings;
}

absl::Status FieldError(absl::string_view source, absl::string_view tenant, absl::string_view field,
                        absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": tenant \"", tenant, "\": ", field, ": ", what));
}

// `value`, a JSON number that must be finite and >= 0.
absl::StatusOr<double> NonNegativeNumber(const json& value) {
  if (!value.is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("must be a number >= 0, got ", value.type_name(), " ", value.dump()));
  }
  double number = value.get<double>();
  if (!std::isfinite(number) || number < 0) {
    return absl::InvalidArgumentError(absl::StrCat("must be a number >= 0, got ", value.dump()));
  }
  return number;
}

// Reads one tenant's object over `settings` (fields it leaves out keep their values).
absl::Status ReadTenant(absl::string_view source, absl::string_view tenant, const json& object,
                        TenantSettings& settings) {
  if (!object.is_object()) {
    return FieldError(source, tenant, "settings",
                      absl::StrCat("must be an object, got ", object.type_name()));
  }
  for (const auto& [key, value] : object.items()) {
    if (key == "priority") {
      if (!value.is_string()) {
        return FieldError(source, tenant, key,
                          absl::StrCat("must be a string, got ", value.type_name()));
      }
      absl::StatusOr<TenantPriority> priority = ParseTenantPriority(value.get<std::string>());
      if (!priority.ok()) return FieldError(source, tenant, key, priority.status().message());
      settings.priority = *priority;
    } else if (key == "tokens_per_second" || key == "burst") {
      absl::StatusOr<double> number = NonNegativeNumber(value);
      if (!number.ok()) return FieldError(source, tenant, key, number.status().message());
      (key == "burst" ? settings.burst : settings.tokens_per_second) = *number;
    } else {
      return FieldError(source, tenant, key,
                        "unknown field (priority, tokens_per_second or burst)");
    }
  }
  return absl::OkStatus();
}

// A flag number field: finite and >= 0.
absl::Status ReadFlagNumber(absl::string_view source, absl::string_view tenant,
                            absl::string_view field, absl::string_view text, double& number) {
  text = absl::StripAsciiWhitespace(text);
  if (!absl::SimpleAtod(text, &number) || !std::isfinite(number) || number < 0) {
    return FieldError(source, tenant, field, absl::StrCat("\"", text, "\" is not a number >= 0"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view TenantPriorityName(TenantPriority priority) {
  switch (priority) {
    case TenantPriority::kLow:
      return "low";
    case TenantPriority::kNormal:
      return "normal";
    case TenantPriority::kHigh:
      return "high";
  }
  return "unknown";
}

absl::StatusOr<TenantPriority> ParseTenantPriority(absl::string_view name) {
  for (TenantPriority priority :
       {TenantPriority::kLow, TenantPriority::kNormal, TenantPriority::kHigh}) {
    if (name == TenantPriorityName(priority)) return priority;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown priority \"", name, "\" (high, normal or low)"));
}

absl::StatusOr<TenantQuotaConfig> ParseTenantQuotaConfigJson(absl::string_view text,
                                                             absl::string_view source) {
  json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object"));
  }
  for (const auto& [key, value] : root.items()) {
    if (key != "default" && key != "tenants") {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": unknown field \"", key, "\" (default or tenants)"));
    }
  }
  TenantQuotaConfig config;
  if (root.contains("default")) {
    if (absl::Status status =
            ReadTenant(source, kDefaultTenant, root["default"], config.default_settings);
        !status.ok()) {
      return status;
    }
  }
  if (root.contains("tenants")) {
    const json& tenants = root["tenants"];
    if (!tenants.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tenants: must be an object of tenants by name, got ", tenants.type_name()));
    }
    for (const auto& [name, object] : tenants.items()) {
      if (name.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": tenants: empty tenant name"));
      }
      if (name == kDefaultTenant) {
        return FieldError(source, name, "tenants",
                          "set the default tenant under the top-level \"default\"");
      }
      TenantSettings settings = config.default_settings;
      if (absl::Status status = ReadTenant(source, name, object, settings); !status.ok()) {
        return status;
      }
      config.tenants[name] = settings;
    }
  }
  return config;
}

absl::StatusOr<TenantQuotaConfig> LoadTenantQuotaConfigFile(const std::string& path) {
  absl::StatusOr<std::string> text = model::ReadTextFile(path);
  if (!text.ok()) return text.status();
  return ParseTenantQuotaConfigJson(*text, path);
}

absl::Status AddTenantQuotasFromFlag(absl::string_view text, TenantQuotaConfig* config) {
  struct Entry {
    absl::string_view text;
    std::string name;
    std::vector<absl::string_view> fields;
  };
  std::vector<Entry> entries;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    const std::string source = absl::StrCat("tenant quotas \"", part, "\"");
    const size_t equals = part.find('=');
    if (equals == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": expected NAME=PRIORITY[:TOKENS_PER_SECOND[:BURST]]"));
    }
    Entry entry{part, std::string(absl::StripAsciiWhitespace(part.substr(0, equals))),
                absl::StrSplit(part.substr(equals + 1), ':')};
    if (entry.name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": empty tenant name"));
    }
    for (const Entry& earlier : entries) {
      if (earlier.name == entry.name) return FieldError(source, entry.name, "name", "given twice");
    }
    if (entry.fields.size() > 3) {
      return FieldError(source, entry.name, "settings",
                        "expected PRIORITY[:TOKENS_PER_SECOND[:BURST]], got too many fields");
    }
    entries.push_back(std::move(entry));
  }
  // The default first: the other entries take the fields they leave out from it.
  std::stable_partition(entries.begin(), entries.end(),
                        [](const Entry& entry) { return entry.name == kDefaultTenant; });

  TenantQuotaConfig result = *config;
  for (const Entry& entry : entries) {
    const std::string source = absl::StrCat("tenant quotas \"", entry.text, "\"");
    TenantSettings settings = result.default_settings;
    absl::StatusOr<TenantPriority> priority =
        ParseTenantPriority(absl::StripAsciiWhitespace(entry.fields[0]));
    if (!priority.ok()) {
      return FieldError(source, entry.name, "priority", priority.status().message());
    }
    settings.priority = *priority;
    if (entry.fields.size() > 1) {
      if (absl::Status status = ReadFlagNumber(source, entry.name, "tokens_per_second",
                                               entry.fields[1], settings.tokens_per_second);
          !status.ok()) {
        return status;
      }
    }
    if (entry.fields.size() > 2) {
      if (absl::Status status =
              ReadFlagNumber(source, entry.name, "burst", entry.fields[2], settings.burst);
          !status.ok()) {
        return status;
      }
    }
    if (entry.name == kDefaultTenant) {
      result.default_settings = settings;
    } else {
      result.tenants[entry.name] = settings;
    }
  }
  *config = std::move(result);
  return absl::OkStatus();
}

TenantQuotas::TenantQuotas(TenantQuotaConfig config, TenantQuotaOptions options)
    : config_(std::move(config)), options_(options) {}

const TenantSettings& TenantQuotas::ConfiguredSettings(absl::string_view tenant) const {
  auto it = config_.tenants.find(std::string(tenant));
  return it == config_.tenants.end() ? config_.default_settings : it->second;
}

TenantSettings TenantQuotas::SettingsOf(absl::string_view tenant) const {
  return Resolved(ConfiguredSettings(tenant));
}

TenantQuotas::State& TenantQuotas::StateFor(absl::string_view tenant) {
  auto it = states_.find(tenant);
  if (it != states_.end()) return it->second;
  const bool configured = tenant == kDefaultTenant || config_.tenants.contains(std::string(tenant));
  if (!configured) {
    if (unconfigured_ >= options_.max_unconfigured_tenants) return StateFor(kDefaultTenant);
    ++unconfigured_;
  }
  State& state = states_[tenant];
  state.settings = SettingsOf(tenant);
  state.usage.tenant = std::string(tenant);
  state.usage.priority = state.settings.priority;
  return state;
}

void TenantQuotas::Refill(const TenantSettings& settings, Bucket& bucket, absl::Time now) {
  if (!bucket.started) {
    bucket.started = true;
    bucket.level = settings.burst;
    bucket.last = now;
    return;
  }
  if (now <= bucket.last) return;  // the clock went back: no refill, and no debt either
  const double seconds = absl::ToDoubleSeconds(now - bucket.last);
  bucket.level = std::min(settings.burst, bucket.level + seconds * settings.tokens_per_second);
  bucket.last = now;
}

absl::Status TenantQuotas::Admit(absl::string_view tenant, int64_t tokens, absl::Time now) {
  const double wanted = static_cast<double>(std::max<int64_t>(0, tokens));
  absl::MutexLock lock(&mutex_);
  State& state = StateFor(tenant);
  const TenantSettings& settings = state.settings;
  if (settings.tokens_per_second > 0) {
    Refill(settings, state.bucket, now);
    Bucket& bucket = state.bucket;
    const bool fits = wanted <= bucket.level;
    // Larger than the bucket: only from a full one, into debt.
    const bool oversized_from_full = wanted > settings.burst && bucket.level >= settings.burst;
    if (!fits && !oversized_from_full) {
      ++state.usage.rejected_requests;
      const double missing = std::min(wanted, settings.burst) - bucket.level;
      const absl::Duration wait = absl::Seconds(missing / settings.tokens_per_second);
      return absl::ResourceExhaustedError(absl::StrFormat(
          "tenant \"%s\": token quota of %g tokens/s (burst %g) used up: the request needs "
          "%d tokens, %d are available; retry in %s",
          tenant, settings.tokens_per_second, settings.burst, static_cast<int64_t>(wanted),
          static_cast<int64_t>(std::floor(bucket.level)),
          absl::FormatDuration(absl::Ceil(wait, absl::Milliseconds(1)))));
    }
    bucket.level -= wanted;
  }
  ++state.usage.admitted_requests;
  state.usage.admitted_tokens += static_cast<int64_t>(wanted);
  return absl::OkStatus();
}

void TenantQuotas::Refund(absl::string_view tenant, int64_t tokens, absl::Time now) {
  if (tokens <= 0) return;
  absl::MutexLock lock(&mutex_);
  State& state = StateFor(tenant);
  if (state.settings.tokens_per_second <= 0) return;
  Refill(state.settings, state.bucket, now);
  state.bucket.level =
      std::min(state.settings.burst, state.bucket.level + static_cast<double>(tokens));
}

void TenantQuotas::Charge(absl::string_view tenant, int64_t prompt_tokens,
                          int64_t completion_tokens) {
  absl::MutexLock lock(&mutex_);
  State& state = StateFor(tenant);
  state.usage.prompt_tokens += std::max<int64_t>(0, prompt_tokens);
  state.usage.completion_tokens += std::max<int64_t>(0, completion_tokens);
}

double TenantQuotas::Available(absl::string_view tenant, absl::Time now) const {
  absl::MutexLock lock(&mutex_);
  auto it = states_.find(tenant);
  const TenantSettings settings = it != states_.end() ? it->second.settings : SettingsOf(tenant);
  if (settings.tokens_per_second <= 0) return std::numeric_limits<double>::infinity();
  Bucket bucket = it != states_.end() ? it->second.bucket : Bucket();
  Refill(settings, bucket, now);
  return bucket.level;
}

std::vector<TenantUsage> TenantQuotas::Usage() const {
  std::vector<TenantUsage> usage;
  {
    absl::MutexLock lock(&mutex_);
    usage.reserve(states_.size());
    for (const auto& [name, state] : states_) usage.push_back(state.usage);
  }
  std::sort(usage.begin(), usage.end(),
            [](const TenantUsage& a, const TenantUsage& b) { return a.tenant < b.tenant; });
  return usage;
}

}  // namespace tessera::serve
