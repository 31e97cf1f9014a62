// The engine's bookkeeping without a model: KV blocks with prefix caching, the stable
// prefix hash the coordinator relies on, the scheduler's step plans, and how many pieces of
// interleaved work (a fine-tune) run after a serving step.

#include <gtest/gtest.h>

#include <numeric>

#include "runtime/engine/block_pool.h"
#include "runtime/engine/interleaved_budget.h"
#include "runtime/engine/prefix_hash.h"
#include "runtime/engine/scheduler.h"

namespace tessera::engine {
namespace {

std::vector<int32_t> Iota(int n, int32_t from = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

TEST(PrefixHashTest, ChainsBlocksAndIsStableAcrossProcesses) {
  std::vector<int32_t> tokens = Iota(40);
  std::vector<uint64_t> hashes = PrefixBlockHashes(tokens, 16);
  ASSERT_EQ(hashes.size(), 2u);  // the partial third block has no hash
  EXPECT_EQ(hashes[0], BlockHash(kPrefixHashRoot, absl::MakeConstSpan(tokens).first(16)));
  EXPECT_EQ(hashes[1], BlockHash(hashes[0], absl::MakeConstSpan(tokens).subspan(16, 16)));
  // The same block after a different prefix is a different block.
  std::vector<int32_t> other = tokens;
  other[0] = 99;
  EXPECT_EQ(PrefixBlockHashes(other, 16)[0] == hashes[0], false);
  EXPECT_NE(PrefixBlockHashes(other, 16)[1], hashes[1]);
  // A fixed value, computed by an independent implementation of the documented function
  // (FNV-1a over parent, length and tokens, little-endian; SplitMix64 finish): the hash is
  // part of the worker protocol and must never change.
  EXPECT_EQ(PrefixBlockHashes(Iota(4), 4)[0], 0x225f8cbbacfa78e3ULL);
}

TEST(BlockPoolTest, ReferenceCountsAndFreeList) {
  BlockPool pool(3, /*prefix_caching=*/false);
  EXPECT_EQ(pool.num_available(), 3);
  std::optional<int> a = pool.Allocate(), b = pool.Allocate(), c = pool.Allocate();
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0);
  EXPECT_FALSE(pool.Allocate().has_value());
  pool.Release(*b);
  EXPECT_EQ(pool.num_available(), 1);
  EXPECT_EQ(*pool.Allocate(), *b);
  // Without prefix caching nothing is remembered.
  pool.Register(*a, 42);
  EXPECT_TRUE(pool.AcquireCachedPrefix(std::vector<uint64_t>{42}).empty());
}

TEST(BlockPoolTest, CachedBlocksAreReusedThenEvictedLeastRecentlyReleasedFirst) {
  BlockPool pool(3, /*prefix_caching=*/true);
  int a = *pool.Allocate(), b = *pool.Allocate();
  pool.Register(a, 100);
  pool.Register(b, 200);
  EXPECT_EQ(pool.num_cached(), 2);
  // Held blocks can be shared.
  std::vector<int> shared = pool.AcquireCachedPrefix(std::vector<uint64_t>{100, 200, 300});
  EXPECT_EQ(shared, (std::vector<int>{a, b}));
  for (int block : shared) pool.Release(block);
  pool.Release(b);  // released first: evicted first
  pool.Release(a);
  EXPECT_EQ(pool.num_available(), 3);
  EXPECT_EQ(pool.num_held(), 0);
  // The free block goes first, then the cached ones in release order.
  int fresh = *pool.Allocate();
  EXPECT_NE(fresh, a);
  EXPECT_NE(fresh, b);
  EXPECT_EQ(pool.num_cached(), 2);
  EXPECT_EQ(*pool.Allocate(), b);
  EXPECT_EQ(pool.stats().evictions, 1);
  EXPECT_TRUE(pool.AcquireCachedPrefix(std::vector<uint64_t>{200}).empty());
  // a is still cached: a lookup takes it back out of the evictable list.
  EXPECT_EQ(pool.AcquireCachedPrefix(std::vector<uint64_t>{100}), std::vector<int>{a});
  EXPECT_FALSE(pool.Allocate().has_value());
  // A second block with a known hash stays anonymous.
  pool.Release(fresh);
  int again = *pool.Allocate();
  pool.Register(again, 100);
  pool.Release(again);
  EXPECT_EQ(pool.num_cached(), 1);
  EXPECT_EQ(pool.CachedHashes(), std::vector<uint64_t>{100});
}

tessera::v1::SamplingPlan Greedy() { return {}; }

TEST(SchedulerTest, ChunksLongPromptsWithinTheBudgetAndRunsDecodesFirst) {
  BlockPool pool(64, true);
  Scheduler scheduler(pool, {/*block_size=*/4, /*max_running=*/8, /*max_step_tokens=*/10});
  scheduler.Add(1, Iota(6), {}, Greedy());
  tessera::v1::StepPlan first = scheduler.NextPlan();
  ASSERT_EQ(first.chunks_size(), 1);
  EXPECT_EQ(first.new_sequences_size(), 1);
  EXPECT_EQ(first.chunks(0).count(), 6);
  EXPECT_TRUE(first.chunks(0).sample());
  ASSERT_EQ(first.block_tables_size(), 1);
  EXPECT_EQ(first.block_tables(0).append_size(), 2);
  scheduler.Completed(first, std::vector<SampledToken>{{1, 77, 0.0f}});
  EXPECT_EQ(scheduler.tokens(1).size(), 7u);

  scheduler.Add(2, Iota(25, 100), {}, Greedy());
  tessera::v1::StepPlan second = scheduler.NextPlan();
  // The decode of 1 comes first; 2 gets the other 9 tokens of the budget, unsampled.
  ASSERT_EQ(second.chunks_size(), 2);
  EXPECT_EQ(second.chunks(0).id(), 1u);
  EXPECT_EQ(second.chunks(0).start(), 6);
  EXPECT_EQ(second.chunks(0).count(), 1);
  EXPECT_EQ(second.chunks(0).draw(), 1u);
  EXPECT_EQ(second.chunks(1).id(), 2u);
  EXPECT_EQ(second.chunks(1).count(), 9);
  EXPECT_FALSE(second.chunks(1).sample());
  scheduler.Completed(second, std::vector<SampledToken>{{1, 78, 0.0f}});
  tessera::v1::StepPlan third = scheduler.NextPlan();
  ASSERT_EQ(third.chunks_size(), 2);
  EXPECT_EQ(third.chunks(1).start(), 9);
  EXPECT_EQ(third.chunks(1).count(), 9);
  EXPECT_EQ(third.new_sequences_size(), 0);  // 2 was sent once
}

TEST(SchedulerTest, ReusesCachedPrefixBlocksButComputesTheLastToken) {
  BlockPool pool(64, true);
  Scheduler scheduler(pool, {4, 8, 100});
  scheduler.Add(1, Iota(12), {}, Greedy());
  tessera::v1::StepPlan first = scheduler.NextPlan();
  scheduler.Completed(first, std::vector<SampledToken>{{1, 5, 0.0f}});
  EXPECT_EQ(pool.num_cached(), 3);  // the 12 prompt tokens fill three blocks
  scheduler.Remove(1);
  tessera::v1::StepPlan removal = scheduler.NextPlan();
  EXPECT_EQ(removal.removed_size(), 1);

  // The same 12 tokens again: two blocks come from the cache, the third is recomputed so
  // that the last token's logits exist.
  scheduler.Add(2, Iota(12), {}, Greedy());
  tessera::v1::StepPlan second = scheduler.NextPlan();
  ASSERT_EQ(second.chunks_size(), 1);
  EXPECT_EQ(second.chunks(0).start(), 8);
  EXPECT_EQ(second.chunks(0).count(), 4);
  EXPECT_EQ(scheduler.cached_prompt_tokens(2), 8);
  EXPECT_EQ(pool.stats().hits, 2);
  EXPECT_EQ(pool.stats().lookups, 4);  // two at each admission
  // A longer prompt with the same start shares all three blocks, the third one computed
  // only at its first owner's first admission.
  scheduler.Completed(second, std::vector<SampledToken>{{2, 5, 0.0f}});
  scheduler.Add(3, Iota(20), {}, Greedy());
  tessera::v1::StepPlan third = scheduler.NextPlan();
  ASSERT_EQ(third.chunks_size(), 2);
  EXPECT_EQ(third.chunks(1).id(), 3u);
  EXPECT_EQ(third.chunks(1).start(), 12);
}

TEST(SchedulerTest, PreemptsTheNewestSequenceWhenBlocksRunOut) {
  BlockPool pool(4, false);
  Scheduler scheduler(pool, {4, 8, 100});
  scheduler.Add(1, Iota(4), {}, Greedy());
  scheduler.Add(2, Iota(4), {}, Greedy());
  tessera::v1::StepPlan first = scheduler.NextPlan();
  ASSERT_EQ(first.chunks_size(), 2);
  // Each sequence grows one block per four tokens; with four blocks they soon collide.
  std::vector<SampledToken> sampled = {{1, 9, 0.0f}, {2, 9, 0.0f}};
  scheduler.Completed(first, sampled);
  bool preempted = false;
  for (int step = 0; step < 12 && !preempted; ++step) {
    tessera::v1::StepPlan plan = scheduler.NextPlan();
    for (const auto& update : plan.block_tables()) {
      if (update.reset()) {
        EXPECT_EQ(update.id(), 2u);  // the newer one goes
        preempted = true;
      }
    }
    std::vector<SampledToken> out;
    for (const auto& chunk : plan.chunks()) {
      if (chunk.sample()) out.push_back({chunk.id(), 9, 0.0f});
    }
    scheduler.Completed(plan, out);
  }
  EXPECT_TRUE(preempted);
  EXPECT_EQ(scheduler.counts().preemptions, 1);
  EXPECT_EQ(scheduler.preemptions(2), 1);
  EXPECT_EQ(scheduler.counts().waiting, 1);
}

// Pieces whose expected seconds are `seconds`, repeating; nullopt past them when `known` is
// shorter.
InterleavedBudget::ExpectedSeconds Pieces(std::vector<double> seconds, size_t known = 1000) {
  return [seconds, known](int k) -> std::optional<double> {
    if (static_cast<size_t>(k) >= known) return std::nullopt;
    return seconds[k % seconds.size()];
  };
}

TEST(InterleavedBudgetTest, AShareSpreadsPiecesOverEveryServingStep) {
  InterleavedBudget budget(0.25, absl::ZeroDuration());
  EXPECT_EQ(budget.Pieces(/*serving=*/true, Pieces({0.0004})), 0);  // nothing earned yet
  budget.ServingStepRan(0.003);                                     // earns 0.25 / 0.75 of it: 1 ms
  EXPECT_NEAR(budget.earned(), 0.001, 1e-12);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.0004})), 2);
  budget.PiecesRan(0.0008, /*serving=*/true);
  EXPECT_NEAR(budget.earned(), 0.0002, 1e-12);
  // Pieces of different sizes: as many of the next ones as fit.
  budget.ServingStepRan(0.003);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.0005, 0.0001, 0.002})), 2);
  // Over many steps the pieces take the share of the busy time.
  InterleavedBudget steady(0.25, absl::ZeroDuration());
  double serving = 0, pieces = 0;
  for (int step = 0; step < 1000; ++step) {
    steady.ServingStepRan(0.002);
    serving += 0.002;
    const int due = steady.Pieces(true, Pieces({0.0003}));
    steady.PiecesRan(due * 0.0003, true);
    pieces += due * 0.0003;
  }
  EXPECT_NEAR(pieces / (serving + pieces), 0.25, 0.005);
}

