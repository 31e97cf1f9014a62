// OpenAI's request bodies and answers (runtime/serve/openai_api.h) without a server: the
// penalties and top log-probabilities of both endpoints, and several prompts in one call.

#include "runtime/serve/openai_api.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tessera::serve {
namespace {

using Json = nlohmann::json;

const Json kChat = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};

TEST(OpenAiApiTest, PenaltiesPassThroughForTheCoreToCheck) {
  Json body = kChat;
  body["presence_penalty"] = 0.5;
  body["frequency_penalty"] = -1.25;
  absl::StatusOr<CompletionCall> call = ParseChatCompletionRequest(body);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->request.sampling().presence_penalty(), 0.5f);
  EXPECT_EQ(call->request.sampling().frequency_penalty(), -1.25f);
  body["presence_penalty"] = "high";
  EXPECT_EQ(ParseChatCompletionRequest(body).status().message(),
            "presence_penalty: must be a number");
}

TEST(OpenAiApiTest, TopLogprobsOfBothEndpoints) {
  Json chat = kChat;
  chat["top_logprobs"] = 2;
  EXPECT_EQ(ParseChatCompletionRequest(chat).status().message(),
            "top_logprobs: needs logprobs: true");
  chat["logprobs"] = true;
  absl::StatusOr<CompletionCall> call = ParseChatCompletionRequest(chat);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->top_logprobs, 2);
  EXPECT_EQ(call->request.sampling().top_logprobs(), 2);
  EXPECT_TRUE(call->request.sampling().logprobs());
  chat["top_logprobs"] = 21;
  EXPECT_EQ(ParseChatCompletionRequest(chat).status().message(),
            "top_logprobs: must be from 0 to 20, not 21");

  Json completion = {{"model", "m"}, {"prompt", "hi"}, {"logprobs", 3}};
  call = ParseCompletionRequest(completion);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_TRUE(call->logprobs);
  EXPECT_EQ(call->request.sampling().top_logprobs(), 3);
  completion["logprobs"] = 6;
  EXPECT_EQ(ParseCompletionRequest(completion).status().message(),
            "logprobs: must be from 0 to 5, not 6");
  completion["logprobs"] = 0;
  call = ParseCompletionRequest(completion);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_TRUE(call->logprobs);
  EXPECT_EQ(call->request.sampling().top_logprobs(), 0);
}

// One choice of two tokens, each with two alternatives; the second alternative of the first
// token has the same text as the first (the legacy dict keeps the more likely).
std::vector<ChoiceResult> TwoTokens() {
  std::vector<ChoiceResult> choices(1);
  choices[0].text = "ab";
  choices[0].tokens = {1, 2};
  choices[0].logprobs = {-0.1f, -0.2f};
  const int alternatives[2][2] = {{1, 3}, {4, 2}};
  for (int t = 0; t < 2; ++t) {
    v1::TopLogprobs& top = *choices[0].top_logprobs.Add();
    for (int j = 0; j < 2; ++j) {
      top.add_tokens(alternatives[t][j]);
      top.add_logprobs(-0.1f - static_cast<float>(j));
    }
  }
  return choices;
}

std::string Chosen(int, int32_t id, bool) { return id == 1 ? "a" : "b"; }
std::string Alone(int, int32_t id) {
  return id == 1 || id == 3 ? "a" : id == 2 ? "b" : "\xe2\x82";  // 4: part of a character
}

TEST(OpenAiApiTest, ChatAnswersListTheAlternatives) {
  Json chat = kChat;
  chat["logprobs"] = true;
  chat["top_logprobs"] = 2;
  absl::StatusOr<CompletionCall> call = ParseChatCompletionRequest(chat);
  ASSERT_TRUE(call.ok());
  Json body = CompletionBody(*call, "x", 0, TwoTokens(), Chosen, Alone);
  const Json& content = body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "a");
  ASSERT_EQ(content[1]["top_logprobs"].size(), 2u);
  EXPECT_FLOAT_EQ(content[1]["top_logprobs"][0]["logprob"].get<float>(), -0.1f);
  EXPECT_FLOAT_EQ(content[1]["top_logprobs"][1]["logprob"].get<float>(), -1.1f);
  EXPECT_EQ(content[1]["top_logprobs"][0]["bytes"], Json::array({0xe2, 0x82}));
  EXPECT_EQ(content[1]["top_logprobs"][1]["token"], "b");
  EXPECT_EQ(content[1]["top_logprobs"][1]["bytes"], Json::array({'b'}));
  // Still JSON text with the partial character.
  EXPECT_FALSE(Json::parse(JsonText(body), nullptr, false).is_discarded());
}

