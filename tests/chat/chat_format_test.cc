// A model's chat format: its template with the special token strings of tokenizer_config.json,
// and the checks on the messages given to it.

#include "runtime/chat/chat_format.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/default_model.h"

namespace tessera::chat {
namespace {

using ::testing::HasSubstr;

ChatFormat Format(const std::string& source) {
  tokenizer::TokenizerConfig config;
  config.bos_token = "<s>";
  config.eos_token = "</s>";
  config.chat_template = source;
  config.chat_template_origin = "tokenizer_config.json:chat_template";
  absl::StatusOr<ChatFormat> format = ChatFormat::FromConfig(config);
  EXPECT_TRUE(format.ok()) << format.status();
  return format.ok() ? *std::move(format) : ChatFormat();
}

TEST(ChatFormat, RendersWithTheConfiguredSpecialTokens) {
  ChatFormat format = Format(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}");
  nlohmann::ordered_json messages = {{{"role", "user"}, {"content", "hi"}}};
  EXPECT_EQ(format.Render(messages, true).value_or("?"), "<s>[user]hi[assistant]</s>");
  EXPECT_EQ(format.Render(messages, false).value_or("?"), "<s>[user]hi</s>");
}

TEST(ChatFormat, MalformedMessagesAreNamed) {
  ChatFormat format = Format("{% for m in messages %}{{ m.content }}{% endfor %}");
  auto render = [&](const char* json) {
    return format.Render(nlohmann::ordered_json::parse(json), true).status();
  };
  EXPECT_THAT(render("{}").message(), HasSubstr("messages: must be an array"));
  EXPECT_THAT(render("[]").message(), HasSubstr("messages: must not be empty"));
  EXPECT_THAT(render(R"([{"role": "user", "content": "a"}, 3])").message(),
              HasSubstr("messages[1]: must be an object"));
  EXPECT_THAT(render(R"([{"content": "a"}])").message(), HasSubstr("messages[0].role: required"));
  EXPECT_THAT(render(R"([{"role": "user", "content": 5}])").message(),
              HasSubstr("messages[0].content: must be a string or null"));
}

TEST(ChatFormat, TheTemplatesOwnErrorReachesTheCaller) {
  ChatFormat format = Format(
      "{% if messages[0].role != 'user' %}{{ raise_exception('the first turn must be the "
      "user') }}{% endif %}ok");
  absl::Status status =
      format
          .Render(nlohmann::ordered_json::parse(R"([{"role": "assistant", "content": "a"}])"), true)
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("the first turn must be the user"));
}

TEST(ChatFormat, WithoutATemplateRenderingSaysWhatIsMissing) {
  ChatFormat format;
  absl::Status status =
      format.Render(nlohmann::ordered_json::parse(R"([{"role": "user", "content": "a"}])"), true)
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("no chat template"));
}

TEST(ChatFormat, AnUnsupportedConstructIsRefusedAtLoad) {
  tokenizer::TokenizerConfig config;
  config.chat_template = "{% macro m() %}x{% endmacro %}";
  config.chat_template_origin = "chat_template.jinja";
  absl::Status status = ChatFormat::FromConfig(config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("chat_template.jinja:1:"));
  EXPECT_THAT(status.message(), HasSubstr("macro"));
}

TEST(ChatFormat, TheDefaultModelHasOne) {
  absl::StatusOr<std::string> dir = model::EnsureDefaultModel();
  ASSERT_TRUE(dir.ok()) << dir.status();
  absl::StatusOr<tokenizer::TokenizerConfig> config = tokenizer::ReadTokenizerConfig(*dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ChatFormat> format = ChatFormat::FromConfig(*config);
  ASSERT_TRUE(format.ok()) << format.status();
  nlohmann::ordered_json messages = {{{"role", "system"}, {"content", "Be brief."}},
                                     {{"role", "user"}, {"content", "Hi"}}};
  EXPECT_EQ(format->Render(messages, true).value_or("?"),
            "<|begin_of_text|>system\nBe brief.<|end_of_text|>\n"
            "<|begin_of_text|>user\nHi<|end_of_text|>\n<|begin_of_text|>assistant\n");
}

}  // namespace
}  // namespace tessera::chat
