// Unit tests of runtime/tokenizer: UTF-8 handling, the byte-level alphabet, BPE merge order,
// normalizers, byte fallback, tokenizer_config.json's add_bos_token and add_eos_token, errors
// for malformed or unsupported tokenizer.json files and for bad input, the streaming decoder
// (on random ids, and on byte-fallback runs), and concurrent encoding. Agreement with Hugging
// Face tokenizers is golden_test.cc's job.

#include "runtime/tokenizer/tokenizer.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "runtime/tokenizer/utf8.h"
#include "tests/unit/status_test_util.h"

namespace tessera::tokenizer {
namespace {

using Json = nlohmann::json;
using ::tessera::testing::IsError;

constexpr char kReplacement[] = "\xef\xbf\xbd";

std::string GoldenPath(const std::string& file) {
  return std::string(TESSERA_TOKENIZER_GOLDEN_DIR) + "/" + file;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

// ---------------------------------------------------------------------------------------------
// UTF-8

TEST(Utf8Test, FindInvalidUtf8NamesTheFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8(""), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("plain ASCII text that is longer than eight bytes"), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("h\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"),
            std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("abc\x80"), 3u);
  EXPECT_EQ(FindInvalidUtf8("0123456789abcdef\xff"), 16u);
  EXPECT_EQ(FindInvalidUtf8("\xc0\x80"), 0u);          // overlong
  EXPECT_EQ(FindInvalidUtf8("\xe0\x80\x80"), 0u);      // overlong
  EXPECT_EQ(FindInvalidUtf8("\xed\xa0\x80"), 0u);      // surrogate
  EXPECT_EQ(FindInvalidUtf8("\xf4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("ab\xe4\xb8"), 2u);        // cut short
  EXPECT_EQ(FindInvalidUtf8("\xe4\xb8"
                            "A"),
            0u);
}

TEST(Utf8Test, ReplacementFollowsMaximalSubparts) {
  const std::string r = kReplacement;
  EXPECT_EQ(ReplaceInvalidUtf8("ok"), "ok");
  EXPECT_EQ(ReplaceInvalidUtf8("\xf0\x9f\x98"), r);  // one truncated character
  EXPECT_EQ(ReplaceInvalidUtf8("\xf0\x9f\x98"
                               "A"),
            r + "A");
  EXPECT_EQ(ReplaceInvalidUtf8("\xed\xa0\x80"), r + r + r);  // a surrogate: three
  EXPECT_EQ(ReplaceInvalidUtf8("\xc0\x80"), r + r);
  EXPECT_EQ(ReplaceInvalidUtf8("\xe4\xb8"
                               "A\xe4\xb8\xad"),
            r + "A\xe4\xb8\xad");
  EXPECT_EQ(ReplaceInvalidUtf8("\xff\xfe"), r + r);
}

TEST(Utf8Test, NonFinalLossyDecodingHoldsBackAnUnfinishedCharacter) {
  std::string out;
  EXPECT_EQ(AppendUtf8Lossy("a\xf0\x9f", /*final=*/false, &out), 1u);
  EXPECT_EQ(out, "a");
  out.clear();
  // A byte that cannot continue the character settles it at once.
  EXPECT_EQ(AppendUtf8Lossy("a\xf0"
                            "A",
                            /*final=*/false, &out),
            3u);
  EXPECT_EQ(out, std::string("a") + kReplacement + "A");
  out.clear();
  EXPECT_EQ(AppendUtf8Lossy("a\xf0\x9f", /*final=*/true, &out), 3u);
  EXPECT_EQ(out, std::string("a") + kReplacement);
}

// ---------------------------------------------------------------------------------------------
// Byte-level alphabet

TEST(ByteLevelTest, EveryByteRoundTrips) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::string spelled = BytesToByteLevel(all);
  EXPECT_EQ(FindInvalidUtf8(spelled), std::nullopt);
  EXPECT_EQ(ByteLevelToBytes(spelled), all);
}

TEST(ByteLevelTest, KnownCharacters) {
  EXPECT_EQ(ByteLevelChar(' '), U'\u0120');   // Ġ
  EXPECT_EQ(ByteLevelChar('\n'), U'\u010a');  // Ċ
  EXPECT_EQ(ByteLevelChar('A'), U'A');
  EXPECT_EQ(ByteLevelChar(0xe9), U'\u00e9');
  EXPECT_EQ(ByteLevelToBytes("\xc4\xa0hello"), " hello");     // "Ġhello"
  EXPECT_EQ(ByteLevelToBytes("\xe2\x96\x81"), std::nullopt);  // ▁ is not in the alphabet
}

// ---------------------------------------------------------------------------------------------
// Regex

std::vector<std::string> Matches(const Regex& regex, absl::string_view text) {
  std::vector<std::string> out;
  EXPECT_OK(regex.ForEachMatch(
      text, [&](size_t begin, size_t end) { out.emplace_back(text.substr(begin, end - begin)); }));
  return out;
}

TEST(RegexTest, UnicodeClassesAndCaseInsensitiveContractions) {
  ASSERT_OK_AND_ASSIGN(auto regex, Regex::Compile(R"((?i:'s|'ll)|\p{L}+|\p{N}{1,3})"));
  EXPECT_EQ(Matches(*regex, "WE'LL 中文 12345 x'\xc5\xbf"),  // 'ſ folds to 's
            (std::vector<std::string>{"WE", "'LL", "中文", "123", "45", "x", "'\xc5\xbf"}));
}

TEST(RegexTest, WhiteSpaceIsTheUnicodeProperty) {
  ASSERT_OK_AND_ASSIGN(auto space, Regex::Compile(R"(\s+)"));
  // NEL and NBSP are white space; U+180E and U+200B are not (PCRE2's own \s has U+180E).
  EXPECT_EQ(Matches(*space,
                    "a\xc2\x85\xc2\xa0"
                    "b\xe1\xa0\x8e\xe2\x80\x8b"),
            std::vector<std::string>{"\xc2\x85\xc2\xa0"});
  ASSERT_OK_AND_ASSIGN(auto not_space, Regex::Compile(R"([^\s]+|\S)"));
  EXPECT_EQ(Matches(*not_space, "\xe1\xa0\x8e "), std::vector<std::string>{"\xe1\xa0\x8e"});
  // Inside \Q...\E an escape is literal.
  ASSERT_OK_AND_ASSIGN(auto quoted, Regex::Compile(R"(\Q\s\E)"));
  EXPECT_EQ(Matches(*quoted, "a\\sb"), std::vector<std::string>{"\\s"});
}

TEST(RegexTest, LiteralsMatchThemselves) {
  ASSERT_OK_AND_ASSIGN(auto literal, Regex::CompileLiteral("a.b|(\n"));
  EXPECT_EQ(Matches(*literal, "a.b|(\n axb|(\n a.b|(\n"),
            (std::vector<std::string>{"a.b|(\n", "a.b|(\n"}));
}

TEST(RegexTest, EmptyMatchesAreSkipped) {
  ASSERT_OK_AND_ASSIGN(auto regex, Regex::Compile("x*"));
  EXPECT_EQ(Matches(*regex, "ab\xe4\xb8\xadxx"), std::vector<std::string>{"xx"});
}

// ---------------------------------------------------------------------------------------------
// A small tokenizer.json to load and to break.

// Every byte is a token; `merges` ("a b") add the tokens they make.
Json SmallTokenizer(const std::vector<std::string>& merges) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) {
    vocab[BytesToByteLevel(std::string(1, static_cast<char>(b)))] = b;
  }
  for (const std::string& merge : merges) {
    const size_t space = merge.find(' ');
    const std::string merged = merge.substr(0, space) + merge.substr(space + 1);
    if (!vocab.contains(merged)) vocab[merged] = static_cast<int>(vocab.size());
  }
  const int eos = static_cast<int>(vocab.size());
  return Json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", Json::array({{{"id", eos},
                                     {"content", "<eos>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
}

std::unique_ptr<Tokenizer> Load(const Json& json) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromJson(json.dump());
  EXPECT_OK(tokenizer);
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

std::vector<int32_t> Ids(const Tokenizer& tokenizer, const std::vector<std::string>& tokens) {
  std::vector<int32_t> ids;
  for (const std::string& token : tokens) {
    std::optional<int32_t> id = tokenizer.TokenToId(token);
    EXPECT_TRUE(id.has_value()) << token;
    ids.push_back(id.value_or(-1));
  }
  return ids;
}

TEST(BpeTest, LowerRankMergesFirst) {
  auto ab_first = Load(SmallTokenizer({"a b", "b c"}));
  ASSERT_NE(ab_first, nullptr);
  EXPECT_EQ(*ab_first->Encode("abc", false), Ids(*ab_first, {"ab", "c"}));
  auto bc_first = Load(SmallTokenizer({"b c", "a b"}));
  ASSERT_NE(bc_first, nullptr);
  EXPECT_EQ(*bc_first->Encode("abc", false), Ids(*bc_first, {"a", "bc"}));
}

TEST(BpeTest, EqualRanksMergeLeftmostFirst) {
  auto t = Load(SmallTokenizer({"a a"}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Encode("aaa", false), Ids(*t, {"aa", "a"}));
  EXPECT_EQ(*t->Encode("aaaa", false), Ids(*t, {"aa", "aa"}));
}

TEST(BpeTest, MergedTokensMergeFurther) {
  auto t = Load(SmallTokenizer({"\xc4\xa0 h", "\xc4\xa0h i", "a a", "aa aa"}));  // "Ġ h", "Ġh i"
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Encode(" hi", false), Ids(*t, {"\xc4\xa0hi"}));
  EXPECT_EQ(*t->Encode("aaaaa", false), Ids(*t, {"aaaa", "a"}));
}

TEST(BpeTest, IgnoreMergesTakesWholeVocabularyWords) {
  Json json = SmallTokenizer({"a b"});
  json["model"]["vocab"]["abc"] = 300;  // no merge makes it
  auto without = Load(json);
  ASSERT_NE(without, nullptr);
  EXPECT_EQ(*without->Encode("abc", false), Ids(*without, {"ab", "c"}));
  json["model"]["ignore_merges"] = true;
  auto with = Load(json);
  ASSERT_NE(with, nullptr);
  EXPECT_EQ(*with->Encode("abc", false), std::vector<int32_t>{300});
}

TEST(BpeTest, MergesAsPairsEqualMergesAsStrings) {
  Json json = SmallTokenizer({"a b", "b c"});
  json["model"]["merges"] = Json::array({Json::array({"a", "b"}), Json::array({"b", "c"})});
  auto t = Load(json);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Encode("abc", false), Ids(*t, {"ab", "c"}));
}

TEST(TokenizerTest, SpecialTokensAndLookups) {
  auto t = Load(SmallTokenizer({"a b"}));
  ASSERT_NE(t, nullptr);
  const int32_t eos = *t->TokenToId("<eos>");
  EXPECT_TRUE(t->IsSpecial(eos));
  EXPECT_FALSE(t->IsSpecial(*t->TokenToId("ab")));
  EXPECT_EQ(t->IdToToken(eos), "<eos>");
  EXPECT_EQ(t->IdToToken(t->vocab_size()), std::nullopt);
  EXPECT_EQ(t->vocab_size(), eos + 1);
  ASSERT_OK_AND_ASSIGN(const std::vector<int32_t> ids, t->Encode("ab<eos>ab", false));
  EXPECT_EQ(ids, (std::vector<int32_t>{*t->TokenToId("ab"), eos, *t->TokenToId("ab")}));
  EXPECT_EQ(*t->Decode(ids, false), "ab<eos>ab");
  EXPECT_EQ(*t->Decode(ids, true), "abab");
}

TEST(TokenizerTest, TemplateAddsSpecialTokensOnlyWhenAsked) {
  Json json = SmallTokenizer({});
  const int eos = json["added_tokens"][0]["id"];
  json["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       Json::array(
           {{{"type", "ByteLevel"}, {"trim_offsets", false}},
            {{"type", "TemplateProcessing"},
             {"single", Json::array({{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                     {{"SpecialToken", {{"id", "<eos>"}, {"type_id", 0}}}}})},
             {"pair", Json::array()},
             {"special_tokens",
              {{"<eos>", {{"id", "<eos>"}, {"ids", {eos}}, {"tokens", {"<eos>"}}}}}}}})}};
  auto t = Load(json);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Encode("a", false), std::vector<int32_t>{'a'});
  EXPECT_EQ(*t->Encode("a", true), (std::vector<int32_t>{'a', eos}));
  EXPECT_EQ(*t->Encode("", true), std::vector<int32_t>{eos});
}

