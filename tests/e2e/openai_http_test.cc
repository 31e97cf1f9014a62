// The coordinator's OpenAI-style HTTP API (--http-listen), with real processes on loopback:
// a `tessera coordinator` and one worker group, called with an HTTP client as curl or the
// openai package would call it. Its answers are the gRPC API's (one request path), streamed
// as server-sent events, with errors in OpenAI's shape and status.
// TESSERA_BINARY and TESSERA_MPIRUN_COMMAND come from CMake.

#include <gtest/gtest.h>
#include <stdlib.h>

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
  static Answer Post(const std::string& body) {
    httplib::Client client = Client();
    httplib::Result result = client.Post("/v1/completions", body, "application/json");
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
           {Json({{"model", kModel}, {"prompt", "hi"}, {"n", 2}}).dump(), 400, "n", "only 1"},
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
