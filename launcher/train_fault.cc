#include "launcher/train_fault.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tessera::launcher {

void InjectTrainFaultBefore(int64_t step, int world_rank) {
  const char* spec = std::getenv("TESSERA_TEST_TRAIN_FAULT");
  if (spec == nullptr) return;
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  int rank = -1;
  int64_t at = -1;
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &rank) || !absl::SimpleAtoi(parts[2], &at) ||
      rank != world_rank || at != step) {
    return;
  }
  if (parts[0] == "kill") raise(SIGKILL);
  if (parts[0] == "stall") std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace tessera::launcher
