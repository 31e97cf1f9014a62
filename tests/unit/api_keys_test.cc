// API keys stored hashed, the key file's format and errors, reloading, and the secrets under
// them (SHA-256 against its published test vector, random hex, comparison).

#include "runtime/serve/api_keys.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "runtime/serve/secrets.h"
#include "tests/unit/status_test_util.h"

namespace tessera::serve {
namespace {

using ::tessera::testing::IsError;

TEST(SecretsTest, Sha256MatchesTheStandardsTestVectors) {
  // FIPS 180-2, appendix B.1, and the empty message.
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(SecretsTest, RandomHexHasTheLengthAndDiffersEachTime) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    ASSERT_OK_AND_ASSIGN(std::string random, RandomHex(16));
    EXPECT_EQ(random.size(), 32u);
    EXPECT_EQ(random.find_first_not_of("0123456789abcdef"), std::string::npos) << random;
    seen.insert(random);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(SecretsTest, SecretsEqualComparesWholeStrings) {
  EXPECT_TRUE(SecretsEqual("token", "token"));
  EXPECT_FALSE(SecretsEqual("token", "tokem"));
  EXPECT_FALSE(SecretsEqual("token", "token2"));
  EXPECT_FALSE(SecretsEqual("", "token"));
  EXPECT_TRUE(SecretsEqual("", ""));
}

TEST(ApiKeyTableTest, FindsEachKeysTenantByItsHash) {
  ASSERT_OK_AND_ASSIGN(std::string acme, NewApiKey());
  ASSERT_OK_AND_ASSIGN(std::string beta, NewApiKey());
  EXPECT_EQ(acme.rfind("tsk-", 0), 0u);
  EXPECT_EQ(acme.size(), 4u + 64u);
  const std::string text = "# tenants\n\n" + ApiKeyLine("acme", acme) + "  " +
                           ApiKeyLine("beta.team-2", beta) + "# the end\n";
  // The file holds hashes only.
  EXPECT_EQ(text.find(acme), std::string::npos);
  ASSERT_OK_AND_ASSIGN(ApiKeyTable table, ApiKeyTable::Parse(text, "keys"));
  EXPECT_EQ(table.size(), 2u);
  EXPECT_EQ(table.TenantOf(acme), "acme");
  EXPECT_EQ(table.TenantOf(beta), "beta.team-2");
  EXPECT_EQ(table.TenantOf(acme + "x"), std::nullopt);
  EXPECT_EQ(table.TenantOf(""), std::nullopt);
  // Upper-case hex is the same hash.
  ASSERT_OK_AND_ASSIGN(ApiKeyTable upper,
                       ApiKeyTable::Parse("acme sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A3"
                                          "96177A9CB410FF61F20015AD",
                                          "keys"));
  EXPECT_EQ(upper.TenantOf("abc"), "acme");
}

TEST(ApiKeyTableTest, BadLinesAreRefusedNamingFileAndLine) {
  const std::string hash = "sha256:" + Sha256Hex("k");
  struct Case {
    std::string text;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"acme " + hash + "\nbeta\n", "keys:2: expected \"TENANT sha256:HEX\""},
           {"acme tsk-plaintext-key\n", "keys:1: expected"},
           {"acme sha256:abc\n", "keys:1: the key's hash: expected 64 hex digits"},
           {"ac/me " + hash + "\n", "keys:1: tenant \"ac/me\""},
           {std::string(65, 'a') + " " + hash + "\n", "expected 1 to 64"},
           {"acme " + hash + "\nbeta " + hash + "\n", "keys:2: this key's hash is given twice"},
           {"acme " + hash + " extra\n", "keys:1: expected"}}) {
    EXPECT_TRUE(IsError(ApiKeyTable::Parse(c.text, "keys"), absl::StatusCode::kInvalidArgument,
                        {c.expected}))
        << c.text;
  }
}

TEST(ApiKeyStoreTest, RereadsTheFileWhenItChangesAndKeepsTheLastGoodOne) {
  char pattern[] = "/tmp/tessera-api-keys-XXXXXX";
  const std::string dir = mkdtemp(pattern);
  const std::string path = dir + "/keys";
  std::ofstream(path) << ApiKeyLine("acme", "key-one");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ApiKeyStore> store,
                       ApiKeyStore::Open(path, absl::Hours(1)));  // refreshed by hand below
  EXPECT_EQ(store->TenantOf("key-one"), "acme");

  // Replaced (as an editor saves): key-one revoked, key-two added.
  std::ofstream(path + ".new") << ApiKeyLine("beta", "key-two");
  std::filesystem::rename(path + ".new", path);
  ASSERT_OK(store->Refresh());
  EXPECT_EQ(store->TenantOf("key-one"), std::nullopt);
  EXPECT_EQ(store->TenantOf("key-two"), "beta");

  // A broken edit is reported and the keys read before stay.
  std::ofstream(path, std::ios::app) << "not a key line\n";
  EXPECT_TRUE(IsError(store->Refresh(), absl::StatusCode::kInvalidArgument, {":2:"}));
  EXPECT_EQ(store->TenantOf("key-two"), "beta");

  // The file's errors at start are the caller's.
  EXPECT_TRUE(IsError(ApiKeyStore::Open(path), absl::StatusCode::kInvalidArgument, {":2:"}));
  EXPECT_TRUE(
      IsError(ApiKeyStore::Open(dir + "/missing"), absl::StatusCode::kNotFound, {"missing"}));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tessera::serve
