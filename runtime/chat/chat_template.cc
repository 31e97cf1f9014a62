#include "runtime/chat/chat_template.h"

#include "runtime/chat/ast.h"
#include "runtime/chat/evaluator.h"
#include "runtime/chat/parser.h"
#include "runtime/chat/value.h"

namespace tessera::chat {

struct ChatTemplate::Parsed {
  Body body;
};

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(absl::string_view source,
                                                 absl::string_view origin) {
  auto body = chat::Parse(source, origin);
  if (!body.ok()) return body.status();
  auto parsed = std::make_shared<Parsed>();
  parsed->body = *std::move(body);
  return ChatTemplate(std::move(parsed), std::string(origin));
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) return absl::InvalidArgumentError("the context must be a JSON object");
  auto value = Value::FromJson(context);
  if (!value.ok()) return value.status();
  return Evaluate(parsed_->body, *value, origin_);
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::json& context) const {
  return Render(nlohmann::ordered_json::parse(context.dump()));
}

absl::StatusOr<std::string> ChatTemplate::RenderChat(const nlohmann::ordered_json& messages,
                                                     bool add_generation_prompt,
                                                     absl::string_view bos_token,
                                                     absl::string_view eos_token) const {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages must be a JSON array");
  nlohmann::ordered_json context = {
      {"messages", messages},
      {"tools", nullptr},
      {"documents", nullptr},
      {"add_generation_prompt", add_generation_prompt},
      {"bos_token", std::string(bos_token)},
      {"eos_token", std::string(eos_token)},
  };
  return Render(context);
}

}  // namespace tessera::chat