TEST(InterleavedBudgetTest, ALargePieceWaitsForTheStepsThatEarnIt) {
  InterleavedBudget budget(0.25, absl::ZeroDuration());
  int steps = 0;
  while (budget.Pieces(true, Pieces({0.005})) == 0) {
    budget.ServingStepRan(0.003);
    ++steps;
  }
  EXPECT_EQ(steps, 5);  // 1 ms a step
  // What a share earns ahead is bounded; a share of 1 earns the bound at once.
  for (int step = 0; step < 1000; ++step) budget.ServingStepRan(0.003);
  EXPECT_EQ(budget.earned(), InterleavedBudget::kMaxEarned);
  // A piece larger than a share ever earns runs alone after kMaxWaitSteps steps without one.
  InterleavedBudget starved(0.25, absl::ZeroDuration());
  for (int step = 1; step <= InterleavedBudget::kMaxWaitSteps; ++step) {
    EXPECT_EQ(starved.Pieces(true, Pieces({1.0})), 0) << step;
    starved.ServingStepRan(0.003);
  }
  EXPECT_EQ(starved.Pieces(true, Pieces({1.0})), 1);
  starved.PiecesRan(1.0, true);
  starved.ServingStepRan(0.003);
  EXPECT_EQ(starved.Pieces(true, Pieces({1.0})), 0);
  InterleavedBudget all(1.0, absl::ZeroDuration());
  all.ServingStepRan(0.001);
  EXPECT_EQ(all.earned(), InterleavedBudget::kMaxEarned);
  all.Reset();
  EXPECT_EQ(all.earned(), 0);
}

