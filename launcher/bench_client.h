#ifndef TESSERA_LAUNCHER_BENCH_CLIENT_H_
#define TESSERA_LAUNCHER_BENCH_CLIENT_H_

// What the serving benchmarks' clients share (`tessera bench serve`, `tessera bench soak`):
// a connection of their own to a coordinator (over gRPC here; over its HTTP API, an
// OpenAiClient of openai_client.h), the model it serves and a range of token ids that model
// certainly has.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::launcher {

// How long a benchmark client tries to connect before the coordinator counts as unreachable.
inline constexpr absl::Duration kBenchConnectTimeout = absl::Seconds(10);

// A channel of its own (its own connection), as a separate client would have; plaintext,
// no limit on what it receives.
std::shared_ptr<grpc::Channel> ConnectBenchClient(const std::string& target);

// UNAVAILABLE naming `target` when `channel` does not connect within kBenchConnectTimeout.
absl::Status WaitConnected(grpc::Channel& channel, const std::string& target);

// The first model ListModels names; UNAVAILABLE when none is listed yet.
absl::StatusOr<std::string> FirstModel(v1::Inference::Stub& stub);

// The largest token id `model` gives for a probe text, plus one: every id below it exists.
absl::StatusOr<int32_t> ProbeVocab(v1::Inference::Stub& stub, const std::string& model);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_BENCH_CLIENT_H_
