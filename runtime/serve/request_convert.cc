#include "runtime/serve/request_convert.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "kernels/cpu/sampling.h"

namespace tessera::serve {

engine::SamplingOptions ToEngineSampling(const v1::SamplingParams& s) {
  engine::SamplingOptions sampling;
  sampling.temperature = s.temperature();
  sampling.top_k = s.top_k();
  sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  if (s.has_seed()) sampling.seed = s.seed();
  sampling.max_tokens = s.max_tokens() == 0 ? kDefaultMaxTokens : s.max_tokens();
  sampling.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  sampling.stop.assign(s.stop().begin(), s.stop().end());
  sampling.ignore_eos = s.ignore_eos();
  sampling.logprobs = s.logprobs();
  sampling.presence_penalty = s.presence_penalty();
  sampling.frequency_penalty = s.frequency_penalty();
  sampling.top_logprobs = s.top_logprobs();
  return sampling;
}

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits) {
  if (request.model().empty()) return absl::InvalidArgumentError("model: required");
  const std::pair<const std::string*, const char*> names[] = {
      {&request.model(), "model"},           {&request.version(), "version"},
      {&request.request_id(), "request_id"}, {&request.tenant(), "tenant"},
      {&request.session_id(), "session_id"}, {&request.adapter(), "adapter"}};
  for (const auto& [value, field] : names) {
    if (static_cast<int64_t>(value->size()) > limits.max_name_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", value->size(), " bytes; at most ", limits.max_name_bytes));
    }
  }
  const int prompts = (request.prompt().empty() ? 0 : 1) +
                      (request.prompt_tokens_size() > 0 ? 1 : 0) +
                      (request.messages_size() > 0 ? 1 : 0);
  if (prompts != 1) {
    return absl::InvalidArgumentError(
        prompts == 0 ? "prompt: empty (give prompt, prompt_tokens or messages)"
                     : "prompt: give one of prompt, prompt_tokens and messages, not several");
  }
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::ChatMessage& message = request.messages(i);
    if (message.role().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: required"));
    }
    if (static_cast<int64_t>(message.role().size()) > limits.max_name_bytes ||
        static_cast<int64_t>(message.name().size()) > limits.max_name_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "]: role and name may have at most ", limits.max_name_bytes, " bytes"));
    }
  }
  for (int i = 0; i < request.prompt_tokens_size(); ++i) {
    if (request.prompt_tokens(i) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_tokens[", i, "]: negative id ", request.prompt_tokens(i)));
    }
  }
  for (int i = 0; i < request.resumed_tokens_size(); ++i) {
    if (request.resumed_tokens(i) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("resumed_tokens[", i, "]: negative id ", request.resumed_tokens(i)));
    }
  }
  const v1::SamplingParams& s = request.sampling();
  // The kernel's own checks ("top_p: must be in (0, 1], not 1.5"), under the wire's name.
  if (absl::Status params = kernels::ValidateSamplingParams(ToEngineSampling(s).KernelParams());
      !params.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", params.message()));
  }
  if (s.top_logprobs() < 0 || s.top_logprobs() > kernels::kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.top_logprobs: must be in [0, ",
                                                   kernels::kMaxTopLogprobs, "], not ",
                                                   s.top_logprobs()));
  }
  if (s.max_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.max_tokens: must be >= 1 (0: the default ", kDefaultMaxTokens,
                     "), not ", s.max_tokens()));
  }
  if (s.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop: ", s.stop_size(),
                                                   " strings; at most ", limits.max_stop_strings));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    if (s.stop(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "]: empty string"));
    }
    if (static_cast<int64_t>(s.stop(i).size()) > limits.max_stop_string_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "]: ", s.stop(i).size(),
                                                     " bytes; at most ",
                                                     limits.max_stop_string_bytes));
    }
  }
  if (s.stop_token_ids_size() > limits.max_stop_token_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.stop_token_ids: ", s.stop_token_ids_size(), " ids; at most ",
                     limits.max_stop_token_ids));
  }
  for (int i = 0; i < s.stop_token_ids_size(); ++i) {
    if (s.stop_token_ids(i) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.stop_token_ids[", i, "]: negative id ", s.stop_token_ids(i)));
    }
  }
  return absl::OkStatus();
}

engine::GenerationRequest ToEngineRequest(const v1::GenerateRequest& request) {
  engine::GenerationRequest out;
  out.id = request.request_id();
  out.prompt = request.prompt();
  out.prompt_tokens.assign(request.prompt_tokens().begin(), request.prompt_tokens().end());
  out.resumed_tokens.assign(request.resumed_tokens().begin(), request.resumed_tokens().end());
  out.sampling = ToEngineSampling(request.sampling());
  out.adapter = request.adapter();
  return out;
}

v1::FinishReason ToWireFinishReason(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case engine::FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::Usage ToWireUsage(const engine::RequestUsage& usage) {
  v1::Usage out;
  out.set_prompt_tokens(usage.prompt_tokens);
  out.set_completion_tokens(usage.completion_tokens);
  out.set_cached_tokens(usage.cached_tokens);
  return out;
}

v1::Timings ToWireTimings(const engine::RequestUsage& usage) {
  v1::Timings out;
  out.set_queue_seconds(absl::ToDoubleSeconds(usage.queue_time));
  out.set_time_to_first_token_seconds(absl::ToDoubleSeconds(usage.time_to_first_token));
  out.set_total_seconds(absl::ToDoubleSeconds(usage.total_time));
  return out;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

void AppendToResponse(const v1::GenerateStreamResponse& message, v1::GenerateResponse* response) {
  if (response->request_id().empty()) response->set_request_id(message.request_id());
  if (message.has_placement() && !response->has_placement()) {
    *response->mutable_placement() = message.placement();
  }
  response->mutable_text()->append(message.text());
  response->mutable_tokens()->Add(message.tokens().begin(), message.tokens().end());
  response->mutable_logprobs()->Add(message.logprobs().begin(), message.logprobs().end());
  response->mutable_top_logprobs()->Add(message.top_logprobs().begin(),
                                        message.top_logprobs().end());
  if (message.final()) {
    response->set_finish_reason(message.finish_reason());
    *response->mutable_usage() = message.usage();
    *response->mutable_timings() = message.timings();
    *response->mutable_resumptions() = message.resumptions();
  }
}

}  // namespace tessera::serve
