#ifndef TESSERA_COMM_COMM_OPTIONS_H_
#define TESSERA_COMM_COMM_OPTIONS_H_

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera::comm {

// Settings every communicator of a process shares. Subgroups made by Split inherit them.
struct CommOptions {
  // How long a collective (or send/receive) may wait for its peers before it fails with
  // DEADLINE_EXCEEDED naming the ranks that did not arrive. The communicator is unusable
  // afterwards. Environment: TESSERA_COMM_TIMEOUT ("300", "300s", "5m", "1.5s").
  absl::Duration timeout = absl::Minutes(5);

  // Ranks exchange the signature of every collective (kind, dtype, count, op, root, sequence
  // number) before running it and fail with FAILED_PRECONDITION on a mismatch, naming both
  // sides, instead of computing garbage or hanging. Costs one small all-gather per call.
  // Environment: TESSERA_COMM_VALIDATE=1.
  bool validate = false;

  // Defaults overridden by the environment variables above; INVALID_ARGUMENT naming the
  // variable when one is malformed.
  static absl::StatusOr<CommOptions> FromEnvironment();
};

// Parses a duration as the flags and environment accept it: plain seconds ("30", "0.5") or
// an absl duration ("30s", "5m", "250ms"). Must be positive.
absl::StatusOr<absl::Duration> ParseTimeout(absl::string_view text);

}  // namespace tessera::comm

#endif  // TESSERA_COMM_COMM_OPTIONS_H_
