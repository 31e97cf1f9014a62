#include "launcher/soak_mix.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "launcher/soak_draw.h"
#include "launcher/soak_http_mix.h"
#include "runtime/serve/serve_metrics.h"

namespace tessera::launcher {
namespace {

// Shares of the kinds over gRPC, in SoakKind order (percent).
constexpr int kKindWeights[kSoakKinds] = {20, 20, 8, 12, 10, 20, 10, 0};

// A request the coordinator takes and a group answers with exactly max_tokens tokens.
v1::GenerateRequest ValidRequest(std::mt19937_64& random, const SoakTarget& target,
                                 int32_t min_tokens, int32_t max_tokens) {
  v1::GenerateRequest request;
  DrawPrompt(random, target.model, target.vocab, request);
  v1::SamplingParams& sampling = *request.mutable_sampling();
  sampling.set_max_tokens(Draw(random, min_tokens, max_tokens));
  sampling.set_ignore_eos(true);
  if (Chance(random, 0.5)) {
    sampling.set_temperature(0.8f);
    sampling.set_top_p(0.9f);
    sampling.set_top_k(Draw(random, 0, 40));
  }
  sampling.set_logprobs(Chance(random, 0.25));
  return request;
}

// Empty when `response` is the complete answer to `request`; else what is wrong.
std::string CheckAnswer(const v1::GenerateRequest& request, const v1::GenerateResponse& response) {
  const int wanted = request.sampling().max_tokens();
  if (response.tokens_size() != wanted || response.finish_reason() != v1::FINISH_REASON_LENGTH) {
    return absl::StrCat(response.tokens_size(), " tokens, finish reason ",
                        v1::FinishReason_Name(response.finish_reason()), "; asked for ", wanted,
                        " (ignore_eos)");
  }
  if (request.sampling().logprobs() && response.logprobs_size() != wanted) {
    return absl::StrCat(response.logprobs_size(), " logprobs for ", wanted, " tokens");
  }
  return "";
}

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

// Records `status` in `outcome`; DEADLINE_EXCEEDED at the generous deadline is a lost answer.
void Record(const grpc::Status& status, bool generous_deadline, SoakOutcome& outcome) {
  outcome.code = status.error_code();
  outcome.message = status.error_message();
  if (generous_deadline && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    outcome.code = kOutcomeLost;
  }
}

void Unary(v1::Inference::Stub& stub, const v1::GenerateRequest& request, absl::Duration timeout,
           bool generous_deadline, SoakOutcome& outcome) {
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  v1::GenerateResponse response;
  grpc::Status status = stub.Generate(&context, request, &response);
  Record(status, generous_deadline, outcome);
  outcome.group = response.placement().group();
  if (status.ok()) {
    if (std::string wrong = CheckAnswer(request, response); !wrong.empty()) {
      outcome.code = kOutcomeBadAnswer;
      outcome.message = wrong;
    }
  }
}

// How a stream's client ends it early.
struct StreamCancel {
  int after_messages = -1;     // TryCancel once this many messages came; < 0: never
  absl::Duration before_read;  // with after_messages == 0: TryCancel this long after the call
};

void Stream(v1::Inference::Stub& stub, const v1::GenerateRequest& request, absl::Duration timeout,
            bool generous_deadline, StreamCancel cancel, SoakOutcome& outcome) {
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
      stub.GenerateStream(&context, request);
  if (cancel.after_messages == 0) {
    absl::SleepFor(cancel.before_read);
    context.TryCancel();
  }
  v1::GenerateResponse folded;
  int messages = 0, finals = 0;
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    ++messages;
    finals += message.final() ? 1 : 0;
    folded.mutable_tokens()->Add(message.tokens().begin(), message.tokens().end());
    folded.mutable_logprobs()->Add(message.logprobs().begin(), message.logprobs().end());
    if (message.final()) folded.set_finish_reason(message.finish_reason());
    if (message.has_placement()) outcome.group = message.placement().group();
    if (messages == cancel.after_messages) context.TryCancel();
  }
  grpc::Status status = reader->Finish();
  Record(status, generous_deadline, outcome);
  if (!status.ok()) return;
  std::string wrong = finals == 1 ? CheckAnswer(request, folded)
                                  : absl::StrCat(finals, " final messages in ", messages);
  if (!wrong.empty()) {
    outcome.code = kOutcomeBadAnswer;
    outcome.message = wrong;
  }
}

// One request the coordinator or a worker refuses, and the code it refuses it with.
struct InvalidVariant {
  const char* name;
  grpc::StatusCode code;
  bool reaches_group;  // refused by the worker's engine, not the coordinator
};

constexpr InvalidVariant kInvalidVariants[] = {
    {"unknown model", grpc::StatusCode::NOT_FOUND, false},
    {"unknown version", grpc::StatusCode::NOT_FOUND, false},
    {"no model", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"empty prompt", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"prompt and prompt_tokens", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"negative token id", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"token id past the vocabulary", grpc::StatusCode::INVALID_ARGUMENT, true},
    {"top_p 1.5", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"temperature -1", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"temperature NaN", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"top_k -3", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"max_tokens -5", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"max_tokens past the context", grpc::StatusCode::INVALID_ARGUMENT, true},
    {"too many stop strings", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"empty stop string", grpc::StatusCode::INVALID_ARGUMENT, false},
    {"model name too long", grpc::StatusCode::INVALID_ARGUMENT, false},
};
constexpr int kInvalidVariantCount = sizeof(kInvalidVariants) / sizeof(kInvalidVariants[0]);

// Makes `request` (valid) invalid in the way of kInvalidVariants[variant].
void MakeInvalid(int variant, std::mt19937_64& random, const SoakTarget& target,
                 v1::GenerateRequest& request) {
  v1::SamplingParams& sampling = *request.mutable_sampling();
  switch (variant) {
    case 0:
      request.set_model(absl::StrCat("no-such-model-", Draw(random, 0, 999)));
      break;
    case 1:
      request.set_version(absl::StrCat("no-such-version-", Draw(random, 0, 999)));
      break;
    case 2:
      request.clear_model();
      break;
    case 3:
      request.clear_prompt();
      request.clear_prompt_tokens();
      break;
    case 4:
      request.set_prompt("both");
      request.add_prompt_tokens(1);
      break;
    case 5:
      request.clear_prompt();
      request.add_prompt_tokens(-Draw(random, 1, 1000));
      break;
    case 6:
      request.clear_prompt();
      request.add_prompt_tokens(target.vocab + Draw(random, 1 << 20, 1 << 30));
      break;
    case 7:
      sampling.set_top_p(1.5f);
      break;
    case 8:
      sampling.set_temperature(-1.0f);
      break;
    case 9:
      sampling.set_temperature(std::numeric_limits<float>::quiet_NaN());
      break;
    case 10:
      sampling.set_top_k(-3);
      break;
    case 11:
      sampling.set_max_tokens(-5);
      break;
    case 12:
      sampling.set_max_tokens(static_cast<int32_t>(std::min<int64_t>(
          target.max_tokens + Draw(random, 1, 100000), std::numeric_limits<int32_t>::max())));
      break;
    case 13:
      for (int i = 0; i <= target.max_stop_strings; ++i) sampling.add_stop(absl::StrCat("s", i));
      break;
    case 14:
      sampling.add_stop("");
      break;
    default:
      request.set_model(std::string(target.max_name_bytes + Draw(random, 1, 64), 'm'));
      break;
  }
}

void RunUnaryOrStream(v1::Inference::Stub& stub, const SoakTarget& target, bool stream,
                      const v1::GenerateRequest& request, SoakOutcome& outcome) {
  if (stream) {
    Stream(stub, request, target.answer_timeout, /*generous_deadline=*/true, {}, outcome);
  } else {
    Unary(stub, request, target.answer_timeout, /*generous_deadline=*/true, outcome);
  }
}

void RunBatch(v1::Inference::Stub& stub, const SoakTarget& target, std::mt19937_64& random,
              SoakOutcome& outcome) {
  v1::GenerateBatchRequest batch;
  const int n = Draw(random, 2, 6);
  int invalid = -1;
  if (Chance(random, 0.3)) invalid = Draw(random, 0, n - 1);
  for (int i = 0; i < n; ++i) {
    *batch.add_requests() = ValidRequest(random, target, 1, 8);
    if (i == invalid) batch.mutable_requests(i)->mutable_sampling()->set_top_p(2.0f);
  }
  outcome.variant = invalid >= 0 ? "one invalid" : "all valid";
  grpc::ClientContext context;
  SetDeadline(context, target.answer_timeout);
  v1::GenerateBatchResponse response;
  grpc::Status status = stub.GenerateBatch(&context, batch, &response);
  Record(status, /*generous_deadline=*/true, outcome);
  if (!status.ok()) return;
  if (response.results_size() != n) {
    outcome.code = kOutcomeBadAnswer;
    outcome.message = absl::StrCat(response.results_size(), " results for ", n, " requests");
    return;
  }
  for (int i = 0; i < n; ++i) {
    const v1::BatchResult& result = response.results(i);
    if (outcome.group.empty()) outcome.group = result.response().placement().group();
    const int wanted = i == invalid ? grpc::StatusCode::INVALID_ARGUMENT : grpc::StatusCode::OK;
    std::string wrong;
    if (result.error_code() == grpc::StatusCode::UNAVAILABLE && i != invalid) {
      // A group failed under it: the batch as a whole answers UNAVAILABLE.
      outcome.code = grpc::StatusCode::UNAVAILABLE;
      outcome.message = result.error_message();
      continue;
    }
    if (result.error_code() != wanted) {
      wrong = absl::StrCat("result ", i, ": code ", result.error_code(), " (",
                           result.error_message(), "); expected ", wanted);
    } else if (i != invalid) {
      wrong = CheckAnswer(batch.requests(i), result.response());
      if (!wrong.empty()) wrong = absl::StrCat("result ", i, ": ", wrong);
    }
    if (!wrong.empty()) {
      outcome.code = kOutcomeBadAnswer;
      outcome.message = wrong;
      return;
    }
  }
}

void RunOversized(v1::Inference::Stub& stub, const SoakTarget& target, std::mt19937_64& random,
                  SoakOutcome& outcome) {
  const int variant = Draw(random, 0, 3);
  // Between 1.1 and 4 times the limit.
  const int64_t bytes =
      target.max_message_bytes + Draw(random, static_cast<int32_t>(target.max_message_bytes / 10),
                                      static_cast<int32_t>(3 * target.max_message_bytes));
  outcome.expected = {grpc::StatusCode::RESOURCE_EXHAUSTED};
  v1::GenerateRequest request = ValidRequest(random, target, 1, 8);
  if (variant <= 1) {
    outcome.variant = variant == 0 ? "Generate over the limit" : "GenerateStream over the limit";
    request.clear_prompt_tokens();
    request.set_prompt(RandomText(random, bytes));
    RunUnaryOrStream(stub, target, variant == 1, request, outcome);
    return;
  }
  v1::GenerateBatchRequest batch;
  if (variant == 2) {
    outcome.variant = "GenerateBatch over the limit";
    const int n = Draw(random, 2, 4);
    for (int i = 0; i < n; ++i) {
      *batch.add_requests() = request;
      batch.mutable_requests(i)->clear_prompt_tokens();
      batch.mutable_requests(i)->set_prompt(RandomText(random, bytes / n + 1));
    }
  } else {
    outcome.variant = "GenerateBatch of too many requests";
    outcome.expected = {grpc::StatusCode::INVALID_ARGUMENT};
    const int n = target.max_batch_requests + Draw(random, 1, target.max_batch_requests);
    for (int i = 0; i < n; ++i) *batch.add_requests() = request;
  }
  grpc::ClientContext context;
  SetDeadline(context, target.answer_timeout);
  v1::GenerateBatchResponse response;
  Record(stub.GenerateBatch(&context, batch, &response), /*generous_deadline=*/true, outcome);
}

// Draws a request of the gRPC mix from `random` and sends it through `stub`.
void RunGrpcRequest(v1::Inference::Stub& stub, const SoakTarget& target, std::mt19937_64& random,
                    SoakOutcome& outcome) {
  std::discrete_distribution<int> kinds(std::begin(kKindWeights), std::end(kKindWeights));
  outcome.kind = static_cast<SoakKind>(kinds(random));
  const bool stream = Chance(random, 0.5);
  switch (outcome.kind) {
    case SoakKind::kUnary:
    case SoakKind::kStream: {
      outcome.expected = {grpc::StatusCode::OK};
      outcome.reaches_group = true;
      v1::GenerateRequest request = ValidRequest(random, target, 1, 16);
      RunUnaryOrStream(stub, target, outcome.kind == SoakKind::kStream, request, outcome);
      break;
    }
    case SoakKind::kBatch:
      outcome.expected = {grpc::StatusCode::OK};
      outcome.reaches_group = true;
      RunBatch(stub, target, random, outcome);
      break;
    case SoakKind::kCancel: {
      // The client's cancellation ends its call as CANCELLED whatever the server does; what
      // this kind tests is the coordinator and the engine letting go of the request (the
      // leak checks after the run), mid-stream or before the first token.
      outcome.expected = {grpc::StatusCode::CANCELLED, grpc::StatusCode::OK};
      outcome.reaches_group = true;
      v1::GenerateRequest request = ValidRequest(random, target, 32, 64);
      StreamCancel cancel;
      if (Chance(random, 0.7)) {
        cancel.after_messages = Draw(random, 1, 3);
        outcome.variant = "after a message";
      } else {
        cancel.after_messages = 0;
        cancel.before_read = absl::Milliseconds(Draw(random, 0, 20));
        outcome.variant = "before the first message";
      }
      Stream(stub, request, target.answer_timeout, /*generous_deadline=*/true, cancel, outcome);
      break;
    }
    case SoakKind::kDeadline: {
      outcome.expected = {grpc::StatusCode::DEADLINE_EXCEEDED, grpc::StatusCode::OK};
      outcome.reaches_group = true;
      v1::GenerateRequest request = ValidRequest(random, target, 48, 64);
      const absl::Duration deadline = absl::Milliseconds(Draw(random, 1, 40));
      outcome.variant = stream ? "stream" : "unary";
      if (stream) {
        Stream(stub, request, deadline, /*generous_deadline=*/false, {}, outcome);
      } else {
        Unary(stub, request, deadline, /*generous_deadline=*/false, outcome);
      }
      break;
    }
    case SoakKind::kInvalid: {
      const int variant = Draw(random, 0, kInvalidVariantCount - 1);
      const InvalidVariant& invalid = kInvalidVariants[variant];
      outcome.variant = invalid.name;
      outcome.expected = {invalid.code};
      outcome.reaches_group = invalid.reaches_group;
      v1::GenerateRequest request = ValidRequest(random, target, 1, 8);
      MakeInvalid(variant, random, target, request);
      RunUnaryOrStream(stub, target, stream, request, outcome);
      break;
    }
    case SoakKind::kOversized:
      RunOversized(stub, target, random, outcome);
      break;
    case SoakKind::kModels:  // HTTP's alone
      outcome.code = kOutcomeBadAnswer;
      outcome.message = "no such kind over gRPC";
      break;
  }
}

}  // namespace

