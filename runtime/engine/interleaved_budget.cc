#include "runtime/engine/interleaved_budget.h"

#include <algorithm>
#include <limits>

namespace tessera::engine {

InterleavedBudget::InterleavedBudget(double share, absl::Duration target_step)
    : share_(share), target_(absl::ToDoubleSeconds(target_step)) {}

void InterleavedBudget::Reset() {
  earned_ = 0;
  last_step_ = 0;
  steps_waited_ = 0;
}

void InterleavedBudget::ServingStepRan(double seconds) {
  last_step_ = seconds;
  ++steps_waited_;
  if (target_ > 0) return;
  const double rate = share_ >= 1 ? std::numeric_limits<double>::infinity() : share_ / (1 - share_);
  earned_ = std::min(earned_ + rate * seconds, kMaxEarned);
}

void InterleavedBudget::PiecesRan(double seconds, bool serving) {
  steps_waited_ = 0;
  if (serving && target_ <= 0) earned_ -= seconds;
}

int InterleavedBudget::Pieces(bool serving, const ExpectedSeconds& expected) const {
  double budget;
  if (!serving) {
    budget = target_ > 0 ? target_ : kIdleBurst;
  } else if (target_ > 0) {
    budget = target_ - last_step_;
  } else {
    budget = earned_;
  }
  // While idle at least one piece runs whatever its size; beside requests one runs when the
  // budget has room at all and its time is not known yet.
  int pieces = 0;
  double planned = 0;
  while (pieces < kMaxPieces) {
    const std::optional<double> next = expected(pieces);
    if (!next.has_value()) {
      if (pieces == 0 && (!serving || budget > 0)) pieces = 1;
      break;
    }
    if (planned + *next > budget && (serving || pieces > 0)) break;
    planned += *next;
    ++pieces;
  }
  if (pieces == 0 && serving && steps_waited_ >= kMaxWaitSteps) pieces = 1;
  return pieces;
}

}  // namespace tessera::engine
