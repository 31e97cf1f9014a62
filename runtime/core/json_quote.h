#ifndef TESSERA_RUNTIME_CORE_JSON_QUOTE_H_
#define TESSERA_RUNTIME_CORE_JSON_QUOTE_H_

// A string as a JSON string literal, quoted as Python's json.dumps(text, ensure_ascii=False)
// quotes it: the quote, the backslash and the control characters escaped (\n \r \t \b \f by
// name, the others as \u00XX), everything else, UTF-8 included, as it is. The structured
// logs and the chat templates' tojson write strings with it.

#include <string>

#include "absl/strings/string_view.h"

namespace tessera {

std::string JsonQuote(absl::string_view text);

}  // namespace tessera

#endif  // TESSERA_RUNTIME_CORE_JSON_QUOTE_H_
