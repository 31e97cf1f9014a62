#include "comm/arrival_report.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::comm {

std::string DescribeTimeout(const TimedOutCall& call,
                            const std::vector<std::optional<PeerState>>& peers,
                            const std::vector<std::string>& labels, std::vector<int>* missing) {
  std::vector<std::string> absent;
  std::vector<std::string> arrived;
  missing->clear();
  for (size_t r = 0; r < peers.size(); ++r) {
    int rank = static_cast<int>(r);
    if (rank == call.self) {
      arrived.push_back(labels[r]);
      continue;
    }
    const std::optional<PeerState>& state = peers[r];
    if (state.has_value() && state->sequence == call.sequence) {
      arrived.push_back(labels[r]);
      continue;
    }
    missing->push_back(rank);
    if (!state.has_value()) {
      absent.push_back(absl::StrCat(labels[r],
                                    " did not arrive (no answer: dead, or stalled outside a "
                                    "collective)"));
    } else if (state->sequence < call.sequence) {
      absent.push_back(absl::StrCat(labels[r], " did not arrive: it is still waiting in ",
                                    NameOf(state->kind), " #", state->sequence));
    } else {
      absent.push_back(absl::StrCat(labels[r], " did not arrive: it is already in ",
                                    NameOf(state->kind), " #", state->sequence,
                                    " (the ranks issued different collectives)"));
    }
  }
  if (absent.empty()) {
    absent.push_back("every rank arrived but the data did not finish moving");
  }
  return absl::StrCat(call.description, " #", call.sequence, " in group ", call.group,
                      " timed out after ", absl::FormatDuration(call.timeout), ": ",
                      absl::StrJoin(absent, "; "), "; arrived: ", absl::StrJoin(arrived, ", "));
}

}  // namespace tessera::comm
