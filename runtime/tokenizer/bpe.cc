#include "runtime/tokenizer/bpe.h"

#include <mutex>
#include <queue>
#include <utility>

#include "absl/strings/str_format.h"
#include "runtime/tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

constexpr size_t kCacheCapacity = 1 << 16;
// Longer pieces (long runs of one script or of spaces) are rarely repeated.
constexpr size_t kMaxCachedPieceBytes = 64;

struct Symbol {
  int32_t id;
  int32_t prev;  // index of the previous live symbol, -1 at the start
  int32_t next;  // index of the next live symbol, -1 at the end
  bool live;
};

// A candidate merge of the symbol at `pos` with the one after it. The queue pops the lowest
// rank first and, among equal ranks, the leftmost position.
struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t merged;
  bool operator>(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : pos > other.pos;
  }
};

}  // namespace

BpeModel::BpeModel(absl::flat_hash_map<std::string, int32_t> vocab,
                   const std::vector<BpeMerge>& merges, BpeOptions options)
    : vocab_(std::move(vocab)), options_(options) {
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& m = merges[rank];
    merges_[PairKey(m.left, m.right)] = {static_cast<int32_t>(rank), m.merged};
  }
  for (int b = 0; b < 256; ++b) {
    const char byte = static_cast<char>(b);
    auto it = vocab_.find(absl::string_view(&byte, 1));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
    // Hugging Face spells the token as Rust's format!("<{b:#04X}>").
    it = options_.byte_fallback ? vocab_.find(absl::StrFormat("<0x%02X>", b)) : vocab_.end();
    fallback_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

int32_t BpeModel::SymbolId(absl::string_view symbol) const {
  if (symbol.size() == 1) return byte_ids_[static_cast<uint8_t>(symbol[0])];
  auto it = vocab_.find(symbol);
  return it == vocab_.end() ? -1 : it->second;
}

bool BpeModel::HasFallback(absl::string_view symbol) const {
  if (!options_.byte_fallback) return false;
  for (const char c : symbol) {
    if (fallback_ids_[static_cast<uint8_t>(c)] < 0) return false;
  }
  return true;
}

void BpeModel::Encode(absl::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    const auto byte = static_cast<uint8_t>(piece[0]);
    if (byte_ids_[byte] >= 0) {
      ids->push_back(byte_ids_[byte]);
    } else if (HasFallback(piece)) {
      ids->push_back(fallback_ids_[byte]);
    } else if (options_.unk_id.has_value()) {
      ids->push_back(*options_.unk_id);
    }
    return;
  }
  if (options_.ignore_merges) {
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergeWord(piece, ids);
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.try_emplace(piece, ids->begin() + static_cast<std::ptrdiff_t>(first), ids->end());
    }
  }
}

void BpeModel::MergeWord(absl::string_view piece, std::vector<int32_t>* ids) const {
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add = [&symbols](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, true});
  };
  // Symbols without a token become their bytes' fallback tokens, or the unk token
  // (consecutive ones fused if asked), or vanish. As in Hugging Face, fallback tokens do not
  // end a run of unknown symbols: its unk token comes after them.
  bool pending_unk = false;
  for (size_t pos = 0; pos < piece.size();) {
    const size_t length = options_.byte_level ? 1 : Utf8Length(piece[pos]);
    const absl::string_view symbol = piece.substr(pos, length);
    pos += length;
    if (const int32_t id = SymbolId(symbol); id >= 0) {
      if (pending_unk) add(*options_.unk_id);
      pending_unk = false;
      add(id);
    } else if (HasFallback(symbol)) {
      for (const char c : symbol) add(fallback_ids_[static_cast<uint8_t>(c)]);
    } else if (options_.unk_id.has_value()) {
      if (pending_unk && !options_.fuse_unk) add(*options_.unk_id);
      pending_unk = true;
    }
  }
  if (pending_unk) add(*options_.unk_id);

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTarget* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->merged});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (!current.live || current.next < 0) continue;
    const Symbol& right = symbols[current.next];
    // A candidate goes stale when a neighbour merged first. Like Hugging Face, compare only
    // what the pair would merge into.
    const MergeTarget* now = FindMerge(current.id, right.id);
    if (now == nullptr || now->merged != top.merged) continue;

    current.id = top.merged;
    symbols[current.next].live = false;
    current.next = right.next;
    if (current.next >= 0) symbols[current.next].prev = top.pos;
    if (current.prev >= 0) {
      if (const MergeTarget* m = FindMerge(symbols[current.prev].id, current.id)) {
        queue.push({m->rank, current.prev, m->merged});
      }
    }
    if (current.next >= 0) {
      if (const MergeTarget* m = FindMerge(current.id, symbols[current.next].id)) {
        queue.push({m->rank, top.pos, m->merged});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.live) ids->push_back(s.id);
  }
}

}  // namespace tessera::tokenizer
