// Tests of the fine-tuning data pipeline (runtime/train/data.h, batches.h): every JSONL format
// with its masks and bos/eos (through the Llama-3 test tokenizer), chat conversations rendered
// with a template, and against transformers (chat_examples.golden.json, made by
// generate_chat_goldens.py), every kind of bad line under both policies, random access to a
// file's lines, and the row stream: shuffling, packing, truncation, epochs, positions, the
// data-parallel property that a step is the same rows whatever its split, and a stream planned
// from summaries that reads an example only for the rows that hold it. (sharded_data_test
// reads a file over several ranks.)

#include "runtime/train/data.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_format.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "runtime/train/batches.h"
#include "tests/model/model_test_util.h"
#include "tests/train/batch_expectations.h"
#include "tests/unit/status_test_util.h"

namespace tessera::train {
namespace {

using ::tessera::testing::IsError;

constexpr int32_t kIgnore = kIgnoreLabel;

using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const std::vector<int32_t>& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

// A chat format of `source` (a Jinja chat template) and the given special token strings.
std::shared_ptr<const chat::LoadedChatFormat> MakeChatFormat(std::optional<std::string> source,
                                                             std::optional<std::string> bos_token,
                                                             std::optional<std::string> eos_token) {
  tokenizer::TokenizerConfig config;
  config.bos_token = std::move(bos_token);
  config.eos_token = std::move(eos_token);
  config.chat_template = std::move(source);
  config.chat_template_origin = "test template";
  return std::make_shared<const chat::LoadedChatFormat>(chat::LoadChatFormat(config));
}

// Llama-3-Instruct's layout (its header and end-of-turn tokens are in the test tokenizer),
// refusing roles it does not know.
constexpr char kLlama3StyleTemplate[] =
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

// ---------------------------------------------------------------------------------------------
// Reading examples

class ReadExamplesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = tokenizer::Tokenizer::FromFile(std::string(TESSERA_TOKENIZER_GOLDEN_DIR) +
                                                 "/llama3.tokenizer.json");
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(loaded).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(tokenizer_, nullptr);
    bos_ = *tokenizer_->TokenToId("<|begin_of_text|>");
    eos_ = *tokenizer_->TokenToId("<|end_of_text|>");
    options_.vocab_size = tokenizer_->vocab_size();
    options_.bos_token_id = bos_;
    options_.eos_token_id = eos_;
    options_.chat_format = MakeChatFormat(kLlama3StyleTemplate, "<|begin_of_text|>", "<|eot_id|>");
  }

  std::vector<int32_t> Encode(const std::string& text) const {
    auto ids = tokenizer_->Encode(text, /*add_special_tokens=*/false);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  absl::StatusOr<std::vector<Example>> Read(const std::string& contents,
                                            ReadReport* report = nullptr) {
    path_ = dir_.File("train.jsonl");
    WriteBytes(path_, contents);
    return ReadExamples(path_, *tokenizer_, options_, report);
  }

  static tokenizer::Tokenizer* tokenizer_;
  ScratchDir dir_;
  std::string path_;
  int32_t bos_ = 0;
  int32_t eos_ = 0;
  ExampleOptions options_;
};

tokenizer::Tokenizer* ReadExamplesTest::tokenizer_ = nullptr;

TEST_F(ReadExamplesTest, TextTrainsEveryTokenButBos) {
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples, Read(R"({"text": "Hello world"})"));
  ASSERT_EQ(examples.size(), 1u);
  const std::vector<int32_t> body = Encode("Hello world");
  ASSERT_GE(body.size(), 2u);
  EXPECT_EQ(examples[0].tokens, Concat({{bos_}, body, {eos_}}));
  EXPECT_EQ(examples[0].labels, Concat({{kIgnore}, body, {eos_}}));
  EXPECT_EQ(examples[0].line, 1);

  options_.bos_token_id.reset();
  options_.eos_token_id.reset();
  ASSERT_OK_AND_ASSIGN(examples, Read(R"({"text": "Hello world"})"));
  EXPECT_EQ(examples[0].tokens, body);
  EXPECT_EQ(examples[0].labels, body);
}

TEST_F(ReadExamplesTest, PromptCompletionTrainsTheCompletionAndEos) {
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples,
                       Read(R"({"prompt": "What is 2+2?", "completion": " Four."})"));
  ASSERT_EQ(examples.size(), 1u);
  const std::vector<int32_t> prompt = Encode("What is 2+2?");
  const std::vector<int32_t> completion = Encode(" Four.");
  EXPECT_EQ(examples[0].tokens, Concat({{bos_}, prompt, completion, {eos_}}));
  EXPECT_EQ(examples[0].labels,
            Concat({std::vector<int32_t>(prompt.size() + 1, kIgnore), completion, {eos_}}));

  options_.bos_token_id.reset();
  options_.eos_token_id.reset();
  ASSERT_OK_AND_ASSIGN(examples, Read(R"({"prompt": "What is 2+2?", "completion": " Four."})"));
  EXPECT_EQ(examples[0].tokens, Concat({prompt, completion}));
  EXPECT_EQ(examples[0].labels, Concat({std::vector<int32_t>(prompt.size(), kIgnore), completion}));
}

TEST_F(ReadExamplesTest, InputIdsAsGivenWithoutBosOrEos) {
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples,
                       Read(R"({"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]})"
                            "\n"
                            R"({"input_ids": [9, 10, 11]})"));
  ASSERT_EQ(examples.size(), 2u);
  EXPECT_EQ(examples[0].tokens, (std::vector<int32_t>{5, 6, 7, 8}));
  EXPECT_EQ(examples[0].labels, (std::vector<int32_t>{kIgnore, kIgnore, 7, 8}));
  EXPECT_EQ(examples[1].tokens, (std::vector<int32_t>{9, 10, 11}));
  EXPECT_EQ(examples[1].labels, (std::vector<int32_t>{9, 10, 11}));
  EXPECT_EQ(examples[1].line, 2);
}

TEST_F(ReadExamplesTest, BlankLinesAreIgnoredButNumberedAndOtherFieldsIgnored) {
  ReadReport report;
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples,
                       Read("\xef\xbb\xbf\n"
                            R"({"id": 3, "text": "a b c", "source": "x"})"
                            "\r\n  \n\t\n"
                            R"({"input_ids": [1, 2]})"
                            "\n",
                            &report));
  ASSERT_EQ(examples.size(), 2u);
  EXPECT_EQ(examples[0].line, 2);
  EXPECT_EQ(examples[1].line, 5);
  EXPECT_EQ(report.lines, 2);
  EXPECT_EQ(report.examples, 2);
  EXPECT_EQ(report.skipped, 0);
  EXPECT_TRUE(report.warnings.empty());
}

