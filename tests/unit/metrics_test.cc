// The Prometheus metrics library: the exact text a scrape gets, exact counts under
// concurrent updates, refused names and buckets, and the HTTP endpoint read by a real HTTP
// client.

#include "runtime/serve/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "runtime/serve/metrics_http.h"
#include "tests/unit/status_test_util.h"

namespace tessera::serve {
namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

TEST(MetricsRegistryTest, RendersTheExactExpositionText) {
  MetricsRegistry registry;
  ASSERT_OK_AND_ASSIGN(
      CounterFamily * requests,
      registry.AddCounter("tessera_requests_total", "Requests finished, by outcome.", {"code"}));
  ASSERT_OK_AND_ASSIGN(GaugeFamily * queue,
                       registry.AddGauge("tessera_queue_depth", "Requests waiting."));
  ASSERT_OK_AND_ASSIGN(
      HistogramFamily * latency,
      registry.AddHistogram("tessera_request_seconds", "Time to finish.", {"model"}, {0.1, 1}));
  ASSERT_OK_AND_ASSIGN(
      GaugeFamily * info,
      registry.AddGauge("tessera_info", "Escapes: back\\slash and\nnewline \"quoted\".",
                        {"path", "quote", "text"}));
  ASSERT_OK_AND_ASSIGN(CounterFamily * unused,
                       registry.AddCounter("tessera_unused_total", "No child yet.", {"code"}));
  ASSERT_OK(registry.AddCounter("tessera_restarts_total", "Never incremented.").status());
  (void)unused;

  requests->WithLabels({"ok"}).Inc();
  requests->WithLabels({"ok"}).Add(1);
  requests->WithLabels({"error"}).Inc();
  queue->WithLabels({}).Set(3.5);
  HistogramFamily& histogram = *latency;
  histogram.WithLabels({"glm"}).Observe(0.0625);
  histogram.WithLabels({"glm"}).Observe(0.5);
  histogram.WithLabels({"glm"}).Observe(5);
  info->WithLabels({"C:\\dir", "say \"hi\"", "two\nlines"}).Set(1);

  EXPECT_EQ(registry.RenderText(),
            "# HELP tessera_requests_total Requests finished, by outcome.\n"
            "# TYPE tessera_requests_total counter\n"
            "tessera_requests_total{code=\"error\"} 1\n"
            "tessera_requests_total{code=\"ok\"} 2\n"
            "# HELP tessera_queue_depth Requests waiting.\n"
            "# TYPE tessera_queue_depth gauge\n"
            "tessera_queue_depth 3.5\n"
            "# HELP tessera_request_seconds Time to finish.\n"
            "# TYPE tessera_request_seconds histogram\n"
            "tessera_request_seconds_bucket{model=\"glm\",le=\"0.1\"} 1\n"
            "tessera_request_seconds_bucket{model=\"glm\",le=\"1\"} 2\n"
            "tessera_request_seconds_bucket{model=\"glm\",le=\"+Inf\"} 3\n"
            "tessera_request_seconds_sum{model=\"glm\"} 5.5625\n"
            "tessera_request_seconds_count{model=\"glm\"} 3\n"
            "# HELP tessera_info Escapes: back\\\\slash and\\nnewline \"quoted\".\n"
            "# TYPE tessera_info gauge\n"
            "tessera_info{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",text=\"two\\nlines\"} 1\n"
            "# HELP tessera_restarts_total Never incremented.\n"
            "# TYPE tessera_restarts_total counter\n"
            "tessera_restarts_total 0\n");
}

TEST(MetricsRegistryTest, EmptyRegistryRendersNothing) {
  MetricsRegistry registry;
  EXPECT_EQ(registry.RenderText(), "");
}

TEST(MetricsRegistryTest, FormatsNumbersAsPrometheusParsesThem) {
  MetricsRegistry registry;
  ASSERT_OK_AND_ASSIGN(GaugeFamily * gauge, registry.AddGauge("g", "Values.", {"v"}));
  gauge->WithLabels({"a_int"}).Set(123456789);
  gauge->WithLabels({"b_negative"}).Set(-2);
  gauge->WithLabels({"c_fraction"}).Set(0.1);
  gauge->WithLabels({"d_small"}).Set(1.5e-7);
  gauge->WithLabels({"e_huge"}).Set(1e20);
  gauge->WithLabels({"f_inf"}).Set(std::numeric_limits<double>::infinity());
  gauge->WithLabels({"g_minus_inf"}).Set(-std::numeric_limits<double>::infinity());
  gauge->WithLabels({"h_nan"}).Set(std::nan(""));
  gauge->WithLabels({"i_2_53"}).Set(9007199254740991.0);
  EXPECT_EQ(registry.RenderText(),
            "# HELP g Values.\n"
            "# TYPE g gauge\n"
            "g{v=\"a_int\"} 123456789\n"
            "g{v=\"b_negative\"} -2\n"
            "g{v=\"c_fraction\"} 0.1\n"
            "g{v=\"d_small\"} 1.5e-07\n"
            "g{v=\"e_huge\"} 1e+20\n"
            "g{v=\"f_inf\"} +Inf\n"
            "g{v=\"g_minus_inf\"} -Inf\n"
            "g{v=\"h_nan\"} NaN\n"
            "g{v=\"i_2_53\"} 9007199254740991\n");
}

TEST(MetricTest, CounterOnlyGoesUpAndGaugeBothWays) {
  Counter counter;
  counter.Inc();
  counter.Add(2.5);
  counter.Add(-10);
  counter.Add(std::nan(""));
  EXPECT_EQ(counter.Value(), 3.5);

  Gauge gauge;
  gauge.Set(10);
  gauge.Inc();
  gauge.Dec();
  gauge.Dec();
  gauge.Add(-0.5);
  EXPECT_EQ(gauge.Value(), 8.5);
}

TEST(MetricTest, HistogramBucketsAreUpperBoundsInclusive) {
  Histogram histogram({1, 2, 4});
  for (double value : {0.5, 1.0, 1.5, 2.0, 4.0, 4.5, 100.0}) histogram.Observe(value);
  histogram.Observe(std::nan(""));  // ignored
  Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.cumulative_counts, (std::vector<uint64_t>{2, 4, 5, 7}));
  EXPECT_EQ(snapshot.count, 7u);
  EXPECT_EQ(snapshot.sum, 113.5);
}