TEST(OpenAiApiTest, CompletionAnswersHaveTheLegacyDicts) {
  absl::StatusOr<CompletionCall> call =
      ParseCompletionRequest({{"model", "m"}, {"prompt", "hi"}, {"logprobs", 2}});
  ASSERT_TRUE(call.ok());
  Json body = CompletionBody(*call, "x", 0, TwoTokens(), Chosen, Alone);
  const Json& top = body["choices"][0]["logprobs"]["top_logprobs"];
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].size(), 1u);  // "a" twice: the more likely kept
  EXPECT_FLOAT_EQ(top[0]["a"].get<float>(), -0.1f);
  EXPECT_FLOAT_EQ(top[1]["b"].get<float>(), -1.1f);

  // Without alternatives the field stays null.
  call = ParseCompletionRequest({{"model", "m"}, {"prompt", "hi"}, {"logprobs", 0}});
  ASSERT_TRUE(call.ok());
  std::vector<ChoiceResult> plain = TwoTokens();
  plain[0].top_logprobs.Clear();
  body = CompletionBody(*call, "x", 0, plain, Chosen, Alone);
  EXPECT_TRUE(body["choices"][0]["logprobs"]["top_logprobs"].is_null());
}

// Several prompts: n choices each, in prompt order, each choice its prompt's request with
// seed + its index among the n; usage counts each prompt once.
TEST(OpenAiApiTest, SeveralPromptsAreNChoicesEach) {
  absl::StatusOr<CompletionCall> call = ParseCompletionRequest(
      {{"model", "m"}, {"prompt", {"a", {7, 8}, "c"}}, {"n", 2}, {"seed", 10}});
  ASSERT_TRUE(call.ok()) << call.status();
  ASSERT_EQ(call->choices(), 6);
  const v1::GenerateRequest first = ChoiceRequest(*call, "cmpl", 0);
  EXPECT_EQ(first.prompt(), "a");
  EXPECT_EQ(first.sampling().seed(), 10u);
  EXPECT_EQ(first.request_id(), "cmpl-0");
  const v1::GenerateRequest fourth = ChoiceRequest(*call, "cmpl", 3);
  EXPECT_TRUE(fourth.prompt().empty());
  EXPECT_EQ(std::vector<int32_t>(fourth.prompt_tokens().begin(), fourth.prompt_tokens().end()),
            (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(fourth.sampling().seed(), 11u);
  EXPECT_EQ(ChoiceRequest(*call, "cmpl", 5).prompt(), "c");

  std::vector<ChoiceResult> choices(6);
  for (int i = 0; i < 6; ++i) {
    choices[i].usage.set_prompt_tokens(10 * (i / 2 + 1));
    choices[i].usage.set_completion_tokens(i + 1);
  }
  const v1::Usage usage = CallUsage(*call, choices);
  EXPECT_EQ(usage.prompt_tokens(), 10 + 20 + 30);
  EXPECT_EQ(usage.completion_tokens(), 21);

  // One prompt of token ids, and the shapes that are refused.
  call = ParseCompletionRequest({{"model", "m"}, {"prompt", {1, 2, 3}}});
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ(call->choices(), 1);
  EXPECT_EQ(ChoiceRequest(*call, "cmpl", 0).request_id(), "cmpl");
  EXPECT_EQ(ParseCompletionRequest({{"model", "m"}, {"prompt", {"a", 3}}}).status().message(),
            "prompt[1]: a prompt of several must be a string or a list of token ids");
  EXPECT_EQ(ParseCompletionRequest({{"model", "m"}, {"prompt", {{1, -2}}}}).status().message(),
            "prompt[0][1]: a token id must be a non-negative integer");
  Json many = {{"model", "m"}, {"prompt", Json::array()}, {"n", 2}};
  for (int i = 0; i < 33; ++i) many["prompt"].push_back("p");
  EXPECT_EQ(ParseCompletionRequest(many).status().message(),
            "prompt: 33 prompts x n 2 is 66 choices; at most 64");
}

}  // namespace
}  // namespace tessera::serve
