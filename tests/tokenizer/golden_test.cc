// Token-for-token comparison with Hugging Face tokenizers: every golden file written by
// tests/golden/tokenizer/generate_goldens.py, for the committed family tokenizers and, when
// TESSERA_TOKENIZER_EXTRA_GOLDENS names a folder of goldens made with --extra, for the real
// tokenizer.json files those name. And with transformers' LlamaTokenizerFast, on what
// tokenizer_config.json's add_bos_token and add_eos_token do to the special tokens.

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "runtime/tokenizer/utf8.h"
#include "tests/unit/status_test_util.h"

namespace tessera::tokenizer {
namespace {

using Json = nlohmann::json;

// Mismatches reported in full before the rest are only counted.
constexpr int kReportedMismatches = 8;

struct GoldenCase {
  std::string name;            // test name
  std::string golden_path;     // <name>.golden.json
  std::string tokenizer_path;  // the tokenizer.json it was made from
  bool round_trips;            // Decode(Encode(text)) == text for every text
};

void PrintTo(const GoldenCase& golden_case, std::ostream* os) { *os << golden_case.name; }

std::vector<GoldenCase> GoldenCases() {
  const std::string dir = TESSERA_TOKENIZER_GOLDEN_DIR;
  // The options and invert tokenizers remove text (a Split with behavior Removed), options
  // and digits add prefix spaces, qwen2, nfkc and normalizers normalize, and the SentencePiece
  // families add and strip "▁", so their decodes differ from the input.
  std::vector<GoldenCase> cases = {
      {"gpt2", dir + "/gpt2.golden.json", dir + "/gpt2.tokenizer.json", true},
      {"llama3", dir + "/llama3.golden.json", dir + "/llama3.tokenizer.json", true},
      {"qwen2", dir + "/qwen2.golden.json", dir + "/qwen2.tokenizer.json", false},
      {"glm4", dir + "/glm4.golden.json", dir + "/glm4.tokenizer.json", true},
      {"smollm2", dir + "/smollm2.golden.json", dir + "/smollm2.tokenizer.json", true},
      {"options", dir + "/options.golden.json", dir + "/options.tokenizer.json", false},
      {"digits", dir + "/digits.golden.json", dir + "/digits.tokenizer.json", false},
      {"invert", dir + "/invert.golden.json", dir + "/invert.tokenizer.json", false},
      {"mistral", dir + "/mistral.golden.json", dir + "/mistral.tokenizer.json", false},
      {"llama2", dir + "/llama2.golden.json", dir + "/llama2.tokenizer.json", false},
      {"metaspace", dir + "/metaspace.golden.json", dir + "/metaspace.tokenizer.json", false},
      {"nfkc", dir + "/nfkc.golden.json", dir + "/nfkc.tokenizer.json", false},
      {"normalizers", dir + "/normalizers.golden.json", dir + "/normalizers.tokenizer.json", false},
  };
  if (const char* extra = std::getenv("TESSERA_TOKENIZER_EXTRA_GOLDENS")) {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(extra)) {
      const std::string file = entry.path().filename().string();
      if (file.ends_with(".golden.json")) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& path : files) {
      std::string name = path.filename().string();
      name = "extra_" + name.substr(0, name.size() - std::string(".golden.json").size());
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      cases.push_back({name, path.string(), "", false});
    }
  }
  return cases;
}

Json ReadJson(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file) << "cannot open " << path;
  std::stringstream buffer;
  buffer << file.rdbuf();
  return Json::parse(buffer.str());
}

std::string Show(const std::vector<int32_t>& ids) { return absl::StrJoin(ids, ","); }

