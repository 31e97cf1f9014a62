#ifndef TESSERA_LAUNCHER_SOAK_MIX_H_
#define TESSERA_LAUNCHER_SOAK_MIX_H_

// The requests of `tessera bench soak` (bench_soak.cc): what each kind sends over gRPC and how
// its answer is judged. A request is drawn from the seed and its index alone, so a run sends
// the same requests whichever client thread takes each one.
//
// Kinds and the answers they expect:
//   unary, stream  valid Generate / GenerateStream: OK with exactly max_tokens tokens
//   batch          GenerateBatch of valid requests, sometimes one invalid among them: OK, every
//                  valid result complete and the invalid one INVALID_ARGUMENT
//   cancel         a stream the client cancels after some messages, or before any: CANCELLED
//                  (OK when the answer was complete first)
//   deadline       a long request with a deadline of a few ms: DEADLINE_EXCEEDED (or OK)
//   invalid        a request the coordinator or a worker refuses: INVALID_ARGUMENT or
//                  NOT_FOUND, by variant
//   oversized      a request or batch over --max-message-bytes: RESOURCE_EXHAUSTED; a batch of
//                  more than --max-batch-requests requests: INVALID_ARGUMENT
// Every request that reaches a group may also end UNAVAILABLE while a group is being killed
// and restarted; the caller decides whether it ran then.

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::launcher {

enum class SoakKind { kUnary, kStream, kBatch, kCancel, kDeadline, kInvalid, kOversized };
inline constexpr int kSoakKinds = 7;
const char* SoakKindName(SoakKind kind);

// Outcome codes past gRPC's (0..16).
inline constexpr int kOutcomeBadAnswer = 17;  // OK, but not the answer asked for
inline constexpr int kOutcomeLost = 18;       // no answer within the generous deadline
inline constexpr int kOutcomeCodes = 19;
// "OK", "CANCELLED", ..., "BAD_ANSWER", "LOST".
std::string OutcomeCodeName(int code);

// What the requests are sent to, and the coordinator's limits they test.
struct SoakTarget {
  std::string model;
  int32_t vocab = 0;       // token ids below it exist (ProbeVocab)
  int64_t max_tokens = 0;  // the model's context (ListModels' max_model_length)
  int64_t max_message_bytes = 0;
  int max_batch_requests = 0;
  int max_name_bytes = 128;
  int max_stop_strings = 16;
  // The deadline of every request that is not meant to miss one; a request that reaches it
  // is lost.
  absl::Duration answer_timeout = absl::Minutes(2);
};

// What one request came to.
struct SoakOutcome {
  SoakKind kind = SoakKind::kUnary;
  std::string variant;         // what it sent (an invalid input, an oversized message, ...)
  int code = 0;                // a grpc::StatusCode, kOutcomeBadAnswer or kOutcomeLost
  uint32_t expected = 0;       // bit c: code c is a right answer
  bool reaches_group = false;  // UNAVAILABLE is a clear answer while a group fails
  std::string message;         // the status message, or what was wrong with the answer
  std::string group;           // the group that answered (placement), when one did
  absl::Time start;
  absl::Time end;
};

// Draws request `index` of the run seeded `seed` and sends it through `stub`.
SoakOutcome RunSoakRequest(v1::Inference::Stub& stub, const SoakTarget& target, uint64_t seed,
                           uint64_t index);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SOAK_MIX_H_
