// Tests of runtime/core/check.h and runtime/core/status_macros.h: library-call errors carry
// the call, the description, the call site and the process identity; the status macros
// propagate; invariant checks abort.

#include "runtime/core/check.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/core/status_macros.h"
#include "tests/unit/status_test_util.h"

namespace tessera {

// A pretend library whose calls return an int: 0 is success, 3 a "bad argument" and
// anything else an internal failure. TESSERA_CALL_CHECK looks traits up in ::tessera.
struct FakeCall {
  using Code = int;
  static constexpr const char* kLibrary = "Fake";
  static bool Ok(Code code) { return code == 0; }
  static std::string Describe(Code code) { return absl::StrCat("FAKE_ERR_", code, ": it broke"); }
  static absl::StatusCode StatusCode(Code code) {
    return code == 3 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kInternal;
  }
};

namespace {

using ::tessera::testing::Contains;
using ::tessera::testing::IsError;

int calls = 0;
int FakeLibraryFunction(int result, int count) {
  ++calls;
  return count >= 0 ? result : -1;
}

int check_line = 0;
// The pattern library wrappers follow: a function returning absl::Status.
absl::Status CallFakeLibrary(int result) {
  check_line = __LINE__ + 1;
  TESSERA_CALL_CHECK(FakeCall, FakeLibraryFunction(result, /*count=*/8));
  return absl::OkStatus();
}

class CheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = GetProcessIdentity();
    SetProcessIdentity("node-x", 7);
    calls = 0;
  }
  void TearDown() override { SetProcessIdentity(saved_.host, saved_.rank); }

 private:
  ProcessIdentity saved_;
};

TEST_F(CheckTest, SuccessfulCallIsOk) {
  EXPECT_OK(CallFakeLibrary(0));
  EXPECT_EQ(calls, 1);
}

TEST_F(CheckTest, FailedCallReturnsStatusWithCallSite) {
  absl::Status status = CallFakeLibrary(3);
  EXPECT_EQ(calls, 1) << "the call must be evaluated exactly once";
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  std::string message(status.message());
  EXPECT_TRUE(Contains(message, "FakeLibraryFunction(result, 8) failed"));
  EXPECT_TRUE(Contains(message, "FAKE_ERR_3: it broke"));
  EXPECT_TRUE(Contains(message, absl::StrCat("tests/unit/check_test.cc:", check_line)));
  EXPECT_TRUE(Contains(message, "host node-x"));
  EXPECT_TRUE(Contains(message, "rank 7"));
  // The whole message, with the path relative to the source root.
  EXPECT_EQ(message, absl::StrCat("FakeLibraryFunction(result, 8) failed: FAKE_ERR_3: it broke "
                                  "[tests/unit/check_test.cc:",
                                  check_line, ", host node-x, rank 7]"));
}

TEST_F(CheckTest, StatusCodeComesFromTraits) {
  EXPECT_TRUE(IsError(CallFakeLibrary(5), absl::StatusCode::kInternal, {"FAKE_ERR_5"}));
}

TEST_F(CheckTest, CallStatusWithoutReturning) {
  int line = __LINE__ + 1;
  absl::Status status = TESSERA_CALL_STATUS(FakeCall, FakeLibraryFunction(9, -1));
  EXPECT_TRUE(IsError(
      status, absl::StatusCode::kInternal,
      {"FakeLibraryFunction(9, -1) failed: FAKE_ERR_-1", absl::StrCat("check_test.cc:", line)}));
  EXPECT_OK(TESSERA_CALL_STATUS(FakeCall, FakeLibraryFunction(0, 1)));
}

TEST_F(CheckTest, UnknownRankIsSaidSo) {
  SetProcessIdentity("node-y", -1);
  absl::Status status = CallFakeLibrary(1);
  EXPECT_TRUE(Contains(std::string(status.message()), "host node-y, rank unknown]"));
}

TEST_F(CheckTest, ProcessIdentityRoundTrips) {
  SetProcessIdentity("h", 12);
  ProcessIdentity id = GetProcessIdentity();
  EXPECT_EQ(id.host, "h");
  EXPECT_EQ(id.rank, 12);
}

