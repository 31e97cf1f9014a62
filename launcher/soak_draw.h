#ifndef TESSERA_LAUNCHER_SOAK_DRAW_H_
#define TESSERA_LAUNCHER_SOAK_DRAW_H_

// The random draws `tessera bench soak`'s requests are made of, shared by its gRPC mix
// (soak_mix.cc) and its HTTP mix (soak_http_mix.cc). Every draw takes the caller's generator,
// so a request depends on its seed alone.

#include <cstdint>
#include <random>
#include <string>

#include "tessera/v1/inference.pb.h"

namespace tessera::launcher {

// Uniform in [low, high].
int32_t Draw(std::mt19937_64& random, int32_t low, int32_t high);
// True with probability p.
bool Chance(std::mt19937_64& random, double p);

// A word of the fixed vocabulary prompts are made of (lower-case letters, 1 to 9 of them):
// as real text has one, so that the coordinator's tokenizer cache (a bounded cache of words)
// settles during the warm-up and what memory grows after it is a leak, not the cache filling.
const std::string& RandomWord(std::mt19937_64& random);
// At least `bytes` of words and spaces: text any byte-level tokenizer takes.
std::string RandomText(std::mt19937_64& random, int64_t bytes);

// Sets `request`'s model to `model` and its prompt to 4 to 48 bytes of text or, as often,
// 4 to 32 token ids below `vocab` (all of which the model has).
void DrawPrompt(std::mt19937_64& random, const std::string& model, int32_t vocab,
                v1::GenerateRequest& request);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SOAK_DRAW_H_
