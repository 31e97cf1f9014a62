#include "runtime/serve/prompt_encoder.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tessera::serve {

PromptEncoder::PromptEncoder(std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                             const tokenizer::TokenizerConfig& config)
    : tokenizer_(std::move(tokenizer)) {
  chat::LoadedChatFormat loaded = chat::LoadChatFormat(config);
  chat_format_ = std::move(loaded.format);
  if (!loaded.status.ok()) {
    chat_status_ = absl::FailedPreconditionError(
        absl::StrCat(loaded.status.message(), ": send a prompt instead of messages"));
  }
}

absl::StatusOr<std::shared_ptr<const PromptEncoder>> PromptEncoder::Create(
    absl::string_view tokenizer_json, absl::string_view source,
    const tokenizer::TokenizerConfig& config) {
  absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> parsed =
      tokenizer::Tokenizer::FromJson(tokenizer_json, source, config);
  if (!parsed.ok()) return parsed.status();
  return std::make_shared<const PromptEncoder>(std::move(*parsed), config);
}

absl::StatusOr<std::string> PromptEncoder::RenderChat(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& messages) const {
  if (!chat_status_.ok()) return chat_status_;
  nlohmann::ordered_json conversation = nlohmann::ordered_json::array();
  for (const v1::ChatMessage& message : messages) {
    nlohmann::ordered_json turn = {{"role", message.role()}, {"content", message.content()}};
    if (!message.name().empty()) turn["name"] = message.name();
    conversation.push_back(std::move(turn));
  }
  return chat_format_.Render(conversation, /*add_generation_prompt=*/true);
}

absl::StatusOr<std::vector<int32_t>> PromptEncoder::Encode(
    const v1::GenerateRequest& request) const {
  if (request.prompt_tokens_size() > 0) {
    return std::vector<int32_t>(request.prompt_tokens().begin(), request.prompt_tokens().end());
  }
  if (request.messages_size() > 0) {
    absl::StatusOr<std::string> text = RenderChat(request.messages());
    if (!text.ok()) return text.status();
    absl::StatusOr<std::vector<int32_t>> tokens =
        tokenizer_->Encode(*text, /*add_special_tokens=*/false);
    if (!tokens.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("messages: ", tokens.status().message()));
    }
    return tokens;
  }
  absl::StatusOr<std::vector<int32_t>> tokens =
      tokenizer_->Encode(request.prompt(), /*add_special_tokens=*/true);
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", tokens.status().message()));
  }
  return tokens;
}

v1::TokenizerConfig ToWire(const tokenizer::TokenizerConfig& config) {
  v1::TokenizerConfig wire;
  if (config.bos_token) wire.set_bos_token(*config.bos_token);
  if (config.eos_token) wire.set_eos_token(*config.eos_token);
  if (config.add_bos_token) wire.set_add_bos_token(*config.add_bos_token);
  if (config.add_eos_token) wire.set_add_eos_token(*config.add_eos_token);
  if (config.chat_template) wire.set_chat_template(*config.chat_template);
  wire.set_chat_template_origin(config.chat_template_origin);
  return wire;
}

tokenizer::TokenizerConfig FromWire(const v1::TokenizerConfig& wire) {
  tokenizer::TokenizerConfig config;
  if (wire.has_bos_token()) config.bos_token = wire.bos_token();
  if (wire.has_eos_token()) config.eos_token = wire.eos_token();
  if (wire.has_add_bos_token()) config.add_bos_token = wire.add_bos_token();
  if (wire.has_add_eos_token()) config.add_eos_token = wire.add_eos_token();
  if (wire.has_chat_template()) config.chat_template = wire.chat_template();
  config.chat_template_origin = wire.chat_template_origin();
  return config;
}

}  // namespace tessera::serve
