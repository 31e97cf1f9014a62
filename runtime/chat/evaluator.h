#ifndef TESSERA_RUNTIME_CHAT_EVALUATOR_H_
#define TESSERA_RUNTIME_CHAT_EVALUATOR_H_

// Renders parsed statements over a context, with jinja2's scoping: a for loop's body gets a
// fresh scope each iteration (so `set` inside it does not outlive the iteration, and
// namespace() is how a template carries state out), while `if` shares its enclosing scope.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/chat/ast.h"
#include "runtime/chat/value.h"

namespace tessera::chat {

// `context` must be a dict: its entries are the template's global variables. Errors name
// `origin` and the line and column of the failing expression.
absl::StatusOr<std::string> Evaluate(const Body& body, const Value& context,
                                     absl::string_view origin);

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_EVALUATOR_H_