std::string Quote(const std::string& text) { return "\"" + absl::CHexEscape(text) + "\""; }

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {
 protected:
  void SetUp() override {
    golden_ = ReadJson(GetParam().golden_path);
    std::string path = GetParam().tokenizer_path;
    if (path.empty()) path = golden_.at("tokenizer_path").get<std::string>();
    auto tokenizer = Tokenizer::FromFile(path);
    ASSERT_OK(tokenizer);
    tokenizer_ = std::move(*tokenizer);
  }

  // Decodes `ids` one at a time and checks that every piece is valid UTF-8.
  std::string StreamDecode(const std::vector<int32_t>& ids, bool skip_special_tokens,
                           bool& pieces_valid) const {
    StreamingDecoder decoder(*tokenizer_, skip_special_tokens);
    std::string text;
    pieces_valid = true;
    for (const int32_t id : ids) {
      absl::StatusOr<std::string> piece = decoder.Add(id);
      EXPECT_OK(piece);
      if (!piece.ok()) return text;
      if (FindInvalidUtf8(*piece).has_value()) pieces_valid = false;
      text += *piece;
    }
    const std::string rest = decoder.Flush();
    if (FindInvalidUtf8(rest).has_value()) pieces_valid = false;
    return text + rest;
  }

  Json golden_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(GoldenTest, VocabSize) {
  EXPECT_EQ(tokenizer_->vocab_size(), golden_.at("vocab_size_with_added_tokens").get<int32_t>());
}

TEST_P(GoldenTest, EncodeMatchesHuggingFace) {
  int mismatches = 0;
  int checked = 0;
  for (const Json& c : golden_.at("encode")) {
    const std::string text = c.at("text").get<std::string>();
    for (const bool add_special : {false, true}) {
      const auto expected =
          c.at(add_special ? "ids_with_special" : "ids").get<std::vector<int32_t>>();
      absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(text, add_special);
      ASSERT_OK(ids) << Quote(text);
      ++checked;
      if (*ids == expected) continue;
      if (++mismatches <= kReportedMismatches) {
        ADD_FAILURE() << "Encode(" << Quote(text) << ", add_special_tokens=" << add_special
                      << ")\n  got      " << Show(*ids) << "\n  expected " << Show(expected);
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << checked << " encodes";
  EXPECT_GT(checked, 200);
}

TEST_P(GoldenTest, DecodeMatchesHuggingFace) {
  int mismatches = 0;
  auto check = [&](const std::vector<int32_t>& ids, bool skip, const std::string& expected) {
    absl::StatusOr<std::string> text = tokenizer_->Decode(ids, skip);
    ASSERT_OK(text) << Show(ids);
    if (*text != expected && ++mismatches <= kReportedMismatches) {
      ADD_FAILURE() << "Decode(" << Show(ids) << ", skip_special_tokens=" << skip
                    << ")\n  got      " << Quote(*text) << "\n  expected " << Quote(expected);
    }
  };
  for (const Json& c : golden_.at("encode")) {
    check(c.at("ids").get<std::vector<int32_t>>(), false, c.at("decode").get<std::string>());
    check(c.at("ids_with_special").get<std::vector<int32_t>>(), true,
          c.at("decode_with_special_skipped").get<std::string>());
  }
  for (const Json& c : golden_.at("decode")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    check(ids, false, c.at("text").get<std::string>());
    check(ids, true, c.at("text_skip_special").get<std::string>());
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_P(GoldenTest, DecodeRoundTrips) {
  if (!GetParam().round_trips) GTEST_SKIP() << "this tokenizer changes text by design";
  for (const Json& c : golden_.at("encode")) {
    const std::string text = c.at("text").get<std::string>();
    ASSERT_OK_AND_ASSIGN(const std::vector<int32_t> ids, tokenizer_->Encode(text, false));
    ASSERT_OK_AND_ASSIGN(const std::string decoded, tokenizer_->Decode(ids, false));
    EXPECT_EQ(decoded, text);
  }
}

TEST_P(GoldenTest, StreamingDecodeNeverSplitsACharacter) {
  int checked = 0;
  auto check = [&](const std::vector<int32_t>& ids, bool skip, const std::string& expected) {
    bool pieces_valid = false;
    const std::string streamed = StreamDecode(ids, skip, pieces_valid);
    EXPECT_TRUE(pieces_valid) << "a piece of the stream of " << Show(ids) << " is not UTF-8";
    EXPECT_EQ(streamed, expected) << "streaming " << Show(ids) << " skip=" << skip;
    ++checked;
  };
  for (const Json& c : golden_.at("encode")) {
    check(c.at("ids").get<std::vector<int32_t>>(), false, c.at("decode").get<std::string>());
  }
  for (const Json& c : golden_.at("decode")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    check(ids, false, c.at("text").get<std::string>());
    check(ids, true, c.at("text_skip_special").get<std::string>());
  }
  EXPECT_GT(checked, 200);
}

TEST_P(GoldenTest, InvalidUtf8IsRefusedAndReplacementMatches) {
  for (const Json& c : golden_.at("invalid_utf8")) {
    const std::string bytes = absl::HexStringToBytes(c.at("bytes_hex").get<std::string>());
    const int64_t offset = c.at("first_invalid_offset").get<int64_t>();
    EXPECT_TRUE(testing::IsError(tokenizer_->Encode(bytes, false),
                                 absl::StatusCode::kInvalidArgument,
                                 {"not valid UTF-8", absl::StrCat("at offset ", offset)}))
        << Quote(bytes);
    const std::string replaced = ReplaceInvalidUtf8(bytes);
    EXPECT_EQ(replaced, c.at("replaced").get<std::string>()) << Quote(bytes);
    ASSERT_OK_AND_ASSIGN(const std::vector<int32_t> ids, tokenizer_->Encode(replaced, false));
    EXPECT_EQ(Show(ids), Show(c.at("replaced_ids").get<std::vector<int32_t>>())) << Quote(bytes);
  }
}

TEST(TransformersGoldenTest, ConfigFlagsChooseTheSpecialTokens) {
  const std::string dir = TESSERA_TOKENIZER_GOLDEN_DIR;
  const Json golden = ReadJson(dir + "/transformers.golden.json");
  int checked = 0;
  for (const Json& c : golden.at("cases")) {
    const std::string config_text = c.at("tokenizer_config").dump();
    SCOPED_TRACE(c.at("tokenizer").get<std::string>() + " with " + config_text);
    ASSERT_OK_AND_ASSIGN(const TokenizerConfig config,
                         ParseTokenizerConfig(config_text, "tokenizer_config.json"));
    ASSERT_OK_AND_ASSIGN(
        const std::unique_ptr<Tokenizer> tokenizer,
        Tokenizer::FromFile(dir + "/" + c.at("tokenizer").get<std::string>(), config));
    int mismatches = 0;
    for (const Json& e : c.at("encode")) {
      const std::string text = e.at("text").get<std::string>();
      const auto expected = e.at("ids_with_special").get<std::vector<int32_t>>();
      ASSERT_OK_AND_ASSIGN(const std::vector<int32_t> ids, tokenizer->Encode(text, true));
      ++checked;
      if (ids != expected && ++mismatches <= kReportedMismatches) {
        ADD_FAILURE() << "Encode(" << Quote(text) << ", add_special_tokens=true)\n  got      "
                      << Show(ids) << "\n  expected " << Show(expected);
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
  EXPECT_GT(checked, 500);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GoldenTest, ::testing::ValuesIn(GoldenCases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& param_info) {
                           return param_info.param.name;
                         });

}  // namespace
}  // namespace tessera::tokenizer
