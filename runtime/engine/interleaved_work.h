#ifndef TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_
#define TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_

// Work that a serving group does between its serving steps, on the same ranks, shards and
// communicator: a fine-tune inside the serving job. The work comes in pieces (for a fine-tune
// a layer of a micro-batch's forward or backward, or an optimizer update), a few of which
// run after a serving step. The leader's loop decides how many (interleaved_budget.h) and
// says so in the step plan, so that every rank runs the same pieces at the same point of its
// step loop, after that step's serving work; their collectives then line up on every rank.

#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::engine {

class InterleavedWork {
 public:
  virtual ~InterleavedWork() = default;

  // Collective over the group, on every rank's step loop: the next piece of the work. Once
  // the work has no piece left by its own count (the same on every rank: a plan may name more
  // pieces than are left) it returns at once, without a collective. An error ends the work
  // on every rank (no more pieces are planned) but not the serving; the work keeps it for
  // whoever asks.
  virtual absl::Status RunPiece() = 0;
  // Leader: the seconds that the piece `ahead` places after the next one (0: the next) is
  // expected to take; nullopt when not known (it then runs alone).
  virtual std::optional<double> ExpectedPieceSeconds(int ahead) const = 0;
  // Leader: how many of the next pieces may run now; the engine plans no more than that. A
  // work whose next piece waits for something outside the group (a fine-tune's update for
  // the other groups of a data-parallel fine-tune to reach it) says 0 until it may run.
  virtual int PiecesReady() { return std::numeric_limits<int>::max(); }
  // Leader, when the engine shuts down with the work unfinished: how many of the next pieces
  // must still run first, because something outside the group already waits in them (a
  // data-parallel fine-tune's update, once the other groups' leaders have met this one before
  // it: their all-reduce of the gradients would wait out its deadline). The engine runs them
  // on every rank, after ending the requests, then stops.
  virtual int PiecesBeforeLeaving() { return 0; }
  // Leader: no piece is left (the work finished, failed, or was stopped). The engine then
  // drops it on every rank.
  virtual bool finished() const = 0;
};

// Makes a rank's part of the work a spec describes (a fine-tune's JSON configuration).
// Collective over the group when it succeeds on every rank; an error names what was wrong.
using InterleavedWorkFactory =
    std::function<absl::StatusOr<std::shared_ptr<InterleavedWork>>(const std::string& spec)>;

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_INTERLEAVED_WORK_H_
