#ifndef TESSERA_RUNTIME_ENGINE_PREFIX_HASH_H_
#define TESSERA_RUNTIME_ENGINE_PREFIX_HASH_H_

// The identity of a full KV block for prefix caching: a hash of the block's tokens and of the
// hash of the block before it, so equal hashes mean equal prefixes (up to 64-bit collisions).
// The function is fixed (FNV-1a over the little-endian bytes, then a SplitMix64 finish) so
// that every process computes the same value: the coordinator hashes a prompt to find the
// worker group that holds its prefix.
//
// A sequence that runs with a LoRA adapter starts its chain from a root of its own
// (PrefixHashRoot), so that the same tokens under another adapter, or under the base model,
// never hash alike: their keys and values differ, and a cached block must not be shared.

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tessera::engine {

// Seed of the chain: the "parent" of a sequence's first block on the base model.
inline constexpr uint64_t kPrefixHashRoot = 0x7465737365726131ULL;

// The root of the chain of a sequence that runs with the adapter named `adapter` (its name,
// not its slot, so that every process and group agrees); kPrefixHashRoot for "" (the base).
// An adapter replaced under the same name (a new version) roots its chains at
// PrefixHashRoot("NAME#2"), "NAME#3", ... (adapter_catalog.h): names cannot hold '#'.
uint64_t PrefixHashRoot(absl::string_view adapter);

uint64_t BlockHash(uint64_t parent, absl::Span<const int32_t> block_tokens);

// The hashes of the full blocks of `tokens`, in order: tokens.size() / block_size of them,
// chained from `root`.
std::vector<uint64_t> PrefixBlockHashes(absl::Span<const int32_t> tokens, int block_size,
                                        uint64_t root = kPrefixHashRoot);

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_PREFIX_HASH_H_
