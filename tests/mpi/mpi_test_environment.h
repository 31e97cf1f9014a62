#ifndef TESSERA_TESTS_MPI_MPI_TEST_ENVIRONMENT_H_
#define TESSERA_TESTS_MPI_MPI_TEST_ENVIRONMENT_H_

// Shared set-up of the multi-rank test binaries: MPI and the world communicator live for the
// whole run (mpi_test_main.cc); tests reach them here.

#include "comm/mpi/mpi_communicator.h"

namespace tessera::testing {

comm::MpiCommunicator& World();

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_MPI_MPI_TEST_ENVIRONMENT_H_
