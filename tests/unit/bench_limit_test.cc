#include "launcher/bench_limit.h"

#include <gtest/gtest.h>

#include "launcher/read_bandwidth.h"

namespace tessera::launcher {
namespace {

TEST(BenchLimitTest, RatioBelowOrAtTheLimit) {
  HeldAgainstLimit held = HoldAgainstLimit(12.5e9, 25e9);
  EXPECT_EQ(held.cell, "0.50");
  EXPECT_FALSE(held.error);
  held = HoldAgainstLimit(25e9, 25e9);
  EXPECT_EQ(held.cell, "1.00");
  EXPECT_FALSE(held.error);
}

TEST(BenchLimitTest, AboveTheLimitIsAnErrorNotARatio) {
  const HeldAgainstLimit held = HoldAgainstLimit(26e9, 19e9);
  EXPECT_EQ(held.cell, "error");
  EXPECT_TRUE(held.error);
  // Just above: still no ratio that rounds to 1.00.
  EXPECT_EQ(HoldAgainstLimit(1.001, 1.0).cell, "error");
}

TEST(BenchLimitTest, CacheAndNoLimit) {
  // Bytes in the caches: no memory limit holds them, however fast they are read.
  HeldAgainstLimit held = HoldAgainstLimit(500e9, 20e9, /*in_cache=*/true);
  EXPECT_EQ(held.cell, "cache");
  EXPECT_FALSE(held.error);
  // No limit measured (the portable path's FMA peak; a probe that could not allocate).
  held = HoldAgainstLimit(5e9, 0);
  EXPECT_EQ(held.cell, "-");
  EXPECT_FALSE(held.error);
}

TEST(BenchLimitTest, ErrorNoteNamesBothFigures) {
  EXPECT_EQ(LimitErrorNote("llama-0.5b decode reads", 25.4e9, 19e9, 1e9, "GB/s"),
            "# measurement error: llama-0.5b decode reads 25.40 GB/s, faster than the 19.00 "
            "GB/s limit: the limit or what was counted is wrong, so no ratio is given\n");
}

TEST(BenchLimitTest, CacheRuleCountsEveryRanksCache) {
  const double cache = static_cast<double>(LastLevelCacheBytes());
  EXPECT_TRUE(FitsInLastLevelCaches(cache, 1));
  EXPECT_FALSE(FitsInLastLevelCaches(cache + 1, 1));
  EXPECT_TRUE(FitsInLastLevelCaches(2 * cache, 2));
  EXPECT_FALSE(FitsInLastLevelCaches(2 * cache + 1, 2));
}

}  // namespace
}  // namespace tessera::launcher
