// Every template in tests/golden/chat/templates rendered over every golden conversation must
// equal transformers' rendering byte for byte, or fail with the template's own error message.

#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_template.h"

namespace tessera::chat {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, MatchesTransformers) {
  const std::string dir = TESSERA_CHAT_GOLDEN_DIR;
  const std::string name = GetParam();
  const std::string golden_text = ReadFile(dir + "/" + name + ".golden.json");
  ASSERT_FALSE(golden_text.empty()) << name;
  const auto golden = nlohmann::ordered_json::parse(golden_text);
  const std::string source = ReadFile(dir + "/templates/" + name + ".jinja");
  ASSERT_FALSE(source.empty());
  auto tmpl = ChatTemplate::Parse(source, name);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  ASSERT_GE(golden["cases"].size(), 10u);
  for (const auto& c : golden["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    auto rendered = tmpl->Render(c["context"]);
    if (c.contains("error")) {
      ASSERT_FALSE(rendered.ok());
      EXPECT_NE(rendered.status().message().find(c["error"].get<std::string>()), std::string::npos)
          << rendered.status();
    } else {
      ASSERT_TRUE(rendered.ok()) << rendered.status();
      EXPECT_EQ(*rendered, c["expected"].get<std::string>());
    }
  }
}

TEST(GoldenTest, RenderChatBuildsTransformersContext) {
  const std::string dir = TESSERA_CHAT_GOLDEN_DIR;
  const auto golden = nlohmann::ordered_json::parse(ReadFile(dir + "/llama3_instruct.golden.json"));
  auto tmpl = ChatTemplate::Parse(ReadFile(dir + "/templates/llama3_instruct.jinja"), "llama3");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  for (const auto& c : golden["cases"]) {
    const auto& ctx = c["context"];
    auto rendered =
        tmpl->RenderChat(ctx["messages"], ctx["add_generation_prompt"].get<bool>(),
                         ctx["bos_token"].get<std::string>(), ctx["eos_token"].get<std::string>());
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(*rendered, c["expected"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Templates, GoldenTest,
                         ::testing::Values("smollm2_135m_instruct", "llama3_instruct",
                                           "qwen2_instruct", "glm4_9b_chat",
                                           "mistral_7b_instruct_v0.2",
                                           "mistral_7b_instruct_v0.2_system"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (char& ch : n) {
                             if (ch == '.') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace tessera::chat
