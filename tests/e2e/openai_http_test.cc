// The coordinator's OpenAI-style HTTP API (--http-listen), with real processes on loopback:
// a `tessera coordinator` and one worker group, called with an HTTP client as curl or the
// openai package would call it. Its answers are the gRPC API's (one request path), streamed
// as server-sent events, with errors in OpenAI's shape and status.
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/inference_calls.h"
#include "tests/e2e/serve_harness.h"

namespace tessera::e2e {
namespace {

using Json = nlohmann::json;

constexpr char kModel[] = "tessera-tiny-llama-random-v2";

class OpenAiHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/tessera-openai-http-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    harness_ = std::make_unique<ServeHarness>(
        TESSERA_BINARY,
        std::vector<std::string>(absl::StrSplit(TESSERA_MPIRUN_COMMAND, ' ', absl::SkipEmpty())),
        dir_);
    absl::StatusOr<std::unique_ptr<CoordinatorProcess>> coordinator =
        harness_->StartCoordinator({"--http-listen", "127.0.0.1:0", "--max-message-bytes", "1M"});
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    ASSERT_GT(coordinator_->http_port(), 0) << Tail(coordinator_->process().Log(), 10);
    absl::StatusOr<std::unique_ptr<WorkerJob>> workers =
        harness_->StartWorkers(coordinator_->grpc_port(), WorkerJobOptions());
    ASSERT_TRUE(workers.ok()) << workers.status();
    workers_ = *std::move(workers);
    absl::Status healthy =
        coordinator_->WaitForHealthyGroups(kModel, {{"v1", 1}}, absl::Seconds(120));
    ASSERT_TRUE(healthy.ok()) << healthy;
  }
  static void TearDownTestSuite() {
    workers_.reset();
    coordinator_.reset();
    harness_.reset();
    if (!::testing::UnitTest::GetInstance()->Failed()) std::filesystem::remove_all(dir_);
  }
  void SetUp() override { ASSERT_NE(coordinator_, nullptr) << "the processes did not start"; }
  void TearDown() override {
    if (HasFailure()) {
      std::fprintf(stderr, "--- coordinator:\n%s\n",
                   Tail(coordinator_->process().Log(), 30).c_str());
    }
  }

  static httplib::Client Client() {
    httplib::Client client("127.0.0.1", coordinator_->http_port());
    client.set_read_timeout(60, 0);
    return client;
  }

  // POST /v1/completions with `body`: status and parsed answer (null when not JSON).
  struct Answer {
    int status = 0;
    std::string text;
    Json json;
  };
  static Answer Post(const std::string& body, const std::string& path = "/v1/completions") {
    httplib::Client client = Client();
    httplib::Result result = client.Post(path, body, "application/json");
    Answer answer;
    if (!result) return answer;
    answer.status = result->status;
    answer.text = result->body;
    answer.json = Json::parse(result->body, nullptr, /*allow_exceptions=*/false);
    return answer;
  }

  // The data of each server-sent event of a streamed answer, in order.
  static std::vector<std::string> Events(const std::string& body) {
    std::vector<std::string> events;
    for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
      EXPECT_TRUE(absl::ConsumePrefix(&event, "data: ")) << event;
      events.emplace_back(event);
    }
    return events;
  }

  static inline std::string dir_;
  static inline std::unique_ptr<ServeHarness> harness_;
  static inline std::unique_ptr<CoordinatorProcess> coordinator_;
  static inline std::unique_ptr<WorkerJob> workers_;
};

TEST_F(OpenAiHttp, ModelsListsTheServedModel) {
  httplib::Client client = Client();
  httplib::Result result = client.Get("/v1/models");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
  Json models = Json::parse(result->body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u) << models.dump();
  EXPECT_EQ(models["data"][0]["id"], kModel);
  EXPECT_EQ(models["data"][0]["object"], "model");
}

