#ifndef TESSERA_COMM_ARRIVAL_REPORT_H_
#define TESSERA_COMM_ARRIVAL_REPORT_H_

// The text of a collective's deadline error: which ranks arrived and which did not.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "comm/collective.h"

namespace tessera::comm {

// What a peer said, when asked, about the collective it was waiting in.
struct PeerState {
  uint64_t sequence = 0;
  CollectiveKind kind = CollectiveKind::kAllReduce;
};

struct TimedOutCall {
  std::string description;  // "AllReduce(f32 x16, sum)"
  uint64_t sequence = 0;
  std::string group;
  absl::Duration timeout;
  int self = 0;  // group rank of the reporting process
};

// `peers[r]` is rank r's answer (nullopt: no answer); `labels[r]` names rank r for humans
// ("rank 1 (world 3, node-b)"). Ranks whose answer is this very collective count as
// arrived; the rest did not arrive and are returned in `missing` (group ranks, ascending).
// Example:
//   AllReduce(f32 x16, sum) #7 in group tp0 timed out after 2s: rank 1 (world 1, node-b)
//   did not arrive (no answer: dead, or stalled outside a collective); arrived: rank 0
std::string DescribeTimeout(const TimedOutCall& call,
                            const std::vector<std::optional<PeerState>>& peers,
                            const std::vector<std::string>& labels, std::vector<int>* missing);

}  // namespace tessera::comm

#endif  // TESSERA_COMM_ARRIVAL_REPORT_H_
