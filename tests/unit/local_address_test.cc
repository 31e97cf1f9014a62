// The address a worker listens on by default: the one facing its coordinator.

#include "runtime/serve/local_address.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace tessera::serve {
namespace {

TEST(LocalAddressTest, TowardThisMachineItIsLoopback) {
  absl::StatusOr<std::string> address = LocalAddressToward("127.0.0.1", 50051);
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(*address, "127.0.0.1");
  absl::StatusOr<std::string> named = LocalAddressToward("localhost", 50051);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_TRUE(*named == "127.0.0.1" || *named == "[::1]") << *named;
}

TEST(LocalAddressTest, AnAddressOfThisMachineFacesItself) {
  // 127.0.0.2 is this machine too (all of 127/8 is loopback): the source is that address.
  absl::StatusOr<std::string> address = LocalAddressToward("127.0.0.2", 1);
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_TRUE(absl::StartsWith(*address, "127.")) << *address;
}

TEST(LocalAddressTest, AHostThatDoesNotResolveIsNamed) {
  absl::StatusOr<std::string> address = LocalAddressToward("no-such-host.invalid", 50051);
  ASSERT_FALSE(address.ok());
  EXPECT_EQ(address.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(address.status().message(), "no-such-host.invalid"))
      << address.status();
}

}  // namespace
}  // namespace tessera::serve