// A greedy completion is the gRPC API's answer to the same request, text and usage.
TEST_F(OpenAiHttp, ACompletionIsTheGrpcAnswer) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_prompt("The capital of France is");
  request.mutable_sampling()->set_max_tokens(12);
  Unary grpc_answer = Generate(coordinator_->inference(), request);
  ASSERT_TRUE(grpc_answer.status.ok()) << Describe(grpc_answer.status);

  Answer answer = Post(Json({{"model", kModel},
                             {"prompt", "The capital of France is"},
                             {"max_tokens", 12},
                             {"temperature", 0},
                             {"some_future_field", true}})
                           .dump());
  ASSERT_EQ(answer.status, 200) << answer.text;
  EXPECT_EQ(answer.json["object"], "text_completion");
  EXPECT_TRUE(absl::StartsWith(answer.json["id"].get<std::string>(), "cmpl-"));
  EXPECT_EQ(answer.json["model"], kModel);
  ASSERT_EQ(answer.json["choices"].size(), 1u);
  EXPECT_EQ(answer.json["choices"][0]["text"], grpc_answer.response.text());
  const std::string finish = answer.json["choices"][0]["finish_reason"];
  EXPECT_EQ(finish,
            grpc_answer.response.finish_reason() == v1::FINISH_REASON_LENGTH ? "length" : "stop");
  const Json& usage = answer.json["usage"];
  EXPECT_EQ(usage["completion_tokens"], grpc_answer.response.usage().completion_tokens());
  EXPECT_EQ(usage["prompt_tokens"], grpc_answer.response.usage().prompt_tokens());
  EXPECT_EQ(usage["total_tokens"],
            usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
}

TEST_F(OpenAiHttp, AStreamIsTheSameTextInChunksEndingWithUsageAndDone) {
  const Json request = {{"model", kModel},  {"prompt", "Once upon a time"},
                        {"max_tokens", 10}, {"temperature", 0},
                        {"seed", 7},        {"stop", Json::array()}};
  Answer whole = Post(request.dump());
  ASSERT_EQ(whole.status, 200) << whole.text;
  Json streamed = request;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  Answer stream = Post(streamed.dump());
  ASSERT_EQ(stream.status, 200) << stream.text;
  std::vector<std::string> events = Events(stream.text);
  ASSERT_GE(events.size(), 3u) << stream.text;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text, finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    Json chunk = Json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_EQ(chunk["id"], Json::parse(events[0])["id"]);
    text += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null()) {
      EXPECT_TRUE(finish.empty()) << "two final chunks";
      finish = chunk["choices"][0]["finish_reason"];
    }
  }
  EXPECT_EQ(text, whole.json["choices"][0]["text"]);
  EXPECT_EQ(finish, whole.json["choices"][0]["finish_reason"]);
  Json usage = Json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  // The same counts; the stream's prompt came from the prefix cache the first request filled.
  EXPECT_EQ(usage["usage"]["prompt_tokens"], whole.json["usage"]["prompt_tokens"]);
  EXPECT_EQ(usage["usage"]["completion_tokens"], whole.json["usage"]["completion_tokens"]);
  EXPECT_GT(usage["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 0);
}

// The default model's chat template, rendered by hand: each turn as
// <|begin_of_text|>role\ncontent<|end_of_text|>\n, then the assistant's header.
constexpr char kRenderedChat[] =
    "<|begin_of_text|>system\nBe brief.<|end_of_text|>\n"
    "<|begin_of_text|>user\nName a colour.<|end_of_text|>\n<|begin_of_text|>assistant\n";

Json ChatMessages() {
  return Json::array({{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "Name a colour."}}});
}