TEST(MetricsRegistryTest, ConcurrentUpdatesSumExactly) {
  MetricsRegistry registry;
  ASSERT_OK_AND_ASSIGN(CounterFamily * requests,
                       registry.AddCounter("requests_total", "Requests.", {"code"}));
  ASSERT_OK_AND_ASSIGN(HistogramFamily * latency,
                       registry.AddHistogram("latency_seconds", "Latency.", {}, {0.25, 1}));
  ASSERT_OK_AND_ASSIGN(GaugeFamily * per_thread,
                       registry.AddGauge("per_thread", "Children made concurrently.", {"i"}));
  constexpr int kThreads = 4;
  constexpr int kIterations = 50000;
  std::atomic<bool> done{false};
  // Scrapes run alongside the updates.
  std::thread scraper([&] {
    while (!done.load()) registry.RenderText();
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& cached = requests->WithLabels({"cached"});
      Histogram& histogram = latency->WithLabels({});
      for (int i = 0; i < kIterations; ++i) {
        requests->WithLabels({"ok"}).Inc();  // looked up every time
        cached.Add(2);
        histogram.Observe(i % 2 == 0 ? 0.125 : 0.5);
        if (i % 1000 == 0) {
          per_thread->WithLabels({absl::StrCat(i / 1000 % 7, "_", t % 2)}).Inc();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done.store(true);
  scraper.join();

  EXPECT_EQ(requests->WithLabels({"ok"}).Value(), kThreads * kIterations);
  EXPECT_EQ(requests->WithLabels({"cached"}).Value(), 2.0 * kThreads * kIterations);
  Histogram::Snapshot snapshot = latency->WithLabels({}).Read();
  EXPECT_EQ(snapshot.cumulative_counts,
            (std::vector<uint64_t>{kThreads * kIterations / 2, kThreads * kIterations,
                                   kThreads * kIterations}));
  EXPECT_EQ(snapshot.sum, kThreads * kIterations / 2 * (0.125 + 0.5));
  double per_thread_total = 0;
  for (int k = 0; k < 7; ++k) {
    for (int parity = 0; parity < 2; ++parity) {
      per_thread_total += per_thread->WithLabels({absl::StrCat(k, "_", parity)}).Value();
    }
  }
  EXPECT_EQ(per_thread_total, kThreads * kIterations / 1000);
  EXPECT_TRUE(Contains(registry.RenderText(), "requests_total{code=\"ok\"} 200000\n"));
}

TEST(MetricsRegistryTest, RefusesInvalidNamesAndBuckets) {
  MetricsRegistry registry;
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(IsError(registry.AddCounter("9lives", "h"), kInvalid, {"\"9lives\""}));
  EXPECT_TRUE(IsError(registry.AddCounter("has-dash", "h"), kInvalid, {"\"has-dash\""}));
  EXPECT_TRUE(IsError(registry.AddGauge("", "h"), kInvalid, {"metric \"\""}));
  EXPECT_TRUE(IsError(registry.AddGauge("ok_name", "h", {"bad:label"}), kInvalid,
                      {"\"ok_name\"", "\"bad:label\""}));
  EXPECT_TRUE(IsError(registry.AddGauge("ok_name", "h", {"__reserved"}), kInvalid,
                      {"\"ok_name\"", "\"__reserved\""}));
  EXPECT_TRUE(IsError(registry.AddGauge("ok_name", "h", {"a", "b", "a"}), kInvalid,
                      {"\"ok_name\"", "repeated"}));
  EXPECT_TRUE(
      IsError(registry.AddHistogram("h_seconds", "h", {"le"}, {1}), kInvalid, {"\"h_seconds\""}));
  EXPECT_TRUE(IsError(registry.AddHistogram("h_seconds", "h", {}, {1, 1}), kInvalid,
                      {"\"h_seconds\"", "strictly increasing"}));
  EXPECT_TRUE(IsError(registry.AddHistogram("h_seconds", "h", {}, {2, 1}), kInvalid,
                      {"\"h_seconds\"", "strictly increasing"}));
  EXPECT_TRUE(
      IsError(registry.AddHistogram("h_seconds", "h", {}, {}), kInvalid, {"\"h_seconds\""}));
  EXPECT_TRUE(IsError(registry.AddHistogram("h_seconds", "h", {}, {1, std::nan("")}), kInvalid,
                      {"\"h_seconds\"", "finite"}));
  EXPECT_TRUE(IsError(registry.AddHistogram("h_seconds", "h", {}, ExponentialBuckets(0, 2, 3)),
                      kInvalid, {"\"h_seconds\""}));
  // Nothing was registered by the refused calls.
  EXPECT_EQ(registry.RenderText(), "");

  // Valid names, colons included; a trailing +Inf bound is the implicit one.
  ASSERT_OK(registry.AddCounter("tessera:requests_total", "h", {"_code", "Model2"}).status());
  ASSERT_OK(
      registry.AddHistogram("h_seconds", "h", {}, {1, std::numeric_limits<double>::infinity()})
          .status());
  // Clashing sample names.
  const absl::StatusCode kExists = absl::StatusCode::kAlreadyExists;
  EXPECT_TRUE(IsError(registry.AddGauge("tessera:requests_total", "h"), kExists,
                      {"\"tessera:requests_total\""}));
  EXPECT_TRUE(
      IsError(registry.AddCounter("h_seconds_count", "h"), kExists, {"\"h_seconds_count\""}));
  EXPECT_TRUE(IsError(registry.AddCounter("h_seconds", "h"), kExists, {"\"h_seconds\""}));
  EXPECT_EQ(registry.RenderText(),
            "# HELP h_seconds h\n"
            "# TYPE h_seconds histogram\n"
            "h_seconds_bucket{le=\"1\"} 0\n"
            "h_seconds_bucket{le=\"+Inf\"} 0\n"
            "h_seconds_sum 0\n"
            "h_seconds_count 0\n");
}

TEST(MetricsRegistryTest, WrongLabelArityGoesToAnUnrenderedSink) {
  MetricsRegistry registry;
  ASSERT_OK_AND_ASSIGN(CounterFamily * family,
                       registry.AddCounter("requests_total", "Requests.", {"code", "model"}));
  Counter& sink = family->WithLabels({"ok"});
  sink.Inc();
  EXPECT_EQ(&family->WithLabels({"a", "b", "c"}), &sink);
  EXPECT_EQ(registry.RenderText(), "");
  EXPECT_TRUE(IsError(family->TryWithLabels({"ok"}), absl::StatusCode::kInvalidArgument,
                      {"\"requests_total\"", "code, model", "given 1"}));
  ASSERT_OK_AND_ASSIGN(Counter * child, family->TryWithLabels({"ok", "glm"}));
  EXPECT_EQ(child, &family->WithLabels({"ok", "glm"}));
}

TEST(MetricsRegistryTest, RemovedChildrenStopRenderingButStayValid) {
  MetricsRegistry registry;
  ASSERT_OK_AND_ASSIGN(GaugeFamily * load, registry.AddGauge("group_load", "Load.", {"group"}));
  Gauge& leaving = load->WithLabels({"g1"});
  leaving.Set(5);
  load->WithLabels({"g2"}).Set(7);
  EXPECT_TRUE(load->Remove({"g1"}));
  EXPECT_FALSE(load->Remove({"g1"}));
  leaving.Inc();  // still a valid object, no longer rendered
  EXPECT_EQ(registry.RenderText(),
            "# HELP group_load Load.\n"
            "# TYPE group_load gauge\n"
            "group_load{group=\"g2\"} 7\n");
  EXPECT_EQ(load->WithLabels({"g1"}).Value(), 0);  // a new child
}

TEST(MetricsRegistryTest, CollectorsFillGaugesBeforeEachScrape) {
  MetricsRegistry registry;
  ASSERT_OK_AND_ASSIGN(GaugeFamily * scrapes, registry.AddGauge("scrapes", "Scrapes seen."));
  ASSERT_OK_AND_ASSIGN(GaugeFamily * free_blocks,
                       registry.AddGauge("free_blocks", "Free KV blocks.", {"group"}));
  int calls = 0;
  registry.AddCollector([&] {
    ++calls;
    scrapes->WithLabels({}).Set(calls);
  });
  // A collector may register families too.
  registry.AddCollector([&] {
    free_blocks->WithLabels({"g0"}).Set(100 - calls);
    if (calls == 2) {
      ASSERT_OK(registry.AddCounter("late_total", "Added by a collector.").status());
    }
  });
  EXPECT_TRUE(Contains(registry.RenderText(), "scrapes 1\n"));
  const std::string second = registry.RenderText();
  EXPECT_TRUE(Contains(second, "scrapes 2\n"));
  EXPECT_TRUE(Contains(second, "free_blocks{group=\"g0\"} 98\n"));
  EXPECT_TRUE(Contains(second, "late_total 0\n"));
}

TEST(BucketsTest, LatencyAndExponentialBuckets) {
  const std::vector<double> latency = LatencyBuckets();
  ASSERT_FALSE(latency.empty());
  EXPECT_EQ(latency.front(), 0.0005);
  EXPECT_EQ(latency.back(), 60);
  for (size_t i = 1; i < latency.size(); ++i) EXPECT_LT(latency[i - 1], latency[i]);
  MetricsRegistry registry;
  EXPECT_OK(registry.AddHistogram("latency_seconds", "h", {}, latency).status());

  EXPECT_EQ(ExponentialBuckets(0.001, 10, 4), (std::vector<double>{0.001, 0.01, 0.1, 1}));
  EXPECT_EQ(ExponentialBuckets(1, 2, 5), (std::vector<double>{1, 2, 4, 8, 16}));
  EXPECT_EQ(ExponentialBuckets(0.1, 3, 3), (std::vector<double>{0.1, 0.3, 0.9}));
  EXPECT_TRUE(ExponentialBuckets(1, 1, 3).empty());
  EXPECT_TRUE(ExponentialBuckets(-1, 2, 3).empty());
  EXPECT_TRUE(ExponentialBuckets(1, 2, 0).empty());
}

// The HTTP endpoint, read with a real HTTP client over loopback.
class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(CounterFamily * requests,
                         registry_.AddCounter("requests_total", "Requests.", {"code"}));
    requests->WithLabels({"ok"}).Add(3);
    ASSERT_OK(registry_.AddHistogram("latency_seconds", "Latency.", {}, LatencyBuckets()).status());
  }

  MetricsRegistry registry_;
  std::atomic<bool> healthy_{true};
};

TEST_F(MetricsServerTest, ServesMetricsAndHealth) {
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<MetricsServer> server,
      MetricsServer::Start("127.0.0.1:0", &registry_, [this] { return healthy_.load(); }));
  ASSERT_GT(server->port(), 0);
  httplib::Client client("127.0.0.1", server->port());

  httplib::Result metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type"), kContentType);
  EXPECT_EQ(metrics->body, registry_.RenderText());
  EXPECT_TRUE(Contains(metrics->body, "requests_total{code=\"ok\"} 3\n"));

  httplib::Result health = client.Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok");
  healthy_.store(false);
  health = client.Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 503);

  httplib::Result missing = client.Get("/nothing-here");
  ASSERT_TRUE(missing) << httplib::to_string(missing.error());
  EXPECT_EQ(missing->status, 404);

  server->Stop();
  server->Stop();
  EXPECT_FALSE(client.Get("/metrics"));
}