TEST(InterleavedBudgetTest, ATargetStepTakesWhatTheServingStepLeft) {
  InterleavedBudget budget(0.25, absl::Milliseconds(7));
  budget.ServingStepRan(0.003);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.00045})), 8);  // 4 ms left
  budget.PiecesRan(0.004, true);
  budget.ServingStepRan(0.0065);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.00045})), 1);
  budget.ServingStepRan(0.008);  // over the target: none
  EXPECT_EQ(budget.Pieces(true, Pieces({0.00045})), 0);
  // A piece larger than the target leaves runs alone after kMaxWaitSteps steps without one.
  budget.PiecesRan(0.0005, true);
  for (int step = 1; step < InterleavedBudget::kMaxWaitSteps; ++step) {
    budget.ServingStepRan(0.003);
    EXPECT_EQ(budget.Pieces(true, Pieces({0.005})), 0) << step;
  }
  budget.ServingStepRan(0.003);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.005})), 1);
  // Idle: a burst of the target.
  EXPECT_EQ(budget.Pieces(false, Pieces({0.00045})), 15);
}

TEST(InterleavedBudgetTest, IdleBurstsAndPiecesOfUnknownTime) {
  InterleavedBudget budget(0.25, absl::ZeroDuration());
  EXPECT_EQ(budget.Pieces(false, Pieces({0.00045})), 22);  // kIdleBurst, 10 ms
  EXPECT_EQ(budget.Pieces(false, Pieces({0.5})), 1);       // one, however long
  EXPECT_EQ(budget.Pieces(false, Pieces({0.00001})), InterleavedBudget::kMaxPieces);
  // A piece not measured yet runs alone: while idle, or beside requests once anything is
  // earned.
  EXPECT_EQ(budget.Pieces(false, Pieces({0.0004}, /*known=*/0)), 1);
  EXPECT_EQ(budget.Pieces(false, Pieces({0.0004}, /*known=*/3)), 3);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.0004}, /*known=*/0)), 0);
  budget.ServingStepRan(0.001);
  EXPECT_EQ(budget.Pieces(true, Pieces({0.0004}, /*known=*/0)), 1);
}

}  // namespace
}  // namespace tessera::engine