// A chat completion is the model's answer to the prompt its chat template renders (encoded
// without the tokenizer's own special tokens), and the gRPC API's messages give the same.
TEST_F(OpenAiHttp, AChatCompletionAnswersTheRenderedConversation) {
  v1::TokenizeRequest tokenize;
  tokenize.set_model(kModel);
  tokenize.set_text(kRenderedChat);
  tokenize.set_add_special_tokens(false);
  v1::TokenizeResponse tokens;
  grpc::ClientContext context;
  ASSERT_TRUE(coordinator_->inference().Tokenize(&context, tokenize, &tokens).ok());
  v1::GenerateRequest by_tokens;
  by_tokens.set_model(kModel);
  by_tokens.mutable_prompt_tokens()->CopyFrom(tokens.tokens());
  by_tokens.mutable_sampling()->set_max_tokens(12);
  Unary expected = Generate(coordinator_->inference(), by_tokens);
  ASSERT_TRUE(expected.status.ok()) << Describe(expected.status);

  v1::GenerateRequest by_messages;
  by_messages.set_model(kModel);
  for (const Json& turn : ChatMessages()) {
    v1::ChatMessage& message = *by_messages.add_messages();
    message.set_role(turn["role"]);
    message.set_content(turn["content"]);
  }
  by_messages.mutable_sampling()->set_max_tokens(12);
  Unary grpc_chat = Generate(coordinator_->inference(), by_messages);
  ASSERT_TRUE(grpc_chat.status.ok()) << Describe(grpc_chat.status);
  EXPECT_EQ(grpc_chat.response.text(), expected.response.text());
  EXPECT_EQ(grpc_chat.response.usage().prompt_tokens(), tokens.tokens_size());

  Answer answer = Post(Json({{"model", kModel},
                             {"messages", ChatMessages()},
                             {"max_completion_tokens", 12},
                             {"temperature", 0}})
                           .dump(),
                       "/v1/chat/completions");
  ASSERT_EQ(answer.status, 200) << answer.text;
  EXPECT_EQ(answer.json["object"], "chat.completion");
  EXPECT_TRUE(absl::StartsWith(answer.json["id"].get<std::string>(), "chatcmpl-"));
  ASSERT_EQ(answer.json["choices"].size(), 1u);
  const Json& message = answer.json["choices"][0]["message"];
  EXPECT_EQ(message["role"], "assistant");
  EXPECT_EQ(message["content"], expected.response.text());
  EXPECT_EQ(answer.json["usage"]["prompt_tokens"], tokens.tokens_size());
  EXPECT_EQ(answer.json["usage"]["completion_tokens"],
            expected.response.usage().completion_tokens());
}

TEST_F(OpenAiHttp, AStreamedChatNamesTheRoleFirstAndAddsUpToTheWholeAnswer) {
  const Json request = {
      {"model", kModel}, {"messages", ChatMessages()}, {"max_tokens", 10}, {"temperature", 0}};
  Answer whole = Post(request.dump(), "/v1/chat/completions");
  ASSERT_EQ(whole.status, 200) << whole.text;
  Json streamed = request;
  streamed["stream"] = true;
  Answer stream = Post(streamed.dump(), "/v1/chat/completions");
  ASSERT_EQ(stream.status, 200) << stream.text;
  std::vector<std::string> events = Events(stream.text);
  ASSERT_GE(events.size(), 2u) << stream.text;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string content, finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    Json chunk = Json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    const Json& delta = chunk["choices"][0]["delta"];
    EXPECT_EQ(delta.contains("role"), i == 0) << events[i];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null())
      finish = chunk["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(content, whole.json["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, whole.json["choices"][0]["finish_reason"]);
}

