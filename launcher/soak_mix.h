#ifndef TESSERA_LAUNCHER_SOAK_MIX_H_
#define TESSERA_LAUNCHER_SOAK_MIX_H_

// The requests of `tessera bench soak` (bench_soak.cc): what each kind sends, over gRPC or over
// the OpenAI-style HTTP API, and how its answer is judged. A request is drawn from the seed and
// its index alone, so a run sends the same requests whichever client thread takes each one.
//
// Over gRPC (codes are grpc::StatusCode), kinds and the answers they expect:
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
// Over HTTP (SoakMix::http_share of the requests; codes are HTTP statuses), kinds and the
// answers they expect (soak_http_mix.cc):
//   unary, stream  a valid POST /v1/completions, answered as one JSON object or as server-sent
//                  events: 200 in OpenAI's shape; a greedy or seeded one with the text, finish
//                  reason and token counts of the same request over gRPC (its reference)
//   cancel         a stream the client hangs up on after some events, or once it waited a few
//                  ms: 499, the client's own (200 when the answer was whole first)
//   invalid        a body the API refuses: 400 or 404 with OpenAI's error object, its param
//                  naming the field at fault
//   oversized      a body over --max-message-bytes: 413
//   models         GET /v1/models: 200, listing the model
// Every request that reaches a group may also end UNAVAILABLE (over HTTP: 503, or a stream's
// error event after its first chunk) while a group is being killed and restarted; the caller
// decides whether it ran then.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "launcher/openai_client.h"
#include "tessera/v1/inference.grpc.pb.h"

namespace tessera::launcher {

enum class SoakApi { kGrpc, kHttp };
inline constexpr int kSoakApis = 2;
const char* SoakApiName(SoakApi api);  // "gRPC", "HTTP"

enum class SoakKind { kUnary, kStream, kBatch, kCancel, kDeadline, kInvalid, kOversized, kModels };
inline constexpr int kSoakKinds = 8;
const char* SoakKindName(SoakKind kind);

// Outcome codes past both APIs' own (gRPC's 0..16, HTTP's 100..599).
inline constexpr int kOutcomeBadAnswer = -1;  // an answer, but not the one asked for
inline constexpr int kOutcomeLost = -2;       // no answer within the generous deadline
inline constexpr int kOutcomeBroken = -3;     // HTTP: the connection failed, no whole answer
// HTTP: the client hung up on purpose (nginx's "client closed request", the status the
// coordinator gives a cancelled request).
inline constexpr int kHttpClientClosed = 499;
// gRPC: "OK", "CANCELLED", ...; HTTP: "HTTP 200", ...; both: "BAD_ANSWER", "LOST", "BROKEN".
std::string OutcomeCodeName(SoakApi api, int code);
// The code of UNAVAILABLE over `api`: gRPC's UNAVAILABLE, HTTP's 503.
int UnavailableCode(SoakApi api);

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
  SoakApi api = SoakApi::kGrpc;
  SoakKind kind = SoakKind::kUnary;
  std::string variant;  // what it sent (an invalid input, an oversized message, ...)
  // A grpc::StatusCode or an HTTP status, by api, or one of the kOutcome codes.
  int code = 0;
  std::vector<int> expected;       // the codes that are a right answer
  bool reaches_group = false;      // UNAVAILABLE is a clear answer while a group fails
  bool matched_reference = false;  // HTTP: its answer was the same request's over gRPC
  std::string message;             // the status message, or what was wrong with the answer
  std::string group;               // the group that answered (placement), when one did
  absl::Time start;
  absl::Time end;
};

// Which requests a run sends.
struct SoakMix {
  uint64_t seed = 1;
  double http_share = 0.25;  // of the requests, sent over the HTTP API
};

// One client of the soak: a connection of its own to each API.
struct SoakClients {
  v1::Inference::Stub& grpc;
  OpenAiClient& http;
};

// Draws request `index` of `mix` and sends it through `clients`.
SoakOutcome RunSoakRequest(SoakClients& clients, const SoakTarget& target, const SoakMix& mix,
                           uint64_t index);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_SOAK_MIX_H_