// Each assistant reply and its end-of-turn token are trained; the system and user turns, the
// assistant headers and a turn after the last reply are not. The template writes bos itself:
// ExampleOptions' bos and eos are not added.
TEST_F(ReadExamplesTest, MessagesTrainTheAssistantTurnsOnly) {
  ASSERT_OK_AND_ASSIGN(
      std::vector<Example> examples,
      Read(R"({"messages": [{"role": "system", "content": "Be brief."},)"
           R"( {"role": "user", "content": "What is 2+2?"},)"
           R"( {"role": "assistant", "content": "Four."},)"
           R"( {"role": "user", "content": "And 3+3?"},)"
           R"( {"role": "assistant", "content": "Six, of course."}], "id": 7})"
           "\n"
           R"({"messages": [{"role": "user", "content": "Hi"},)"
           R"( {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]})"));
  ASSERT_EQ(examples.size(), 2u);
  const std::vector<int32_t> prompt1 = Encode(
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const std::vector<int32_t> reply1 = Encode("Four.<|eot_id|>");
  const std::vector<int32_t> prompt2 = Encode(
      "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const std::vector<int32_t> reply2 = Encode("Six, of course.<|eot_id|>");
  const int32_t eot = *tokenizer_->TokenToId("<|eot_id|>");
  ASSERT_EQ(prompt1.front(), bos_);
  ASSERT_EQ(reply1.back(), eot);
  EXPECT_EQ(examples[0].tokens, Concat({prompt1, reply1, prompt2, reply2}));
  EXPECT_EQ(examples[0].labels, Concat({std::vector<int32_t>(prompt1.size(), kIgnore), reply1,
                                        std::vector<int32_t>(prompt2.size(), kIgnore), reply2}));
  EXPECT_EQ(examples[0].line, 1);
  // The pieces joined are the whole conversation's encoding here (no BPE merge crosses a turn
  // boundary in this template).
  EXPECT_EQ(examples[0].tokens,
            Encode("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
                   "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\nSix, of course.<|eot_id|>"));

  const std::vector<int32_t> prompt = Encode(
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const std::vector<int32_t> reply = Encode("Hello<|eot_id|>");
  const std::vector<int32_t> after =
      Encode("<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>");
  EXPECT_EQ(examples[1].tokens, Concat({prompt, reply, after}));
  EXPECT_EQ(examples[1].labels, Concat({std::vector<int32_t>(prompt.size(), kIgnore), reply,
                                        std::vector<int32_t>(after.size(), kIgnore)}));
  EXPECT_EQ(examples[1].line, 2);
}

// Skipping a chat dataset's every line would train on nothing or on the rest alone.
TEST_F(ReadExamplesTest, MessagesWithoutAChatTemplateFailEvenWhenSkipping) {
  const std::string contents = R"({"text": "fine"})"
                               "\n"
                               R"({"messages": [{"role": "user", "content": "hi"}]})";
  for (BadLinePolicy policy : {BadLinePolicy::kStop, BadLinePolicy::kSkip}) {
    options_.on_bad_line = policy;
    options_.chat_format = MakeChatFormat(std::nullopt, "<s>", "</s>");
    EXPECT_TRUE(IsError(Read(contents), absl::StatusCode::kFailedPrecondition,
                        {path_ + ":2: messages: the model has no chat template"}));
    options_.chat_format = MakeChatFormat("{% macro m() %}x{% endmacro %}", "<s>", "</s>");
    EXPECT_TRUE(IsError(Read(contents), absl::StatusCode::kFailedPrecondition,
                        {path_ + ":2: messages: the model's chat template cannot be rendered",
                         "test template:1:", "macro"}));
    options_.chat_format = nullptr;
    EXPECT_TRUE(IsError(Read(contents), absl::StatusCode::kFailedPrecondition,
                        {path_ + ":2: messages: no chat format was given"}));
  }
}

// The template's own errors are the line's. A template whose earlier rendering is not a
// prefix of a later one cannot say where a reply starts or which tokens are whose: the line
// names the assistant message where it fails.
TEST_F(ReadExamplesTest, TemplateErrorsAndTemplatesThatAreNotIncrementalAreBadLines) {
  EXPECT_TRUE(IsError(Read(R"({"messages": [{"role": "user", "content": "a"},)"
                           R"( {"role": "robot", "content": "b"}]})"),
                      absl::StatusCode::kInvalidArgument,
                      {path_ + ":1: messages: test template", "unknown role robot"}));
  // The last message is marked: the prompt's rendering marks the user turn, the reply's the
  // reply.
  options_.chat_format = MakeChatFormat(
      "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m.role }}: {{ m.content }}\n"
      "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}",
      std::nullopt, std::nullopt);
  EXPECT_TRUE(IsError(Read(R"({"messages": [{"role": "user", "content": "a"},)"
                           R"( {"role": "assistant", "content": "b"}]})"),
                      absl::StatusCode::kInvalidArgument,
                      {path_ + ":1: messages[1]: the chat template is not incremental"}));
  // Earlier replies render otherwise than the last (as templates that drop earlier reasoning
  // do): the first reply's rendering is not where the whole conversation has it.
  options_.chat_format = MakeChatFormat(
      "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}assistant: (...)\n"
      "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}assistant: {% endif %}",
      std::nullopt, std::nullopt);
  const std::string two_replies = R"({"messages": [{"role": "user", "content": "a"},)"
                                  R"( {"role": "assistant", "content": "b"},)"
                                  R"( {"role": "user", "content": "c"},)"
                                  R"( {"role": "assistant", "content": "d"}]})";
  EXPECT_TRUE(IsError(Read(two_replies), absl::StatusCode::kInvalidArgument,
                      {path_ + ":1: messages[1]: the chat template is not incremental"}));
  // Skipped as any bad line.
  options_.on_bad_line = BadLinePolicy::kSkip;
  ReadReport report;
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples,
                       Read(two_replies + "\n" +
                                R"({"messages": [{"role": "user", "content": "a"},)"
                                R"( {"role": "assistant", "content": "b"}]})",
                            &report));
  EXPECT_EQ(examples.size(), 1u);
  EXPECT_EQ(report.skipped, 1);
}

// One kind of bad line: the line, and what the error must say after "<path>:2: ".
struct BadLine {
  std::string text;
  std::string message;
};

std::vector<BadLine> BadLines(int32_t vocab_size) {
  return {
      {"not json", "not valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {R"({"foo": 1})", "no known format"},
      {R"({"labels": [1, 2]})", "labels: only with input_ids"},
      {R"({"text": "a", "input_ids": [1, 2]})", "fields of several formats (text, input_ids)"},
      {R"({"text": "a", "labels": [1]})", "labels: only with input_ids"},
      {R"({"text": 5})", "text: not a string (number)"},
      {R"({"text": null})", "text: not a string (null)"},
      {R"({"text": ""})", "text: empty"},
      {R"({"prompt": "a"})", "completion: missing"},
      {R"({"completion": "a"})", "prompt: missing"},
      {R"({"prompt": ["a"], "completion": "b"})", "prompt: not a string (array)"},
      {R"({"prompt": "a", "completion": 1})", "completion: not a string"},
      {R"({"prompt": "a", "completion": ""})", "completion: empty"},
      {R"({"input_ids": "1 2"})", "input_ids: not an array of integers (string)"},
      {R"({"input_ids": [1, 2.5]})", "input_ids: entry 1 is not an integer"},
      {R"({"input_ids": [1, "2"]})", "input_ids: entry 1 is not an integer"},
      {R"({"input_ids": []})", "input_ids: empty"},
      {absl::StrCat(R"({"input_ids": [1, )", vocab_size, "]}"),
       absl::StrCat("input_ids: id ", vocab_size, " at index 1 is outside the vocabulary [0, ",
                    vocab_size, ")")},
      {R"({"input_ids": [-1, 2]})", "input_ids: id -1 at index 0 is outside the vocabulary"},
      {R"({"input_ids": [1, 99999999999]})", "input_ids: id 99999999999 at index 1 is outside"},
      {R"({"input_ids": [1, 18446744073709551615]})", "input_ids: id 18446744073709551615"},
      {R"({"input_ids": [1, 2], "labels": [2]})", "labels: length 1 differs from input_ids' 2"},
      {R"({"input_ids": [1, 2], "labels": "x"})", "labels: not an array"},
      {R"({"input_ids": [1, 2], "labels": [1, -5]})", "labels: label -5 at index 1 is outside"},
      {absl::StrCat(R"({"input_ids": [1, 2], "labels": [1, )", vocab_size, "]}"), "labels: label"},
      {R"({"input_ids": [1, 2], "labels": [1, -100]})", "labels: no trained token"},
      {R"({"input_ids": [7]})", "input_ids: no trained token"},
      {R"({"messages": "hi"})", "messages: must be an array"},
      {R"({"messages": []})", "messages: must not be empty"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]})",
       "messages[1].role: required"},
      {R"({"messages": [{"role": "user", "content": 5}]})",
       "messages[0].content: must be a string or null"},
      {R"({"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]})",
       "messages: no trained token (no assistant message)"},
      {R"({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]})",
       "messages[0]: an assistant message first"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})",
       "messages: test template"},  // the template's raise_exception, with where it is
      {R"({"messages": [{"role": "user", "content": "a"}], "text": "b"})",
       "fields of several formats (text, messages)"},
  };
}

