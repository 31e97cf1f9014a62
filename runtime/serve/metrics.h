#ifndef TESSERA_RUNTIME_SERVE_METRICS_H_
#define TESSERA_RUNTIME_SERVE_METRICS_H_

// Prometheus metrics for the serving layer: counters, gauges and histograms grouped in
// labelled families, held by a registry that renders them in the Prometheus text exposition
// format, version 0.0.4 (what GET /metrics answers; see metrics_http.h).
//
//   MetricsRegistry registry;
//   CounterFamily* requests = *registry.AddCounter("tessera_requests_total",
//                                                  "Requests finished, by outcome.", {"code"});
//   requests->WithLabels({"ok"}).Inc();
//
// Thread safety: everything here may be used from any number of threads at once. Updating a
// metric is a few atomic operations; finding a family's child takes a shared lock and does
// not allocate once the child exists. Families and children live as long as the registry, so
// callers may keep the pointers and references they are handed.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace tessera::serve {

// A value that only goes up: requests served, tokens generated.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void Inc() { Add(1.0); }
  // Adds `amount`. A negative or NaN amount is ignored: a counter never goes down.
  void Add(double amount);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down: queue depth, free KV blocks.
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount) { value_.fetch_add(amount, std::memory_order_relaxed); }
  void Inc() { Add(1.0); }
  void Dec() { Add(-1.0); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted in fixed buckets: latencies, sizes.
class Histogram {
 public:
  // A point-in-time view. `cumulative_counts[i]` counts observations <= bounds[i]; the last
  // entry (one past the bounds) is the +Inf bucket and equals `count`.
  struct Snapshot {
    std::vector<uint64_t> cumulative_counts;
    double sum = 0.0;
    uint64_t count = 0;
  };

  // `bounds`: strictly increasing finite bucket upper bounds (the +Inf bucket is implicit).
  // The registry checks them; see MetricsRegistry::AddHistogram.
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Counts `value` in the first bucket whose bound is >= value. NaN is ignored.
  void Observe(double value);

  const std::vector<double>& bounds() const { return bounds_; }
  // Buckets are read one after another while observations may go on: every bucket and the
  // count are consistent with each other (the count is their total), while `sum` may include
  // or miss an observation in flight.
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  // Per bucket, not cumulative; bounds_.size() + 1 entries, the last for +Inf.
  const std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0.0};
};

// What a family renders as: the `# TYPE` line.
enum class MetricType { kCounter, kGauge, kHistogram };

// The part of a family that does not depend on the metric type.
class MetricFamily {
 public:
  MetricFamily(const MetricFamily&) = delete;
  MetricFamily& operator=(const MetricFamily&) = delete;
  virtual ~MetricFamily() = default;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  MetricType type() const { return type_; }

  // Appends this family in the text format: `# HELP`, `# TYPE`, then one sample line per
  // child (three kinds of line per child for a histogram), children ordered by their label
  // values. A family with no child renders nothing.
  virtual void RenderTo(std::string* out) const = 0;

 protected:
  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names,
               MetricType type);

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const MetricType type_;
};

// The children of one metric, one per tuple of label values. Made by MetricsRegistry.
template <typename Metric>
class Family final : public MetricFamily {
 public:
  // The child for `label_values` (one per label name, in the order of label_names()),
  // created on first use. Values may be any text; they are escaped when rendered.
  //
  // The wrong number of values is a programming error. Rather than abort a serving process
  // over a metric, it returns this family's sink: a child that is never rendered, shared by
  // every such call, so the samples are dropped. TryWithLabels reports the mistake instead.
  Metric& WithLabels(absl::Span<const absl::string_view> label_values);

  // As WithLabels, but INVALID_ARGUMENT naming the metric for the wrong number of values.
  absl::StatusOr<Metric*> TryWithLabels(absl::Span<const absl::string_view> label_values);