TEST_F(CheckTest, WithCallSiteAndLibraryCallError) {
  EXPECT_EQ(WithCallSite("oops", "/src/tessera/comm/mpi/x.cc", 12),
            "oops [comm/mpi/x.cc:12, host node-x, rank 7]");
  EXPECT_EQ(WithCallSite("oops", "/a/b/kernels/cpu/y.cc", 3),
            "oops [kernels/cpu/y.cc:3, host node-x, rank 7]");
  // A path outside the known roots is kept whole.
  EXPECT_EQ(WithCallSite("oops", "other/z.cc", 1), "oops [other/z.cc:1, host node-x, rank 7]");
  absl::Status status =
      LibraryCallError(absl::StatusCode::kUnavailable, "f(x)", "gone", "/r/runtime/core/a.cc", 5);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "f(x) failed: gone [runtime/core/a.cc:5, host node-x, rank 7]");
}

// ---- status_macros.h ------------------------------------------------------------------

int steps = 0;

absl::Status Step(absl::Status result) {
  ++steps;
  return result;
}

absl::Status TwoSteps(absl::Status first, absl::Status second) {
  TESSERA_RETURN_IF_ERROR(Step(first));
  TESSERA_RETURN_IF_ERROR(Step(second));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorPropagatesFirstFailure) {
  steps = 0;
  EXPECT_OK(TwoSteps(absl::OkStatus(), absl::OkStatus()));
  EXPECT_EQ(steps, 2);

  steps = 0;
  absl::Status status = TwoSteps(absl::NotFoundError("first"), absl::OkStatus());
  EXPECT_EQ(status, absl::NotFoundError("first"));
  EXPECT_EQ(steps, 1) << "the second step must not run";

  steps = 0;
  status = TwoSteps(absl::OkStatus(), absl::AbortedError("second"));
  EXPECT_EQ(status, absl::AbortedError("second"));
  EXPECT_EQ(steps, 2);
}

absl::StatusOr<std::unique_ptr<int>> MakeInt(int value) {
  if (value < 0) return absl::OutOfRangeError(absl::StrCat("negative ", value));
  return std::make_unique<int>(value);
}

// Sums two values made by MakeInt; move-only results exercise the macro's moves.
absl::StatusOr<int> AddMade(int a, int b) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<int> first, MakeInt(a));
  std::unique_ptr<int> second;
  TESSERA_ASSIGN_OR_RETURN(second, MakeInt(b));
  return *first + *second;
}

TEST(StatusMacrosTest, AssignOrReturnAssignsValue) {
  absl::StatusOr<int> sum = AddMade(2, 40);
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, 42);
}

TEST(StatusMacrosTest, AssignOrReturnPropagatesError) {
  EXPECT_EQ(AddMade(-1, 2).status(), absl::OutOfRangeError("negative -1"));
  EXPECT_EQ(AddMade(1, -2).status(), absl::OutOfRangeError("negative -2"));
}

absl::Status UseAssignInStatusFunction(int value, int* out) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<int> made, MakeInt(value));
  *out = *made;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnInFunctionReturningStatus) {
  int out = 0;
  EXPECT_OK(UseAssignInStatusFunction(5, &out));
  EXPECT_EQ(out, 5);
  out = 0;
  EXPECT_EQ(UseAssignInStatusFunction(-3, &out), absl::OutOfRangeError("negative -3"));
  EXPECT_EQ(out, 0);
}

// ---- TESSERA_CHECK --------------------------------------------------------------------

TEST(CheckDeathTest, FailedCheckAborts) {
  EXPECT_DEATH(
      {
        SetProcessIdentity("node-z", 2);
        TESSERA_CHECK(1 + 1 == 3, "arithmetic is broken");
      },
      "tessera: check failed: 1 \\+ 1 == 3: arithmetic is broken "
      "\\[tests/unit/check_test.cc:[0-9]+, host node-z, rank 2\\]");
}

TEST(CheckMacroTest, PassingCheckDoesNothing) {
  int evaluated = 0;
  TESSERA_CHECK(++evaluated == 1, "evaluated once");
  EXPECT_EQ(evaluated, 1);
}

}  // namespace
}  // namespace tessera
