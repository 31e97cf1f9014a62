// A JSONL file read by every rank together, each tokenizing a share (runtime/train/sharded_data.h),
// against one reader of the whole file (ReadExamples + RowStream::Create): the same stream,
// rows, fingerprint and report at every rank count, chat conversations among the lines; a bad
// line stops the rank that reads it and fails the others with it; ranks with different files
// refuse together; and a line changed after the read fails only the row that holds it, since
// rows read their lines when cut.
// Each rank writes its own copy of the file (the copies are equal unless a test says not).

#include "runtime/train/sharded_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_format.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/tokenizer_config.h"
#include "runtime/train/batches.h"
#include "runtime/train/data.h"
#include "tests/model/model_test_util.h"
#include "tests/mpi/mpi_test_environment.h"
#include "tests/train/batch_expectations.h"

namespace tessera::train {
namespace {

using ::tessera::model::testing::ScratchDir;
using ::tessera::model::testing::WriteBytes;
using ::tessera::testing::World;

class ShardedDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> loaded = tokenizer::Tokenizer::FromFile(
        std::string(TESSERA_TOKENIZER_GOLDEN_DIR) + "/llama3.tokenizer.json");
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(*loaded);
    options_.vocab_size = tokenizer_->vocab_size();
    options_.bos_token_id = *tokenizer_->TokenToId("<|begin_of_text|>");
    options_.eos_token_id = *tokenizer_->TokenToId("<|end_of_text|>");
    tokenizer::TokenizerConfig chat_config;
    chat_config.bos_token = "<|begin_of_text|>";
    chat_config.chat_template =
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>"
        "\n\n{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
    options_.chat_format =
        std::make_shared<const chat::LoadedChatFormat>(chat::LoadChatFormat(chat_config));
    ASSERT_TRUE(options_.chat_format->status.ok()) << options_.chat_format->status;
    batching_.seq_len = 24;
    batching_.seed = 5;
    batching_.pad_token_id = *options_.eos_token_id;
    path_ = dir_.File("train.jsonl");
  }

  // 40 lines: texts, prompt/completion pairs and chat conversations of varied lengths (some
  // longer than a row), blank lines, and bad lines at the (1-based) file lines in `bad`.
  static std::string Lines(const std::vector<int>& bad = {}) {
    std::string contents;
    for (int line = 1; line <= 40; ++line) {
      if (std::find(bad.begin(), bad.end(), line) != bad.end()) {
        contents += R"({"prompt": "no completion"})"
                    "\n";
      } else if (line % 9 == 0) {
        contents += "\n";
      } else if (line % 5 == 0) {
        nlohmann::json messages = {
            {{"role", "user"}, {"content", absl::StrCat("turn ", line)}},
            {{"role", "assistant"}, {"content", std::string(line % 4, 'z')}}};
        if (line % 10 == 0) {
          messages.push_back({{"role", "user"}, {"content", "again"}});
          messages.push_back({{"role", "assistant"}, {"content", "zz"}});
        }
        contents += nlohmann::json{{"messages", messages}}.dump() + "\n";
      } else if (line % 2 == 0) {
        contents +=
            nlohmann::json{{"text", absl::StrCat("line ", line, std::string(line % 7 * 3, 'x'),
                                                 " and some words")}}
                .dump() +
            "\n";
      } else {
        contents += nlohmann::json{{"prompt", absl::StrCat("question ", line, "?")},
                                   {"completion", std::string(1 + line % 5, 'y')}}
                        .dump() +
                    "\n";
      }
    }
    return contents;
  }

  absl::StatusOr<RowStream> ReadSharded(ReadReport* report = nullptr) {
    return ReadRowStream(path_, *tokenizer_, options_, batching_, World(), report);
  }

  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  ExampleOptions options_;
  BatchOptions batching_;
  ScratchDir dir_;
  std::string path_;
};

