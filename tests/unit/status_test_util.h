#ifndef TESSERA_TESTS_UNIT_STATUS_TEST_UTIL_H_
#define TESSERA_TESTS_UNIT_STATUS_TEST_UTIL_H_

// gtest helpers for absl::Status and absl::StatusOr (the gtest we build with has no status
// matchers).

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

#define TESSERA_TEST_CONCAT_INNER_(a, b) a##b
#define TESSERA_TEST_CONCAT_(a, b) TESSERA_TEST_CONCAT_INNER_(a, b)

// Both stream extra context: EXPECT_OK(s) << "while ...".
#define EXPECT_OK(expr) EXPECT_TRUE(::tessera::testing::IsOk(expr))
#define ASSERT_OK(expr) ASSERT_TRUE(::tessera::testing::IsOk(expr))

// `lhs = *expr` for an OK absl::StatusOr; a fatal test failure otherwise.
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(TESSERA_TEST_CONCAT_(tessera_test_statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  ASSERT_TRUE(statusor.ok()) << statusor.status();      \
  lhs = std::move(statusor).value()

namespace tessera::testing {

inline const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// Whether `status` (an absl::Status or absl::StatusOr) is OK.
template <typename S>
::testing::AssertionResult IsOk(const S& status_or_value) {
  const absl::Status& status = StatusOf(status_or_value);
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status;
}

// Whether `text` contains `part`, for EXPECT_TRUE with a readable failure.
inline ::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

// Whether `status` (an absl::Status or absl::StatusOr) failed with `code` and a message that
// contains every one of `parts`.
template <typename S>
::testing::AssertionResult IsError(const S& status_or_value, absl::StatusCode code,
                                   std::initializer_list<std::string> parts = {}) {
  const absl::Status& status = StatusOf(status_or_value);
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << absl::StatusCodeToString(code) << ", got " << status;
  }
  std::string message(status.message());
  for (const std::string& part : parts) {
    if (message.find(part) == std::string::npos) {
      return ::testing::AssertionFailure() << "message '" << message << "' lacks '" << part << "'";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_UNIT_STATUS_TEST_UTIL_H_
