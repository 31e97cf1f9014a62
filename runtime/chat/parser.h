#ifndef TESSERA_RUNTIME_CHAT_PARSER_H_
#define TESSERA_RUNTIME_CHAT_PARSER_H_

// Parses template tokens into statements. What the evaluator cannot render exactly as jinja2
// does is refused here, at load time: INVALID_ARGUMENT "<origin>:<line>:<column>:
// unsupported construct '<what>'" (a tag such as 'macro', a filter, test, method or global
// function, a loop attribute, a tuple literal); syntax errors name their place the same way.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/chat/ast.h"

namespace tessera::chat {

absl::StatusOr<Body> Parse(absl::string_view source, absl::string_view origin);

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_PARSER_H_
