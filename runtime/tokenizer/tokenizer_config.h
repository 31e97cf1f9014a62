#ifndef TESSERA_RUNTIME_TOKENIZER_TOKENIZER_CONFIG_H_
#define TESSERA_RUNTIME_TOKENIZER_TOKENIZER_CONFIG_H_

// What a model directory says about its tokenizer beside tokenizer.json: tokenizer_config.json
// (special token strings, add_bos_token / add_eos_token, chat_template) and chat_template.jinja
// (where transformers 4.43 and later save the template). The one reader of those files.
//
// tokenizer_config.json's token fields are a string, null, or an AddedToken object
// ({"content": "<s>", ...}); chat_template is a string or a list of {"name", "template"}
// objects, of which "default" is used (as transformers does without a template name). A
// chat_template.jinja file takes precedence over tokenizer_config.json's, as in transformers.
//
// Thread safety: the functions keep no state.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::tokenizer {

struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  // The Jinja source of the chat template, and where it came from (e.g.
  // "tokenizer_config.json:chat_template", or the .jinja file's name) for error messages.
  std::optional<std::string> chat_template;
  std::string chat_template_origin;
};

// Parses the text of a tokenizer_config.json. INVALID_ARGUMENT "<source>: <field>: <what>"
// for a file that is not a JSON object or a field of the wrong type.
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(absl::string_view json_text,
                                                     absl::string_view source);

// Reads `model_dir`'s tokenizer_config.json and chat_template.jinja. Either may be missing
// (their fields stay unset); a file that exists and cannot be read or parsed is an error
// naming it.
absl::StatusOr<TokenizerConfig> ReadTokenizerConfig(const std::string& model_dir);

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_TOKENIZER_CONFIG_H_