TEST_F(ReadExamplesTest, EveryBadLineNamesFileLineAndField) {
  for (const BadLine& bad : BadLines(options_.vocab_size)) {
    SCOPED_TRACE(bad.text);
    auto examples = Read(R"({"text": "fine"})"
                         "\n" +
                         bad.text + "\n");
    EXPECT_TRUE(
        IsError(examples, absl::StatusCode::kInvalidArgument, {path_ + ":2: " + bad.message}));
  }
}

TEST_F(ReadExamplesTest, TextOutsideTheModelVocabularyAndUntrainableText) {
  options_.vocab_size = 10;  // smaller than the tokenizer's
  options_.bos_token_id.reset();
  options_.eos_token_id.reset();
  EXPECT_TRUE(IsError(Read(R"({"text": "Hello world"})"), absl::StatusCode::kInvalidArgument,
                      {path_ + ":1: text: id ", "is outside the vocabulary [0, 10)"}));
  EXPECT_TRUE(IsError(Read(R"({"prompt": "Hello", "completion": "x"})"),
                      absl::StatusCode::kInvalidArgument, {path_ + ":1: prompt: id "}));

  options_.vocab_size = tokenizer_->vocab_size();
  ASSERT_EQ(Encode("a").size(), 1u);
  // One token and no bos: nothing before it to predict it from.
  EXPECT_TRUE(IsError(Read(R"({"text": "a"})"), absl::StatusCode::kInvalidArgument,
                      {path_ + ":1: text: no trained token"}));
  EXPECT_TRUE(IsError(Read(R"({"prompt": "", "completion": "a"})"),
                      absl::StatusCode::kInvalidArgument,
                      {path_ + ":1: completion: no trained token"}));
  // With eos, the eos is trained; with bos, the single token is.
  options_.eos_token_id = eos_;
  EXPECT_OK(Read(R"({"text": "a"})"));
  options_.eos_token_id.reset();
  options_.bos_token_id = bos_;
  EXPECT_OK(Read(R"({"text": "a"})"));
}

TEST_F(ReadExamplesTest, SkipCountsBadLinesAndKeepsTheFirstWarnings) {
  options_.on_bad_line = BadLinePolicy::kSkip;
  const std::vector<BadLine> bad_lines = BadLines(options_.vocab_size);
  std::string contents = R"({"text": "first"})"
                         "\n";
  for (const BadLine& bad : bad_lines) contents += bad.text + "\n";
  contents += R"({"text": "last"})"
              "\n";
  ReadReport report;
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples, Read(contents, &report));
  const int64_t bad = static_cast<int64_t>(bad_lines.size());
  ASSERT_GT(bad, ReadReport::kMaxWarnings);
  ASSERT_EQ(examples.size(), 2u);
  EXPECT_EQ(examples[0].line, 1);
  EXPECT_EQ(examples[1].line, bad + 2);
  EXPECT_EQ(report.lines, bad + 2);
  EXPECT_EQ(report.examples, 2);
  EXPECT_EQ(report.skipped, bad);
  ASSERT_EQ(report.warnings.size(), static_cast<size_t>(ReadReport::kMaxWarnings) + 1);
  for (int i = 0; i < ReadReport::kMaxWarnings; ++i) {
    EXPECT_TRUE(::tessera::testing::Contains(
        report.warnings[i], absl::StrCat(path_, ":", i + 2, ": ", bad_lines[i].message)));
  }
  EXPECT_TRUE(::tessera::testing::Contains(report.warnings.back(),
                                           absl::StrCat(bad - ReadReport::kMaxWarnings, " more")));
}

