#include "runtime/serve/metrics.h"

#include <charconv>
#include <cmath>
#include <cstddef>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/core/status_macros.h"

namespace tessera::serve {
namespace {

// Integers below 2^53 are exact in a double and print without an exponent.
constexpr double kMaxExactInteger = 9007199254740992.0;

// A number as Prometheus parses it (Go's strconv.ParseFloat): integers in full, other
// finite values in the shortest form that reads back to the same double, and NaN, +Inf and
// -Inf by those names.
void AppendValue(double value, std::string* out) {
  if (std::isnan(value)) {
    out->append("NaN");
  } else if (std::isinf(value)) {
    out->append(value > 0 ? "+Inf" : "-Inf");
  } else if (value == std::trunc(value) && std::fabs(value) < kMaxExactInteger) {
    absl::StrAppend(out, static_cast<int64_t>(value));
  } else {
    char buffer[32];
    std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
    out->append(buffer, result.ptr);
  }
}

std::string FormatValue(double value) {
  std::string text;
  AppendValue(value, &text);
  return text;
}

// Label values escape backslash, double quote and newline; help text escapes backslash and
// newline only.
void AppendEscaped(absl::string_view text, bool escape_quote, std::string* out) {
  for (char c : text) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '"':
        out->append(escape_quote ? "\\\"" : "\"");
        break;
      default:
        out->push_back(c);
    }
  }
}

// `name{label="value",...} value\n`; `le`, when not empty, is added as the last label.
void AppendSample(absl::string_view name, const std::vector<std::string>& label_names,
                  const std::vector<std::string>& label_values, absl::string_view le, double value,
                  std::string* out) {
  absl::StrAppend(out, name);
  if (!label_names.empty() || !le.empty()) {
    out->push_back('{');
    for (size_t i = 0; i < label_names.size(); ++i) {
      if (i > 0) out->push_back(',');
      absl::StrAppend(out, label_names[i], "=\"");
      AppendEscaped(label_values[i], /*escape_quote=*/true, out);
      out->push_back('"');
    }
    if (!le.empty()) {
      if (!label_names.empty()) out->push_back(',');
      absl::StrAppend(out, "le=\"", le, "\"");
    }
    out->push_back('}');
  }
  out->push_back(' ');
  AppendValue(value, out);
  out->push_back('\n');
}

void RenderChild(const MetricFamily& family, const std::vector<std::string>& label_values,
                 const Counter& counter, std::string* out) {
  AppendSample(family.name(), family.label_names(), label_values, "", counter.Value(), out);
}

void RenderChild(const MetricFamily& family, const std::vector<std::string>& label_values,
                 const Gauge& gauge, std::string* out) {
  AppendSample(family.name(), family.label_names(), label_values, "", gauge.Value(), out);
}

void RenderChild(const MetricFamily& family, const std::vector<std::string>& label_values,
                 const Histogram& histogram, std::string* out) {
  const Histogram::Snapshot snapshot = histogram.Read();
  const std::string bucket_name = absl::StrCat(family.name(), "_bucket");
  const std::vector<double>& bounds = histogram.bounds();
  for (size_t i = 0; i < bounds.size(); ++i) {
    AppendSample(bucket_name, family.label_names(), label_values, FormatValue(bounds[i]),
                 static_cast<double>(snapshot.cumulative_counts[i]), out);
  }
  AppendSample(bucket_name, family.label_names(), label_values, "+Inf",
               static_cast<double>(snapshot.count), out);
  AppendSample(absl::StrCat(family.name(), "_sum"), family.label_names(), label_values, "",
               snapshot.sum, out);
  AppendSample(absl::StrCat(family.name(), "_count"), family.label_names(), label_values, "",
               static_cast<double>(snapshot.count), out);
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// [a-zA-Z_:][a-zA-Z0-9_:]* for metric names, [a-zA-Z_][a-zA-Z0-9_]* for label names.
bool IsValidName(absl::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_' ||
                    (allow_colon && c == ':') ||
                    (i > 0 && absl::ascii_isdigit(static_cast<unsigned char>(c)));
    if (!ok) return false;
  }
  return true;
}

// The names a family's sample lines use.
std::vector<std::string> SampleNames(absl::string_view name, MetricType type) {
  if (type != MetricType::kHistogram) return {std::string(name)};
  return {std::string(name), absl::StrCat(name, "_bucket"), absl::StrCat(name, "_sum"),
          absl::StrCat(name, "_count")};
}

}  // namespace