// n choices are requests of their own: seeded, choice i draws with seed + i, so choice 0 is
// the n = 1 answer; usage counts the prompt once and every choice's completion.
TEST_F(OpenAiHttp, NChoicesEachDrawTheirOwnAndShareThePrompt) {
  const Json one = {{"model", kModel},    {"prompt", "Tell me"}, {"max_tokens", 8},
                    {"temperature", 1.0}, {"seed", 11},          {"logprobs", 0}};
  Answer single = Post(one.dump());
  ASSERT_EQ(single.status, 200) << single.text;
  Json three = one;
  three["n"] = 3;
  Answer answer = Post(three.dump());
  ASSERT_EQ(answer.status, 200) << answer.text;
  const Json& choices = answer.json["choices"];
  ASSERT_EQ(choices.size(), 3u);
  int completion = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(choices[i]["index"], i);
    const Json& logprobs = choices[i]["logprobs"];
    ASSERT_TRUE(logprobs.is_object()) << answer.text;
    const size_t count = logprobs["token_logprobs"].size();
    EXPECT_EQ(logprobs["tokens"].size(), count);
    EXPECT_EQ(logprobs["text_offset"].size(), count);
    for (const Json& value : logprobs["token_logprobs"]) EXPECT_LE(value.get<double>(), 0.0);
    completion += static_cast<int>(count);
  }
  EXPECT_EQ(choices[0]["text"], single.json["choices"][0]["text"]);
  EXPECT_EQ(choices[0]["logprobs"], single.json["choices"][0]["logprobs"]);
  EXPECT_EQ(answer.json["usage"]["completion_tokens"], completion);
  EXPECT_EQ(answer.json["usage"]["prompt_tokens"], single.json["usage"]["prompt_tokens"]);

  // Streamed, the chunks of every choice arrive, each choice ending once.
  three["stream"] = true;
  Answer stream = Post(three.dump());
  ASSERT_EQ(stream.status, 200) << stream.text;
  std::vector<std::string> texts(3);
  std::vector<int> finishes(3, 0);
  for (const std::string& event : Events(stream.text)) {
    if (event == "[DONE]") continue;
    Json chunk = Json::parse(event);
    const int index = chunk["choices"][0]["index"];
    texts[index] += chunk["choices"][0]["text"].get<std::string>();
    finishes[index] += chunk["choices"][0]["finish_reason"].is_null() ? 0 : 1;
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(texts[i], choices[i]["text"]) << i;
    EXPECT_EQ(finishes[i], 1) << i;
  }
}

// Several prompts in one call: choice i answers prompt i, as the same prompt alone does.
TEST_F(OpenAiHttp, SeveralPromptsAreAnsweredInOrder) {
  const std::vector<std::string> prompts = {"Hello", "Goodbye", "Once upon"};
  Answer answer = Post(
      Json({{"model", kModel}, {"prompt", prompts}, {"max_tokens", 6}, {"temperature", 0}}).dump());
  ASSERT_EQ(answer.status, 200) << answer.text;
  ASSERT_EQ(answer.json["choices"].size(), prompts.size()) << answer.text;
  int prompt_tokens = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Answer alone = Post(
        Json({{"model", kModel}, {"prompt", prompts[i]}, {"max_tokens", 6}, {"temperature", 0}})
            .dump());
    ASSERT_EQ(alone.status, 200) << alone.text;
    EXPECT_EQ(answer.json["choices"][i]["index"], i);
    EXPECT_EQ(answer.json["choices"][i]["text"], alone.json["choices"][0]["text"]) << i;
    prompt_tokens += alone.json["usage"]["prompt_tokens"].get<int>();
  }
  EXPECT_EQ(answer.json["usage"]["prompt_tokens"], prompt_tokens);
}

// Chat logprobs: one entry per completion token, its bytes those of the token's text, with
// the values the gRPC API reports.
TEST_F(OpenAiHttp, ChatLogprobsAreTheEnginesPerToken) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  v1::ChatMessage& turn = *request.add_messages();
  turn.set_role("user");
  turn.set_content("Count to three.");
  request.mutable_sampling()->set_max_tokens(6);
  request.mutable_sampling()->set_logprobs(true);
  Unary grpc_answer = Generate(coordinator_->inference(), request);
  ASSERT_TRUE(grpc_answer.status.ok()) << Describe(grpc_answer.status);

  Answer answer = Post(Json({{"model", kModel},
                             {"messages", {{{"role", "user"}, {"content", "Count to three."}}}},
                             {"max_tokens", 6},
                             {"temperature", 0},
                             {"logprobs", true}})
                           .dump(),
                       "/v1/chat/completions");
  ASSERT_EQ(answer.status, 200) << answer.text;
  const Json& content = answer.json["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), static_cast<size_t>(grpc_answer.response.logprobs_size()))
      << answer.text;
  std::string joined;
  for (size_t i = 0; i < content.size(); ++i) {
    EXPECT_FLOAT_EQ(content[i]["logprob"].get<float>(), grpc_answer.response.logprobs(i));
    for (const Json& byte : content[i]["bytes"]) joined += static_cast<char>(byte.get<int>());
    EXPECT_TRUE(content[i]["top_logprobs"].empty());
  }
  EXPECT_EQ(joined, grpc_answer.response.text());
}