  // Stops rendering the child for `label_values`, for label sets that have gone away (a
  // worker group that left). The child object stays alive, so references already handed
  // out stay valid; updates through them are no longer rendered. A later WithLabels with the
  // same values starts a new child from zero. False when there was no such child. Each
  // removed child's memory is held until the registry is destroyed.
  bool Remove(absl::Span<const absl::string_view> label_values);

  void RenderTo(std::string* out) const override;

 private:
  friend class MetricsRegistry;

  // Orders label-value tuples, and compares stored tuples with looked-up spans without
  // building a key.
  struct LabelsLess {
    using is_transparent = void;
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      return std::lexicographical_compare(
          a.begin(), a.end(), b.begin(), b.end(),
          [](absl::string_view x, absl::string_view y) { return x < y; });
    }
  };

  Family(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
         std::function<std::unique_ptr<Metric>()> make_child);

  const std::function<std::unique_ptr<Metric>()> make_child_;
  const std::unique_ptr<Metric> sink_;
  mutable absl::Mutex mutex_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>, LabelsLess> children_
      ABSL_GUARDED_BY(mutex_);
  // Removed children, kept so that references to them stay valid.
  std::vector<std::unique_ptr<Metric>> removed_ ABSL_GUARDED_BY(mutex_);
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

// Bucket bounds for latencies in seconds, 0.5 ms to 60 s in 1-2.5-5 steps (roughly
// exponential): 0.0005, 0.001, 0.0025, ..., 5, 10, 30, 60.
std::vector<double> LatencyBuckets();

// `count` bounds: start, start*factor, start*factor^2, ..., each rounded to 12 significant
// digits so that the `le` labels read cleanly. Needs start > 0, factor > 1 and count >= 1;
// otherwise empty, which AddHistogram refuses.
std::vector<double> ExponentialBuckets(double start, double factor, int count);

// Holds metric families and renders them for a scrape.
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;
  ~MetricsRegistry();

  // Each Add* creates a family and returns it; the registry owns it. Errors are programming
  // errors, reported rather than fatal:
  //   INVALID_ARGUMENT naming the metric: a name that does not match [a-zA-Z_:][a-zA-Z0-9_:]*;
  //     a label name that does not match [a-zA-Z_][a-zA-Z0-9_]*, starts with "__" or is
  //     repeated; for histograms the label name "le", or bounds that are empty, not finite
  //     or not strictly increasing (a trailing +Inf is accepted and dropped);
  //   ALREADY_EXISTS: a family whose sample names (a histogram's name_bucket, name_sum and
  //     name_count included) would clash with one already registered.
  // A family with no label names renders its one child (at zero) from the start.
  absl::StatusOr<CounterFamily*> AddCounter(absl::string_view name, absl::string_view help,
                                            std::vector<std::string> label_names = {});
  absl::StatusOr<GaugeFamily*> AddGauge(absl::string_view name, absl::string_view help,
                                        std::vector<std::string> label_names = {});
  absl::StatusOr<HistogramFamily*> AddHistogram(absl::string_view name, absl::string_view help,
                                                std::vector<std::string> label_names,
                                                std::vector<double> bucket_bounds);

  // Runs `collector` at the start of every RenderText, before anything is rendered, so a
  // service can fill gauges from its state at scrape time. Collectors run in the order they
  // were added, one scrape at a time (concurrent scrapes take turns), without the registry's
  // lock held: a collector may use families, and even add them.
  void AddCollector(std::function<void()> collector);

  // Runs the collectors, then renders every family in registration order in the text
  // exposition format 0.0.4 (each line ends in '\n'; families with no child are left out).
  std::string RenderText() const;

 private:
  // Checks the name and label names, and claims the sample names of a new family.
  absl::Status Claim(absl::string_view name, const std::vector<std::string>& label_names,
                     MetricType type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // Serializes scrapes: collectors then rendering.
  mutable absl::Mutex scrape_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  mutable absl::Mutex mutex_;
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_set<std::string> sample_names_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::function<void()>> collectors_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_METRICS_H_