TEST_F(ReadExamplesTest, NoExamplesUnreadableFileAndBadOptions) {
  options_.on_bad_line = BadLinePolicy::kSkip;
  ReadReport report;
  EXPECT_TRUE(IsError(Read("not json\n\n", &report), absl::StatusCode::kInvalidArgument,
                      {path_ + ": no examples", "not valid JSON"}));
  EXPECT_EQ(report.skipped, 1);
  EXPECT_TRUE(
      IsError(Read("\n  \n"), absl::StatusCode::kInvalidArgument, {path_ + ": no examples"}));
  EXPECT_TRUE(IsError(ReadExamples(path_ + ".missing", *tokenizer_, options_, nullptr),
                      absl::StatusCode::kNotFound, {path_ + ".missing"}));

  const ExampleOptions good = options_;
  options_.vocab_size = 0;
  EXPECT_TRUE(IsError(Read(R"({"text": "a b"})"), absl::StatusCode::kInvalidArgument,
                      {"vocab_size must be positive"}));
  options_ = good;
  options_.bos_token_id = good.vocab_size;
  EXPECT_TRUE(IsError(Read(R"({"text": "a b"})"), absl::StatusCode::kInvalidArgument,
                      {"bos_token_id", "outside the vocabulary"}));
  options_ = good;
  options_.eos_token_id = -1;
  EXPECT_TRUE(
      IsError(Read(R"({"text": "a b"})"), absl::StatusCode::kInvalidArgument, {"eos_token_id -1"}));
}

// From a file to a micro-batch: the shift puts the last prompt token's target on the first
// completion token, and nothing before it is trained.
TEST_F(ReadExamplesTest, PromptCompletionTargetsInAMicroBatch) {
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples,
                       Read(R"({"prompt": "Question: why?", "completion": " Because."})"));
  const size_t p = Encode("Question: why?").size();
  const std::vector<int32_t> completion = Encode(" Because.");
  const size_t c = completion.size();
  const std::vector<int32_t> tokens = examples[0].tokens;
  BatchOptions batch_options;
  batch_options.seq_len = 64;
  batch_options.pad_token_id = eos_;
  ASSERT_OK_AND_ASSIGN(RowStream stream, RowStream::Create(std::move(examples), batch_options));
  ASSERT_OK_AND_ASSIGN(MicroBatch batch, stream.Rows({}, 1));
  ASSERT_EQ(batch.targets.size(), 64u);
  for (size_t t = 0; t < 64; ++t) {
    // tokens: bos, prompt [1, p], completion [p+1, p+c], eos p+c+1.
    const bool trained = t >= p && t <= p + c;
    EXPECT_EQ(batch.targets[t], trained ? tokens[t + 1] : kIgnore) << t;
  }
  EXPECT_EQ(batch.targets[p], completion[0]);
  EXPECT_EQ(batch.targets[p + c], eos_);
  EXPECT_EQ(batch.target_count, static_cast<int64_t>(c + 1));
  EXPECT_EQ(batch.sequence_starts, (std::vector<int32_t>{0, static_cast<int32_t>(p + c + 2), 64}));
}

TEST_F(ReadExamplesTest, JsonlFileHasTheLinesReadExamplesReads) {
  const std::string contents =
      "\xef\xbb\xbf{\"text\": \"first\"}\r\n"
      "\n"
      "   \t \r\n"
      "{\"prompt\": \"a\", \"completion\": \"b\"}\n"
      "{\"text\": \"last, no newline\"}";
  ASSERT_OK_AND_ASSIGN(std::vector<Example> examples, Read(contents));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<JsonlFile> file, JsonlFile::Open(path_));
  EXPECT_EQ(file->path(), path_);
  ASSERT_EQ(file->size(), 3);
  ASSERT_EQ(examples.size(), 3u);
  const std::string texts[] = {"{\"text\": \"first\"}",
                               "{\"prompt\": \"a\", \"completion\": \"b\"}",
                               "{\"text\": \"last, no newline\"}"};
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(file->number(i), examples[i].line);
    ASSERT_OK_AND_ASSIGN(std::string text, file->Read(i));
    EXPECT_EQ(text, texts[i]);
    ASSERT_OK_AND_ASSIGN(Example again,
                         ParseExampleLine(text, path_, file->number(i), *tokenizer_, options_));
    EXPECT_EQ(again.tokens, examples[i].tokens);
  }
  EXPECT_EQ(file->number(1), 4);

  // Cut after it was indexed: the lines beyond the cut no longer read.
  std::filesystem::resize_file(path_, contents.size() - 5);
  EXPECT_TRUE(IsError(file->Read(2), absl::StatusCode::kDataLoss, {"train.jsonl:5", "changed"}));
  EXPECT_TRUE(file->Read(1).ok());
  EXPECT_TRUE(IsError(JsonlFile::Open(dir_.File("absent.jsonl")), absl::StatusCode::kNotFound,
                      {"absent.jsonl"}));
}

// ---------------------------------------------------------------------------------------------
// Chat examples against transformers