// Top log-probabilities: chat lists {token, logprob, bytes} alternatives, most likely first,
// with the values the gRPC API reports (whole and streamed alike); completions give the legacy
// {text: logprob} objects.
TEST_F(OpenAiHttp, TopLogprobsAreTheEnginesAlternatives) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  v1::ChatMessage& turn = *request.add_messages();
  turn.set_role("user");
  turn.set_content("Count to three.");
  request.mutable_sampling()->set_max_tokens(6);
  request.mutable_sampling()->set_logprobs(true);
  request.mutable_sampling()->set_top_logprobs(3);
  Unary grpc_answer = Generate(coordinator_->inference(), request);
  ASSERT_TRUE(grpc_answer.status.ok()) << Describe(grpc_answer.status);
  ASSERT_EQ(grpc_answer.response.top_logprobs_size(), grpc_answer.response.tokens_size());

  const Json body = {
      {"model", kModel},  {"messages", {{{"role", "user"}, {"content", "Count to three."}}}},
      {"max_tokens", 6},  {"temperature", 0},
      {"logprobs", true}, {"top_logprobs", 3}};
  Answer answer = Post(body.dump(), "/v1/chat/completions");
  ASSERT_EQ(answer.status, 200) << answer.text;
  const Json& content = answer.json["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), static_cast<size_t>(grpc_answer.response.tokens_size()));
  for (size_t i = 0; i < content.size(); ++i) {
    const v1::TopLogprobs& expected = grpc_answer.response.top_logprobs(static_cast<int>(i));
    const Json& top = content[i]["top_logprobs"];
    ASSERT_EQ(top.size(), 3u) << answer.text;
    for (int j = 0; j < 3; ++j) {
      EXPECT_FLOAT_EQ(top[j]["logprob"].get<float>(), expected.logprobs(j));
      EXPECT_TRUE(top[j]["token"].is_string());
      EXPECT_TRUE(top[j]["bytes"].is_array());
    }
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(expected.tokens(0), grpc_answer.response.tokens(static_cast<int>(i)));
    EXPECT_FLOAT_EQ(top[0]["logprob"].get<float>(), content[i]["logprob"].get<float>());
  }
  Json streamed_body = body;
  streamed_body["stream"] = true;
  Answer streamed = Post(streamed_body.dump(), "/v1/chat/completions");
  ASSERT_EQ(streamed.status, 200) << streamed.text;
  Json streamed_content = Json::array();
  for (const std::string& event : Events(streamed.text)) {
    if (event == "[DONE]") continue;
    const Json chunk = Json::parse(event);
    const Json& logprobs = chunk["choices"][0]["logprobs"];
    if (logprobs.is_object()) {
      for (const Json& entry : logprobs["content"]) streamed_content.push_back(entry);
    }
  }
  EXPECT_EQ(streamed_content, content);

  Answer legacy = Post(Json({{"model", kModel},
                             {"prompt", "Once upon a time"},
                             {"max_tokens", 5},
                             {"temperature", 0},
                             {"logprobs", 2}})
                           .dump());
  ASSERT_EQ(legacy.status, 200) << legacy.text;
  const Json& logprobs = legacy.json["choices"][0]["logprobs"];
  ASSERT_EQ(logprobs["top_logprobs"].size(), logprobs["tokens"].size()) << legacy.text;
  for (size_t i = 0; i < logprobs["top_logprobs"].size(); ++i) {
    const Json& top = logprobs["top_logprobs"][i];
    ASSERT_TRUE(top.is_object()) << legacy.text;
    EXPECT_GE(top.size(), 1u);
    EXPECT_LE(top.size(), 2u);
    double best = -1e30;
    for (const auto& [text, value] : top.items()) best = std::max(best, value.get<double>());
    EXPECT_FLOAT_EQ(static_cast<float>(best), logprobs["token_logprobs"][i].get<float>());
  }
}

