#include "comm/mpi/mpi_runtime.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "comm/comm_options.h"
#include "comm/host_name.h"
#include "comm/mpi/mpi_check.h"
#include "comm/mpi/mpi_types.h"

namespace tessera::comm {
namespace {

std::atomic<bool> communicator_failed{false};

}  // namespace

void MarkCommunicatorFailed() { communicator_failed.store(true); }
bool AnyCommunicatorFailed() { return communicator_failed.load(); }

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Initialize(int* argc, char*** argv) {
  int initialized = 0;
  TESSERA_MPI_CHECK(MPI_Initialized(&initialized));
  if (initialized) {
    return absl::FailedPreconditionError("MPI is already initialized in this process");
  }
  // Finalize without Open MPI's exit fence (see the class comment); AllRanksReachedShutdown
  // takes its place. A value the user set is kept.
  setenv("OMPI_MCA_async_mpi_finalize", "1", /*overwrite=*/0);
  absl::StatusOr<CommOptions> options = CommOptions::FromEnvironment();
  const absl::Duration shutdown_timeout = options.ok() ? options->timeout : CommOptions{}.timeout;
  int provided = 0;
  TESSERA_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  TESSERA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  SetProcessIdentity(LocalHostName(), rank);
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    return absl::FailedPreconditionError(
        absl::StrCat("the MPI library provides thread level ", provided,
                     "; Tessera needs at least MPI_THREAD_SERIALIZED"));
  }
  if (absl::Status s = CreateMpiTypes(); !s.ok()) {
    MPI_Finalize();
    return s;
  }
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(rank, size, shutdown_timeout));
}

bool MpiRuntime::AllRanksReachedShutdown() const {
  MPI_Request request;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &request) != MPI_SUCCESS) return false;
  const auto started = std::chrono::steady_clock::now();
  const auto deadline = started + absl::ToChronoNanoseconds(shutdown_timeout_);
  while (true) {
    int done = 0;
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
    if (done) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      std::fprintf(stderr,
                   "tessera: rank %d: not every rank reached shutdown within %s; exiting without "
                   "MPI_Finalize\n",
                   world_rank_, absl::FormatDuration(shutdown_timeout_).c_str());
      return false;
    }
    // Ranks that finish early wait here, possibly for minutes: nap instead of spinning.
    std::this_thread::sleep_for(now - started < std::chrono::milliseconds(2)
                                    ? std::chrono::microseconds(20)
                                    : std::chrono::milliseconds(1));
  }
}

MpiRuntime::~MpiRuntime() {
  if (AnyCommunicatorFailed() || !AllRanksReachedShutdown()) return;
  FreeMpiTypes();
  MPI_Finalize();
}

}  // namespace tessera::comm
