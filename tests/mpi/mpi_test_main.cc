// main() of the multi-rank gtest binaries. Every rank runs every test; a failure on any
// rank makes that rank exit non-zero and mpirun with it. TESSERA_COMM_TIMEOUT bounds each
// collective, so a test that fails on one rank cannot leave the others waiting forever.

#include <gtest/gtest.h>

#include <cstdio>

#include "comm/mpi/mpi_runtime.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::testing {
namespace {
comm::MpiCommunicator* world = nullptr;
}  // namespace

comm::MpiCommunicator& World() { return *world; }

// Prints only failed assertions, tagged with the rank (ranks other than 0 use it).
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace tessera::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto runtime = tessera::comm::MpiRuntime::Initialize(&argc, &argv);
  if (!runtime.ok()) {
    std::fprintf(stderr, "MPI initialization failed: %s\n", runtime.status().ToString().c_str());
    return 1;
  }
  auto options = tessera::comm::CommOptions::FromEnvironment();
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n", options.status().ToString().c_str());
    return 1;
  }
  auto world = tessera::comm::MpiCommunicator::CreateWorld(*options);
  if (!world.ok()) {
    std::fprintf(stderr, "world communicator: %s\n", world.status().ToString().c_str());
    return 1;
  }
  tessera::testing::world = world->get();
  // Only rank 0 prints progress; other ranks print failures only.
  if ((*world)->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new tessera::testing::FailurePrinter((*world)->rank()));
  }
  int result = RUN_ALL_TESTS();
  if (result != 0) {
    std::fprintf(stderr, "rank %d: tests failed\n", (*world)->rank());
  }
  world->reset();
  return result;
}
