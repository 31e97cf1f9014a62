#ifndef TESSERA_RUNTIME_SERVE_TENANT_QUOTA_H_
#define TESSERA_RUNTIME_SERVE_TENANT_QUOTA_H_

// Tenants of the coordinator: each has a priority class (which requests are refused first
// when the coordinator is full) and a token-rate quota, enforced as a token bucket, plus the
// counters of tokens it used that the coordinator exports as metrics.
//
// A bucket holds at most `burst` tokens and refills at `tokens_per_second`; it starts full.
// A request is admitted when the bucket holds its tokens, which it then takes. A request
// larger than the burst could never fit, so it is admitted when the bucket is full and leaves
// it in debt (negative), which later requests wait out. tokens_per_second 0 is no limit.
//
// Configuration, from a JSON file:
//   {"default": {"priority": "normal", "tokens_per_second": 0, "burst": 0},
//    "tenants": {"acme": {"priority": "high", "tokens_per_second": 5000, "burst": 20000}}}
// or from a flag: "acme=high:5000:20000,beta=low:100:1000" (NAME=PRIORITY[:RATE[:BURST]];
// the name "default" sets the default). A field a tenant leaves out is the default's; a burst
// of 0 with a rate is one second of the rate. Tenants not configured get the default's
// settings, each with a bucket and counters of its own.
//
// Thread-safe.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::serve {

// Larger is more important; the value is what metrics report.
enum class TenantPriority : int { kLow = 0, kNormal = 1, kHigh = 2 };

// "low", "normal", "high".
absl::string_view TenantPriorityName(TenantPriority priority);
// The inverse of TenantPriorityName; INVALID_ARGUMENT listing the names otherwise.
absl::StatusOr<TenantPriority> ParseTenantPriority(absl::string_view name);

struct TenantSettings {
  TenantPriority priority = TenantPriority::kNormal;
  double tokens_per_second = 0;  // 0: no limit
  double burst = 0;              // bucket size in tokens; 0 with a rate: one second of it
};

inline constexpr char kDefaultTenant[] = "default";

struct TenantQuotaConfig {
  TenantSettings default_settings;
  std::map<std::string, TenantSettings> tenants;  // by name; never "default"
};

// Parses the JSON configuration above. INVALID_ARGUMENT naming `source`, and the tenant and
// field when one is wrong (unknown field, wrong type, unknown priority, negative number).
absl::StatusOr<TenantQuotaConfig> ParseTenantQuotaConfigJson(
    absl::string_view text, absl::string_view source = "tenant config");
// Reads and parses `path`; NOT_FOUND when it does not exist.
absl::StatusOr<TenantQuotaConfig> LoadTenantQuotaConfigFile(const std::string& path);
// Adds (or replaces) the tenants of the flag text to `config`; "default=..." changes the
// default. INVALID_ARGUMENT naming the entry, tenant and field; `config` is unchanged then.
absl::Status AddTenantQuotasFromFlag(absl::string_view text, TenantQuotaConfig* config);

// What one tenant was admitted and used since the start.
struct TenantUsage {
  std::string tenant;
  TenantPriority priority = TenantPriority::kNormal;
  int64_t admitted_requests = 0;
  int64_t rejected_requests = 0;  // refused for the quota
  int64_t admitted_tokens = 0;    // as asked for at admission
  int64_t prompt_tokens = 0;      // as charged after completion
  int64_t completion_tokens = 0;
};

struct TenantQuotaOptions {
  // Tenants not in the configuration that get a bucket and counters of their own; past this
  // many (tenant names come from clients), the others share those of "default".
  int max_unconfigured_tenants = 1024;
};

class TenantQuotas {
 public:
  explicit TenantQuotas(TenantQuotaConfig config = {}, TenantQuotaOptions options = {});

  // The settings that apply to `tenant` (the default's for one not configured), burst
  // resolved.
  TenantSettings SettingsOf(absl::string_view tenant) const;
  TenantPriority PriorityOf(absl::string_view tenant) const { return SettingsOf(tenant).priority; }

  // Takes `tokens` from the tenant's bucket, or RESOURCE_EXHAUSTED naming the tenant, its
  // rate and burst, and how long until the request would fit.
  absl::Status Admit(absl::string_view tenant, int64_t tokens, absl::Time now);
  // Returns tokens taken at admission and not used (e.g. max_tokens not generated); the
  // bucket never exceeds its burst.
  void Refund(absl::string_view tenant, int64_t tokens, absl::Time now);
  // Records what a finished request used.
  void Charge(absl::string_view tenant, int64_t prompt_tokens, int64_t completion_tokens);

  // Tokens the tenant's bucket holds at `now` (may be negative: debt); +infinity without a
  // limit.
  double Available(absl::string_view tenant, absl::Time now) const;
  // Every tenant that was admitted, refused or charged, by name.
  std::vector<TenantUsage> Usage() const;

 private:
  struct Bucket {
    bool started = false;
    double level = 0;
    absl::Time last;
  };
  struct State {
    TenantSettings settings;
    Bucket bucket;
    TenantUsage usage;
  };

  static void Refill(const TenantSettings& settings, Bucket& bucket, absl::Time now);
  State& StateFor(absl::string_view tenant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  const TenantSettings& ConfiguredSettings(absl::string_view tenant) const;

  const TenantQuotaConfig config_;
  const TenantQuotaOptions options_;
  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, State> states_ ABSL_GUARDED_BY(mutex_);
  int unconfigured_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_TENANT_QUOTA_H_
