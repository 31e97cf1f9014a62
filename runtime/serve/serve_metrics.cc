#include "runtime/serve/serve_metrics.h"

#include <string>

namespace tessera::serve {
namespace {

template <typename Family>
Family* Must(absl::StatusOr<Family*> family) {
  // The names below are constants checked by the tests: a failure here is a bug in this file.
  if (!family.ok()) {
    std::fprintf(stderr, "tessera: metrics: %s\n", family.status().ToString().c_str());
    std::abort();
  }
  return *family;
}

}  // namespace

const char* StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

RequestMetrics::RequestMetrics(MetricsRegistry& registry, int max_tenants)
    : max_tenants_(max_tenants),
      requests_(Must(registry.AddCounter("tessera_requests_total",
                                         "Requests finished, by gRPC status code and finish "
                                         "reason.",
                                         {"code", "finish_reason"}))),
      prompt_tokens_(Must(registry.AddCounter(
          "tessera_prompt_tokens_total", "Prompt tokens of finished requests (tokens in).", {}))),
      completion_tokens_(Must(registry.AddCounter("tessera_completion_tokens_total",
                                                  "Tokens generated (tokens out).", {}))),
      cached_tokens_(
          Must(registry.AddCounter("tessera_cached_prompt_tokens_total",
                                   "Prompt tokens whose KV came from the prefix cache; divided by "
                                   "tessera_prompt_tokens_total it is the prefix-cache hit rate.",
                                   {}))),
      tenant_tokens_(Must(registry.AddCounter("tessera_tenant_tokens_total",
                                              "Tokens per tenant, prompt and completion: the "
                                              "basis of cost accounting.",
                                              {"tenant", "kind"}))),
      time_to_first_token_(
          Must(registry.AddHistogram("tessera_time_to_first_token_seconds",
                                     "Arrival to first streamed token.", {}, LatencyBuckets()))),
      inter_token_(Must(registry.AddHistogram("tessera_inter_token_latency_seconds",
                                              "Time between consecutive streamed messages of "
                                              "a request.",
                                              {}, LatencyBuckets()))),
      end_to_end_(Must(registry.AddHistogram("tessera_request_duration_seconds",
                                             "Arrival to the end of the request.", {},
                                             LatencyBuckets()))) {}

void RequestMetrics::Record(const RequestRecord& record) {
  requests_->WithLabels({StatusCodeName(record.code), record.finish_reason}).Inc();
  prompt_tokens_->WithLabels({}).Add(record.prompt_tokens);
  completion_tokens_->WithLabels({}).Add(record.completion_tokens);
  cached_tokens_->WithLabels({}).Add(record.cached_tokens);
  const std::string tenant = TenantLabel(record.tenant.empty() ? "default" : record.tenant);
  tenant_tokens_->WithLabels({tenant, "prompt"}).Add(record.prompt_tokens);
  tenant_tokens_->WithLabels({tenant, "completion"}).Add(record.completion_tokens);
  if (record.time_to_first_token_seconds >= 0) {
    time_to_first_token_->WithLabels({}).Observe(record.time_to_first_token_seconds);
  }
  Histogram& inter_token = inter_token_->WithLabels({});
  for (double gap : record.inter_token_seconds) inter_token.Observe(gap);
  end_to_end_->WithLabels({}).Observe(record.total_seconds);
}

AdapterMetrics::AdapterMetrics(MetricsRegistry& registry)
    : requests_(Must(registry.AddCounter(
          "tessera_adapter_requests_total",
          "Requests that ran on a worker group, by model and LoRA adapter (\"\" for the base "
          "model), whatever their outcome.",
          {"model", "adapter"}))),
      completion_tokens_(Must(registry.AddCounter(
          "tessera_adapter_completion_tokens_total",
          "Tokens generated, by model and LoRA adapter (\"\" for the base model).",
          {"model", "adapter"}))) {}

void AdapterMetrics::Record(const std::string& model, const std::string& adapter,
                            const RequestRecord& record) {
  if (record.group.empty()) return;  // never ran: the names may be anything a client sent
  requests_->WithLabels({model, adapter}).Inc();
  completion_tokens_->WithLabels({model, adapter}).Add(record.completion_tokens);
}

std::string RequestMetrics::TenantLabel(const std::string& tenant) {
  absl::MutexLock lock(&mutex_);
  if (tenants_.contains(tenant)) return tenant;
  if (static_cast<int>(tenants_.size()) >= max_tenants_) return "other";
  tenants_.insert(tenant);
  return tenant;
}

}  // namespace tessera::serve
