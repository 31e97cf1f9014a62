#ifndef TESSERA_LAUNCHER_METRICS_SCRAPE_H_
#define TESSERA_LAUNCHER_METRICS_SCRAPE_H_

// A Prometheus text exposition read from a /metrics endpoint and parsed into samples, for
// those who watch a coordinator or worker from outside: `tessera bench soak` and the
// end-to-end tests.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::launcher {

// One Prometheus text exposition, parsed.
class MetricsSnapshot {
 public:
  struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;
    double value = 0;
  };

  static MetricsSnapshot Parse(const std::string& text);

  // The sum of the samples named `name` whose labels include every pair of `labels`.
  double Sum(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
  // Some sample of `name` has every pair of `labels`.
  bool Has(const std::string& name, const std::map<std::string, std::string>& labels = {}) const;
  const std::vector<Sample>& samples() const { return samples_; }
  const std::string& text() const { return text_; }

 private:
  std::vector<Sample> samples_;
  std::string text_;
};

// GET http://127.0.0.1:`port`/metrics; UNAVAILABLE when it cannot be read.
absl::StatusOr<MetricsSnapshot> ScrapeMetrics(int port);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_METRICS_SCRAPE_H_
