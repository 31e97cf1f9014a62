#ifndef TESSERA_RUNTIME_CHAT_CHAT_TEMPLATE_H_
#define TESSERA_RUNTIME_CHAT_CHAT_TEMPLATE_H_

// A Hugging Face chat template (tokenizer_config.json's "chat_template", GGUF's
// "tokenizer.chat_template"): a Jinja2 template that turns a conversation into the prompt
// text a model was trained on. Render gives byte for byte what transformers'
// apply_chat_template(..., tokenize=False) gives, i.e. Python jinja2 with trim_blocks and
// lstrip_blocks, the loopcontrols extension, raise_exception(), namespace(), and tojson as
// json.dumps(ensure_ascii=False).
//
// What a template may use:
//   tags        if/elif/else, for (tuple targets, `if` filter, else, loop.index, index0,
//               revindex, revindex0, first, last, length, previtem, nextitem), set (names,
//               tuples, namespace attributes), break, continue, generation; comments;
//               whitespace control with - and +.
//   expressions literals (string, int, float, true/false/none, list, dict), attribute,
//               subscript and slice, not/and/or, == != < <= > >= in, not in, + - * / // % **,
//               ~, a if b else c; globals raise_exception(), namespace(), range().
//   filters     trim length count tojson string lower upper title capitalize first last join
//               default/d items list selectattr rejectattr map replace int float abs.
//   tests       defined undefined none string mapping iterable sequence number integer float
//               boolean true false even odd divisibleby eq/equalto/== ne/!= lt le gt ge and
//               their operators, in.
//   methods     str: strip lstrip rstrip startswith endswith split upper lower title
//               capitalize replace; dict: items keys values get.
// Anything else (macros, call blocks, set blocks, filter blocks, include/import/extends,
// strftime_now(), any other filter, test, method or global) is refused by Parse with
// INVALID_ARGUMENT "<origin>:<line>:<column>: unsupported construct '<what>'": Tessera renders
// a template exactly or not at all. Undefined variables behave as jinja2's default Undefined:
// they print as "" and are false; using them otherwise fails the render.
//
// Thread safety: a ChatTemplate is immutable; Render may run on many threads at once.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tessera::chat {

struct Expr;
struct Node;

class ChatTemplate {
 public:
  // INVALID_ARGUMENT for a template that does not parse or uses an unsupported construct;
  // messages start with `origin` (e.g. "tokenizer_config.json:chat_template").
  static absl::StatusOr<ChatTemplate> Parse(absl::string_view source, absl::string_view origin);

  // Renders with `context` (a JSON object) as the template's variables; key order inside it is
  // kept, as a Python dict keeps it (tojson prints it). INVALID_ARGUMENT with the template's
  // own message when it calls raise_exception(msg) ("...: raise_exception: msg"), or when a
  // value is used as Python would refuse (an undefined variable's attribute, adding a string
  // to a number); UNIMPLEMENTED where jinja2 would print an object address or a feature
  // depends on the value (tojson(indent="\t")).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) const;
  // As above; a nlohmann::json object orders its keys alphabetically.
  absl::StatusOr<std::string> Render(const nlohmann::json& context) const;

  // The context transformers' apply_chat_template builds: `messages` (a JSON array of
  // {"role", "content", ...} objects), add_generation_prompt, bos_token, eos_token, and
  // tools and documents as None.
  absl::StatusOr<std::string> RenderChat(const nlohmann::ordered_json& messages,
                                         bool add_generation_prompt, absl::string_view bos_token,
                                         absl::string_view eos_token) const;

  const std::string& origin() const { return origin_; }

 private:
  struct Parsed;
  ChatTemplate(std::shared_ptr<const Parsed> parsed, std::string origin)
      : parsed_(std::move(parsed)), origin_(std::move(origin)) {}

  std::shared_ptr<const Parsed> parsed_;
  std::string origin_;
};

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_CHAT_TEMPLATE_H_
