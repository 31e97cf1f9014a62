#ifndef TESSERA_RUNTIME_SERVE_PROMPT_ENCODER_H_
#define TESSERA_RUNTIME_SERVE_PROMPT_ENCODER_H_

// The one place a served request's prompt becomes token ids, on the coordinator and on a
// worker group alike: prompt_tokens as given; a prompt text encoded with the tokenizer's
// special tokens (as transformers' tokenizer(text) does); or chat messages rendered with the
// model's chat template and encoded without them (the template writes its own, as
// apply_chat_template(tokenize=True) does).
//
// Thread safety: immutable after Create; Encode may run on many threads at once.

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/chat/chat_format.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "tessera/v1/inference.pb.h"
#include "tessera/v1/worker.pb.h"

namespace tessera::serve {

class PromptEncoder {
 public:
  // A chat template that does not parse does not fail the encoder: plain prompts still work,
  // and a chat request is refused with the template's error (which names the construct).
  PromptEncoder(std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                const tokenizer::TokenizerConfig& config);

  // Parses `tokenizer_json` (errors name `source`) and builds the encoder.
  static absl::StatusOr<std::shared_ptr<const PromptEncoder>> Create(
      absl::string_view tokenizer_json, absl::string_view source,
      const tokenizer::TokenizerConfig& config);

  // The prompt of a validated request (ValidateGenerateRequest). INVALID_ARGUMENT naming
  // "prompt" or "messages" for text the tokenizer or the template refuses;
  // FAILED_PRECONDITION for messages to a model without a usable chat template.
  absl::StatusOr<std::vector<int32_t>> Encode(const v1::GenerateRequest& request) const;

  // The text a conversation becomes, before encoding.
  absl::StatusOr<std::string> RenderChat(
      const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages) const;

  const tokenizer::Tokenizer& tokenizer() const { return *tokenizer_; }
  // OK when chat requests can be served; otherwise why not.
  const absl::Status& chat_status() const { return chat_status_; }

 private:
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  chat::ChatFormat chat_format_;
  absl::Status chat_status_;
};

// tokenizer::TokenizerConfig on the wire (worker registration) and back.
v1::TokenizerConfig ToWire(const tokenizer::TokenizerConfig& config);
tokenizer::TokenizerConfig FromWire(const v1::TokenizerConfig& config);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_PROMPT_ENCODER_H_