TEST(TokenizerTest, EncodeRefusesInvalidUtf8NamingTheOffset) {
  auto t = Load(SmallTokenizer({}));
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(IsError(t->Encode("Hello \xff world", false), absl::StatusCode::kInvalidArgument,
                      {"not valid UTF-8", "0xff", "offset 6"}));
  EXPECT_TRUE(
      IsError(t->Encode("ok\xf0\x9f\x98", true), absl::StatusCode::kInvalidArgument, {"offset 2"}));
  ASSERT_OK_AND_ASSIGN(const std::vector<int32_t> ids,
                       t->Encode(ReplaceInvalidUtf8("ok\xf0\x9f\x98"), false));
  EXPECT_EQ(*t->Decode(ids, false), std::string("ok") + kReplacement);
}

TEST(TokenizerTest, DecodeRefusesIdsOutsideTheVocabulary) {
  auto t = Load(SmallTokenizer({}));
  ASSERT_NE(t, nullptr);
  const std::vector<int32_t> ids = {'a', t->vocab_size(), 'b'};
  EXPECT_TRUE(IsError(t->Decode(ids, false), absl::StatusCode::kInvalidArgument,
                      {"ids[1]", "outside the vocabulary"}));
  const std::vector<int32_t> negative = {-1};
  EXPECT_TRUE(IsError(t->Decode(negative, false), absl::StatusCode::kInvalidArgument));
}

