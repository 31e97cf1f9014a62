#ifndef TESSERA_COMM_MPI_MPI_RUNTIME_H_
#define TESSERA_COMM_MPI_MPI_RUNTIME_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera::comm {

// MPI for the lifetime of the process: initialized once (multi-threaded), finalized when the
// object goes away. Sets the process identity (host, world rank) used in error messages.
//
// At shutdown every rank waits for the others at a barrier (Tessera's, bounded by the
// shutdown timeout) and then finalizes without Open MPI's own exit fence. That fence has no
// deadline, and Open MPI 4.1's mpirun crashes or hangs for good when the job is torn down
// while ranks sit in it (one rank aborting as the others finish normally).
//
// If any communicator has failed (a deadline passed, a peer died), or the barrier times out,
// MPI_Finalize is skipped: it would wait forever for requests a dead peer will never match.
// The process should then exit non-zero, which tells the launcher (mpirun, srun) to tear the
// job down.
class MpiRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Initialize(int* argc, char*** argv);
  ~MpiRuntime();

  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  // How long a rank waits at shutdown for the others (default: TESSERA_COMM_TIMEOUT, as for
  // collectives). Jobs that take their collective timeout from a flag set it here too.
  void set_shutdown_timeout(absl::Duration timeout) { shutdown_timeout_ = timeout; }

 private:
  MpiRuntime(int rank, int size, absl::Duration shutdown_timeout)
      : world_rank_(rank), world_size_(size), shutdown_timeout_(shutdown_timeout) {}
  // True when every rank reached shutdown within the timeout.
  bool AllRanksReachedShutdown() const;

  int world_rank_;
  int world_size_;
  absl::Duration shutdown_timeout_;
};

// Recorded by communicators when they fail; read by MpiRuntime at shutdown.
void MarkCommunicatorFailed();
bool AnyCommunicatorFailed();

}  // namespace tessera::comm

#endif  // TESSERA_COMM_MPI_MPI_RUNTIME_H_
