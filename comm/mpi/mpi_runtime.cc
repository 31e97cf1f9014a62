#include "comm/mpi/mpi_runtime.h"

#include <mpi.h>

#include <atomic>

#include "absl/strings/str_cat.h"
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
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(rank, size));
}

MpiRuntime::~MpiRuntime() {
  if (AnyCommunicatorFailed()) return;
  FreeMpiTypes();
  MPI_Finalize();
}

}  // namespace tessera::comm
