#include "runtime/engine/block_pool.h"

#include "absl/strings/str_cat.h"
#include "runtime/core/check.h"

namespace tessera::engine {

BlockPool::BlockPool(int num_blocks, bool prefix_caching)
    : prefix_caching_(prefix_caching),
      refs_(num_blocks, 0),
      hash_of_(num_blocks),
      lru_pos_(num_blocks, lru_.end()) {
  free_.reserve(num_blocks);
  // Handed out from the back: block 0 first.
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

std::optional<int> BlockPool::Allocate() {
  int block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    block = lru_.front();
    lru_.pop_front();
    lru_pos_[block] = lru_.end();
    by_hash_.erase(*hash_of_[block]);
    hash_of_[block].reset();
    ++stats_.evictions;
  } else {
    return std::nullopt;
  }
  refs_[block] = 1;
  return block;
}

std::vector<int> BlockPool::AcquireCachedPrefix(absl::Span<const uint64_t> hashes) {
  std::vector<int> blocks;
  if (!prefix_caching_) return blocks;
  for (uint64_t hash : hashes) {
    auto it = by_hash_.find(hash);
    if (it == by_hash_.end()) break;
    int block = it->second;
    if (refs_[block] == 0) {
      lru_.erase(lru_pos_[block]);
      lru_pos_[block] = lru_.end();
    }
    ++refs_[block];
    blocks.push_back(block);
  }
  return blocks;
}

void BlockPool::Register(int block, uint64_t hash) {
  TESSERA_CHECK(refs_[block] > 0, absl::StrCat("registering block ", block, " that nobody holds"));
  if (!prefix_caching_ || hash_of_[block].has_value()) return;
  if (by_hash_.try_emplace(hash, block).second) hash_of_[block] = hash;
}

void BlockPool::Release(int block) {
  TESSERA_CHECK(refs_[block] > 0, absl::StrCat("releasing block ", block, " that nobody holds"));
  if (--refs_[block] > 0) return;
  if (hash_of_[block].has_value()) {
    lru_pos_[block] = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

std::vector<uint64_t> BlockPool::CachedHashes() const {
  std::vector<uint64_t> hashes;
  hashes.reserve(by_hash_.size());
  for (const auto& [hash, block] : by_hash_) hashes.push_back(hash);
  return hashes;
}

}  // namespace tessera::engine
