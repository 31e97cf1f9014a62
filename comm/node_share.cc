#include "comm/node_share.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tessera::comm {
namespace {

absl::StatusOr<int> ReadCount(const char* variable) {
  const char* text = std::getenv(variable);
  if (text == nullptr || *text == '\0') return 0;
  int value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(variable, "='", text, "': not a non-negative integer"));
  }
  return value;
}

}  // namespace

absl::StatusOr<NodeShare> NodeShare::FromEnvironment() {
  NodeShare share;
  absl::StatusOr<int> first_slot = ReadCount(kNodeFirstSlotVariable);
  if (!first_slot.ok()) return first_slot.status();
  absl::StatusOr<int> node_ranks = ReadCount(kNodeRanksVariable);
  if (!node_ranks.ok()) return node_ranks.status();
  share.first_slot = *first_slot;
  share.node_ranks = *node_ranks;
  return share;
}

}  // namespace tessera::comm
