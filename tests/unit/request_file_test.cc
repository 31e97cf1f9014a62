// Offline request files: every field read, every malformed line refused with its line and
// field named.

#include "launcher/request_file.h"

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"

namespace tessera::launcher {
namespace {

TEST(RequestFileTest, ReadsEveryField) {
  absl::StatusOr<engine::GenerationRequest> request = ParseRequestLine(
      R"({"id": "q1", "prompt": "Hi", "max_tokens": 5, "temperature": 0.5, "top_k": 3,
          "top_p": 0.9, "seed": 7, "stop": "\n", "stop_token_ids": [2], "ignore_eos": true,
          "logprobs": true, "presence_penalty": 0.5, "frequency_penalty": -1.25})",
      3);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->id, "q1");
  EXPECT_EQ(request->prompt, "Hi");
  EXPECT_EQ(request->sampling.max_tokens, 5);
  EXPECT_FLOAT_EQ(request->sampling.temperature, 0.5f);
  EXPECT_EQ(request->sampling.top_k, 3);
  EXPECT_FLOAT_EQ(request->sampling.top_p, 0.9f);
  EXPECT_EQ(request->sampling.seed, 7u);
  EXPECT_EQ(request->sampling.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(request->sampling.stop_token_ids, std::vector<int32_t>{2});
  EXPECT_TRUE(request->sampling.ignore_eos);
  EXPECT_TRUE(request->sampling.logprobs);
  EXPECT_FLOAT_EQ(request->sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(request->sampling.frequency_penalty, -1.25f);

  absl::StatusOr<engine::GenerationRequest> tokens =
      ParseRequestLine(R"({"prompt_token_ids": [1, 2], "stop": ["a", "b"]})", 9);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->id, "9");  // named after its line
  EXPECT_EQ(tokens->prompt_tokens, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(tokens->sampling.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(tokens->sampling.seed.has_value());
}

TEST(RequestFileTest, NamesTheLineAndFieldOfBadInput) {
  struct Case {
    const char* text;
    const char* message;
  };
  for (const Case& c :
       {Case{"{not json", "line 4: request: not valid JSON"},
        Case{"[1, 2]", "line 4: request: not a JSON object"},
        Case{R"({"prompt": "x", "temprature": 1})", "line 4: temprature: unknown"},
        Case{R"({"prompt": 5})", "line 4: prompt: not a string"},
        Case{R"({"max_tokens": 5})", "line 4: prompt: missing"},
        Case{R"({"prompt": "x", "max_tokens": "many"})",
             "line 4: max_tokens: must be an integer in [-2147483648, "
             "2147483647], not a string"},
        // Numbers are not cast: 2^32 + 1 would wrap to 1, 1.5 truncate to 1.
        Case{R"({"prompt": "x", "max_tokens": 4294967297})",
             "line 4: max_tokens: must be an integer in [-2147483648, "
             "2147483647], not 4294967297"},
        Case{R"({"prompt": "x", "max_tokens": 1.5})", "line 4: max_tokens: must be an integer in"},
        Case{R"({"prompt": "x", "top_k": true})", "line 4: top_k: must be an integer"},
        Case{R"({"prompt": "x", "seed": -1})",
             "line 4: seed: must be an integer in [0, 18446744073709551615], not -1"},
        Case{R"({"prompt": "x", "temperature": "hot"})", "line 4: temperature: must be a number"},
        // A double past float's range once became an infinite temperature.
        Case{R"({"prompt": "x", "temperature": 1e300})",
             "line 4: temperature: must be a number of magnitude at most"},
        Case{R"({"prompt": "x", "top_p": -1e39})", "line 4: top_p: must be a number of magnitude"},
        Case{R"({"prompt": "x", "ignore_eos": 1})",
             "line 4: ignore_eos: must be true or false, not 1"},
        Case{R"({"prompt": "x", "stop_token_ids": [1, 3000000000]})",
             "line 4: stop_token_ids[1] must be an integer in"},
        Case{R"({"prompt": "x", "stop": ["a", 5]})", "line 4: stop[1] must be a string, not 5"},
        Case{R"({"prompt_token_ids": ["a"]})", "line 4: prompt_token_ids[0]"}}) {
    absl::StatusOr<engine::GenerationRequest> request = ParseRequestLine(c.text, 4);
    ASSERT_FALSE(request.ok()) << c.text;
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(request.status().message().find(c.message), std::string::npos)
        << request.status() << " for " << c.text;
  }
}

TEST(RequestFileTest, FormatsResultsAndErrors) {
  RequestResult result;
  result.id = "q1";
  result.text = "hi";
  result.token_ids = {5, 6};
  result.finish_reason = engine::FinishReason::kEos;
  result.usage.prompt_tokens = 3;
  result.usage.completion_tokens = 2;
  result.usage.cached_tokens = 1;
  nlohmann::json line = nlohmann::json::parse(FormatResultLine(result));
  EXPECT_EQ(line["id"], "q1");
  EXPECT_EQ(line["text"], "hi");
  EXPECT_EQ(line["token_ids"], (std::vector<int>{5, 6}));
  EXPECT_EQ(line["finish_reason"], "eos");
  EXPECT_EQ(line["usage"]["cached_tokens"], 1);
  EXPECT_FALSE(line.contains("logprobs"));

  RequestResult failed;
  failed.id = "7";
  failed.line = 7;
  failed.error = "line 7: prompt: missing";
  line = nlohmann::json::parse(FormatResultLine(failed));
  EXPECT_EQ(line["line"], 7);
  EXPECT_EQ(line["error"], "line 7: prompt: missing");
}

}  // namespace
}  // namespace tessera::launcher
