#ifndef TESSERA_RUNTIME_TOKENIZER_DECODER_H_
#define TESSERA_RUNTIME_TOKENIZER_DECODER_H_

// tokenizer.json's "decoder": the steps that turn the tokens of ids back into text, as Hugging
// Face tokenizers' decoders do, incrementally. Hugging Face applies each step to the whole list
// of tokens and joins what is left; a Decoder::Stream takes one token at a time and hands back
// text as soon as no later token can change it, which by construction adds up to the same.
//
// The steps before the first Fuse (or ByteLevel) work token by token; a Fuse joins the tokens
// into one text, and the steps after it work on that text as it grows:
//   ByteLevel     each token's characters become the bytes they stand for (a token with a
//                 character outside the alphabet stays as it is), and the bytes of all tokens
//                 are joined into text, ill-formed UTF-8 replaced by U+FFFD. A Fuse too.
//   ByteFallback  a run of tokens "<0xNN>" becomes the text of its bytes, or one U+FFFD per
//                 byte when they are not valid UTF-8 as a whole.
//   Fuse          joins the tokens.
//   Replace       every occurrence of `pattern` (a literal) becomes `content`.
//   Strip         removes up to `start` leading `content` characters (of each token before a
//                 Fuse, of the text after it).
//   Metaspace     metaspace.h's MetaspaceDecode (the text after a Fuse counts as the first
//                 token).
// After a Fuse or ByteLevel, neither ByteLevel nor ByteFallback may come (they would need the
// whole text); the loader refuses them.
//
// Thread safety: a Decoder is immutable; each Stream belongs to one thread.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "runtime/tokenizer/metaspace.h"

namespace tessera::tokenizer {

struct DecoderStep {
  enum class Kind { kByteLevel, kByteFallback, kFuse, kReplace, kStrip, kMetaspace };
  Kind kind = Kind::kFuse;
  std::string pattern;  // kReplace: what to replace (not empty)
  std::string content;  // kReplace: its replacement; kStrip: the character to strip
  size_t start = 0;     // kStrip: how many leading `content` characters to strip at most
  Metaspace metaspace;  // kMetaspace
};

class Decoder {
 public:
  // `id_tokens` is the text of each id's token, as tokenizer.json spells it. `steps` follow the
  // rule above (no ByteLevel or ByteFallback after a Fuse or ByteLevel).
  Decoder(std::vector<DecoderStep> steps, absl::Span<const std::string> id_tokens);

  // The decode of a sequence of tokens, one token at a time.
  class Stream {
   public:
    explicit Stream(const Decoder& decoder);

    // Decodes the token of `id` (an id with a token), appending to `out` the text that it
    // completes.
    void Add(int32_t id, std::string* out);
    // Appends the text still held back; the stream is then empty and can start again.
    void Flush(std::string* out);
    // Bytes held back: an unfinished character, a run of byte tokens, or text that a later
    // token may still change.
    size_t pending_bytes() const;

   private:
    // What each step holds between tokens.
    struct StepState {
      std::string held;   // ByteFallback: the run's bytes; Replace and Strip after a Fuse:
                          // text that may still change
      size_t seen = 0;    // Metaspace: tokens so far; Strip after a Fuse: characters stripped
      bool done = false;  // ByteFallback: the run is ill-formed whatever follows; Strip after
                          // a Fuse: the start of the text has passed
    };

    // Runs token step `step` and those after it on `token`.
    void Token(size_t step, std::string token, std::string* out);
    // Joins `token` to the text: the Fuse step, or the ByteLevel step, for which `token` is
    // bytes (they become text once they make whole characters, or cannot).
    void Join(std::string token, std::string* out);
    // Runs text step `step` and those after it on the next `chunk` of the text.
    void Text(size_t step, std::string chunk, std::string* out);
    // Ends a run of ByteFallback step `step`.
    void EndByteRun(size_t step, std::string* out);

    const Decoder* decoder_;
    std::vector<StepState> token_states_;
    std::vector<StepState> text_states_;
    std::string pending_bytes_;  // ByteLevel: bytes of an unfinished character
  };

 private:
  std::vector<DecoderStep> token_steps_;  // before the first Fuse or ByteLevel
  bool byte_level_join_ = false;          // whether that step is ByteLevel
  std::vector<DecoderStep> text_steps_;   // after it
  // Each id's token after the first `first_dynamic_` token steps (and, when those are all of
  // them and the join is ByteLevel, as bytes): the steps that treat every token alike.
  std::vector<std::string> prepared_;
  size_t first_dynamic_ = 0;
  bool prepared_as_bytes_ = false;
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_DECODER_H_
