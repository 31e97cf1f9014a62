#include "launcher/metrics_scrape.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "httplib.h"

namespace tessera::launcher {

MetricsSnapshot MetricsSnapshot::Parse(const std::string& text) {
  MetricsSnapshot snapshot;
  snapshot.text_ = text;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    Sample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    sample.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t equals = line.find('=', i);
        if (equals == absl::string_view::npos || equals + 1 >= line.size()) break;
        std::string name(absl::StripAsciiWhitespace(line.substr(i, equals - i)));
        std::string value;
        size_t j = equals + 2;  // past ="
        while (j < line.size() && line[j] != '"') {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value.push_back(line[j] == 'n' ? '\n' : line[j]);
          } else {
            value.push_back(line[j]);
          }
          ++j;
        }
        sample.labels[name] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // past '}'
    }
    absl::string_view rest = absl::StripAsciiWhitespace(line.substr(std::min(i, line.size())));
    std::string number(rest.substr(0, rest.find(' ')));
    char* end = nullptr;
    sample.value = std::strtod(number.c_str(), &end);
    if (end == number.c_str()) continue;
    snapshot.samples_.push_back(std::move(sample));
  }
  return snapshot;
}

namespace {

bool Matches(const MetricsSnapshot::Sample& sample, const std::string& name,
             const std::map<std::string, std::string>& labels) {
  if (sample.name != name) return false;
  for (const auto& [key, value] : labels) {
    auto found = sample.labels.find(key);
    if (found == sample.labels.end() || found->second != value) return false;
  }
  return true;
}

}  // namespace

double MetricsSnapshot::Sum(const std::string& name,
                            const std::map<std::string, std::string>& labels) const {
  double sum = 0;
  for (const Sample& sample : samples_) {
    if (Matches(sample, name, labels)) sum += sample.value;
  }
  return sum;
}

bool MetricsSnapshot::Has(const std::string& name,
                          const std::map<std::string, std::string>& labels) const {
  for (const Sample& sample : samples_) {
    if (Matches(sample, name, labels)) return true;
  }
  return false;
}

absl::StatusOr<MetricsSnapshot> ScrapeMetrics(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2, 0);
  client.set_read_timeout(5, 0);
  httplib::Result result = client.Get("/metrics");
  if (!result) {
    return absl::UnavailableError(absl::StrCat("GET http://127.0.0.1:", port,
                                               "/metrics: ", httplib::to_string(result.error())));
  }
  if (result->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET http://127.0.0.1:", port, "/metrics: HTTP ", result->status));
  }
  return MetricsSnapshot::Parse(result->body);
}

}  // namespace tessera::launcher