const char* SoakKindName(SoakKind kind) {
  switch (kind) {
    case SoakKind::kUnary:
      return "unary";
    case SoakKind::kStream:
      return "stream";
    case SoakKind::kBatch:
      return "batch";
    case SoakKind::kCancel:
      return "cancel";
    case SoakKind::kDeadline:
      return "deadline";
    case SoakKind::kInvalid:
      return "invalid";
    case SoakKind::kOversized:
      return "oversized";
    case SoakKind::kModels:
      return "models";
  }
  return "?";
}

const char* SoakApiName(SoakApi api) { return api == SoakApi::kGrpc ? "gRPC" : "HTTP"; }

std::string OutcomeCodeName(SoakApi api, int code) {
  switch (code) {
    case kOutcomeBadAnswer:
      return "BAD_ANSWER";
    case kOutcomeLost:
      return "LOST";
    case kOutcomeBroken:
      return "BROKEN";
  }
  if (api == SoakApi::kHttp) return absl::StrCat("HTTP ", code);
  return serve::StatusCodeName(static_cast<absl::StatusCode>(code));
}

int UnavailableCode(SoakApi api) {
  return api == SoakApi::kGrpc ? grpc::StatusCode::UNAVAILABLE : 503;
}

SoakOutcome RunSoakRequest(SoakClients& clients, const SoakTarget& target, const SoakMix& mix,
                           uint64_t index) {
  std::seed_seq seeds{static_cast<uint32_t>(mix.seed), static_cast<uint32_t>(mix.seed >> 32),
                      static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32)};
  std::mt19937_64 random(seeds);
  SoakOutcome outcome;
  outcome.api = Chance(random, mix.http_share) ? SoakApi::kHttp : SoakApi::kGrpc;
  outcome.start = absl::Now();
  if (outcome.api == SoakApi::kHttp) {
    RunHttpRequest(clients, target, random, outcome);
  } else {
    RunGrpcRequest(clients.grpc, target, random, outcome);
  }
  outcome.end = absl::Now();
  return outcome;
}

}  // namespace tessera::launcher