void Counter::Add(double amount) {
  if (!(amount >= 0.0)) return;  // negative or NaN
  value_.fetch_add(amount, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.cumulative_counts.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative_counts[i] = total;
  }
  snapshot.count = total;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

MetricFamily::MetricFamily(std::string name, std::string help, std::vector<std::string> label_names,
                           MetricType type)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      type_(type) {}

template <typename Metric>
Family<Metric>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                       MetricType type, std::function<std::unique_ptr<Metric>()> make_child)
    : MetricFamily(std::move(name), std::move(help), std::move(label_names), type),
      make_child_(std::move(make_child)),
      sink_(make_child_()) {
  if (this->label_names().empty()) {
    absl::MutexLock lock(&mutex_);
    children_.emplace(std::vector<std::string>(), make_child_());
  }
}

template <typename Metric>
Metric& Family<Metric>::WithLabels(absl::Span<const absl::string_view> label_values) {
  if (label_values.size() != label_names().size()) return *sink_;
  {
    absl::ReaderMutexLock lock(&mutex_);
    auto it = children_.find(label_values);
    if (it != children_.end()) return *it->second;
  }
  absl::MutexLock lock(&mutex_);
  auto [it, inserted] = children_.try_emplace(
      std::vector<std::string>(label_values.begin(), label_values.end()), nullptr);
  if (inserted) it->second = make_child_();
  return *it->second;
}

template <typename Metric>
absl::StatusOr<Metric*> Family<Metric>::TryWithLabels(
    absl::Span<const absl::string_view> label_values) {
  if (label_values.size() != label_names().size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "metric \"%s\" has %d label(s) (%s), given %d value(s)", name(), label_names().size(),
        absl::StrJoin(label_names(), ", "), label_values.size()));
  }
  return &WithLabels(label_values);
}

template <typename Metric>
bool Family<Metric>::Remove(absl::Span<const absl::string_view> label_values) {
  absl::MutexLock lock(&mutex_);
  auto it = children_.find(label_values);
  if (it == children_.end()) return false;
  removed_.push_back(std::move(it->second));
  children_.erase(it);
  return true;
}

template <typename Metric>
void Family<Metric>::RenderTo(std::string* out) const {
  absl::ReaderMutexLock lock(&mutex_);
  if (children_.empty()) return;
  absl::StrAppend(out, "# HELP ", name(), " ");
  AppendEscaped(help(), /*escape_quote=*/false, out);
  absl::StrAppend(out, "\n# TYPE ", name(), " ", TypeName(type()), "\n");
  for (const auto& [label_values, child] : children_) {
    RenderChild(*this, label_values, *child, out);
  }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

std::vector<double> LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1 || !std::isfinite(start) ||
      !std::isfinite(factor)) {
    return {};
  }
  std::vector<double> bounds;
  bounds.reserve(count);
  for (int i = 0; i < count; ++i) {
    double rounded = 0;
    const std::string text = absl::StrFormat("%.12g", start * std::pow(factor, i));
    if (!absl::SimpleAtod(text, &rounded)) return {};
    bounds.push_back(rounded);
  }
  return bounds;
}

MetricsRegistry::~MetricsRegistry() = default;

absl::Status MetricsRegistry::Claim(absl::string_view name,
                                    const std::vector<std::string>& label_names, MetricType type) {
  if (!IsValidName(name, /*allow_colon=*/true)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "metric \"%s\": not a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)", name));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!IsValidName(label, /*allow_colon=*/false)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metric \"%s\": label name \"%s\" is not a valid Prometheus label name "
                          "([a-zA-Z_][a-zA-Z0-9_]*)",
                          name, label));
    }
    if (label.starts_with("__")) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "metric \"%s\": label name \"%s\" starts with \"__\", which Prometheus reserves", name,
          label));
    }
    if (type == MetricType::kHistogram && label == "le") {
      return absl::InvalidArgumentError(absl::StrFormat(
          "metric \"%s\": a histogram cannot have a label named \"le\" (its bucket label)", name));
    }
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == label) {
        return absl::InvalidArgumentError(
            absl::StrFormat("metric \"%s\": label name \"%s\" is repeated", name, label));
      }
    }
  }
  const std::vector<std::string> sample_names = SampleNames(name, type);
  for (const std::string& sample_name : sample_names) {
    if (sample_names_.contains(sample_name)) {
      return absl::AlreadyExistsError(absl::StrFormat(
          "metric \"%s\": the sample name \"%s\" is already used by a registered metric", name,
          sample_name));
    }
  }
  sample_names_.insert(sample_names.begin(), sample_names.end());
  return absl::OkStatus();
}