// chat_examples.golden.json (generate_chat_goldens.py): for SmolLM2's and Qwen2's templates
// with a test tokenizer that has their special tokens, conversations as apply_chat_template
// encodes them and the assistant mask by data.h's rule, computed with transformers.
TEST(ChatExamplesGoldenTest, TokensAndLabelsAreTransformers) {
  std::ifstream in(TESSERA_TRAIN_CHAT_GOLDEN);
  ASSERT_TRUE(in) << TESSERA_TRAIN_CHAT_GOLDEN;
  const nlohmann::ordered_json golden = nlohmann::ordered_json::parse(in);
  ASSERT_EQ(golden["models"].size(), 2u);
  int cases = 0;
  for (const nlohmann::ordered_json& model : golden["models"]) {
    SCOPED_TRACE(model["name"].get<std::string>());
    ASSERT_OK_AND_ASSIGN(
        std::unique_ptr<tokenizer::Tokenizer> tok,
        tokenizer::Tokenizer::FromFile(absl::StrCat(TESSERA_TOKENIZER_GOLDEN_DIR, "/",
                                                    model["tokenizer"].get<std::string>())));
    std::ifstream template_file(
        absl::StrCat(TESSERA_CHAT_TEMPLATE_DIR, "/", model["template"].get<std::string>()));
    ASSERT_TRUE(template_file) << model["template"];
    const std::string source((std::istreambuf_iterator<char>(template_file)),
                             std::istreambuf_iterator<char>());
    auto token = [&](const char* name) -> std::optional<std::string> {
      if (model[name].is_null()) return std::nullopt;
      return model[name].get<std::string>();
    };
    ExampleOptions options;
    options.vocab_size = tok->vocab_size();
    options.bos_token_id = 0;  // not added to chat examples
    options.eos_token_id = 0;
    options.chat_format = MakeChatFormat(source, token("bos_token"), token("eos_token"));

    ScratchDir dir;
    const std::string path = dir.File("chat.jsonl");
    std::string contents;
    for (const nlohmann::ordered_json& c : model["cases"]) {
      contents += nlohmann::ordered_json{{"messages", c["messages"]}}.dump() + "\n";
    }
    WriteBytes(path, contents);
    ASSERT_OK_AND_ASSIGN(std::vector<Example> examples,
                         ReadExamples(path, *tok, options, /*report=*/nullptr));
    ASSERT_EQ(examples.size(), model["cases"].size());
    for (size_t i = 0; i < examples.size(); ++i) {
      const nlohmann::ordered_json& c = model["cases"][i];
      SCOPED_TRACE(c["name"].get<std::string>());
      const auto whole = c["input_ids"].get<std::vector<int32_t>>();
      // The pieces encoded apart; where no BPE merge crosses a boundary, transformers' own
      // encoding of the whole conversation.
      const auto expected = c.contains("segmented_input_ids")
                                ? c["segmented_input_ids"].get<std::vector<int32_t>>()
                                : whole;
      EXPECT_EQ(examples[i].tokens, expected);
      EXPECT_EQ(examples[i].labels, c["labels"].get<std::vector<int32_t>>());
      ++cases;
    }
  }
  EXPECT_GE(cases, 10);
}

// ---------------------------------------------------------------------------------------------
// The row stream

// Example i has `length` tokens 1000 * (i + 1) + t (so a token names its example and place)
// and labels equal to its tokens but for the first `masked` positions.
Example MakeExample(int i, int length, int masked = 0) {
  Example example;
  example.line = i + 1;
  for (int t = 0; t < length; ++t) {
    example.tokens.push_back(1000 * (i + 1) + t);
    example.labels.push_back(t < masked ? kIgnore : 1000 * (i + 1) + t);
  }
  return example;
}

// Lengths 1..3*seq_len/2 drawn from a fixed formula, so some examples are truncated.
std::vector<Example> VariedExamples(int count, int seq_len) {
  std::vector<Example> examples;
  for (int i = 0; i < count; ++i) {
    const int length = 2 + (i * 7919) % (seq_len * 3 / 2);
    examples.push_back(MakeExample(i, length, /*masked=*/i % 3));
  }
  return examples;
}

constexpr int32_t kPad = 7;

// Checks the structure of `batch` (rows of `seq_len`) against the examples it came from, and
// returns the examples of its documents in order (-1 for padding).
std::vector<int> CheckBatch(const MicroBatch& batch, int64_t rows, int seq_len,
                            const std::vector<Example>& examples) {
  const size_t total = static_cast<size_t>(rows * seq_len);
  EXPECT_EQ(batch.tokens.size(), total);
  EXPECT_EQ(batch.positions.size(), total);
  EXPECT_EQ(batch.targets.size(), total);
  std::vector<int> documents;
  if (batch.tokens.size() != total || batch.positions.size() != total ||
      batch.targets.size() != total) {
    return documents;
  }
  const std::vector<int32_t>& starts = batch.sequence_starts;
  EXPECT_GE(starts.size(), 2u);
  EXPECT_EQ(starts.front(), 0);
  EXPECT_EQ(starts.back(), static_cast<int32_t>(total));
  for (int64_t r = 0; r <= rows; ++r) {
    EXPECT_TRUE(std::binary_search(starts.begin(), starts.end(), r * seq_len))
        << "row boundary " << r * seq_len << " is no document boundary";
  }
  int64_t target_count = 0;
  for (size_t s = 0; s + 1 < starts.size(); ++s) {
    const int32_t begin = starts[s];
    const int32_t end = starts[s + 1];
    EXPECT_LT(begin, end);
    const int32_t length = end - begin;
    for (int32_t t = 0; t < length; ++t) EXPECT_EQ(batch.positions[begin + t], t);
    EXPECT_EQ(batch.targets[end - 1], kIgnore) << "a target crosses a document end at " << end;
    const int32_t first = batch.tokens[begin];
    if (first == kPad) {
      documents.push_back(-1);
      EXPECT_EQ(end % seq_len, 0) << "padding is not at the end of its row";
      for (int32_t t = begin; t < end; ++t) {
        EXPECT_EQ(batch.tokens[t], kPad);
        EXPECT_EQ(batch.targets[t], kIgnore);
      }
      continue;
    }
    const int example_index = first / 1000 - 1;
    documents.push_back(example_index);
    if (example_index < 0 || example_index >= static_cast<int>(examples.size())) {
      ADD_FAILURE() << "token " << first << " is from no example";
      continue;
    }
    const Example& example = examples[example_index];
    EXPECT_EQ(length, std::min<int32_t>(static_cast<int32_t>(example.tokens.size()), seq_len));
    for (int32_t t = 0; t < length; ++t) {
      EXPECT_EQ(batch.tokens[begin + t], example.tokens[t]);
      if (t + 1 < length) {
        EXPECT_EQ(batch.targets[begin + t], example.labels[t + 1]);
      }
    }
  }
  for (int32_t target : batch.targets) target_count += target != kIgnore;
  EXPECT_EQ(batch.target_count, target_count);
  return documents;
}

BatchOptions Options(int seq_len, bool packing, uint64_t seed = 1) {
  BatchOptions options;
  options.seq_len = seq_len;
  options.packing = packing;
  options.seed = seed;
  options.pad_token_id = kPad;
  return options;
}

// The examples of epoch `epoch` in the order the stream visits them (padding left out).
std::vector<int> EpochDocuments(const RowStream& stream, int64_t epoch,
                                const std::vector<Example>& examples) {
  auto batch = stream.Rows({epoch, 0}, stream.rows_per_epoch());
  EXPECT_TRUE(batch.ok()) << batch.status();
  if (!batch.ok()) return {};
  std::vector<int> documents =
      CheckBatch(*batch, stream.rows_per_epoch(), stream.options().seq_len, examples);
  documents.erase(std::remove(documents.begin(), documents.end(), -1), documents.end());
  return documents;
}

