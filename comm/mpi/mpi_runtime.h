#ifndef TESSERA_COMM_MPI_MPI_RUNTIME_H_
#define TESSERA_COMM_MPI_MPI_RUNTIME_H_

#include <memory>

#include "absl/status/statusor.h"

namespace tessera::comm {

// MPI for the lifetime of the process: initialized once (multi-threaded), finalized when the
// object goes away. Sets the process identity (host, world rank) used in error messages.
//
// If any communicator has failed (a deadline passed, a peer died), MPI_Finalize is skipped:
// it would wait forever for requests a dead peer will never match. The process should then
// exit non-zero, which tells the launcher (mpirun, srun) to tear the job down.
class MpiRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<MpiRuntime>> Initialize(int* argc, char*** argv);
  ~MpiRuntime();

  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

 private:
  MpiRuntime(int rank, int size) : world_rank_(rank), world_size_(size) {}

  int world_rank_;
  int world_size_;
};

// Recorded by communicators when they fail; read by MpiRuntime at shutdown.
void MarkCommunicatorFailed();
bool AnyCommunicatorFailed();

}  // namespace tessera::comm

#endif  // TESSERA_COMM_MPI_MPI_RUNTIME_H_