// Presence and frequency penalties reach the sampler: a greedy answer changes, the same as
// over gRPC.
TEST_F(OpenAiHttp, PenaltiesChangeTheGreedyAnswerAsOverGrpc) {
  v1::GenerateRequest request;
  request.set_model(kModel);
  request.set_prompt("The list:");
  request.mutable_sampling()->set_max_tokens(24);
  request.mutable_sampling()->set_presence_penalty(1.5f);
  request.mutable_sampling()->set_frequency_penalty(1.0f);
  Unary penalized = Generate(coordinator_->inference(), request);
  ASSERT_TRUE(penalized.status.ok()) << Describe(penalized.status);
  request.mutable_sampling()->clear_presence_penalty();
  request.mutable_sampling()->clear_frequency_penalty();
  Unary plain = Generate(coordinator_->inference(), request);
  ASSERT_TRUE(plain.status.ok()) << Describe(plain.status);
  EXPECT_NE(penalized.response.text(), plain.response.text());

  Answer answer = Post(Json({{"model", kModel},
                             {"prompt", "The list:"},
                             {"max_tokens", 24},
                             {"temperature", 0},
                             {"presence_penalty", 1.5},
                             {"frequency_penalty", 1.0}})
                           .dump());
  ASSERT_EQ(answer.status, 200) << answer.text;
  EXPECT_EQ(answer.json["choices"][0]["text"], penalized.response.text()) << answer.text;
}

TEST_F(OpenAiHttp, ChatErrorsNameTheField) {
  struct Case {
    Json body;
    std::string param;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{{"model", kModel}}, "messages", "required"},
           {{{"model", kModel}, {"messages", Json::array()}}, "messages", "non-empty"},
           {{{"model", kModel}, {"messages", {{{"content", "hi"}}}}},
            "messages[0].role",
            "required"},
           {{{"model", kModel},
             {"messages",
              {{{"role", "user"},
                {"content", {{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}}}}}}},
            "messages[0].content[0].type",
            "'image_url' parts are not supported"},
           {{{"model", kModel},
             {"messages", {{{"role", "user"}, {"content", "hi"}}}},
             {"logprobs", true},
             {"top_logprobs", 21}},
            "top_logprobs",
            "at most 20"},
           {{{"model", kModel},
             {"messages", {{{"role", "user"}, {"content", "hi"}}}},
             {"top_logprobs", 2}},
            "top_logprobs",
            "needs logprobs: true"},
           {{{"model", kModel},
             {"messages", {{{"role", "user"}, {"content", "hi"}}}},
             {"presence_penalty", 3}},
            "sampling.presence_penalty",
            "must be in [-2, 2], not 3"},
           {{{"model", kModel},
             {"messages", {{{"role", "user"}, {"content", "hi"}}}},
             {"frequency_penalty", "much"}},
            "frequency_penalty",
            "must be a number"}}) {
    Answer answer = Post(c.body.dump(), "/v1/chat/completions");
    EXPECT_EQ(answer.status, 400) << c.body.dump() << ": " << answer.text;
    ASSERT_TRUE(answer.json.is_object()) << answer.text;
    EXPECT_EQ(answer.json["error"]["param"], c.param) << answer.text;
    EXPECT_TRUE(absl::StrContains(answer.json["error"]["message"].get<std::string>(), c.message))
        << answer.text;
  }
}