// Micro-batches laid back to back as one.
MicroBatch Join(const std::vector<MicroBatch>& parts) {
  MicroBatch all;
  all.sequence_starts.push_back(0);
  for (const MicroBatch& part : parts) {
    const int32_t offset = static_cast<int32_t>(all.tokens.size());
    all.tokens.insert(all.tokens.end(), part.tokens.begin(), part.tokens.end());
    all.positions.insert(all.positions.end(), part.positions.begin(), part.positions.end());
    all.targets.insert(all.targets.end(), part.targets.begin(), part.targets.end());
    for (size_t s = 1; s < part.sequence_starts.size(); ++s) {
      all.sequence_starts.push_back(offset + part.sequence_starts[s]);
    }
    all.target_count += part.target_count;
  }
  return all;
}

TEST(RowStreamTest, PackingKeepsDocumentsApartAndCountsTruncation) {
  constexpr int kSeqLen = 32;
  const std::vector<Example> examples = VariedExamples(60, kSeqLen);
  int64_t longer = 0;
  for (const Example& example : examples) longer += example.tokens.size() > kSeqLen;
  ASSERT_GT(longer, 0);
  ASSERT_OK_AND_ASSIGN(RowStream stream,
                       RowStream::Create(examples, Options(kSeqLen, /*packing=*/true)));
  EXPECT_EQ(stream.truncated_examples(), longer);
  EXPECT_EQ(stream.dropped_examples(), 0);
  EXPECT_EQ(stream.example_count(), 60);
  EXPECT_LT(stream.rows_per_epoch(), 60) << "nothing was packed";

  ASSERT_OK_AND_ASSIGN(MicroBatch epoch, stream.Rows({0, 0}, stream.rows_per_epoch()));
  std::vector<int> documents = CheckBatch(epoch, stream.rows_per_epoch(), kSeqLen, examples);
  EXPECT_EQ(epoch.target_count, stream.targets_per_epoch());
  int64_t tokens = 0;
  for (int32_t token : epoch.tokens) tokens += token != kPad;
  EXPECT_EQ(tokens, stream.tokens_per_epoch());
  int64_t rows_with_several = 0;
  for (int64_t r = 0; r < stream.rows_per_epoch(); ++r) {
    int64_t in_row = 0;
    for (int32_t start : epoch.sequence_starts) {
      in_row += start >= r * kSeqLen && start < (r + 1) * kSeqLen && epoch.tokens[start] != kPad;
    }
    rows_with_several += in_row > 1;
  }
  EXPECT_GT(rows_with_several, 0);
  documents.erase(std::remove(documents.begin(), documents.end(), -1), documents.end());
  std::sort(documents.begin(), documents.end());
  std::vector<int> all(60);
  for (int i = 0; i < 60; ++i) all[i] = i;
  EXPECT_EQ(documents, all) << "an epoch visits every example once";
}

TEST(RowStreamTest, WithoutPackingEachExampleHasItsOwnRow) {
  constexpr int kSeqLen = 16;
  const std::vector<Example> examples = VariedExamples(20, kSeqLen);
  ASSERT_OK_AND_ASSIGN(RowStream stream,
                       RowStream::Create(examples, Options(kSeqLen, /*packing=*/false)));
  ASSERT_EQ(stream.rows_per_epoch(), 20);
  for (int64_t r = 0; r < 20; ++r) {
    ASSERT_OK_AND_ASSIGN(MicroBatch row, stream.Rows({0, r}, 1));
    std::vector<int> documents = CheckBatch(row, 1, kSeqLen, examples);
    ASSERT_FALSE(documents.empty());
    ASSERT_GE(documents[0], 0);
    const size_t length = examples[documents[0]].tokens.size();
    if (length >= kSeqLen) {
      EXPECT_EQ(documents, std::vector<int>{documents[0]});
      EXPECT_EQ(row.sequence_starts, (std::vector<int32_t>{0, kSeqLen}));
    } else {
      EXPECT_EQ(documents, (std::vector<int>{documents[0], -1}));
      EXPECT_EQ(row.sequence_starts,
                (std::vector<int32_t>{0, static_cast<int32_t>(length), kSeqLen}));
    }
  }
}

TEST(RowStreamTest, ShufflingIsDeterministicBySeedAndDiffersAcrossSeedsAndEpochs) {
  const std::vector<Example> examples = VariedExamples(40, 64);
  for (bool packing : {false, true}) {
    SCOPED_TRACE(packing ? "packing" : "no packing");
    ASSERT_OK_AND_ASSIGN(RowStream a, RowStream::Create(examples, Options(64, packing, 5)));
    ASSERT_OK_AND_ASSIGN(RowStream b, RowStream::Create(examples, Options(64, packing, 5)));
    ASSERT_OK_AND_ASSIGN(RowStream c, RowStream::Create(examples, Options(64, packing, 6)));
    EXPECT_EQ(a.Fingerprint(), b.Fingerprint());
    EXPECT_NE(a.Fingerprint(), c.Fingerprint());
    EXPECT_EQ(a.rows_per_epoch(), b.rows_per_epoch());
    const std::vector<int> a0 = EpochDocuments(a, 0, examples);
    const std::vector<int> a1 = EpochDocuments(a, 1, examples);
    EXPECT_EQ(a0, EpochDocuments(b, 0, examples));
    EXPECT_EQ(a1, EpochDocuments(b, 1, examples));
    EXPECT_NE(a0, EpochDocuments(c, 0, examples));
    EXPECT_NE(a0, a1);
    for (std::vector<int> order : {a0, a1}) {
      std::sort(order.begin(), order.end());
      EXPECT_EQ(std::set<int>(order.begin(), order.end()).size(), 40u);
      EXPECT_EQ(order.size(), 40u);
    }
    // A later epoch asked for first, and again after others evicted it, is the same.
    ASSERT_OK_AND_ASSIGN(RowStream d, RowStream::Create(examples, Options(64, packing, 5)));
    const std::vector<int> d7 = EpochDocuments(d, 7, examples);
    EpochDocuments(d, 0, examples);
    EpochDocuments(d, 3, examples);
    EXPECT_EQ(EpochDocuments(d, 7, examples), d7);
    EXPECT_EQ(EpochDocuments(a, 7, examples), d7);
  }
}

