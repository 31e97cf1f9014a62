#ifndef TESSERA_RUNTIME_SERVE_OPENAI_API_H_
#define TESSERA_RUNTIME_SERVE_OPENAI_API_H_

// OpenAI's HTTP API in Tessera's terms: a /v1/completions or /v1/chat/completions body as
// tessera.v1 GenerateRequests (one per choice), Tessera's streamed messages as OpenAI's answers
// (one JSON object, or server-sent-event chunks), and errors in OpenAI's shape with the HTTP status
// a client acts on. Pure conversions; openai_http.h serves them.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"
#include "nlohmann/json.hpp"
#include "runtime/serve/adapter_registry.h"
#include "runtime/serve/group_registry.h"
#include "tessera/v1/inference.pb.h"

namespace tessera::serve {

// Which of OpenAI's generation endpoints a call came to: they take the same sampling fields
// and answer in different shapes.
enum class OpenAiEndpoint {
  kCompletions,      // POST /v1/completions: a prompt; choices carry "text"
  kChatCompletions,  // POST /v1/chat/completions: messages; choices carry a message or delta
};

// One prompt of a /v1/completions body: text, or token ids.
struct CompletionPrompt {
  std::string text;
  std::vector<int32_t> tokens;  // set: the prompt is these ids
};

// A parsed body. Its choices, n for each prompt, run as requests of their own
// (ChoiceRequest): choice i answers prompt i / n.
struct CompletionCall {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  // "model" as the client sent it, which every answer echoes; request.model is the same until
  // SplitModelName has taken an adapter off it.
  std::string model;
  v1::GenerateRequest request;            // all but the prompt of a completion; a chat's messages
  std::vector<CompletionPrompt> prompts;  // /v1/completions: one or more
  int n = 1;
  int choices() const { return std::max<int>(1, static_cast<int>(prompts.size())) * n; }
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // the log-probability of each chosen token
  int top_logprobs = 0;        // and this many of the most likely tokens at each position
};

// INVALID_ARGUMENT "PARAM: why" for a field of the wrong type or value (PARAM is OpenAI's
// name of it). Unknown fields are ignored, as OpenAI does. Both endpoints take model,
// max_tokens, temperature, top_p, top_k, seed, stop (a string or a list), n, stream,
// stream_options.include_usage, presence_penalty and frequency_penalty (their range, [-2, 2],
// is checked with the other sampling values by ValidateGenerateRequest, which names them
// "sampling.presence_penalty"), ignore_eos (vLLM's extension), and user (kept as nothing:
// tenants come from API keys).
//   /v1/completions: prompt (a string, a list of token ids, or a list of either for several
//     prompts, at most kMaxCallChoices choices in all);
//     logprobs 0..5: the chosen tokens' log-probabilities and that many alternatives.
//   /v1/chat/completions: messages (role, content as a string or a list of text parts,
//     name); max_completion_tokens (max_tokens' newer name); logprobs true or false, and
//     top_logprobs 0..20 alternatives (with logprobs true only, as OpenAI requires).
// Log-probabilities are the model's, before penalties, temperature, top-k and top-p.
absl::StatusOr<CompletionCall> ParseCompletionRequest(const nlohmann::json& body);
absl::StatusOr<CompletionCall> ParseChatCompletionRequest(const nlohmann::json& body);

// An OpenAI "model": a served model, or "base:adapter" for a LoRA adapter loaded on model
// base (as GET /v1/models lists it). A name that is itself served is that model: model names
// may hold ':' ("llama3:8b"), adapter names may not, so "llama3:8b:sql" is adapter sql of
// llama3:8b. Otherwise, when what follows the last ':' is a well-formed adapter name
// (CheckAdapterName) and what precedes it is not empty, it is that model and adapter; and
// anything else is the model as named, which the coordinator then reports unknown.
// `served(name)`: some group serves model `name`.
struct ModelAndAdapter {
  std::string model;
  std::string adapter;  // empty: the base model
};
ModelAndAdapter SplitModelName(absl::string_view name,
                               const std::function<bool(absl::string_view)>& served);
// The body of GET /v1/models: each model, then each adapter that some healthy group can run
// as "base:adapter" with "parent": base, as vLLM lists LoRA modules (once, whatever versions
// hold it).
nlohmann::json ModelsBody(const std::vector<ModelSummary>& models,
                          const std::vector<AdapterListing>& adapters);

// Choices (prompts x n) one call may run at once.
inline constexpr int kMaxCallChoices = 64;

// Choice `index`'s request: the call's with its prompt, a request id of its own when the call
// has several choices and, for a seeded call, the seed plus the choice's index among its
// prompt's n (choices differ, and each is reproducible).
v1::GenerateRequest ChoiceRequest(const CompletionCall& call, const std::string& id, int index);

// "stop" or "length" (OpenAI's finish reasons), or "" while unfinished.
std::string FinishReasonName(v1::FinishReason reason);

// For logprobs: the text that token `id` of choice `index` adds to the choice's text, called
// for each choice's tokens in order (a token that ends a character split across tokens carries
// the whole character; the ones before it carry nothing; `last`, the choice's last token,
// carries what is still held back), so that a choice's token texts join into its text.
using TokenBytesFn = std::function<std::string(int index, int32_t id, bool last)>;
// For top logprobs: token `id` decoded alone (special tokens kept), with the tokenizer that
// served choice `index`. An alternative never joins the text, so it carries its own text; a
// token that is only part of a character decodes to U+FFFD (Tokenizer::Decode), so its chat
// "bytes" are those of U+FFFD, not the token's raw bytes.
using TokenTextFn = std::function<std::string(int index, int32_t id)>;

// One choice's answer, gathered from its stream.
struct ChoiceResult {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;                                       // one per token when asked for
  google::protobuf::RepeatedPtrField<v1::TopLogprobs> top_logprobs;  // likewise
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  // Adds one stream message.
  void Append(const v1::GenerateStreamResponse& message);
};

// The usage of a call: each prompt once, the completions of every choice.
v1::Usage CallUsage(const CompletionCall& call, const std::vector<ChoiceResult>& choices);

// The JSON of a finished call ("text_completion" or "chat.completion").
nlohmann::json CompletionBody(const CompletionCall& call, const std::string& id, int64_t created,
                              const std::vector<ChoiceResult>& choices,
                              const TokenBytesFn& token_bytes, const TokenTextFn& token_text);
// One streamed chunk of choice `index`: a message's text (and logprobs) and, in its last, the
// finish reason. `first`: the choice's first chunk (a chat delta then names the role);
// `text_offset`: the bytes of text the choice streamed before (completions' logprobs).
nlohmann::json CompletionChunk(const CompletionCall& call, const std::string& id, int64_t created,
                               int index, const v1::GenerateStreamResponse& message, bool first,
                               int64_t text_offset, const TokenBytesFn& token_bytes,
                               const TokenTextFn& token_text);
// The usage chunk that stream_options.include_usage asks for (no choices).
nlohmann::json UsageChunk(const CompletionCall& call, const std::string& id, int64_t created,
                          const v1::Usage& usage);
nlohmann::json UsageJson(const v1::Usage& usage);

// An error as OpenAI answers it, {"error": {"message", "type", "param", "code"}}, and its
// HTTP status: 400 (invalid; `param` names the field), 401, 403, 404 (model), 413, 429
// (queue full, quota), 503 (no healthy group), 504 (deadline), 500 otherwise.
struct HttpError {
  int status = 500;
  nlohmann::json body;
};
HttpError ErrorFromStatus(const grpc::Status& status);
HttpError ErrorFromStatus(const absl::Status& status);

// `json` as text; bytes that are not UTF-8 (a client's, echoed in a message) replaced by
// U+FFFD instead of failing.
std::string JsonText(const nlohmann::json& json);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_OPENAI_API_H_
