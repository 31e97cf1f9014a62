#include "runtime/train/sharded_data.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/agreement.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tessera::train {
namespace {

// A line's summary as exchanged: kFields integers, the first saying what the line is.
constexpr int64_t kFields = 4;  // state, tokens, kept targets, hash
constexpr int64_t kExample = 1;
constexpr int64_t kSkipped = 2;

int64_t HashBits(uint64_t hash) {
  int64_t bits;
  std::memcpy(&bits, &hash, sizeof(bits));
  return bits;
}

uint64_t HashOf(int64_t bits) {
  uint64_t hash;
  std::memcpy(&hash, &bits, sizeof(hash));
  return hash;
}

// Examples read again from their lines of the file, checked against the hash they were
// planned with.
class LineSource final : public ExampleSource {
 public:
  LineSource(std::shared_ptr<const JsonlFile> file, const tokenizer::Tokenizer& tokenizer,
             ExampleOptions options, int seq_len, std::vector<int64_t> lines,
             std::vector<uint64_t> hashes)
      : file_(std::move(file)),
        tokenizer_(tokenizer),
        options_(options),
        seq_len_(seq_len),
        lines_(std::move(lines)),
        hashes_(std::move(hashes)) {}

  absl::StatusOr<const Example*> Get(int64_t index, Example* scratch) const override {
    const int64_t line = lines_[index];
    TESSERA_ASSIGN_OR_RETURN(std::string text, file_->Read(line));
    absl::StatusOr<Example> example =
        ParseExampleLine(text, file_->path(), file_->number(line), tokenizer_, options_);
    if (!example.ok() || SummarizeExample(*example, seq_len_).hash != hashes_[index]) {
      return absl::DataLossError(absl::StrCat(file_->path(), ":", file_->number(line),
                                              ": the line is not what it was when the run read "
                                              "it; was the file changed during the run?"));
    }
    *scratch = *std::move(example);
    return scratch;
  }

 private:
  std::shared_ptr<const JsonlFile> file_;
  const tokenizer::Tokenizer& tokenizer_;
  ExampleOptions options_;
  int seq_len_;
  std::vector<int64_t> lines_;    // by example: its non-blank line in the file
  std::vector<uint64_t> hashes_;  // by example: ExampleSummary::hash
};

// Every rank's `mine` (of the same length on every rank), rank after rank.
absl::StatusOr<std::vector<int64_t>> AllGather(comm::Communicator& group,
                                               std::vector<int64_t> mine) {
  std::vector<int64_t> all(mine.size() * static_cast<size_t>(group.size()));
  if (mine.empty()) return all;
  Tensor input = Tensor::Wrap(mine.data(), DType::kI64, {static_cast<int64_t>(mine.size())});
  Tensor output = Tensor::Wrap(all.data(), DType::kI64, {static_cast<int64_t>(all.size())});
  Stream cpu = Stream::Cpu();
  TESSERA_RETURN_IF_ERROR(group.AllGather(input, output, cpu));
  return all;
}

}  // namespace

absl::StatusOr<RowStream> ReadRowStream(const std::string& path,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const ExampleOptions& example_options,
                                        const BatchOptions& batching, comm::Communicator& group,
                                        ReadReport* report) {
  ReadReport local_report;
  ReadReport& counts = report != nullptr ? *report : local_report;
  counts = ReadReport();
  const int seq_len = std::max(batching.seq_len, 0);  // RowStream::Create refuses a bad one
  const int size = group.size();

  // Until the exchanges, a rank may fail on its own (a file it cannot read, a bad line of
  // its share): the ranks agree before each.
  std::shared_ptr<const JsonlFile> file;
  absl::Status opened = CheckExampleOptions(example_options);
  if (opened.ok()) {
    absl::StatusOr<std::unique_ptr<JsonlFile>> indexed = JsonlFile::Open(path);
    opened = indexed.status();
    if (indexed.ok()) file = std::move(*indexed);
  }
  TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(group, opened, absl::StrCat("to read ", path)));
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> sizes, AllGather(group, {file->size()}));
  for (int r = 1; r < size; ++r) {
    if (sizes[r] != sizes[0]) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " differs between the ranks of ", group.name(), ": rank 0 sees ",
                       sizes[0], " non-blank lines, rank ", r, " ", sizes[r]));
    }
  }
  const int64_t lines = file->size();
  const int64_t share = (lines + size - 1) / size;  // lines a rank reads, at most

  // This rank's share: lines rank, rank + size, ...
  std::vector<int64_t> mine(static_cast<size_t>(share * kFields), 0);
  absl::Status read = absl::OkStatus();
  ReadReport my_counts;
  for (int64_t i = group.rank(), j = 0; i < lines && read.ok(); i += size, ++j) {
    int64_t* slot = mine.data() + j * kFields;
    absl::StatusOr<std::string> text = file->Read(i);
    if (!text.ok()) {
      read = text.status();
      break;
    }
    absl::StatusOr<Example> example =
        ParseExampleLine(*text, path, file->number(i), tokenizer, example_options);
    if (example.ok()) {
      const ExampleSummary summary = SummarizeExample(*example, seq_len);
      slot[0] = kExample;
      slot[1] = summary.tokens;
      slot[2] = summary.kept_targets;
      slot[3] = HashBits(summary.hash);
    } else {
      read = SkipOrStop(example.status(), example_options, my_counts);
      slot[0] = kSkipped;
    }
  }
  TESSERA_RETURN_IF_ERROR(comm::AgreeOnStatus(group, read, absl::StrCat("to read ", path)));
  TESSERA_ASSIGN_OR_RETURN(std::vector<int64_t> all, AllGather(group, std::move(mine)));

  // Every rank now knows every line: the same summaries, in line order, everywhere.
  std::vector<ExampleSummary> summaries;
  std::vector<int64_t> example_lines;
  std::vector<uint64_t> hashes;
  std::vector<int64_t> skipped_lines;
  for (int64_t i = 0; i < lines; ++i) {
    const int64_t* slot = all.data() + ((i % size) * share + i / size) * kFields;
    if (slot[0] == kSkipped) {
      skipped_lines.push_back(i);
      continue;
    }
    if (slot[0] != kExample) {
      return absl::InternalError(absl::StrCat(path, ": no rank read line ", file->number(i)));
    }
    summaries.push_back({file->number(i), slot[1], slot[2], HashOf(slot[3])});
    example_lines.push_back(i);
    hashes.push_back(summaries.back().hash);
  }
  counts.lines = lines;
  counts.examples = static_cast<int64_t>(summaries.size());
  // The messages of the first skipped lines, read again here.
  for (int64_t i : skipped_lines) {
    if (counts.skipped >= ReadReport::kMaxWarnings) {
      ++counts.skipped;
      continue;
    }
    TESSERA_ASSIGN_OR_RETURN(std::string text, file->Read(i));
    absl::StatusOr<Example> example =
        ParseExampleLine(text, path, file->number(i), tokenizer, example_options);
    if (example.ok()) {
      return absl::DataLossError(
          absl::StrCat(path, ":", file->number(i), ": the line changed while it was being read"));
    }
    TESSERA_RETURN_IF_ERROR(SkipOrStop(example.status(), example_options, counts));
  }
  TESSERA_RETURN_IF_ERROR(FinishReadReport(path, counts));
  return RowStream::Create(
      summaries,
      std::make_shared<LineSource>(file, tokenizer, example_options, seq_len,
                                   std::move(example_lines), std::move(hashes)),
      batching);
}

}  // namespace tessera::train
