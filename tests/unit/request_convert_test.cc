// The wire's sampling parameters: checks that name the field, the conversion to the engine's
// options, and folding stream messages into a unary answer.

#include "runtime/serve/request_convert.h"

#include <gtest/gtest.h>

namespace tessera::serve {
namespace {

v1::GenerateRequest Request() {
  v1::GenerateRequest request;
  request.set_model("m");
  request.set_prompt("hi");
  return request;
}

TEST(RequestConvertTest, PenaltiesAndTopLogprobsAreCheckedNamingTheField) {
  struct Case {
    void (*set)(v1::SamplingParams&);
    const char* message;
  };
  for (const Case& c :
       std::vector<Case>{{[](v1::SamplingParams& s) { s.set_presence_penalty(3.0f); },
                          "sampling.presence_penalty: must be in [-2, 2], not 3"},
                         {[](v1::SamplingParams& s) { s.set_frequency_penalty(-2.5f); },
                          "sampling.frequency_penalty: must be in [-2, 2], not -2.5"},
                         {[](v1::SamplingParams& s) { s.set_top_logprobs(21); },
                          "sampling.top_logprobs: must be in [0, 20], not 21"},
                         {[](v1::SamplingParams& s) { s.set_top_logprobs(-1); },
                          "sampling.top_logprobs: must be in [0, 20], not -1"},
                         {[](v1::SamplingParams& s) { s.set_top_p(1.5f); },
                          "sampling.top_p: must be in (0, 1], not 1.5"},
                         {[](v1::SamplingParams& s) { s.set_temperature(-1.0f); },
                          "sampling.temperature: must be a finite number >= 0, not -1"}}) {
    v1::GenerateRequest request = Request();
    c.set(*request.mutable_sampling());
    absl::Status status = ValidateGenerateRequest(request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(status.message(), c.message);
  }
  v1::GenerateRequest fine = Request();
  fine.mutable_sampling()->set_presence_penalty(-2.0f);
  fine.mutable_sampling()->set_frequency_penalty(2.0f);
  fine.mutable_sampling()->set_top_logprobs(20);
  EXPECT_TRUE(ValidateGenerateRequest(fine).ok());

  engine::GenerationRequest converted = ToEngineRequest(fine);
  EXPECT_EQ(converted.sampling.presence_penalty, -2.0f);
  EXPECT_EQ(converted.sampling.frequency_penalty, 2.0f);
  EXPECT_EQ(converted.sampling.top_logprobs, 20);
  EXPECT_EQ(converted.sampling.top_p, 1.0f);  // unset: the default
}

TEST(RequestConvertTest, TopLogprobsFoldIntoTheUnaryAnswer) {
  v1::GenerateResponse response;
  for (int m = 0; m < 2; ++m) {
    v1::GenerateStreamResponse message;
    message.add_tokens(10 + m);
    message.add_logprobs(-0.5f * m);
    v1::TopLogprobs& top = *message.add_top_logprobs();
    top.add_tokens(10 + m);
    top.add_logprobs(-0.5f * m);
    message.set_final(m == 1);
    AppendToResponse(message, &response);
  }
  ASSERT_EQ(response.top_logprobs_size(), 2);
  EXPECT_EQ(response.top_logprobs(1).tokens(0), 11);
  EXPECT_EQ(response.top_logprobs(1).logprobs(0), -0.5f);
}

}  // namespace
}  // namespace tessera::serve
