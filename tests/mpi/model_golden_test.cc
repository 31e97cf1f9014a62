// The tensor-parallel forward on the CPU against Hugging Face transformers
// (model_golden_check.h), greedy decoding with penalties against torch, at whatever TP degree
// mpirun gives (ctest runs 1, 2 and 4 ranks).

#include <gtest/gtest.h>

#include <string>

#include "tests/mpi/model_golden_check.h"
#include "tests/mpi/mpi_test_environment.h"

namespace tessera::model {
namespace {

using ::tessera::testing::World;

class ModelGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelGolden, LogitsAndGreedyTokensMatchTransformers) {
  testing::ExpectMatchesGolden(std::string(TESSERA_GOLDEN_MODELS) + "/" + GetParam(), World());
}

INSTANTIATE_TEST_SUITE_P(Architectures, ModelGolden,
                         ::testing::ValuesIn(testing::GoldenArchitectures()));

// GGUF files, dequantized at load, against transformers loading the same files.
class GgufGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufGolden, DequantizedLogitsAndGreedyTokensMatchTransformers) {
  testing::ExpectMatchesGolden(std::string(TESSERA_GOLDEN_GGUF_MODELS) + "/" + GetParam(), World());
}

INSTANTIATE_TEST_SUITE_P(Files, GgufGolden, ::testing::ValuesIn(testing::GgufGoldenModels()));

// OpenAI's presence and frequency penalties in greedy decoding, and top log-probabilities,
// against tests/golden/models/penalties.py.
class PenaltyGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(PenaltyGolden, PenalizedGreedyTokensAndTopLogprobsMatchTorch) {
  testing::ExpectPenaltiesMatchGolden(std::string(TESSERA_GOLDEN_MODELS) + "/" + GetParam(),
                                      World());
}

INSTANTIATE_TEST_SUITE_P(Architectures, PenaltyGolden,
                         ::testing::ValuesIn(testing::PenaltyGoldenArchitectures()));

}  // namespace
}  // namespace tessera::model
