#ifndef TESSERA_RUNTIME_ENGINE_BLOCK_POOL_H_
#define TESSERA_RUNTIME_ENGINE_BLOCK_POOL_H_

// The KV cache's blocks as the scheduler sees them: which are free, which are held by how
// many sequences, and which hold a known prefix (prefix caching).
//
// A block is in one of three states:
//   held       reference count > 0: in the block table of that many sequences;
//   cached     count 0 but holding the KV of a full block whose prefix hash is known; it can
//              be taken back by a sequence with that prefix, or evicted (least recently
//              released first) when a fresh block is needed;
//   free       count 0, nothing worth keeping.
// Not thread-safe: the engine's scheduler owns it on the leader's step loop.

#include <cstdint>
#include <list>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace tessera::engine {

struct BlockPoolStats {
  int64_t lookups = 0;     // full blocks looked up in the prefix cache
  int64_t hits = 0;        // of those, found
  int64_t evictions = 0;   // cached blocks reused for other content
};

class BlockPool {
 public:
  BlockPool(int num_blocks, bool prefix_caching);

  int num_blocks() const { return static_cast<int>(refs_.size()); }
  // Blocks an allocation can take now: free plus cached.
  int num_available() const { return static_cast<int>(free_.size() + lru_.size()); }
  int num_held() const { return num_blocks() - num_available(); }
  int num_cached() const { return static_cast<int>(by_hash_.size()); }
  bool prefix_caching() const { return prefix_caching_; }
  const BlockPoolStats& stats() const { return stats_; }

  // A block for new content, held once: a free one, else the least recently released cached
  // one (forgetting its hash). nullopt when every block is held.
  std::optional<int> Allocate();

  // The longest run of `hashes` (a sequence's full-block hashes from the first) whose blocks
  // are cached or held, each taken once more; empty without prefix caching.
  std::vector<int> AcquireCachedPrefix(absl::Span<const uint64_t> hashes);
  // Counts a lookup of `queried` full blocks of which `found` were cached, once the
  // sequence that looked is admitted.
  void RecordLookup(int64_t queried, int64_t found) {
    stats_.lookups += queried;
    stats_.hits += found;
  }

  // Records that held `block` now holds the full block with this prefix hash. A hash already
  // known for another block keeps that block; this one stays anonymous.
  void Register(int block, uint64_t hash);

  // Drops one reference. At zero the block becomes cached (if it has a hash) or free.
  void Release(int block);

  // Hashes of every block holding a known prefix (held or cached), for prefix-aware routing.
  std::vector<uint64_t> CachedHashes() const;

 private:
  bool prefix_caching_;
  std::vector<int> refs_;
  std::vector<std::optional<uint64_t>> hash_of_;
  std::vector<int> free_;
  std::list<int> lru_;  // cached blocks with no reference, least recently released first
  std::vector<std::list<int>::iterator> lru_pos_;
  absl::flat_hash_map<uint64_t, int> by_hash_;
  BlockPoolStats stats_;
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_BLOCK_POOL_H_
