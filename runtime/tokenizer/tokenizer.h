#ifndef TESSERA_RUNTIME_TOKENIZER_TOKENIZER_H_
#define TESSERA_RUNTIME_TOKENIZER_TOKENIZER_H_

// A byte-level BPE tokenizer read from a Hugging Face tokenizer.json, as the GPT-2, Llama-3,
// Qwen2, GLM-4 and SmolLM families publish them. Encode and Decode give the same ids and text as
// Hugging Face tokenizers' Tokenizer.encode and Tokenizer.decode.
//
// What a tokenizer.json may contain:
//   model           BPE with byte_fallback false and no dropout; ignore_merges; merges as
//                   "a b" strings or [a, b] pairs; an optional unk_token.
//   normalizer      null, NFC, or a Sequence of NFC (NFC needs a build with ICU).
//   pre_tokenizer   ByteLevel, or a Sequence of Split steps (Regex or String patterns, any
//                   behavior, invert) and Digits steps (individual_digits) ending in ByteLevel
//                   (add_prefix_space, use_regex).
//   added_tokens    special or not, with lstrip, rstrip, single_word and normalized.
//   post_processor  null, ByteLevel, TemplateProcessing (its "single" template), or a Sequence
//                   of those.
//   decoder         ByteLevel.
// Anything else is refused with INVALID_ARGUMENT naming its place in the file, e.g.
// "tokenizer.json: model.type 'Unigram' is not supported". "truncation" and "padding" are
// ignored, as transformers ignores them unless a call asks for them.
//
// Text is bytes to this API. Encode refuses text that is not valid UTF-8 (INVALID_ARGUMENT
// naming the offset of the first bad byte): Hugging Face only ever sees valid text, and a
// caller that wants Python's bytes.decode("utf-8", "replace") first can call
// ReplaceInvalidUtf8 (utf8.h), which gives the same text.
//
// Unicode data comes from PCRE2 (\p{L}, \p{N}) and ICU (NFC); Hugging Face's come from
// Oniguruma and Rust's unicode-normalization, each of its own Unicode version. Text made of
// characters that all of them know encodes identically; a character assigned in a recent
// Unicode version that one side does not know yet (U+13460.. Egyptian hieroglyphs, Unicode
// 16, say) can be split or normalized differently.
//
// Thread safety: a Tokenizer is immutable after loading (its BPE cache locks itself); Encode
// and Decode may run on many threads at once.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/tokenizer/added_vocabulary.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/pre_tokenizer.h"

namespace tessera::tokenizer {

class Tokenizer {
 public:
  // NOT_FOUND when `path` cannot be read; INVALID_ARGUMENT for a file that is not a supported
  // tokenizer.json (messages start with `path`).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // As FromFile, for the text of a tokenizer.json; messages start with `source`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      absl::string_view json, absl::string_view source = "tokenizer.json");

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // The ids of `text` (UTF-8). With `add_special_tokens` the post-processor's template
  // applies (Llama-3 prepends <|begin_of_text|>, GLM-4 [gMASK] <sop>); special tokens written
  // in the text are always recognized.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const;

  // The text of `ids`: their bytes joined, with ill-formed UTF-8 replaced by U+FFFD as
  // Hugging Face does. INVALID_ARGUMENT for an id outside [0, vocab_size()); an id inside it
  // that names no token adds nothing, as in Hugging Face.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // One more than the largest id of any token (model or added): the size an id table needs.
  int32_t vocab_size() const { return static_cast<int32_t>(id_bytes_.size()); }
  // The id of `token` as tokenizer.json spells it ("Ġhello", "<|eot_id|>"); added tokens
  // first.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The inverse of TokenToId; nullopt for an id that names no token.
  std::optional<std::string> IdToToken(int32_t id) const;
  // Whether `id` is a special token (Decode can skip those).
  bool IsSpecial(int32_t id) const;
  // The bytes `id` adds to a decode: empty for an id that names no token and for a special
  // token when `skip_special_tokens`. INVALID_ARGUMENT for an id outside [0, vocab_size()).
  absl::StatusOr<absl::string_view> TokenBytes(int32_t id, bool skip_special_tokens) const;

 private:
  friend class TokenizerLoader;
  Tokenizer() = default;

  // Appends the ids of `text` without post-processing.
  absl::Status EncodeText(absl::string_view text, std::vector<int32_t>* ids) const;
  absl::Status EncodeNormalized(absl::string_view text, std::vector<int32_t>* ids) const;

  enum IdFlags : uint8_t { kAssigned = 1, kSpecial = 2 };

  bool nfc_ = false;
  std::optional<AddedTokenMatcher> raw_matcher_;         // tokens with normalized false
  std::optional<AddedTokenMatcher> normalized_matcher_;  // tokens with normalized true
  std::optional<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  // The "single" template: each entry is the ids of a special token, or empty for the text.
  std::vector<std::vector<int32_t>> template_;
  bool has_template_ = false;

  absl::flat_hash_map<std::string, int32_t> model_ids_;  // vocab text -> id
  absl::flat_hash_map<std::string, int32_t> added_ids_;  // added token content -> id
  std::vector<std::string> id_tokens_;                   // id -> text as tokenizer.json has it
  std::vector<std::string> id_bytes_;                    // id -> bytes it decodes to
  std::vector<uint8_t> id_flags_;                        // id -> IdFlags
};

// Decodes ids as they are generated, one at a time, and hands back only complete UTF-8 text:
// never half a character. The concatenation of everything Add and Flush return is exactly
// Tokenizer::Decode of all the ids.
//
// Not thread-safe; use one per stream. The tokenizer must outlive it.
class StreamingDecoder {
 public:
  StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // The text that `id` completes (often empty while a character is unfinished; ill-formed
  // bytes come out as U+FFFD as soon as they are known to be ill-formed). INVALID_ARGUMENT for
  // an id outside the vocabulary, leaving the decoder as it was.
  absl::StatusOr<std::string> Add(int32_t id);

  // The text still held back: an unfinished character at the end becomes U+FFFD. The decoder
  // is then empty and can start a new stream.
  std::string Flush();

  // Bytes held back because they may be the start of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_TOKENIZER_H_
