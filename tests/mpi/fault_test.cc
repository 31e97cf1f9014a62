// Faults across real processes: runs fault_probe under mpirun and checks that the surviving
// ranks fail within the collective deadline, with a message that names the collective, its
// sequence number, the group and the rank that did not arrive, and that mpirun exits
// non-zero. TESSERA_MPIRUN_COMMAND and TESSERA_FAULT_PROBE come from CMake.

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "tests/mpi/process_runner.h"

namespace {

using ::tessera::testing::ProcessOutcome;
using ::tessera::testing::RunCommand;
using Outcome = ProcessOutcome;

Outcome RunProbe(const std::string& scenario, int ranks, const std::string& mpirun_flags) {
  // A job that outlives a minute has hung: kill it so that the test fails instead of waiting.
  return RunCommand(absl::StrCat("timeout -s KILL 60 ", TESSERA_MPIRUN_COMMAND, " ", mpirun_flags,
                                 " -np ", ranks, " env TESSERA_COMM_TIMEOUT=2 ",
                                 TESSERA_FAULT_PROBE, " ", scenario, " 2>&1"));
}

// mpirun normally tears the whole job down the moment a rank exits abnormally, before any
// deadline could pass. This flag keeps the survivors running, as Slurm does by default, so
// that Tessera's own deadline is what stops them.
constexpr char kKeepSurvivors[] = "--mca orte_abort_on_non_zero_status 0";

constexpr char kTimedOut[] =
    "DEADLINE_EXCEEDED: AllReduce(f32 x1024, sum) #3 in group world timed out after 2s";
constexpr char kRankOneMissing[] = "rank 1 (world 1, ";
constexpr char kNoAnswer[] = "did not arrive (no answer: dead, or stalled outside a collective)";

// The serving engine: a peer that dies or stalls mid-generation makes the leader's step
// fail within the deadline; every request ends with finish reason error and the reason.
TEST(Faults, EnginePeerFailureEndsEveryRequestWithTheError) {
  for (const char* scenario : {"exit", "stall"}) {
    Outcome outcome = RunCommand(absl::StrCat(TESSERA_MPIRUN_COMMAND, " ", kKeepSurvivors,
                                              " -np 2 env TESSERA_COMM_TIMEOUT=2 ",
                                              TESSERA_ENGINE_FAULT_PROBE, " ", scenario, " 2>&1"));
    EXPECT_NE(outcome.exit_code, 0) << outcome.output;
    for (int id = 1; id <= 4; ++id) {
      EXPECT_NE(outcome.output.find(absl::StrCat("request ", id, ": finish=error")),
                std::string::npos)
          << scenario << "\n"
          << outcome.output;
    }
    EXPECT_NE(outcome.output.find("DEADLINE_EXCEEDED"), std::string::npos) << outcome.output;
    EXPECT_NE(outcome.output.find(kRankOneMissing), std::string::npos) << outcome.output;
    EXPECT_LT(outcome.seconds, 60) << outcome.output;
  }
}

// A plan header announcing more bytes than any plan takes is refused before anything is
// allocated for it.
TEST(Faults, APlanPastItsBoundIsRefusedNotAllocated) {
  Outcome outcome = RunCommand(absl::StrCat(TESSERA_MPIRUN_COMMAND, " ", kKeepSurvivors,
                                            " -np 2 env TESSERA_COMM_TIMEOUT=5 ",
                                            TESSERA_ENGINE_FAULT_PROBE, " huge-plan 2>&1"));
  EXPECT_NE(outcome.output.find("DATA_LOSS: step plan of 1099511627776 bytes from the group's "
                                "leader; at most 67108864"),
            std::string::npos)
      << outcome.output;
  EXPECT_LT(outcome.seconds, 60) << outcome.output;
}

TEST(Faults, RankThatExitsMakesSurvivorsFailWithinTheDeadline) {
  Outcome outcome = RunProbe("exit", 4, kKeepSurvivors);
  EXPECT_NE(outcome.exit_code, 0) << outcome.output;
  EXPECT_NE(outcome.output.find(kTimedOut), std::string::npos) << outcome.output;
  EXPECT_NE(outcome.output.find(absl::StrCat(kRankOneMissing)), std::string::npos)
      << outcome.output;
  EXPECT_NE(outcome.output.find(kNoAnswer), std::string::npos) << outcome.output;
  EXPECT_NE(outcome.output.find("arrived: rank 0 (world 0, "), std::string::npos) << outcome.output;
  EXPECT_GE(outcome.seconds, 1.9) << "failed before the deadline";
  EXPECT_LT(outcome.seconds, 30) << outcome.output;
}

TEST(Faults, RankThatStallsMakesSurvivorsFailWithinTheDeadline) {
  for (int ranks : {2, 4}) {
    Outcome outcome = RunProbe("stall", ranks, "");
    EXPECT_NE(outcome.exit_code, 0) << outcome.output;
    EXPECT_NE(outcome.output.find(kTimedOut), std::string::npos) << outcome.output;
    EXPECT_NE(outcome.output.find(kRankOneMissing), std::string::npos) << outcome.output;
    EXPECT_NE(outcome.output.find(kNoAnswer), std::string::npos) << outcome.output;
    // The stalled rank sleeps for ten minutes: the job ends because of the deadline.
    EXPECT_GE(outcome.seconds, 1.9);
    EXPECT_LT(outcome.seconds, 30) << outcome.output;
  }
}

TEST(Faults, StalledRankIsNamedInItsTensorParallelGroup) {
  Outcome outcome = RunProbe("stall-tp", 4, "");
  EXPECT_NE(outcome.exit_code, 0) << outcome.output;
  EXPECT_NE(outcome.output.find("DEADLINE_EXCEEDED: AllReduce(f32 x1024, sum) #2 in group tp0 "
                                "timed out after 2s: rank 1 (world 1, "),
            std::string::npos)
      << outcome.output;
  EXPECT_NE(outcome.output.find(kNoAnswer), std::string::npos) << outcome.output;
  EXPECT_LT(outcome.seconds, 30) << outcome.output;
}

// Open MPI's own exit fence has no deadline, and its mpirun crashes or hangs when the job is
// torn down while ranks wait in it. The race is timing-dependent, so the job runs several
// times; each must end non-zero, with rank 0's error, well within the deadline.
TEST(Faults, JobEndsWhenOneRankFailsAsTheOthersFinish) {
  for (int attempt = 0; attempt < 6; ++attempt) {
    Outcome outcome = RunProbe("abort-at-exit", 4, "");
    EXPECT_NE(outcome.exit_code, 0) << outcome.output;
    EXPECT_NE(outcome.exit_code, 128 + 9) << "mpirun hung and was killed\n" << outcome.output;
    EXPECT_NE(outcome.output.find("rank 0 fails as the others finish"), std::string::npos)
        << outcome.output;
    EXPECT_EQ(outcome.output.find("Segmentation fault"), std::string::npos) << outcome.output;
    EXPECT_LT(outcome.seconds, 30) << outcome.output;
  }
}

TEST(Faults, MismatchedCollectiveIsReportedInValidationMode) {
  Outcome outcome = RunProbe("mismatch", 2, "");
  EXPECT_NE(outcome.exit_code, 0) << outcome.output;
  EXPECT_NE(outcome.output.find("FAILED_PRECONDITION: collective mismatch at #3 in group world: "
                                "rank 0 called AllReduce(f32 x1024, sum) but rank 1 called "
                                "AllGather(f32 x8)"),
            std::string::npos)
      << outcome.output;
  EXPECT_LT(outcome.seconds, 30) << outcome.output;
}

}  // namespace
