#ifndef TESSERA_RUNTIME_SERVE_SERVE_METRICS_H_
#define TESSERA_RUNTIME_SERVE_SERVE_METRICS_H_

// The metrics the coordinator and the group leaders export (same names in both; Prometheus
// tells them apart by the scrape target): requests by outcome, tokens in and out, latency
// histograms, per-tenant tokens; and the coordinator's per-adapter counts. Gauges of the moment
// (queue depth, KV blocks, group load) are filled by each service's collector at scrape time.

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/request_record.h"

namespace tessera::serve {

class RequestMetrics {
 public:
  // Adds the families to `registry`, which must outlive this. Tenant names come from clients:
  // past `max_tenants` distinct ones, the others' tokens are counted under tenant "other", so
  // that the series stay bounded.
  explicit RequestMetrics(MetricsRegistry& registry, int max_tenants = 1024);

  // One finished request. Thread-safe.
  void Record(const RequestRecord& record);

 private:
  // The tenant label `tenant` is counted under.
  std::string TenantLabel(const std::string& tenant);

  const int max_tenants_;
  absl::Mutex mutex_;
  absl::flat_hash_set<std::string> tenants_ ABSL_GUARDED_BY(mutex_);
  CounterFamily* requests_;
  CounterFamily* prompt_tokens_;
  CounterFamily* completion_tokens_;
  CounterFamily* cached_tokens_;
  CounterFamily* tenant_tokens_;
  HistogramFamily* time_to_first_token_;
  HistogramFamily* inter_token_;
  HistogramFamily* end_to_end_;
};

// Requests and their output tokens by model and LoRA adapter ("" for the base model), at the
// coordinator. Only requests that ran on a group are counted: their model and adapter are ones
// a group serves, so a client naming others adds no series (tessera_requests_total counts
// those by status code).
class AdapterMetrics {
 public:
  // Adds the families to `registry`, which must outlive this.
  explicit AdapterMetrics(MetricsRegistry& registry);

  // One finished request of `model` that ran with `adapter`. Thread-safe.
  void Record(const std::string& model, const std::string& adapter, const RequestRecord& record);

 private:
  CounterFamily* requests_;
  CounterFamily* completion_tokens_;
};

// "OK", "INVALID_ARGUMENT", ... as gRPC names status codes.
const char* StatusCodeName(absl::StatusCode code);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_SERVE_METRICS_H_
