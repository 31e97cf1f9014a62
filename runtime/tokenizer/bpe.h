#ifndef TESSERA_RUNTIME_TOKENIZER_BPE_H_
#define TESSERA_RUNTIME_TOKENIZER_BPE_H_

// The BPE model: it turns one pre-tokenized piece into token ids by starting from one token per
// byte (byte-level BPE) or per character (SentencePiece-style BPE) and applying the merges in
// rank order, exactly as Hugging Face tokenizers' BPE does (same tie-breaking, same handling of
// stale merge candidates, same unknown and byte-fallback tokens).
//
// Thread safety: Encode may run on many threads at once; the word cache is locked.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace tessera::tokenizer {

// One merge rule: the tokens `left` and `right`, side by side, become `merged`.
struct BpeMerge {
  int32_t left;
  int32_t right;
  int32_t merged;
};

struct BpeOptions {
  // Emit a piece that is itself a vocabulary token as that token, without merging
  // (Llama-3 sets this).
  bool ignore_merges = false;
  // The token for a byte (or character) that has no token of its own; without one such
  // bytes are dropped, as Hugging Face does.
  std::optional<int32_t> unk_id;
  // Whether consecutive unknown bytes (or characters) become one unk token.
  bool fuse_unk = false;
  // Whether words start as one symbol per byte, the vocabulary mapping the bytes each token
  // stands for (byte-level BPE), or one per character, the vocabulary mapping each token's
  // text.
  bool byte_level = true;
  // Characters only: a character without a token becomes the tokens "<0xNN>" of its bytes,
  // when the vocabulary has all of them.
  bool byte_fallback = false;
};

class BpeModel {
 public:
  // `vocab` maps each token to its id: the bytes it stands for with `options.byte_level`
  // (tokens whose text is not byte-level are left out: no piece can produce them), its text
  // otherwise. `merges` are in rank order, highest priority first; a later duplicate of a pair
  // replaces the earlier one.
  BpeModel(absl::flat_hash_map<std::string, int32_t> vocab, const std::vector<BpeMerge>& merges,
           BpeOptions options);

  // Appends the ids of `piece` (non-empty; valid UTF-8 unless the model is byte-level) to
  // `ids`.
  void Encode(absl::string_view piece, std::vector<int32_t>* ids) const;

 private:
  struct MergeTarget {
    int32_t rank;
    int32_t merged;
  };

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const MergeTarget* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void MergeWord(absl::string_view piece, std::vector<int32_t>* ids) const;
  // The token of one starting symbol (a byte or a character), or -1.
  int32_t SymbolId(absl::string_view symbol) const;
  // Whether byte fallback can spell `symbol`.
  bool HasFallback(absl::string_view symbol) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
  // The token of each single-byte symbol (a byte, or an ASCII character); -1 for none.
  std::array<int32_t, 256> byte_ids_;
  // With byte fallback, the token "<0xNN>" of each byte; -1 for none.
  std::array<int32_t, 256> fallback_ids_;
  BpeOptions options_;

  // Results for pieces seen before; it stops growing when full. A std::shared_mutex rather
  // than absl::Mutex: this lock is taken once per piece, and absl's deadlock bookkeeping cost
  // a third of the encode throughput.
  mutable std::shared_mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_
      ABSL_GUARDED_BY(cache_mutex_);
};

}  // namespace tessera::tokenizer

#endif  // TESSERA_RUNTIME_TOKENIZER_BPE_H_