TEST(RowStreamTest, ExamplesWithoutTargetsInSeqLenAreDropped) {
  std::vector<Example> examples = {MakeExample(0, 10), MakeExample(1, 40, /*masked=*/20),
                                   MakeExample(2, 12, /*masked=*/2)};
  ASSERT_OK_AND_ASSIGN(RowStream stream, RowStream::Create(examples, Options(16, true)));
  EXPECT_EQ(stream.truncated_examples(), 1);
  EXPECT_EQ(stream.dropped_examples(), 1);
  EXPECT_EQ(stream.example_count(), 2);
  std::vector<int> documents = EpochDocuments(stream, 0, examples);
  std::sort(documents.begin(), documents.end());
  EXPECT_EQ(documents, (std::vector<int>{0, 2}));
  EXPECT_EQ(stream.targets_per_epoch(), 9 + 10);
}

TEST(RowStreamTest, RowsRunAcrossTheEpochBoundary) {
  const std::vector<Example> examples = VariedExamples(30, 32);
  ASSERT_OK_AND_ASSIGN(RowStream stream, RowStream::Create(examples, Options(32, true)));
  const int64_t rows = stream.rows_per_epoch();
  ASSERT_GE(rows, 3);
  ASSERT_OK_AND_ASSIGN(MicroBatch across, stream.Rows({0, rows - 2}, 5));
  CheckBatch(across, 5, 32, examples);
  ASSERT_OK_AND_ASSIGN(MicroBatch end_of_0, stream.Rows({0, rows - 2}, 2));
  ASSERT_OK_AND_ASSIGN(MicroBatch start_of_1, stream.Rows({1, 0}, 3));
  ExpectSameBatch(across, Join({end_of_0, start_of_1}));
  // Row by row gives the same, and a batch longer than an epoch wraps into the next ones.
  std::vector<MicroBatch> singles;
  for (int64_t i = 0; i < 2 * rows + 3; ++i) {
    ASSERT_OK_AND_ASSIGN(MicroBatch row, stream.Rows(stream.Advance({0, 1}, i), 1));
    singles.push_back(row);
  }
  ASSERT_OK_AND_ASSIGN(MicroBatch long_batch, stream.Rows({0, 1}, 2 * rows + 3));
  ExpectSameBatch(long_batch, Join(singles));
}

TEST(RowStreamTest, AdvanceArithmetic) {
  ASSERT_OK_AND_ASSIGN(RowStream stream,
                       RowStream::Create(VariedExamples(13, 16), Options(16, false)));
  const int64_t rows = stream.rows_per_epoch();
  ASSERT_EQ(rows, 13);
  EXPECT_EQ(stream.Advance({0, 0}, 0), (DataPosition{0, 0}));
  EXPECT_EQ(stream.Advance({0, 0}, 12), (DataPosition{0, 12}));
  EXPECT_EQ(stream.Advance({0, 0}, 13), (DataPosition{1, 0}));
  EXPECT_EQ(stream.Advance({0, 12}, 1), (DataPosition{1, 0}));
  EXPECT_EQ(stream.Advance({2, 3}, 2 * 13 + 11), (DataPosition{5, 1}));
  EXPECT_EQ(stream.Advance({1, 0}, -1), (DataPosition{0, 12}));
  EXPECT_EQ(stream.Advance({3, 4}, -30), (DataPosition{1, 0}));
  EXPECT_EQ(stream.Advance(stream.Advance({0, 5}, 100), -100), (DataPosition{0, 5}));
  // Rank 1's micro-batch 2 of 3, 4 rows each: (1 * 3 + 2) * 4 = 20 rows in.
  EXPECT_EQ(stream.RankMicroBatchStart({0, 3}, 1, 2, 4, 3), stream.Advance({0, 3}, 20));
  EXPECT_EQ(stream.RankMicroBatchStart({0, 3}, 0, 0, 4, 3), (DataPosition{0, 3}));
}

TEST(RowStreamTest, AStepIsTheSameRowsWhateverTheDataParallelSplit) {
  const std::vector<Example> examples = VariedExamples(61, 24);
  ASSERT_OK_AND_ASSIGN(RowStream stream, RowStream::Create(examples, Options(24, true, 9)));
  constexpr int kRowsPerStep = 8;
  ASSERT_NE(stream.rows_per_epoch() % kRowsPerStep, 0) << "steps should straddle epochs";
  struct Split {
    int micro_batch, grad_accum, dp;
  };
  const Split splits[] = {{2, 4, 1}, {8, 1, 1}, {4, 1, 2}, {1, 2, 4}, {2, 1, 4}};
  DataPosition step_start{0, 0};
  const int steps = static_cast<int>(2 * stream.rows_per_epoch() / kRowsPerStep) + 2;
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    ASSERT_OK_AND_ASSIGN(MicroBatch whole, stream.Rows(step_start, kRowsPerStep));
    for (const Split& split : splits) {
      SCOPED_TRACE(absl::StrCat("micro-batch ", split.micro_batch, " x accumulation ",
                                split.grad_accum, " x dp ", split.dp));
      ASSERT_EQ(split.micro_batch * split.grad_accum * split.dp, kRowsPerStep);
      std::vector<MicroBatch> parts;
      for (int rank = 0; rank < split.dp; ++rank) {
        for (int micro = 0; micro < split.grad_accum; ++micro) {
          DataPosition start = stream.RankMicroBatchStart(step_start, rank, micro,
                                                          split.micro_batch, split.grad_accum);
          ASSERT_OK_AND_ASSIGN(MicroBatch part, stream.Rows(start, split.micro_batch));
          parts.push_back(std::move(part));
        }
      }
      ExpectSameBatch(Join(parts), whole);
    }
    step_start = stream.Advance(step_start, kRowsPerStep);
  }
  EXPECT_GE(step_start.epoch, 2);
}

TEST(RowStreamTest, ResumingFromAPositionGivesTheSameRows) {
  const std::vector<Example> examples = VariedExamples(25, 32);
  ASSERT_OK_AND_ASSIGN(RowStream first, RowStream::Create(examples, Options(32, true, 3)));
  const DataPosition saved = first.Advance({0, 0}, 3 * first.rows_per_epoch() / 2);
  ASSERT_OK_AND_ASSIGN(MicroBatch expected, first.Rows(saved, 4));
  ASSERT_OK_AND_ASSIGN(RowStream resumed, RowStream::Create(examples, Options(32, true, 3)));
  EXPECT_EQ(resumed.Fingerprint(), first.Fingerprint());
  ASSERT_OK_AND_ASSIGN(MicroBatch got, resumed.Rows(saved, 4));
  ExpectSameBatch(got, expected);

  std::vector<Example> changed = examples;
  changed[4].labels[3] = kIgnore;
  ASSERT_OK_AND_ASSIGN(RowStream other, RowStream::Create(changed, Options(32, true, 3)));
  EXPECT_NE(other.Fingerprint(), first.Fingerprint());
}

