// tokenizer_config.json and chat_template.jinja as published models write them.

#include "runtime/tokenizer/tokenizer_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::tokenizer {
namespace {

using ::testing::HasSubstr;

TEST(TokenizerConfig, ReadsStringAndAddedTokenFields) {
  absl::StatusOr<TokenizerConfig> config = ParseTokenizerConfig(
      R"({"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
          "eos_token": "</s>", "add_bos_token": true, "add_eos_token": false,
          "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"})",
      "tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token, "<s>");
  EXPECT_EQ(config->eos_token, "</s>");
  EXPECT_EQ(config->add_bos_token, true);
  EXPECT_EQ(config->add_eos_token, false);
  EXPECT_EQ(config->chat_template,
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}");
  EXPECT_EQ(config->chat_template_origin, "tokenizer_config.json:chat_template");
}

TEST(TokenizerConfig, AbsentAndNullFieldsStayUnset) {
  absl::StatusOr<TokenizerConfig> config =
      ParseTokenizerConfig(R"({"bos_token": null, "model_max_length": 2048})", "t.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->bos_token.has_value());
  EXPECT_FALSE(config->eos_token.has_value());
  EXPECT_FALSE(config->add_bos_token.has_value());
  EXPECT_FALSE(config->chat_template.has_value());
}

TEST(TokenizerConfig, NamedTemplatesUseDefault) {
  absl::StatusOr<TokenizerConfig> config = ParseTokenizerConfig(
      R"({"chat_template": [{"name": "tool_use", "template": "T"},
                            {"name": "default", "template": "D"}]})",
      "tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->chat_template, "D");
  EXPECT_EQ(config->chat_template_origin, "tokenizer_config.json:chat_template[default]");
}

TEST(TokenizerConfig, WrongTypesAreNamed) {
  EXPECT_THAT(ParseTokenizerConfig(R"({"bos_token": 1})", "t.json").status().message(),
              HasSubstr("t.json: bos_token: must be a string"));
  EXPECT_THAT(ParseTokenizerConfig(R"({"add_bos_token": "yes"})", "t.json").status().message(),
              HasSubstr("t.json: add_bos_token: must be true or false"));
  EXPECT_THAT(
      ParseTokenizerConfig(R"({"chat_template": [{"name": 3}]})", "t.json").status().message(),
      HasSubstr("t.json: chat_template[0]: must be an object"));
  EXPECT_THAT(ParseTokenizerConfig("[1]", "t.json").status().message(),
              HasSubstr("t.json: must be a JSON object"));
  EXPECT_THAT(ParseTokenizerConfig("{", "t.json").status().message(),
              HasSubstr("t.json: not valid JSON"));
}

class TokenizerConfigDirectory : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tessera_tokenizer_config_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(TokenizerConfigDirectory, AMissingFileLeavesEverythingUnset) {
  absl::StatusOr<TokenizerConfig> config = ReadTokenizerConfig(dir_.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->chat_template.has_value());
  EXPECT_FALSE(config->bos_token.has_value());
}

TEST_F(TokenizerConfigDirectory, AJinjaFileTakesPrecedence) {
  Write("tokenizer_config.json", R"({"eos_token": "<e>", "chat_template": "old"})");
  Write("chat_template.jinja", "new");
  absl::StatusOr<TokenizerConfig> config = ReadTokenizerConfig(dir_.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->chat_template, "new");
  EXPECT_EQ(config->chat_template_origin, "chat_template.jinja");
  EXPECT_EQ(config->eos_token, "<e>");
}

TEST_F(TokenizerConfigDirectory, ABrokenFileIsAnErrorNamingIt) {
  Write("tokenizer_config.json", "{\"bos_token\": ");
  EXPECT_THAT(ReadTokenizerConfig(dir_.string()).status().message(),
              HasSubstr("tokenizer_config.json: not valid JSON"));
}

}  // namespace
}  // namespace tessera::tokenizer
