#ifndef TESSERA_TESTS_TRAIN_BATCH_EXPECTATIONS_H_
#define TESSERA_TESTS_TRAIN_BATCH_EXPECTATIONS_H_

// Expectations on training batches shared by the data tests.

#include <gtest/gtest.h>

#include "runtime/train/batches.h"

namespace tessera::train {

// Two micro-batches hold the same rows: tokens, positions, sequences and targets.
inline void ExpectSameBatch(const MicroBatch& a, const MicroBatch& b) {
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.sequence_starts, b.sequence_starts);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_EQ(a.target_count, b.target_count);
}

}  // namespace tessera::train

#endif  // TESSERA_TESTS_TRAIN_BATCH_EXPECTATIONS_H_
