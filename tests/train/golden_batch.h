#ifndef TESSERA_TESTS_TRAIN_GOLDEN_BATCH_H_
#define TESSERA_TESTS_TRAIN_GOLDEN_BATCH_H_

// Reading tests/golden/train: its JSON files and the batches they describe.

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/train/batches.h"

namespace tessera::train::testing {

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

// A batch of batches.json ("tokens", "positions", "sequence_starts", "targets").
inline MicroBatch BatchOf(const nlohmann::json& j) {
  MicroBatch b;
  b.tokens = j.at("tokens").get<std::vector<int32_t>>();
  b.positions = j.at("positions").get<std::vector<int32_t>>();
  b.sequence_starts = j.at("sequence_starts").get<std::vector<int32_t>>();
  b.targets = j.at("targets").get<std::vector<int32_t>>();
  for (int32_t t : b.targets) b.target_count += t != kIgnoreLabel;
  return b;
}

}  // namespace tessera::train::testing

#endif  // TESSERA_TESTS_TRAIN_GOLDEN_BATCH_H_
