#ifndef TESSERA_RUNTIME_CHAT_CHAT_FORMAT_H_
#define TESSERA_RUNTIME_CHAT_CHAT_FORMAT_H_

// How a model turns a conversation into its prompt: its chat template (tokenizer_config.json
// or chat_template.jinja, see tokenizer/tokenizer_config.h) with the bos and eos token strings
// the template sees. The one place where messages become prompt text, for the HTTP and gRPC
// chat calls, `tessera generate --chat` and the trainer's {"messages"} examples.
//
// The rendered text already holds the special tokens the template writes (Llama-3's
// <|begin_of_text|>), so it is encoded without the tokenizer's own (add_special_tokens=false),
// as transformers' apply_chat_template(tokenize=True) does.
//
// Thread safety: immutable; Render may run on many threads at once.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_template.h"
#include "runtime/tokenizer/tokenizer_config.h"

namespace tessera::chat {

class ChatFormat {
 public:
  // A model without a chat template: Render fails, naming what is missing.
  ChatFormat() = default;

  // INVALID_ARGUMENT when the template does not parse or uses a construct Tessera does not
  // render, naming its origin and the construct.
  static absl::StatusOr<ChatFormat> FromConfig(const tokenizer::TokenizerConfig& config);

  bool has_template() const { return chat_template_.has_value(); }
  // OK with a template; FAILED_PRECONDITION saying none was found otherwise.
  absl::Status CanRender() const;
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

  // `messages`: a non-empty JSON array of objects, each with a string "role" and a "content"
  // that is a string or null; other fields (name, tool_calls, ...) pass to the template as
  // they are. INVALID_ARGUMENT "messages[i].<field>: <what>" for a malformed message, or the
  // template's own raise_exception message (e.g. roles out of order); FAILED_PRECONDITION
  // when the model has no chat template.
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& messages,
                                     bool add_generation_prompt) const;

 private:
  std::optional<ChatTemplate> chat_template_;
  std::string bos_token_;
  std::string eos_token_;
};

// A model's chat format as its files give it, and whether it can render: OK, or
// FAILED_PRECONDITION saying why not (no template; one that does not parse, naming the
// construct). A model whose template cannot be used still serves and trains without chat.
struct LoadedChatFormat {
  ChatFormat format;
  absl::Status status;
};
LoadedChatFormat LoadChatFormat(const tokenizer::TokenizerConfig& config);

// INVALID_ARGUMENT "messages[i].<field>: <what>" when `messages` is not as Render takes it.
absl::Status ValidateMessages(const nlohmann::ordered_json& messages);

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_CHAT_FORMAT_H_
