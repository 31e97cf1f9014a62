#ifndef TESSERA_RUNTIME_TOKENIZER_TOKENIZER_H_
#define TESSERA_RUNTIME_TOKENIZER_TOKENIZER_H_

// A BPE tokenizer read from a Hugging Face tokenizer.json: byte-level BPE as the GPT-2, Llama-3,
// Qwen2, GLM-4 and SmolLM families publish it, and SentencePiece-style BPE with byte fallback as
// Llama-2, Mistral and TinyLlama publish it. Encode and Decode give the same ids and text as
// Hugging Face tokenizers' Tokenizer.encode and Tokenizer.decode.
//
// What a tokenizer.json may contain:
//   model           BPE without dropout: ignore_merges; merges as "a b" strings or [a, b]
//                   pairs; an optional unk_token and fuse_unk; byte_fallback (a character
//                   without a token becomes its bytes' tokens "<0xNN>"), unless the
//                   pre-tokenizer is byte-level.
//   normalizer      null, or one of, or a Sequence of: NFC, NFD, NFKC, NFKD, Lowercase (those
//                   need a build with ICU), Prepend, Replace (a String pattern, or a Regex one
//                   that cannot match empty text).
//   pre_tokenizer   null, or one of, or a Sequence of: Split (Regex or String patterns, any
//                   behavior, invert), Digits (individual_digits), Metaspace (replacement,
//                   prepend_scheme always, first or never, or the older add_prefix_space;
//                   split), and last ByteLevel (add_prefix_space, use_regex), which makes the
//                   model byte-level.
//   added_tokens    special or not, with lstrip, rstrip, single_word and normalized.
//   post_processor  null, ByteLevel, TemplateProcessing (its "single" template), or a Sequence
//                   of those.
//   decoder         one of, or a Sequence of: ByteLevel, ByteFallback, Fuse, Replace (a String
//                   pattern), Strip (stop 0), Metaspace; no ByteLevel or ByteFallback after a
//                   Fuse or ByteLevel (decoder.h).
// Anything else is refused with INVALID_ARGUMENT naming its place in the file, e.g.
// "tokenizer.json: model.type 'Unigram' is not supported". "truncation" and "padding" are
// ignored, as transformers ignores them unless a call asks for them.
//
// tokenizer_config.json's add_bos_token and add_eos_token (TokenizerConfig) rebuild the
// template as transformers' LlamaTokenizerFast does: when either is set, the template is
// [bos_token if add_bos_token] $A [eos_token if add_eos_token]; a flag left unset keeps that
// side of tokenizer.json's template as it is.
//
// Text is bytes to this API. Encode refuses text that is not valid UTF-8 (INVALID_ARGUMENT
// naming the offset of the first bad byte): Hugging Face only ever sees valid text, and a
// caller that wants Python's bytes.decode("utf-8", "replace") first can call
// ReplaceInvalidUtf8 (utf8.h), which gives the same text.
//
// Unicode data comes from PCRE2 (\p{L}, \p{N}) and ICU (normalization, lowercase); Hugging
// Face's come from Oniguruma and Rust's unicode-normalization, each of its own Unicode version.
// Text made of characters that all of them know encodes identically; a character assigned in a
// recent Unicode version that one side does not know yet (U+13460.. Egyptian hieroglyphs,
// Unicode 16, say) can be split or normalized differently.
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
#include "runtime/tokenizer/decoder.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/pre_tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"

namespace tessera::tokenizer {

class Tokenizer {
 public:
  // NOT_FOUND when `path` cannot be read; INVALID_ARGUMENT for a file that is not a supported
  // tokenizer.json, or for a `config` whose add_bos_token or add_eos_token asks for a token that
  // it does not name or that the tokenizer does not have (messages start with `path`).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(
      const std::string& path, const TokenizerConfig& config = TokenizerConfig());
  // As FromFile, for the text of a tokenizer.json; messages start with `source`.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      absl::string_view json, absl::string_view source = "tokenizer.json",
      const TokenizerConfig& config = TokenizerConfig());

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // The ids of `text` (UTF-8). With `add_special_tokens` the post-processor's template
  // applies (Llama-3 prepends <|begin_of_text|>, GLM-4 [gMASK] <sop>, Llama-2 <s>); special
  // tokens written in the text are always recognized.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const;

  // The text of `ids`, through the decoder (decoder.h): ill-formed UTF-8 becomes U+FFFD as in
  // Hugging Face. INVALID_ARGUMENT for an id outside [0, vocab_size()); an id inside it that
  // names no token adds nothing, as in Hugging Face.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // One more than the largest id of any token (model or added): the size an id table needs.
  int32_t vocab_size() const { return static_cast<int32_t>(id_flags_.size()); }
  // The id of `token` as tokenizer.json spells it ("Ġhello", "<|eot_id|>"); added tokens
  // first.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The inverse of TokenToId; nullopt for an id that names no token.
  std::optional<std::string> IdToToken(int32_t id) const;
  // Whether `id` is a special token (Decode can skip those).
  bool IsSpecial(int32_t id) const;

 private:
  friend class TokenizerLoader;
  friend class StreamingDecoder;
  Tokenizer() = default;

  // Appends the ids of `text` without post-processing.
  absl::Status EncodeText(absl::string_view text, std::vector<int32_t>* ids) const;
  // Appends the ids of normalized text, which begins the input when `at_start`.
  absl::Status EncodeNormalized(absl::string_view text, bool at_start,
                                std::vector<int32_t>* ids) const;
  // Whether the decoder takes `id` (INVALID_ARGUMENT outside the vocabulary): it names a
  // token, and not a special one that is to be skipped.
  absl::StatusOr<bool> Decodes(int32_t id, bool skip_special_tokens) const;

  enum IdFlags : uint8_t { kAssigned = 1, kSpecial = 2 };

  std::optional<Normalizer> normalizer_;                 // none when it would do nothing
  std::optional<AddedTokenMatcher> raw_matcher_;         // tokens with normalized false
  std::optional<AddedTokenMatcher> normalized_matcher_;  // tokens with normalized true
  std::optional<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::optional<Decoder> decoder_;
  // The "single" template: each entry is the ids of a special token, or empty for the text.
  std::vector<std::vector<int32_t>> template_;
  bool has_template_ = false;

  absl::flat_hash_map<std::string, int32_t> model_ids_;  // vocab text -> id
  absl::flat_hash_map<std::string, int32_t> added_ids_;  // added token content -> id
  std::vector<std::string> id_tokens_;                   // id -> text as tokenizer.json has it
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
      : tokenizer_(&tokenizer),
        skip_special_tokens_(skip_special_tokens),
        stream_(*tokenizer.decoder_) {}

  // The text that `id` completes (often empty while a character is unfinished; ill-formed
  // bytes come out as U+FFFD as soon as they are known to be ill-formed). INVALID_ARGUMENT for
  // an id outside the vocabulary, leaving the decoder as it was.
  absl::StatusOr<std::string> Add(int32_t id);

  // The text still held back: an unfinished character at the end becomes U+FFFD. The decoder
  // is then empty and can start a new stream.
  std::string Flush();

  // Bytes held back: an unfinished character, a run of byte-fallback tokens, or text that the
  // next token may still change (Decoder::Stream::pending_bytes).
  size_t pending_bytes() const { return stream_.pending_bytes(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  Decoder::Stream stream_;
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_TOKENIZER_H_