TEST(TokenizerTest, IdsWithoutATokenDecodeToNothing) {
  Json json = SmallTokenizer({});
  json["model"]["vocab"]["zz"] = 400;
  auto t = Load(json);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 401);
  EXPECT_EQ(t->IdToToken(350), std::nullopt);
  const std::vector<int32_t> ids = {'a', 350, 400};
  EXPECT_EQ(*t->Decode(ids, false), "azz");
}

TEST(TokenizerTest, EmptyInputs) {
  auto t = Load(SmallTokenizer({}));
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->Encode("", false)->empty());
  EXPECT_EQ(*t->Decode({}, false), "");
}

// ---------------------------------------------------------------------------------------------
// Normalizers

TEST(NormalizerTest, LowercaseIsRustsCharToLowercase) {
  std::vector<NormalizerStep> steps(1);
  steps[0].kind = NormalizerStep::Kind::kLowercase;
  const Normalizer lowercase(std::move(steps));
  std::string out;
  // What tokenizers 0.23.3's Lowercase makes of it: İ has a two-character lowercase, and a
  // final Σ is σ (no context).
  ASSERT_OK(lowercase.Normalize("\xc4\xb0STANBUL \xce\xa3\xce\x91\xce\xa3 \xe2\x85\xab", &out));
  EXPECT_EQ(out, "i\xcc\x87stanbul \xcf\x83\xce\xb1\xcf\x83 \xe2\x85\xbb");
}

