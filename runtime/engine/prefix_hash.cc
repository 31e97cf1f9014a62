#include "runtime/engine/prefix_hash.h"

namespace tessera::engine {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t FnvBytes(uint64_t hash, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    hash ^= (value >> (8 * i)) & 0xff;
    hash *= kFnvPrime;
  }
  return hash;
}

uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

uint64_t PrefixHashRoot(absl::string_view adapter) {
  if (adapter.empty()) return kPrefixHashRoot;
  // The base's root, then the name's length and bytes: distinct names give distinct roots
  // (up to 64-bit collisions).
  uint64_t hash = FnvBytes(kFnvOffset, kPrefixHashRoot, 8);
  hash = FnvBytes(hash, adapter.size(), 8);
  for (char c : adapter) hash = FnvBytes(hash, static_cast<uint8_t>(c), 1);
  return SplitMix64(hash);
}

uint64_t BlockHash(uint64_t parent, absl::Span<const int32_t> block_tokens) {
  uint64_t hash = FnvBytes(kFnvOffset, parent, 8);
  hash = FnvBytes(hash, block_tokens.size(), 4);
  for (int32_t token : block_tokens) hash = FnvBytes(hash, static_cast<uint32_t>(token), 4);
  return SplitMix64(hash);
}

std::vector<uint64_t> PrefixBlockHashes(absl::Span<const int32_t> tokens, int block_size,
                                        uint64_t root) {
  std::vector<uint64_t> hashes;
  uint64_t parent = root;
  for (size_t begin = 0; begin + block_size <= tokens.size(); begin += block_size) {
    parent = BlockHash(parent, tokens.subspan(begin, block_size));
    hashes.push_back(parent);
  }
  return hashes;
}

}  // namespace tessera::engine
