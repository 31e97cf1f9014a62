#ifndef TESSERA_RUNTIME_SERVE_SERVE_METRICS_H_
#define TESSERA_RUNTIME_SERVE_SERVE_METRICS_H_

// The metrics the coordinator and the group leaders export (same names in both; Prometheus
// tells them apart by the scrape target): requests by outcome, tokens in and out, latency
// histograms, per-tenant tokens. Gauges of the moment (queue depth, KV blocks, group load)
// are filled by each service's collector at scrape time.

#include "runtime/serve/metrics.h"
#include "runtime/serve/request_record.h"

namespace tessera::serve {

class RequestMetrics {
 public:
  // Adds the families to `registry`, which must outlive this.
  explicit RequestMetrics(MetricsRegistry& registry);

  // One finished request.
  void Record(const RequestRecord& record);

 private:
  CounterFamily* requests_;
  CounterFamily* prompt_tokens_;
  CounterFamily* completion_tokens_;
  CounterFamily* cached_tokens_;
  CounterFamily* tenant_tokens_;
  HistogramFamily* time_to_first_token_;
  HistogramFamily* inter_token_;
  HistogramFamily* end_to_end_;
};

// "OK", "INVALID_ARGUMENT", ... as gRPC names status codes.
const char* StatusCodeName(absl::StatusCode code);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_SERVE_METRICS_H_