TEST(NormalizerTest, StepsApplyInOrderAndPrependSkipsEmptyText) {
  std::vector<NormalizerStep> steps(3);
  steps[0].kind = NormalizerStep::Kind::kNfkc;
  steps[1].kind = NormalizerStep::Kind::kReplace;
  steps[1].text = "\xe2\x96\x81";  // "▁"
  ASSERT_OK_AND_ASSIGN(steps[1].pattern, Regex::CompileLiteral(" "));
  steps[2].kind = NormalizerStep::Kind::kPrepend;
  steps[2].text = "\xe2\x96\x81";
  const Normalizer normalizer(std::move(steps));
  std::string out;
  ASSERT_OK(normalizer.Normalize("\xef\xac\x81le \xe2\x91\xa0", &out));  // "ﬁle ①"
  EXPECT_EQ(out,
            "\xe2\x96\x81"
            "file"
            "\xe2\x96\x81"
            "1");
  ASSERT_OK(normalizer.Normalize("", &out));
  EXPECT_EQ(out, "");
}

// ---------------------------------------------------------------------------------------------
// SentencePiece-style BPE: a small tokenizer.json as transformers converts Llama-2's.

constexpr char kSpace[] = "\xe2\x96\x81";  // "▁"

// <unk> <s> </s>, the 256 byte tokens, "a", "b", "▁" and the merge "▁ a"; Metaspace with
// `scheme`, byte fallback, Llama's decoder, <s> prepended.
Json SentencePieceTokenizer(const std::string& scheme = "first") {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["a"] = 259;
  vocab["b"] = 260;
  vocab[kSpace] = 261;
  vocab[std::string(kSpace) + "a"] = 262;
  auto special = [](int id, const std::string& content) {
    return Json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  };
  auto replace = [](const std::string& from, const std::string& to) {
    return Json{{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
  };
  return Json{
      {"added_tokens", Json::array({special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Metaspace"},
        {"replacement", kSpace},
        {"prepend_scheme", scheme},
        {"split", false}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", Json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         Json::array({replace(kSpace, " "),
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", Json::array({Json::array({kSpace, "a"})})}}},
  };
}

int32_t ByteToken(uint8_t byte) { return 3 + byte; }

TEST(SentencePieceTest, CharactersWithoutATokenBecomeTheirBytes) {
  auto t = Load(SentencePieceTokenizer());
  ASSERT_NE(t, nullptr);
  // "a 中": "▁a", "▁", then 中's three bytes.
  EXPECT_EQ(*t->Encode("a \xe4\xb8\xad", false),
            (std::vector<int32_t>{262, 261, ByteToken(0xe4), ByteToken(0xb8), ByteToken(0xad)}));
  EXPECT_EQ(*t->Decode(*t->Encode("a \xe4\xb8\xad", true), true), "a \xe4\xb8\xad");
}

TEST(SentencePieceTest, FirstPrependsOnlyAtTheStartOfTheText) {
  auto first = Load(SentencePieceTokenizer("first"));
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(*first->Encode("a<s>a", false), (std::vector<int32_t>{262, 1, 259}));
  auto always = Load(SentencePieceTokenizer("always"));
  ASSERT_NE(always, nullptr);
  EXPECT_EQ(*always->Encode("a<s>a", false), (std::vector<int32_t>{262, 1, 262}));
  auto never = Load(SentencePieceTokenizer("never"));
  ASSERT_NE(never, nullptr);
  EXPECT_EQ(*never->Encode("a<s>a", false), (std::vector<int32_t>{259, 1, 259}));
}

TEST(SentencePieceTest, StreamingHoldsAByteRunUntilItEnds) {
  auto t = Load(SentencePieceTokenizer());
  ASSERT_NE(t, nullptr);
  StreamingDecoder decoder(*t, /*skip_special_tokens=*/false);
  // 中 is complete after three bytes, but a fourth byte could still make the run ill-formed
  // (and every byte of it U+FFFD), so it waits for a token that is not a byte.
  for (const uint8_t byte : {0xe4, 0xb8, 0xad}) EXPECT_EQ(*decoder.Add(ByteToken(byte)), "");
  EXPECT_EQ(decoder.pending_bytes(), 3u);
  EXPECT_EQ(*decoder.Add(262), "\xe4\xb8\xad a");
  EXPECT_EQ(decoder.Flush(), "");
}

TEST(SentencePieceTest, AnIllFormedByteRunIsOneReplacementPerByteAtOnce) {
  auto t = Load(SentencePieceTokenizer());
  ASSERT_NE(t, nullptr);
  const std::string r = kReplacement;
  StreamingDecoder decoder(*t, false);
  EXPECT_EQ(*decoder.Add(ByteToken('A')), "");
  EXPECT_EQ(*decoder.Add(ByteToken(0xff)), r + r);  // "A" too: the run is ill-formed
  EXPECT_EQ(*decoder.Add(ByteToken('B')), r);
  EXPECT_EQ(*decoder.Add(262), " a");
  const std::vector<int32_t> ids = {ByteToken('A'), ByteToken(0xff), ByteToken('B'), 262};
  EXPECT_EQ(*t->Decode(ids, false), r + r + r + " a");
  // A run cut short by the end of the stream is ill-formed too.
  EXPECT_EQ(*decoder.Add(ByteToken(0xe4)), "");
  EXPECT_EQ(decoder.Flush(), r);
}

TEST(SentencePieceTest, StripRemovesOnlyTheFirstSpaceOfTheText) {
  auto t = Load(SentencePieceTokenizer());
  ASSERT_NE(t, nullptr);
  StreamingDecoder decoder(*t, /*skip_special_tokens=*/true);
  EXPECT_EQ(*decoder.Add(1), "");    // <s>, skipped
  EXPECT_EQ(*decoder.Add(261), "");  // "▁": the space Strip removes
  EXPECT_EQ(*decoder.Add(262), " a");
  EXPECT_EQ(*decoder.Add(261), " ");
  EXPECT_EQ(decoder.Flush(), "");
}

TEST(SentencePieceTest, MetaspaceDecoderDropsTheFirstTokensReplacements) {
  Json json = SentencePieceTokenizer();
  json["decoder"] = {{"type", "Sequence"},
                     {"decoders", Json::array({{{"type", "ByteFallback"}},
                                               {{"type", "Metaspace"},
                                                {"replacement", kSpace},
                                                {"prepend_scheme", "always"},
                                                {"split", true}}})}};
  auto t = Load(json);
  ASSERT_NE(t, nullptr);
  const std::vector<int32_t> ids = {261, 262, 262};  // "▁" "▁a" "▁a"
  EXPECT_EQ(*t->Decode(ids, false), " a a");
}

// ---------------------------------------------------------------------------------------------
// tokenizer_config.json's add_bos_token and add_eos_token

TEST(ConfigTest, FlagsRebuildTheTemplateAndUnsetOnesKeepItsSide) {
  TokenizerConfig config;
  config.eos_token = "</s>";
  config.add_eos_token = true;
  ASSERT_OK_AND_ASSIGN(auto t,
                       Tokenizer::FromJson(SentencePieceTokenizer().dump(), "t.json", config));
  EXPECT_EQ(*t->Encode("a", true), (std::vector<int32_t>{1, 262, 2}));
  config.bos_token = "<s>";
  config.add_bos_token = false;
  ASSERT_OK_AND_ASSIGN(t, Tokenizer::FromJson(SentencePieceTokenizer().dump(), "t.json", config));
  EXPECT_EQ(*t->Encode("a", true), (std::vector<int32_t>{262, 2}));
  EXPECT_EQ(*t->Encode("a", false), (std::vector<int32_t>{262}));
}

TEST(ConfigTest, AFlagNeedsItsTokenInTheVocabulary) {
  TokenizerConfig config;
  config.add_bos_token = true;
  const std::string json = SentencePieceTokenizer().dump();
  EXPECT_TRUE(IsError(Tokenizer::FromJson(json, "t.json", config),
                      absl::StatusCode::kInvalidArgument,
                      {"t.json: tokenizer_config.json's bos_token is needed and not set"}));
  config.bos_token = "<bos>";
  EXPECT_TRUE(IsError(Tokenizer::FromJson(json, "t.json", config),
                      absl::StatusCode::kInvalidArgument,
                      {"bos_token \"<bos>\" is not a token of this tokenizer"}));
}

// ---------------------------------------------------------------------------------------------
// Streaming decoder

TEST(StreamingDecoderTest, HoldsBackAnEmojiUntilItIsWhole) {
  auto t = Load(SmallTokenizer({}));
  ASSERT_NE(t, nullptr);
  StreamingDecoder decoder(*t, /*skip_special_tokens=*/false);
  const std::string emoji = "\xf0\x9f\x98\x80";
  for (size_t i = 0; i + 1 < emoji.size(); ++i) {
    EXPECT_EQ(*decoder.Add(static_cast<uint8_t>(emoji[i])), "");
    EXPECT_EQ(decoder.pending_bytes(), i + 1);
  }
  EXPECT_EQ(*decoder.Add(static_cast<uint8_t>(emoji.back())), emoji);
  EXPECT_EQ(decoder.Flush(), "");
}

TEST(StreamingDecoderTest, FlushReplacesAnUnfinishedCharacter) {
  auto t = Load(SmallTokenizer({}));
  ASSERT_NE(t, nullptr);
  StreamingDecoder decoder(*t, false);
  EXPECT_EQ(*decoder.Add('a'), "a");
  EXPECT_EQ(*decoder.Add(0xe4), "");
  EXPECT_EQ(*decoder.Add(0xb8), "");
  // An id outside the vocabulary is refused and changes nothing.
  EXPECT_TRUE(IsError(decoder.Add(t->vocab_size()), absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(decoder.pending_bytes(), 2u);
  EXPECT_EQ(decoder.Flush(), kReplacement);
  EXPECT_EQ(decoder.pending_bytes(), 0u);
  EXPECT_EQ(*decoder.Add('b'), "b");
}

TEST(StreamingDecoderTest, InvalidBytesComeOutAsSoonAsTheyAreKnown) {
  auto t = Load(SmallTokenizer({}));
  ASSERT_NE(t, nullptr);
  StreamingDecoder decoder(*t, false);
  EXPECT_EQ(*decoder.Add(0xf0), "");
  EXPECT_EQ(*decoder.Add('A'), std::string(kReplacement) + "A");
  EXPECT_EQ(*decoder.Add(0xff), kReplacement);
}

TEST(StreamingDecoderTest, RandomIdsMatchFullDecode) {
  auto t = Tokenizer::FromFile(GoldenPath("llama3.tokenizer.json"));
  ASSERT_OK(t);
  const Tokenizer& tokenizer = **t;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> any_id(0, tokenizer.vocab_size() - 1);
  std::uniform_int_distribution<int> length(1, 40);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> ids(static_cast<size_t>(length(rng)));
    for (int32_t& id : ids) id = any_id(rng);
    for (const bool skip : {false, true}) {
      StreamingDecoder decoder(tokenizer, skip);
      std::string streamed;
      for (const int32_t id : ids) {
        ASSERT_OK_AND_ASSIGN(const std::string piece, decoder.Add(id));
        ASSERT_EQ(FindInvalidUtf8(piece), std::nullopt) << "trial " << trial;
        streamed += piece;
      }
      streamed += decoder.Flush();
      EXPECT_EQ(streamed, *tokenizer.Decode(ids, skip)) << "trial " << trial;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed and unsupported tokenizer.json files

struct BadFile {
  std::string name;
  std::string json;
  std::vector<std::string> message_parts;
};

std::vector<BadFile> BadFiles() {
  std::vector<BadFile> files;
  auto edit = [&](const std::string& name, auto&& change, std::vector<std::string> parts) {
    Json json = SmallTokenizer({"a b"});
    change(json);
    files.push_back({name, json.dump(), std::move(parts)});
  };
  files.push_back({"not_json", "{\"model\": ", {"tokenizer.json: not valid JSON"}});
  files.push_back({"empty", "", {"not valid JSON"}});
  // A number past a double's range is an error of the file, not an exception.
  files.push_back({"huge_number", "{\"version\": 1e776}", {"not valid JSON", "1e776"}});
  files.push_back({"array", "[1, 2]", {"must be a JSON object"}});
  edit("no_model", [](Json& j) { j.erase("model"); }, {"tokenizer.json: model is missing"});
  edit("unigram", [](Json& j) { j["model"]["type"] = "Unigram"; },
       {"tokenizer.json: model.type 'Unigram' is not supported"});
  edit("wordpiece", [](Json& j) { j["model"]["type"] = "WordPiece"; },
       {"model.type 'WordPiece' is not supported"});
  edit("no_vocab", [](Json& j) { j["model"].erase("vocab"); }, {"model.vocab is missing"});
  edit("vocab_array", [](Json& j) { j["model"]["vocab"] = Json::array(); },
       {"model.vocab must be an object"});
  edit("negative_id", [](Json& j) { j["model"]["vocab"]["a"] = -3; },
       {"model.vocab[\"a\"] must be an id"});
  edit("huge_id", [](Json& j) { j["model"]["vocab"]["zz"] = 4000000000LL; },
       {"model.vocab[\"zz\"] must be an id"});
  edit("string_id", [](Json& j) { j["model"]["vocab"]["zz"] = "7"; },
       {"model.vocab[\"zz\"] must be an id"});
  edit("duplicate_id", [](Json& j) { j["model"]["vocab"]["zz"] = 0; }, {"has id 0"});
  edit("no_merges", [](Json& j) { j["model"].erase("merges"); }, {"model.merges is missing"});
  edit("merge_unknown_token", [](Json& j) { j["model"]["merges"].push_back("a zz"); },
       {"model.merges[1] names \"zz\", which is not in model.vocab"});
  edit("merge_unknown_product", [](Json& j) { j["model"]["merges"].push_back("b c"); },
       {"model.merges[1] makes \"bc\", which is not in model.vocab"});
  edit("merge_one_token", [](Json& j) { j["model"]["merges"].push_back("abc"); },
       {"model.merges[1]", "two tokens"});
  edit("merge_number", [](Json& j) { j["model"]["merges"].push_back(7); }, {"model.merges[1]"});
  edit("byte_fallback_with_byte_level", [](Json& j) { j["model"]["byte_fallback"] = true; },
       {"model.byte_fallback true is not supported with a ByteLevel pre-tokenizer"});
  edit("dropout", [](Json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout"});
  edit("unk_not_in_vocab", [](Json& j) { j["model"]["unk_token"] = "<unk>"; },
       {"model.unk_token \"<unk>\" is not in model.vocab"});
  edit("subword_prefix", [](Json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
       {"model.continuing_subword_prefix"});
  edit("normalizer",
       [](Json& j) {
         j["normalizer"] = {{"type", "BertNormalizer"}};
       },
       {"normalizer.type 'BertNormalizer' is not supported"});
  edit("normalizer_sequence",
       [](Json& j) {
         j["normalizer"] = {
             {"type", "Sequence"},
             {"normalizers", Json::array({{{"type", "NFKC"}}, {{"type", "Precompiled"}}})}};
       },
       {"normalizer.normalizers[1].type 'Precompiled' is not supported"});
  edit("prepend_without_text",
       [](Json& j) {
         j["normalizer"] = {{"type", "Prepend"}};
       },
       {"normalizer.prepend is missing"});
  edit("replace_matching_empty_text",
       [](Json& j) {
         j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", "a*"}}}, {"content", "b"}};
       },
       {"normalizer.pattern can match empty text"});
  edit("replace_with_group_reference",
       [](Json& j) {
         j["normalizer"] = {
             {"type", "Replace"}, {"pattern", {{"Regex", "(a)"}}}, {"content", "$1$1"}};
       },
       {"normalizer.content with '$' after a Regex pattern is not supported"});
  edit("whitespace",
       [](Json& j) {
         j["pre_tokenizer"] = {{"type", "Whitespace"}};
       },
       {"pre_tokenizer.type 'Whitespace' is not supported"});
  edit("bad_regex",
       [](Json& j) {
         j["pre_tokenizer"] = {{"type", "Sequence"},
                               {"pretokenizers", Json::array({{{"type", "Split"},
                                                               {"pattern", {{"Regex", "(\\p{L}"}}},
                                                               {"behavior", "Isolated"},
                                                               {"invert", false}},
                                                              {{"type", "ByteLevel"}}})}};
       },
       {"pre_tokenizer.pretokenizers[0].pattern", "does not compile"});
  edit("bad_behavior",
       [](Json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              Json::array(
                  {{{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Shuffled"}},
                   {{"type", "ByteLevel"}}})}};
       },
       {"pre_tokenizer.pretokenizers[0].behavior 'Shuffled' is not supported"});
  edit("metaspace_after_byte_level",
       [](Json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers", Json::array({{{"type", "ByteLevel"}},
                                            {{"type", "Metaspace"}, {"replacement", "\u2581"}}})}};
       },
       {"pre_tokenizer.pretokenizers[1] 'Metaspace' after ByteLevel is not supported"});
  edit("metaspace_long_replacement",
       [](Json& j) {
         j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "__"}};
       },
       {"pre_tokenizer.replacement must be one character, not \"__\""});
  edit("metaspace_scheme",
       [](Json& j) {
         j["pre_tokenizer"] = {
             {"type", "Metaspace"}, {"replacement", "_"}, {"prepend_scheme", "sometimes"}};
       },
       {"pre_tokenizer.prepend_scheme 'sometimes' is not supported"});
  edit("digits_without_flag",
       [](Json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers", Json::array({{{"type", "Digits"}}, {{"type", "ByteLevel"}}})}};
       },
       {"pre_tokenizer.pretokenizers[0].individual_digits is missing"});
  edit("digits_flag_not_bool",
       [](Json& j) {
         j["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers", Json::array({{{"type", "Digits"}, {"individual_digits", "yes"}},
                                            {{"type", "ByteLevel"}}})}};
       },
       {"pre_tokenizer.pretokenizers[0].individual_digits must be true or false"});
  edit("no_decoder", [](Json& j) { j.erase("decoder"); }, {"decoder is missing"});
  edit("wordpiece_decoder",
       [](Json& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       {"decoder.type 'WordPiece' is not supported"});
  edit("nested_decoder",
       [](Json& j) {
         j["decoder"] = {
             {"type", "Sequence"},
             {"decoders", Json::array({{{"type", "Fuse"}},
                                       {{"type", "Sequence"},
                                        {"decoders", Json::array({{{"type", "CTC"}}})}}})}};
       },
       {"decoder.decoders[1].decoders[0].type 'CTC' is not supported"});
  edit("byte_fallback_after_fuse",
       [](Json& j) {
         j["decoder"] = {
             {"type", "Sequence"},
             {"decoders", Json::array({{{"type", "Fuse"}}, {{"type", "ByteFallback"}}})}};
       },
       {"decoder.decoders[1] 'ByteFallback' after 'Fuse' is not supported"});
  edit("byte_level_after_byte_level",
       [](Json& j) {
         j["decoder"] = {
             {"type", "Sequence"},
             {"decoders", Json::array({{{"type", "ByteLevel"}}, {{"type", "ByteLevel"}}})}};
       },
       {"decoder.decoders[1] 'ByteLevel' after 'ByteLevel' is not supported"});
  edit("strip_stop",
       [](Json& j) {
         j["decoder"] = {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 1}};
       },
       {"decoder.stop '1' is not supported"});
  edit("strip_without_start",
       [](Json& j) {
         j["decoder"] = {{"type", "Strip"}, {"content", " "}, {"stop", 0}};
       },
       {"decoder.start is missing"});
  edit(
      "regex_replace_decoder",
      [](Json& j) {
        j["decoder"] = {{"type", "Replace"}, {"pattern", {{"Regex", "\u2581+"}}}, {"content", " "}};
      },
      {"decoder.pattern must be {\"String\": ...}"});
  edit("roberta",
       [](Json& j) {
         j["post_processor"] = {{"type", "RobertaProcessing"}};
       },
       {"post_processor.type 'RobertaProcessing' is not supported"});
  edit("template_unknown_special",
       [](Json& j) {
         j["post_processor"] = {
             {"type", "TemplateProcessing"},
             {"single", Json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}}})},
             {"special_tokens", Json::object()}};
       },
       {"post_processor.single[0].SpecialToken.id '<bos>' is not in"});
  edit("added_without_content", [](Json& j) { j["added_tokens"][0].erase("content"); },
       {"added_tokens[0].content is missing"});
  edit("added_bad_id", [](Json& j) { j["added_tokens"][0]["id"] = "x"; },
       {"added_tokens[0].id must be an id"});
  edit("added_bad_flag", [](Json& j) { j["added_tokens"][0]["lstrip"] = "yes"; },
       {"added_tokens[0].lstrip must be true or false"});
  // One token with an id near 2^24 would make the id tables gigabytes.
  edit("sparse_ids", [](Json& j) { j["added_tokens"][0]["id"] = (1 << 24) - 1; },
       {"the token ids go up to 16777215", "ids must be dense"});
  return files;
}

class BadFileTest : public ::testing::TestWithParam<BadFile> {};

void PrintTo(const BadFile& file, std::ostream* os) { *os << file.name; }

TEST_P(BadFileTest, IsRefusedWithAClearMessage) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromJson(GetParam().json);
  ASSERT_TRUE(IsError(tokenizer, absl::StatusCode::kInvalidArgument));
  for (const std::string& part : GetParam().message_parts) {
    EXPECT_TRUE(testing::Contains(std::string(tokenizer.status().message()), part));
  }
}