TEST(RowStreamTest, BadArguments) {
  EXPECT_TRUE(IsError(RowStream::Create(VariedExamples(3, 8), Options(1, true)),
                      absl::StatusCode::kInvalidArgument, {"seq_len"}));
  EXPECT_TRUE(IsError(RowStream::Create({}, Options(8, true)), absl::StatusCode::kInvalidArgument,
                      {"no examples"}));
  BatchOptions negative_pad = Options(8, true);
  negative_pad.pad_token_id = -1;
  EXPECT_TRUE(IsError(RowStream::Create(VariedExamples(3, 8), negative_pad),
                      absl::StatusCode::kInvalidArgument, {"pad_token_id"}));
  std::vector<Example> uneven = VariedExamples(3, 8);
  uneven[1].labels.pop_back();
  EXPECT_TRUE(IsError(RowStream::Create(uneven, Options(8, true)),
                      absl::StatusCode::kInvalidArgument, {"line 2", "labels"}));
  EXPECT_TRUE(IsError(RowStream::Create({MakeExample(0, 20, /*masked=*/10)}, Options(8, true)),
                      absl::StatusCode::kInvalidArgument, {"none of the 1 examples"}));

  ASSERT_OK_AND_ASSIGN(RowStream stream,
                       RowStream::Create(VariedExamples(5, 8), Options(8, false)));
  EXPECT_TRUE(IsError(stream.Rows({0, 0}, 0), absl::StatusCode::kInvalidArgument, {"count"}));
  EXPECT_TRUE(IsError(stream.Rows({0, 5}, 1), absl::StatusCode::kInvalidArgument, {"outside"}));
  EXPECT_TRUE(IsError(stream.Rows({-1, 0}, 1), absl::StatusCode::kInvalidArgument, {"outside"}));
  EXPECT_TRUE(IsError(stream.Rows({0, -1}, 1), absl::StatusCode::kInvalidArgument, {"outside"}));
  EXPECT_TRUE(
      IsError(stream.Rows({0, 0}, int64_t{1} << 40), absl::StatusCode::kInvalidArgument, {"2^31"}));
}

TEST(RowStreamTest, TotalsCountTheRowsWithoutTheirTokens) {
  const std::vector<Example> examples = VariedExamples(37, 24);
  ASSERT_OK_AND_ASSIGN(RowStream stream, RowStream::Create(examples, Options(24, true, 4)));
  for (const auto& [at, count] : std::vector<std::pair<DataPosition, int64_t>>{
           {{0, 0}, 1}, {{0, 3}, 5}, {{1, 2}, stream.rows_per_epoch()}, {{2, 1}, 17}}) {
    ASSERT_OK_AND_ASSIGN(MicroBatch batch, stream.Rows(at, count));
    ASSERT_OK_AND_ASSIGN(RowTotals totals, stream.Totals(at, count));
    int64_t tokens = 0;
    for (int32_t token : batch.tokens) tokens += token != kPad;
    EXPECT_EQ(totals.targets, batch.target_count);
    EXPECT_EQ(totals.tokens, tokens);
  }
  EXPECT_TRUE(IsError(stream.Totals({0, 0}, 0), absl::StatusCode::kInvalidArgument, {"count"}));
}

// Serves examples as RowStream::Create(examples, ...) would, counting what is asked for.
class CountingSource final : public ExampleSource {
 public:
  explicit CountingSource(std::vector<Example> examples) : examples_(std::move(examples)) {}
  absl::StatusOr<const Example*> Get(int64_t index, Example* scratch) const override {
    asked_.insert(index);
    *scratch = examples_[index];
    return scratch;
  }
  mutable std::set<int64_t> asked_;

 private:
  std::vector<Example> examples_;
};

TEST(RowStreamTest, AStreamFromSummariesReadsOnlyTheExamplesOfItsRows) {
  std::vector<Example> examples = VariedExamples(30, 16);
  examples.push_back(MakeExample(30, 20, /*masked=*/18));  // no target within seq_len: dropped
  std::vector<ExampleSummary> summaries;
  for (const Example& example : examples) summaries.push_back(SummarizeExample(example, 16));
  EXPECT_EQ(summaries.back().kept_targets, 0);
  EXPECT_EQ(summaries[0].tokens, static_cast<int64_t>(examples[0].tokens.size()));
  auto source = std::make_shared<CountingSource>(examples);
  ASSERT_OK_AND_ASSIGN(RowStream planned, RowStream::Create(summaries, source, Options(16, true)));
  ASSERT_OK_AND_ASSIGN(RowStream whole, RowStream::Create(examples, Options(16, true)));
  EXPECT_EQ(planned.Fingerprint(), whole.Fingerprint());
  EXPECT_EQ(planned.rows_per_epoch(), whole.rows_per_epoch());
  EXPECT_EQ(planned.dropped_examples(), 1);
  EXPECT_EQ(planned.truncated_examples(), whole.truncated_examples());
  EXPECT_EQ(planned.targets_per_epoch(), whole.targets_per_epoch());

  ASSERT_OK_AND_ASSIGN(RowTotals totals, planned.Totals({0, 0}, planned.rows_per_epoch()));
  EXPECT_EQ(totals.targets, planned.targets_per_epoch());
  EXPECT_TRUE(source->asked_.empty()) << "Totals reads no example";

  ASSERT_OK_AND_ASSIGN(MicroBatch row, planned.Rows({1, 2}, 1));
  ASSERT_OK_AND_ASSIGN(MicroBatch expected, whole.Rows({1, 2}, 1));
  ExpectSameBatch(row, expected);
  std::set<int64_t> in_row;
  for (size_t s = 0; s + 1 < row.sequence_starts.size(); ++s) {
    const int32_t token = row.tokens[row.sequence_starts[s]];
    if (token != kPad) in_row.insert(token / 1000 - 1);  // MakeExample's tokens name it
  }
  EXPECT_EQ(source->asked_, in_row) << "Rows reads the examples of its rows, no others";

  for (int64_t r = 0; r < 2 * planned.rows_per_epoch(); r += 3) {
    const DataPosition at = planned.Advance({0, 0}, r);
    ASSERT_OK_AND_ASSIGN(MicroBatch got, planned.Rows(at, 3));
    ASSERT_OK_AND_ASSIGN(MicroBatch want, whole.Rows(at, 3));
    ExpectSameBatch(got, want);
  }
}

}  // namespace
}  // namespace tessera::train
