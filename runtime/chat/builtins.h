#ifndef TESSERA_RUNTIME_CHAT_BUILTINS_H_
#define TESSERA_RUNTIME_CHAT_BUILTINS_H_

// Jinja's filters and tests, and the Python str/dict methods, that chat templates call, with
// jinja2's and Python's semantics (tojson is transformers' json.dumps with ensure_ascii off).
// The Is*Supported functions let the parser refuse any other name at load time.

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/chat/value.h"

namespace tessera::chat {

using KwArgs = std::vector<std::pair<std::string, Value>>;

bool IsSupportedFilter(absl::string_view name);
bool IsSupportedTest(absl::string_view name);
bool IsSupportedMethod(absl::string_view name);

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& input,
                                  const std::vector<Value>& args, const KwArgs& kwargs);
absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& input,
                               const std::vector<Value>& args);
// receiver.name(args...), for a str or dict receiver.
absl::StatusOr<Value> CallMethod(absl::string_view name, const Value& receiver,
                                 const std::vector<Value>& args, const KwArgs& kwargs);

// Jinja's getattr/getitem fallbacks on a value: a dict key, a namespace attribute, a list or
// string index. Undefined where jinja2 gives Undefined; an error where it would raise, or
// where it would yield a bound method (which no chat prompt prints on purpose).
absl::StatusOr<Value> GetAttr(const Value& obj, absl::string_view name);
absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);

// Iteration as a for loop sees it: list items, string characters, dict keys, nothing for
// undefined.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v);

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_BUILTINS_H_