INSTANTIATE_TEST_SUITE_P(Files, BadFileTest, ::testing::ValuesIn(BadFiles()),
                         [](const ::testing::TestParamInfo<BadFile>& param_info) {
                           return param_info.param.name;
                         });

TEST(LoadTest, TheSmallTokenizerLoads) { EXPECT_NE(Load(SmallTokenizer({"a b"})), nullptr); }

TEST(LoadTest, WithoutAPreTokenizerTheTextIsOneWord) {
  Json json = SmallTokenizer({"a b"});
  json["pre_tokenizer"] = nullptr;
  json["decoder"] = {{"type", "Fuse"}};
  auto t = Load(json);
  ASSERT_NE(t, nullptr);
  // Characters, not bytes: "Ġ" is the token of "Ġ", and " " has none.
  EXPECT_EQ(*t->Encode("ab\xc4\xa0", false), Ids(*t, {"ab", "\xc4\xa0"}));
  EXPECT_EQ(*t->Decode(Ids(*t, {"ab", "\xc4\xa0"}), false), "ab\xc4\xa0");
}

TEST(LoadTest, MissingFileIsNotFound) {
  EXPECT_TRUE(IsError(Tokenizer::FromFile("/nonexistent/tokenizer.json"),
                      absl::StatusCode::kNotFound, {"/nonexistent/tokenizer.json"}));
}