TEST_F(ShardedDataTest, GivesTheStreamOfOneReaderOfTheWholeFile) {
  options_.on_bad_line = BadLinePolicy::kSkip;
  WriteBytes(path_, Lines({3, 14, 15}));
  for (bool packing : {true, false}) {
    SCOPED_TRACE(packing ? "packing" : "no packing");
    batching_.packing = packing;
    ReadReport whole_report, sharded_report;
    absl::StatusOr<std::vector<Example>> examples =
        ReadExamples(path_, *tokenizer_, options_, &whole_report);
    ASSERT_TRUE(examples.ok()) << examples.status();
    absl::StatusOr<RowStream> whole = RowStream::Create(*std::move(examples), batching_);
    ASSERT_TRUE(whole.ok()) << whole.status();
    absl::StatusOr<RowStream> sharded = ReadSharded(&sharded_report);
    ASSERT_TRUE(sharded.ok()) << sharded.status();

    EXPECT_EQ(sharded->Fingerprint(), whole->Fingerprint());
    EXPECT_EQ(sharded->rows_per_epoch(), whole->rows_per_epoch());
    EXPECT_EQ(sharded->example_count(), whole->example_count());
    EXPECT_GT(sharded->truncated_examples(), 0);
    EXPECT_EQ(sharded->truncated_examples(), whole->truncated_examples());
    EXPECT_EQ(sharded->tokens_per_epoch(), whole->tokens_per_epoch());
    EXPECT_EQ(sharded->targets_per_epoch(), whole->targets_per_epoch());
    EXPECT_EQ(sharded_report.lines, whole_report.lines);
    EXPECT_EQ(sharded_report.examples, whole_report.examples);
    EXPECT_EQ(sharded_report.skipped, 3);
    EXPECT_EQ(sharded_report.warnings, whole_report.warnings);

    // Two and a half epochs, 5 rows at a time, and each rank's own micro-batches of a step.
    for (int64_t r = 0; r < 5 * whole->rows_per_epoch() / 2; r += 5) {
      const DataPosition at = whole->Advance({}, r);
      absl::StatusOr<MicroBatch> got = sharded->Rows(at, 5);
      absl::StatusOr<MicroBatch> expected = whole->Rows(at, 5);
      ASSERT_TRUE(got.ok() && expected.ok()) << got.status() << expected.status();
      ExpectSameBatch(*got, *expected);
      absl::StatusOr<RowTotals> totals = sharded->Totals(at, 5);
      ASSERT_TRUE(totals.ok()) << totals.status();
      EXPECT_EQ(totals->targets, expected->target_count);
    }
    const DataPosition step = sharded->RankMicroBatchStart({0, 1}, World().rank(), 1, 2, 2);
    absl::StatusOr<MicroBatch> mine = sharded->Rows(step, 2);
    absl::StatusOr<MicroBatch> expected = whole->Rows(step, 2);
    ASSERT_TRUE(mine.ok() && expected.ok());
    ExpectSameBatch(*mine, *expected);
  }
}

TEST_F(ShardedDataTest, ABadLineStopsTheRankThatReadsItAndFailsTheOthers) {
  // File line 12 is non-blank line 10, counting from 0 (line 9 is blank): rank 10 mod size
  // reads it.
  WriteBytes(path_, Lines({12}));
  const int reader = 10 % World().size();
  ReadReport report;
  absl::StatusOr<RowStream> stream = ReadSharded(&report);
  ASSERT_FALSE(stream.ok());
  if (World().rank() == reader) {
    EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument) << stream.status();
    EXPECT_NE(stream.status().message().find("train.jsonl:12: completion"), std::string::npos)
        << stream.status();
  } else {
    EXPECT_EQ(stream.status().code(), absl::StatusCode::kAborted) << stream.status();
    EXPECT_NE(stream.status().message().find("another rank"), std::string::npos) << stream.status();
  }
  // Skipped instead: counted on every rank, its message in every rank's report.
  options_.on_bad_line = BadLinePolicy::kSkip;
  stream = ReadSharded(&report);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ(report.skipped, 1);
  ASSERT_EQ(report.warnings.size(), 1u);
  EXPECT_NE(report.warnings[0].find("train.jsonl:12: completion"), std::string::npos);
}

TEST_F(ShardedDataTest, RanksWithDifferentFilesRefuseTogether) {
  if (World().size() < 2) GTEST_SKIP() << "needs two ranks";
  WriteBytes(path_, Lines() + (World().rank() == 1 ? "{\"text\": \"one more\"}\n" : ""));
  absl::StatusOr<RowStream> stream = ReadSharded();
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kFailedPrecondition) << stream.status();
  EXPECT_NE(stream.status().message().find("differs between the ranks"), std::string::npos)
      << stream.status();
}

TEST_F(ShardedDataTest, ALineChangedAfterTheReadFailsOnlyTheRowThatHoldsIt) {
  const std::string contents = Lines();
  WriteBytes(path_, contents);
  absl::StatusOr<RowStream> stream = ReadSharded();
  ASSERT_TRUE(stream.ok()) << stream.status();
  // File line 2, a text, changed in place (same length) on this rank's copy.
  std::string changed = contents;
  const size_t at = changed.find("line 2") + 5;
  ASSERT_EQ(changed[at], '2');
  changed[at] = '8';
  WriteBytes(path_, changed);
  int failed = 0;
  for (int64_t row = 0; row < stream->rows_per_epoch(); ++row) {
    absl::StatusOr<MicroBatch> batch = stream->Rows({0, row}, 1);
    if (batch.ok()) continue;
    ++failed;
    EXPECT_EQ(batch.status().code(), absl::StatusCode::kDataLoss) << batch.status();
    EXPECT_NE(batch.status().message().find("train.jsonl:2:"), std::string::npos) << batch.status();
  }
  EXPECT_EQ(failed, 1) << "one row holds line 2";
  absl::StatusOr<RowTotals> totals = stream->Totals({0, 0}, stream->rows_per_epoch());
  EXPECT_TRUE(totals.ok()) << "the plan needs no line";
}

}  // namespace
}  // namespace tessera::train
