#ifndef TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_
#define TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_

// Work that a serving group does between its serving steps, on the same ranks, shards and
// communicator: a fine-tune inside the serving job. The leader's loop decides when a unit
// runs (a share of the group's busy time, and whenever it is idle) and says so in the step
// plan, so that every rank runs the unit at the same point of its step loop, after that
// step's serving work; the unit's collectives then line up on every rank.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::engine {

class InterleavedWork {
 public:
  virtual ~InterleavedWork() = default;

  // Collective over the group, on every rank's step loop: one unit of the work (one
  // optimizer step of a fine-tune). An error ends the work on every rank (no more units are
  // scheduled) but not the serving; the work keeps it for whoever asks.
  virtual absl::Status RunUnit() = 0;
  // Leader: no unit is left (the work finished, failed, or was stopped). The engine then
  // drops it on every rank.
  virtual bool finished() const = 0;
};

// Makes a rank's part of the work a spec describes (a fine-tune's JSON configuration).
// Collective over the group when it succeeds on every rank; an error names what was wrong.
using InterleavedWorkFactory =
    std::function<absl::StatusOr<std::shared_ptr<InterleavedWork>>(const std::string& spec)>;

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_