TEST(LoadTest, MessagesNameTheFile) {
  EXPECT_TRUE(IsError(Tokenizer::FromJson("{", "models/x/tokenizer.json"),
                      absl::StatusCode::kInvalidArgument, {"models/x/tokenizer.json: "}));
}

TEST(LoadTest, TruncatedFilesAreRefusedNotCrashed) {
  const std::string text = ReadFile(GoldenPath("qwen2.tokenizer.json"));
  ASSERT_GT(text.size(), 1000u);
  for (size_t cut = 0; cut < text.size(); cut += text.size() / 97 + 1) {
    EXPECT_TRUE(IsError(Tokenizer::FromJson(text.substr(0, cut)),
                        absl::StatusCode::kInvalidArgument, {"not valid JSON"}))
        << "cut at " << cut;
  }
}

// ---------------------------------------------------------------------------------------------
// Concurrency

TEST(ConcurrencyTest, ThreadsEncodingTogetherAgreeWithOneThread) {
  auto loaded = Tokenizer::FromFile(GoldenPath("qwen2.tokenizer.json"));
  ASSERT_OK(loaded);
  const Tokenizer& tokenizer = **loaded;
  const std::vector<std::string> texts = {
      "The quick brown fox jumps over the lazy dog.", "今天天气很好，我们去公园散步吧。",
      "for (int i = 0; i < n; ++i) { sum += i; }", "<|im_start|>user\nHello 😀<|im_end|>",
      "e\xcc\x81 caf\xc3\xa9 1234567890"};
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) expected.push_back(*tokenizer.Encode(text, true));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 200; ++round) {
        const size_t i = static_cast<size_t>(round + t) % texts.size();
        absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(texts[i], true);
        if (!ids.ok() || *ids != expected[i]) ++mismatches[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

}  // namespace
}  // namespace tessera::tokenizer
