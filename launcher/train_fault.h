#ifndef TESSERA_LAUNCHER_TRAIN_FAULT_H_
#define TESSERA_LAUNCHER_TRAIN_FAULT_H_

// Test-only fault injection into a fine-tune (`tessera train`, and a fine-tune inside a
// serving group), from the environment: TESSERA_TEST_TRAIN_FAULT=kill:RANK:STEP or
// stall:RANK:STEP makes world rank RANK kill itself with SIGKILL, or stop answering for an
// hour, as it is about to take optimizer step STEP (1-based), while the other ranks go into
// that step's collectives. Without the variable it does nothing.

#include <cstdint>

namespace tessera::launcher {

void InjectTrainFaultBefore(int64_t step, int world_rank);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_TRAIN_FAULT_H_
