#ifndef TESSERA_LAUNCHER_PROCESS_H_
#define TESSERA_LAUNCHER_PROCESS_H_

// How a subcommand turns its flags and its final status into an exit code.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "launcher/flags.h"

namespace tessera::launcher {

// Exit codes of the tessera binary.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the job failed (message on stderr)
inline constexpr int kExitUsage = 2;    // bad command line

// MPI and the world communicator for one subcommand's run. Members are destroyed in reverse
// order: the world communicator before MPI itself.
struct MpiJob {
  std::unique_ptr<comm::MpiRuntime> runtime;
  std::unique_ptr<comm::MpiCommunicator> world;
};

// Where a rank's host threads and memory go at start (launcher/numa_placement.h).
enum class HostPlacement {
  kCpuMask,  // where its affinity mask (and its share of a node shared by jobs) puts them
  kNearGpu,  // the CUDA backend: also on the NUMA node of the GPU it will use
};

// Starts MPI and the world communicator with the environment's communicator settings,
// overridden by the --timeout and --validate flags (validation is on if either asks). Then
// places the rank's threads and memory (`placement`) before any kernel or weight: its cores
// and NUMA node, its kernel threads, and a warning on stderr naming the fix when the binding
// is wrong.
absl::StatusOr<MpiJob> StartMpiJob(int* argc, char*** argv, absl::Duration timeout, bool validate,
                                   HostPlacement placement = HostPlacement::kCpuMask);

// Parses flags. Returns an exit code when the subcommand should stop now: kExitOk after
// printing --help, kExitUsage after printing a parse error. nullopt to go on.
//
// Parse-only mode: when the environment variable TESSERA_PARSE_ONLY is 1, a command line
// that parses prints "tessera: command line parses" on stdout and returns kExitOk, so that
// every subcommand stops before it does any work. Deployment files are checked this way
// (tests/e2e/deploy_commands_test.cc). Checks that a subcommand makes after parsing (flag
// combinations, files) are not run.
std::optional<int> ParseOrExit(FlagSet& flags, const std::vector<std::string>& args);

// Prints a failed status as "tessera: error (rank R on H): ..." on stderr and returns
// kExitFailure; returns kExitOk for OK.
//
// When a communicator has failed (a deadline passed, a peer died), the job is torn down
// with MPI_Abort after the message is out: the group has lost a member, and a peer that is
// stalled outside any collective would otherwise linger. mpirun then exits non-zero.
int ReportExit(const absl::Status& status);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_PROCESS_H_