// A client that hangs up mid-stream cancels its request: the group frees its KV blocks.
TEST_F(OpenAiHttp, AClientThatHangsUpMidStreamFreesItsBlocks) {
  httplib::Client client = Client();
  httplib::Request request;
  request.method = "POST";
  request.path = "/v1/chat/completions";
  request.set_header("Content-Type", "application/json");
  request.body = Json({{"model", kModel},
                       {"messages", {{{"role", "user"}, {"content", "Write a long story."}}}},
                       {"max_tokens", 3000},
                       {"temperature", 1.0},
                       {"seed", 5},
                       {"stream", true}})
                     .dump();
  int events = 0;
  request.content_receiver = [&events](const char* data, size_t length, uint64_t, uint64_t) {
    events += static_cast<int>(std::count(data, data + length, '\n')) / 2;
    return events < 3;  // hang up after the third event
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  client.send(request, response, error);
  EXPECT_GE(events, 3);

  // The coordinator logs the request as cancelled, and the group's heartbeats show no block
  // in use any more.
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  bool cancelled = false;
  double used = -1;
  while (absl::Now() < deadline) {
    for (const Json& done : tessera::e2e::Events(coordinator_->process().Log(), "request_done")) {
      if (done.value("code", "") == "CANCELLED" &&
          absl::StartsWith(done.value("request_id", ""), "chatcmpl-")) {
        cancelled = true;
      }
    }
    absl::StatusOr<MetricsSnapshot> metrics = coordinator_->Metrics();
    if (metrics.ok()) used = metrics->Sum("tessera_group_kv_blocks", {{"state", "used"}});
    if (cancelled && used == 0) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(cancelled) << Tail(coordinator_->process().Log(), 10);
  EXPECT_EQ(used, 0);
}

// Plaintext is for loopback: the API on another address without a certificate is warned about.
TEST_F(OpenAiHttp, APlaintextApiOffLoopbackIsWarnedAbout) {
  absl::StatusOr<std::unique_ptr<CoordinatorProcess>> open =
      harness_->StartCoordinator({"--http-listen", "0.0.0.0:0"});
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_TRUE(absl::StrContains((*open)->process().Log(),
                                "warning: serving the HTTP API in plaintext on 0.0.0.0:0"))
      << (*open)->process().Log();
  EXPECT_FALSE(absl::StrContains(coordinator_->process().Log(), "in plaintext"));
}

TEST_F(OpenAiHttp, ErrorsComeInOpenAisShapeWithTheirStatus) {
  struct Case {
    std::string body;
    int status;
    std::string param;    // empty: null
    std::string message;  // a part of it
  };
  const std::string big(1200 << 10, 'x');
  for (const Case& c : std::vector<Case>{
           {"{not json", 400, "body", "not JSON"},
           {Json({{"prompt", "hi"}}).dump(), 400, "model", "required"},
           {Json({{"model", kModel}, {"prompt", "hi"}, {"top_p", 1.5}}).dump(), 400,
            "sampling.top_p", "1.5"},
           {Json({{"model", kModel}, {"prompt", "hi"}, {"max_tokens", "ten"}}).dump(), 400,
            "max_tokens", "integer"},
           {Json({{"model", kModel}, {"prompt", "hi"}, {"n", 17}}).dump(), 400, "n", "at most 16"},
           {Json({{"model", kModel}, {"prompt", "hi"}, {"logprobs", 6}}).dump(), 400, "logprobs",
            "at most 5"},
           {Json({{"model", kModel}, {"prompt", "hi"}, {"frequency_penalty", -2.5}}).dump(), 400,
            "sampling.frequency_penalty", "must be in [-2, 2], not -2.5"},
           {Json({{"model", "no-such-model"}, {"prompt", "hi"}}).dump(), 404, "", "no-such-model"},
           {Json({{"model", "no-such-model"}, {"prompt", "hi"}, {"stream", true}}).dump(), 404, "",
            "no-such-model"},
           {Json({{"model", kModel}, {"prompt", big}}).dump(), 413, "", "too large"}}) {
    Answer answer = Post(c.body);
    EXPECT_EQ(answer.status, c.status) << c.body.substr(0, 80) << ": " << answer.text;
    ASSERT_TRUE(answer.json.is_object()) << answer.text.substr(0, 200);
    const Json& error = answer.json["error"];
    EXPECT_TRUE(absl::StrContains(error["message"].get<std::string>(), c.message)) << answer.text;
    EXPECT_TRUE(error["type"].is_string());
    if (c.param.empty()) {
      EXPECT_TRUE(error["param"].is_null()) << answer.text;
    } else {
      EXPECT_EQ(error["param"], c.param) << answer.text;
    }
  }
  // The group serves on.
  EXPECT_EQ(Post(Json({{"model", kModel}, {"prompt", "after"}, {"max_tokens", 2}}).dump()).status,
            200);
}

}  // namespace
}  // namespace tessera::e2e
