#ifndef TESSERA_RUNTIME_ENGINE_INTERLEAVED_BUDGET_H_
#define TESSERA_RUNTIME_ENGINE_INTERLEAVED_BUDGET_H_

// How many pieces of interleaved work (interleaved_work.h) the leader plans after a step.
//
// While requests are served, the time between two tokens of a request is one turn of the
// step loop: the serving step, then the pieces it plans. Two policies bound what the pieces
// add to it:
//   - a share: the pieces take about `share` of the group's busy time. Each serving step
//     earns the pieces share / (1 - share) of its own time; pieces run while the time earned
//     covers what they are expected to take, so a piece is spread over every step it can be
//     and a large piece waits for the steps that earn it;
//   - a target step (the target inter-token latency): after each serving step, pieces fill
//     what the last serving step left of the target; none when it took the target or more.
// While the group is idle, pieces run in bursts of about kIdleBurst (or the target), between
// which the loop looks for new requests.
//
// A piece's expected time is the work's own measure of the same piece's recent runs; a piece
// not measured yet runs alone. A piece that nothing leaves room for (larger than the target
// leaves, or than a share earns at most) still runs, alone, after kMaxWaitSteps serving
// steps without one: the work never stops while requests keep coming, and its measure of
// that piece is renewed. Leader only; not thread safe.

#include <functional>
#include <optional>

#include "absl/time/time.h"

namespace tessera::engine {

class InterleavedBudget {
 public:
  // The burst of pieces while the group is idle, without a target step.
  static constexpr double kIdleBurst = 0.010;
  // The most a share lets the pieces earn ahead, in seconds (a work that the share cannot
  // keep up with does not build a debt that serving pays later in one long turn).
  static constexpr double kMaxEarned = 0.100;
  // Pieces planned at once at most.
  static constexpr int kMaxPieces = 256;
  // Serving steps in a row without a piece, after which one runs whatever its size.
  static constexpr int kMaxWaitSteps = 200;

  // `share` in (0, 1]; 1 leaves serving only what the target or kMaxEarned leave it. A
  // `target_step` of zero: the share alone.
  InterleavedBudget(double share, absl::Duration target_step);

  // A new work starts: nothing earned.
  void Reset();
  // A serving step ran for `seconds`.
  void ServingStepRan(double seconds);
  // Planned pieces ran for `seconds` in all, beside requests (`serving`) or while idle.
  void PiecesRan(double seconds, bool serving);

  // The k-th next piece's expected seconds (0: the next), nullopt when not known.
  using ExpectedSeconds = std::function<std::optional<double>(int k)>;
  // How many pieces to plan now.
  int Pieces(bool serving, const ExpectedSeconds& expected) const;

  double earned() const { return earned_; }

 private:
  const double share_;
  const double target_;   // seconds; 0: none
  double earned_ = 0;     // the share's: seconds of pieces that serving steps earned
  double last_step_ = 0;  // seconds of the last serving step
  int steps_waited_ = 0;  // serving steps since pieces last ran
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_INTERLEAVED_BUDGET_H_