TEST_F(MetricsServerTest, CompressesForClientsThatAsk) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> server,
                       MetricsServer::Start("127.0.0.1:0", &registry_, nullptr));
  httplib::Client client("127.0.0.1", server->port());
  client.set_decompress(false);
  httplib::Result metrics = client.Get("/metrics", {{"Accept-Encoding", "gzip"}});
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Encoding"), "gzip");
  EXPECT_LT(metrics->body.size(), registry_.RenderText().size());
}

TEST_F(MetricsServerTest, NoHealthCallbackMeansHealthyAndAnyInterfaceWorks) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> server,
                       MetricsServer::Start(":0", &registry_, nullptr));
  httplib::Client client("127.0.0.1", server->port());
  httplib::Result health = client.Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
}

TEST_F(MetricsServerTest, SecondServerOnTheSamePortFails) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> first,
                       MetricsServer::Start("127.0.0.1:0", &registry_, nullptr));
  const std::string address = absl::StrCat("127.0.0.1:", first->port());
  absl::StatusOr<std::unique_ptr<MetricsServer>> second =
      MetricsServer::Start(address, &registry_, nullptr);
  EXPECT_TRUE(IsError(second, absl::StatusCode::kUnavailable, {address, "in use"}));
  // The first one still answers.
  httplib::Client client("127.0.0.1", first->port());
  httplib::Result metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
  // Once it has stopped, the port can be taken again.
  first->Stop();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> again,
                       MetricsServer::Start(address, &registry_, nullptr));
  EXPECT_EQ(again->port(), first->port());
}

TEST_F(MetricsServerTest, BadAddressesAreNamed) {
  for (const char* address : {"nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
                              "127.0.0.1:80x", "127.0.0.1:-1", "::1:9090", "[::1]9090"}) {
    EXPECT_TRUE(IsError(MetricsServer::Start(address, &registry_, nullptr),
                        absl::StatusCode::kInvalidArgument, {absl::StrCat("\"", address, "\"")}))
        << address;
  }
  EXPECT_TRUE(IsError(MetricsServer::Start("127.0.0.1:0", nullptr, nullptr),
                      absl::StatusCode::kInvalidArgument, {"127.0.0.1:0"}));
}

}  // namespace
}  // namespace tessera::serve
