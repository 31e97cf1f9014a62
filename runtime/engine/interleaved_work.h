#ifndef TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_
#define TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_

// Work that a serving group does between its serving steps, on the same ranks, shards and
// communicator: a fine-tune inside the serving job. The leader's loop decides when a unit
// runs (a share of the group's busy time, and whenever it is idle) and says so in the step
// plan, so that every rank runs the unit at the same point of its step loop, after that
// step's serving work; the unit's collectives then line up on every rank.

#include "absl/status/status.h"

namespace tessera::engine {

class InterleavedWork {
 public:
  virtual ~InterleavedWork() = default;

  // Collective over the group, on every rank's step loop: one unit of the work (one
  // optimizer step of a fine-tune). An error ends the work on every rank (no more units are
  // scheduled) but not the serving; the work keeps it for whoever asks.
  virtual absl::Status RunUnit() = 0;
  // Leader: no unit is left (the work finished, failed, or was stopped).
  virtual bool finished() const = 0;
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_
