#ifndef TESSERA_RUNTIME_CHAT_PYTHON_TEXT_H_
#define TESSERA_RUNTIME_CHAT_PYTHON_TEXT_H_

// Python's text semantics that chat templates observe: str.isspace, strip/split, case mapping,
// float repr and string repr. Strings are UTF-8; operations that Python defines per code point
// (indexing, slicing, len) work on the decoded code points.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/core/json_quote.h"

namespace tessera::chat {

// Code points of valid UTF-8 `text`; malformed bytes decode as U+FFFD (inputs come from JSON,
// which nlohmann validates, and from the template, which the lexer validates).
std::u32string DecodeUtf8(absl::string_view text);
std::string EncodeUtf8(std::u32string_view text);
// False when `text` is not well-formed UTF-8.
bool IsValidUtf8(absl::string_view text);
// len(text) in Python: the number of code points.
int64_t CodePointCount(absl::string_view text);

// str.isspace for one code point.
bool IsPySpace(char32_t c);

// str.strip/lstrip/rstrip: with no `chars`, Python whitespace; otherwise any of `chars`.
std::string PyStrip(absl::string_view text, const std::optional<std::string>& chars, bool left,
                    bool right);
// str.split(sep, maxsplit): with no `sep`, runs of whitespace separate and empty parts drop.
// `sep` must not be empty (the caller reports Python's ValueError).
std::vector<std::string> PySplit(absl::string_view text, const std::optional<std::string>& sep,
                                 int64_t maxsplit);
// str.replace(old, new, count); count < 0 replaces all.
std::string PyReplace(absl::string_view text, absl::string_view old_text,
                      absl::string_view new_text, int64_t count);

// Full Unicode case mapping, as str.upper, str.lower, str.title and str.capitalize.
std::string PyUpper(absl::string_view text);
std::string PyLower(absl::string_view text);
std::string PyTitle(absl::string_view text);
std::string PyCapitalize(absl::string_view text);
// Jinja's `title` filter, which is not str.title: words begin after '-', '(', '{', '[', '<' or
// whitespace; a word's first character is upper-cased and the rest lower-cased.
std::string JinjaTitle(absl::string_view text);

// repr(float): the shortest text that reads back the same value ("1.0", "1e-05", "inf").
std::string PyFloatRepr(double value);
// repr(str): quoted as Python quotes it, with its escapes for unprintable characters.
std::string PyStringRepr(absl::string_view text);
// json.dumps of a string with ensure_ascii=False: tessera::JsonQuote (runtime/core).
using ::tessera::JsonQuote;

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_PYTHON_TEXT_H_
