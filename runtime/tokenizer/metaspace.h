#ifndef TESSERA_RUNTIME_TOKENIZER_METASPACE_H_
#define TESSERA_RUNTIME_TOKENIZER_METASPACE_H_

// Metaspace: SentencePiece's spelling of spaces as a visible character ("▁", U+2581), as
// tokenizer.json's Metaspace pre-tokenizer applies it to text and its Metaspace decoder takes it
// back out of tokens (Llama-2, Mistral and their conversions by transformers).
//
// Thread safety: the functions keep no state.

#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera::tokenizer {

// When the pre-tokenizer prepends the replacement to a piece that does not start with it.
enum class PrependScheme {
  kAlways,  // to every piece
  kFirst,   // to the piece that begins the text (not one after an added token)
  kNever,
};

struct Metaspace {
  std::string replacement = "\xe2\x96\x81";  // one character, as UTF-8
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;  // whether each replacement begins a new piece
};

// The pre-tokenizer on `piece` (valid UTF-8, not empty): every " " becomes the replacement, the
// replacement is prepended as the scheme says (`at_start`: `piece` begins the text), and with
// `split` the result is cut before each replacement. Calls `on_piece` with each piece, which is
// only valid during the call, and whether it begins the text.
absl::Status MetaspaceSplit(const Metaspace& metaspace, absl::string_view piece, bool at_start,
                            absl::FunctionRef<absl::Status(absl::string_view, bool)> on_piece);

// The decoder on one token, appended to `out`: the replacement becomes " ", except in the first
// token of a decode, where (unless the scheme is kNever) it is dropped; every one of them, as
// Hugging Face does, not only a leading one.
void MetaspaceDecode(const Metaspace& metaspace, absl::string_view token, bool first_token,
                     std::string* out);

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_METASPACE_H_
