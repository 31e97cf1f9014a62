#include "runtime/chat/chat_format.h"

#include "absl/strings/str_cat.h"

namespace tessera::chat {

absl::StatusOr<ChatFormat> ChatFormat::FromConfig(const tokenizer::TokenizerConfig& config) {
  ChatFormat format;
  format.bos_token_ = config.bos_token.value_or("");
  format.eos_token_ = config.eos_token.value_or("");
  if (config.chat_template.has_value()) {
    absl::StatusOr<ChatTemplate> parsed =
        ChatTemplate::Parse(*config.chat_template, config.chat_template_origin);
    if (!parsed.ok()) return parsed.status();
    format.chat_template_ = *std::move(parsed);
  }
  return format;
}

absl::Status ValidateMessages(const nlohmann::ordered_json& messages) {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages: must be an array");
  if (messages.empty()) return absl::InvalidArgumentError("messages: must not be empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::ordered_json& message = messages[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return absl::InvalidArgumentError(where + ": must be an object");
    auto role = message.find("role");
    if (role == message.end()) return absl::InvalidArgumentError(where + ".role: required");
    if (!role->is_string() || role->get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(where + ".role: must be a non-empty string");
    }
    auto content = message.find("content");
    if (content != message.end() && !content->is_string() && !content->is_null()) {
      return absl::InvalidArgumentError(where + ".content: must be a string or null");
    }
  }
  return absl::OkStatus();
}

absl::Status ChatFormat::CanRender() const {
  if (chat_template_.has_value()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "the model has no chat template (neither tokenizer_config.json's chat_template nor a "
      "chat_template.jinja file)");
}

LoadedChatFormat LoadChatFormat(const tokenizer::TokenizerConfig& config) {
  LoadedChatFormat loaded;
  absl::StatusOr<ChatFormat> format = ChatFormat::FromConfig(config);
  if (!format.ok()) {
    loaded.status = absl::FailedPreconditionError(
        absl::StrCat("the model's chat template cannot be rendered: ", format.status().message()));
    return loaded;
  }
  loaded.status = format->CanRender();
  loaded.format = *std::move(format);
  return loaded;
}

absl::StatusOr<std::string> ChatFormat::Render(const nlohmann::ordered_json& messages,
                                               bool add_generation_prompt) const {
  if (absl::Status can = CanRender(); !can.ok()) return can;
  if (absl::Status valid = ValidateMessages(messages); !valid.ok()) return valid;
  return chat_template_->RenderChat(messages, add_generation_prompt, bos_token_, eos_token_);
}

}  // namespace tessera::chat
