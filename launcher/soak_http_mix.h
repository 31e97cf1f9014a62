#ifndef TESSERA_LAUNCHER_SOAK_HTTP_MIX_H_
#define TESSERA_LAUNCHER_SOAK_HTTP_MIX_H_

// The HTTP part of `tessera bench soak`'s mix: its kinds over the OpenAI-style API and what
// each expects are in soak_mix.h.

#include <random>

#include "launcher/soak_mix.h"

namespace tessera::launcher {

// Draws a request of the HTTP mix from `random` and sends it through `clients.http`; a greedy
// or seeded completion's reference goes through `clients.grpc`. Fills `outcome` but its api
// and times.
void RunHttpRequest(SoakClients& clients, const SoakTarget& target, std::mt19937_64& random,
                    SoakOutcome& outcome);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SOAK_HTTP_MIX_H_
