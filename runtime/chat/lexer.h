#ifndef TESSERA_RUNTIME_CHAT_LEXER_H_
#define TESSERA_RUNTIME_CHAT_LEXER_H_

// Splits a Jinja template into text and tag tokens as jinja2's lexer does with
// trim_blocks=True and lstrip_blocks=True (transformers' settings): newlines normalized to
// "\n", one trailing newline dropped, whitespace control by "-" and "+" on tags, comments
// removed, and string literals decoded with Python's escapes.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::chat {

struct SourcePos {
  int line = 1;
  int column = 1;
};

struct Token {
  enum class Type {
    kText,        // template data, after whitespace control
    kBlockBegin,  // {%
    kBlockEnd,    // %}
    kVarBegin,    // {{
    kVarEnd,      // }}
    kName,
    kString,  // `text` holds the decoded value
    kInt,
    kFloat,
    kOperator,
    kEnd,
  };
  Type type;
  std::string text;
  SourcePos pos;
};

// INVALID_ARGUMENT naming `origin`, line and column for text that is not a template
// (an unclosed tag or string, a character no token starts with, invalid UTF-8).
absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view source, absl::string_view origin);

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_LEXER_H_
