// A small MPI program that misbehaves on purpose, for fault_test.cc:
//   fault_probe exit     rank 1 dies (exits without a word) before collective #3
//   fault_probe stall    rank 1 stalls for ten minutes before collective #3
//   fault_probe mismatch rank 1 calls AllGather where the others call AllReduce (#3),
//                        with validation on
//   fault_probe stall-tp the world splits into groups of two (tp0, tp1, ...); rank 1
//                        stalls before AllReduce #2 of group tp0
//   fault_probe abort-at-exit  rank 0 fails (as after a timed-out collective) while rank 1
//                        stalls and the others finish normally: mpirun must still end
//                        the job promptly
// The other ranks call AllReduce(f32 x1024, sum) #3 and must fail within the deadline
// (TESSERA_COMM_TIMEOUT), printing the error; the process exit code is 1 then, and 0 only
// if the collective unexpectedly succeeded.

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "launcher/process.h"

namespace tessera::comm {
namespace {

int Run(const char* scenario, int* argc, char*** argv) {
  auto runtime = MpiRuntime::Initialize(argc, argv);
  if (!runtime.ok()) return launcher::ReportExit(runtime.status());
  auto options = CommOptions::FromEnvironment();
  if (!options.ok()) return launcher::ReportExit(options.status());
  options->validate = options->validate || std::strcmp(scenario, "mismatch") == 0;
  auto world = MpiCommunicator::CreateWorld(*options);
  if (!world.ok()) return launcher::ReportExit(world.status());
  MpiCommunicator& comm = **world;
  Stream cpu = Stream::Cpu();

  auto buffer = Tensor::Zeros(DType::kF32, {1024});
  if (!buffer.ok()) return launcher::ReportExit(buffer.status());
  // Collectives #1 and #2 succeed on every rank (#0 was the host exchange of CreateWorld).
  for (int i = 0; i < 2; ++i) {
    absl::Status status = comm.AllReduce(*buffer, ReduceOp::kSum, cpu);
    if (!status.ok()) return launcher::ReportExit(status);
  }

  absl::Status status;
  if (std::strcmp(scenario, "stall-tp") == 0) {
    auto pair = comm.Split(comm.rank() / 2, comm.rank(), absl::StrCat("tp", comm.rank() / 2));
    if (!pair.ok()) return launcher::ReportExit(pair.status());
    // #0 and #1 of the pair succeed (#0 inside Split's own exchange is on the parent).
    for (int i = 0; i < 2; ++i) {
      status = (*pair)->AllReduce(*buffer, ReduceOp::kSum, cpu);
      if (!status.ok()) return launcher::ReportExit(status);
    }
    if (comm.rank() == 1) sleep(600);
    status = (*pair)->AllReduce(*buffer, ReduceOp::kSum, cpu);
    if (status.ok()) return 0;  // the pairs without the stalled rank finish normally
    return launcher::ReportExit(status);
  }
  if (std::strcmp(scenario, "abort-at-exit") == 0) {
    if (comm.rank() == 1) sleep(600);
    if (comm.rank() != 0) return 0;
    usleep(200 * 1000);  // the others are shutting down by now
    MarkCommunicatorFailed();
    return launcher::ReportExit(absl::InternalError("rank 0 fails as the others finish"));
  }
  if (comm.rank() == 1 && std::strcmp(scenario, "exit") == 0) {
    std::_Exit(3);
  } else if (comm.rank() == 1 && std::strcmp(scenario, "stall") == 0) {
    sleep(600);
  } else if (comm.rank() == 1 && std::strcmp(scenario, "mismatch") == 0) {
    auto input = Tensor::Zeros(DType::kF32, {8});
    auto output = Tensor::Zeros(DType::kF32, {8 * comm.size()});
    status = comm.AllGather(*input, *output, cpu);
  } else {
    status = comm.AllReduce(*buffer, ReduceOp::kSum, cpu);
  }
  if (status.ok()) {
    std::fprintf(stderr, "rank %d: collective #3 succeeded, which it must not\n", comm.rank());
    return 0;
  }
  return launcher::ReportExit(status);
}

}  // namespace
}  // namespace tessera::comm

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: fault_probe exit|stall|mismatch|stall-tp|abort-at-exit\n");
    return 2;
  }
  return tessera::comm::Run(argv[1], &argc, &argv);
}
