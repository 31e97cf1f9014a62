// The request metrics' tenant series stay bounded whatever tenant names clients send.

#include "runtime/serve/serve_metrics.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tessera::serve {
namespace {

// The tenant label values of tessera_tenant_tokens_total in `text`.
std::set<std::string> TenantLabels(const std::string& text) {
  std::set<std::string> tenants;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, "tessera_tenant_tokens_total{")) continue;
    const size_t start = line.find("tenant=\"") + 8;
    tenants.insert(std::string(line.substr(start, line.find('"', start) - start)));
  }
  return tenants;
}

TEST(RequestMetricsTest, TenantsPastTheLimitAreCountedAsOther) {
  MetricsRegistry registry;
  RequestMetrics metrics(registry, /*max_tenants=*/100);
  RequestRecord record;
  record.prompt_tokens = 3;
  record.completion_tokens = 2;
  for (int i = 0; i < 10'000; ++i) {
    record.tenant = absl::StrCat("tenant-", i * 7919 % 100'003);
    metrics.Record(record);
  }
  const std::set<std::string> tenants = TenantLabels(registry.RenderText());
  EXPECT_EQ(tenants.size(), 101u);  // the first 100, and "other"
  EXPECT_TRUE(tenants.contains("other"));
  // Nothing is lost: "other" holds the rest.
  const std::string text = registry.RenderText();
  EXPECT_TRUE(absl::StrContains(
      text, "tessera_tenant_tokens_total{tenant=\"other\",kind=\"completion\"} 19800"))
      << text.substr(0, 2000);
}

}  // namespace
}  // namespace tessera::serve