absl::StatusOr<CounterFamily*> MetricsRegistry::AddCounter(absl::string_view name,
                                                           absl::string_view help,
                                                           std::vector<std::string> label_names) {
  absl::MutexLock lock(&mutex_);
  TESSERA_RETURN_IF_ERROR(Claim(name, label_names, MetricType::kCounter));
  std::unique_ptr<CounterFamily> family(
      new CounterFamily(std::string(name), std::string(help), std::move(label_names),
                        MetricType::kCounter, [] { return std::make_unique<Counter>(); }));
  CounterFamily* result = family.get();
  families_.push_back(std::move(family));
  return result;
}

absl::StatusOr<GaugeFamily*> MetricsRegistry::AddGauge(absl::string_view name,
                                                       absl::string_view help,
                                                       std::vector<std::string> label_names) {
  absl::MutexLock lock(&mutex_);
  TESSERA_RETURN_IF_ERROR(Claim(name, label_names, MetricType::kGauge));
  std::unique_ptr<GaugeFamily> family(new GaugeFamily(std::string(name), std::string(help),
                                                      std::move(label_names), MetricType::kGauge,
                                                      [] { return std::make_unique<Gauge>(); }));
  GaugeFamily* result = family.get();
  families_.push_back(std::move(family));
  return result;
}

absl::StatusOr<HistogramFamily*> MetricsRegistry::AddHistogram(absl::string_view name,
                                                               absl::string_view help,
                                                               std::vector<std::string> label_names,
                                                               std::vector<double> bucket_bounds) {
  if (!bucket_bounds.empty() && std::isinf(bucket_bounds.back()) && bucket_bounds.back() > 0) {
    bucket_bounds.pop_back();
  }
  if (bucket_bounds.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metric \"%s\": a histogram needs at least one finite bucket bound "
                        "(the +Inf bucket is implicit)",
                        name));
  }
  for (size_t i = 0; i < bucket_bounds.size(); ++i) {
    if (!std::isfinite(bucket_bounds[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metric \"%s\": bucket bound %d is %s; bounds must be finite "
                          "(the +Inf bucket is implicit)",
                          name, i, FormatValue(bucket_bounds[i])));
    }
    if (i > 0 && !(bucket_bounds[i - 1] < bucket_bounds[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "metric \"%s\": bucket bounds must be strictly increasing, but bound %d (%s) follows "
          "%s",
          name, i, FormatValue(bucket_bounds[i]), FormatValue(bucket_bounds[i - 1])));
    }
  }
  absl::MutexLock lock(&mutex_);
  TESSERA_RETURN_IF_ERROR(Claim(name, label_names, MetricType::kHistogram));
  std::unique_ptr<HistogramFamily> family(new HistogramFamily(
      std::string(name), std::string(help), std::move(label_names), MetricType::kHistogram,
      [bounds = std::move(bucket_bounds)] { return std::make_unique<Histogram>(bounds); }));
  HistogramFamily* result = family.get();
  families_.push_back(std::move(family));
  return result;
}

void MetricsRegistry::AddCollector(std::function<void()> collector) {
  absl::MutexLock lock(&mutex_);
  collectors_.push_back(std::move(collector));
}

std::string MetricsRegistry::RenderText() const {
  absl::MutexLock scrape_lock(&scrape_mutex_);
  std::vector<std::function<void()>> collectors;
  {
    absl::ReaderMutexLock lock(&mutex_);
    collectors = collectors_;
  }
  for (const std::function<void()>& collector : collectors) collector();

  std::vector<const MetricFamily*> families;
  {
    absl::ReaderMutexLock lock(&mutex_);
    families.reserve(families_.size());
    for (const std::unique_ptr<MetricFamily>& family : families_) families.push_back(family.get());
  }
  std::string text;
  for (const MetricFamily* family : families) family->RenderTo(&text);
  return text;
}

}  // namespace tessera::serve
