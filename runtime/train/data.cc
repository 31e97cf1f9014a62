#include "runtime/train/data.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_format.h"
#include "runtime/core/status_macros.h"

namespace tessera::train {
namespace {

// Ordered, as chat templates see a message's fields in the order the line gives them.
using json = nlohmann::ordered_json;

// Builds the errors of one line: "<source>:<line>: <field>: <what>".
class LineErrors {
 public:
  LineErrors(absl::string_view source, int64_t line) : source_(source), line_(line) {}

  absl::Status Bad(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ":", line_, ": ", field, ": ", what));
  }
  absl::Status BadLine(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ":", line_, ": ", what));
  }
  absl::Status Precondition(absl::string_view field, absl::string_view what) const {
    return absl::FailedPreconditionError(
        absl::StrCat(source_, ":", line_, ": ", field, ": ", what));
  }

 private:
  absl::string_view source_;
  int64_t line_;
};

std::string VocabularyRange(int32_t vocab_size) { return absl::StrCat("[0, ", vocab_size, ")"); }

// The integers of the JSON array `value` (field `field`). An entry outside int32 is kept as
// a value no vocabulary holds, so that the range check names it.
absl::StatusOr<std::vector<int32_t>> ReadIds(const json& value, absl::string_view field,
                                             const LineErrors& errors) {
  if (!value.is_array()) {
    return errors.Bad(field, absl::StrCat("not an array of integers (", value.type_name(), ")"));
  }
  std::vector<int32_t> ids;
  ids.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    const json& entry = value[i];
    if (!entry.is_number_integer()) {
      return errors.Bad(field,
                        absl::StrCat("entry ", i, " is not an integer (", entry.dump(), ")"));
    }
    int64_t id = 0;
    if (entry.is_number_unsigned()) {
      uint64_t unsigned_id = entry.get<uint64_t>();
      if (unsigned_id > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
        return errors.Bad(
            field, absl::StrCat("id ", unsigned_id, " at index ", i, " is outside the vocabulary"));
      }
      id = static_cast<int64_t>(unsigned_id);
    } else {
      id = entry.get<int64_t>();
    }
    if (id < std::numeric_limits<int32_t>::min() || id > std::numeric_limits<int32_t>::max()) {
      return errors.Bad(field,
                        absl::StrCat("id ", id, " at index ", i, " is outside the vocabulary"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// OK when every id of `ids` lies in the vocabulary (or is kIgnoreLabel, when `labels`).
absl::Status CheckIds(const std::vector<int32_t>& ids, bool labels, int32_t vocab_size,
                      absl::string_view field, const LineErrors& errors) {
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (labels && id == kIgnoreLabel) continue;
    if (id < 0 || id >= vocab_size) {
      return errors.Bad(field,
                        absl::StrCat(labels ? "label " : "id ", id, " at index ", i,
                                     " is outside the vocabulary ", VocabularyRange(vocab_size),
                                     labels ? " and not -100" : ""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadString(const json& object, const char* field,
                                       const LineErrors& errors) {
  const json& value = object[field];
  if (!value.is_string()) {
    return errors.Bad(field, absl::StrCat("not a string (", value.type_name(), ")"));
  }
  return value.get<std::string>();
}

// The ids of `text` (field `field`), checked against the vocabulary.
absl::StatusOr<std::vector<int32_t>> EncodeField(absl::string_view text, const char* field,
                                                 const tokenizer::Tokenizer& tokenizer,
                                                 const ExampleOptions& options,
                                                 const LineErrors& errors) {
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, /*add_special_tokens=*/false);
  if (!ids.ok()) return errors.Bad(field, ids.status().message());
  TESSERA_RETURN_IF_ERROR(CheckIds(*ids, /*labels=*/false, options.vocab_size, field, errors));
  return ids;
}

bool HasTrainedToken(const std::vector<int32_t>& labels) {
  for (size_t t = 1; t < labels.size(); ++t) {
    if (labels[t] != kIgnoreLabel) return true;
  }
  return false;
}

void Append(const std::vector<int32_t>& ids, bool trained, Example* example) {
  example->tokens.insert(example->tokens.end(), ids.begin(), ids.end());
  if (trained) {
    example->labels.insert(example->labels.end(), ids.begin(), ids.end());
  } else {
    example->labels.insert(example->labels.end(), ids.size(), kIgnoreLabel);
  }
}

void AppendOne(int32_t id, bool trained, Example* example) {
  example->tokens.push_back(id);
  example->labels.push_back(trained ? id : kIgnoreLabel);
}

// A {"messages": [...]} line's example (data.h): the conversation rendered whole, cut where
// each assistant turn starts and ends, each piece encoded apart; the assistant pieces trained.
absl::StatusOr<Example> ChatExample(const json& messages, const tokenizer::Tokenizer& tokenizer,
                                    const ExampleOptions& options, const LineErrors& errors) {
  if (options.chat_format == nullptr || !options.chat_format->status.ok()) {
    return errors.Precondition(
        "messages",
        absl::StrCat(
            options.chat_format == nullptr ? "no chat format was given" : options.chat_format->status.message(),
            "; convert the conversations to prompt/completion or text, or give the "
            "model a chat template"));
  }
  const chat::ChatFormat* format = &options.chat_format->format;
  if (absl::Status valid = chat::ValidateMessages(messages); !valid.ok()) {
    return errors.BadLine(valid.message());
  }
  auto render = [&](size_t count, bool add_generation_prompt) -> absl::StatusOr<std::string> {
    absl::StatusOr<std::string> text = format->Render(
        json(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(count)),
        add_generation_prompt);
    if (!text.ok()) return errors.Bad("messages", text.status().message());
    return text;
  };
  TESSERA_ASSIGN_OR_RETURN(const std::string whole, render(messages.size(), false));

  // The pieces of `whole`: [start, end) with whether they are trained.
  struct Piece {
    size_t start, end;
    bool trained;
  };
  std::vector<Piece> pieces;
  size_t cursor = 0;  // the end of the last assistant turn so far
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    const std::string field = absl::StrCat("messages[", i, "]");
    if (i == 0) {
      return errors.Bad(field,
                        "an assistant message first: nothing renders before it to prompt it "
                        "(start with a system or user message)");
    }
    TESSERA_ASSIGN_OR_RETURN(const std::string before, render(i, true));
    TESSERA_ASSIGN_OR_RETURN(const std::string through, render(i + 1, false));
    if (!absl::StartsWith(through, before)) {
      return errors.Bad(field,
                        "the chat template is not incremental: the conversation rendered "
                        "through this message does not start with the messages before it "
                        "rendered with the generation prompt, so its reply cannot be told apart");
    }
    if (!absl::StartsWith(whole, through) || before.size() < cursor) {
      return errors.Bad(field,
                        "the chat template is not incremental: the messages around this one "
                        "render differently in the whole conversation than up to it");
    }
    pieces.push_back({cursor, before.size(), false});
    pieces.push_back({before.size(), through.size(), true});
    cursor = through.size();
  }
  if (pieces.empty()) return errors.Bad("messages", "no trained token (no assistant message)");
  pieces.push_back({cursor, whole.size(), false});

  Example example;
  for (const Piece& piece : pieces) {
    if (piece.start == piece.end) continue;
    TESSERA_ASSIGN_OR_RETURN(
        std::vector<int32_t> ids,
        EncodeField(absl::string_view(whole).substr(piece.start, piece.end - piece.start),
                    "messages", tokenizer, options, errors));
    Append(ids, piece.trained, &example);
  }
  if (!HasTrainedToken(example.labels)) {
    return errors.Bad("messages", "no trained token (the assistant turns render as no text)");
  }
  return example;
}

}  // namespace

absl::Status CheckExampleOptions(const ExampleOptions& options) {
  if (options.vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size must be positive (is ", options.vocab_size, ")"));
  }
  for (const auto& [name, id] :
       {std::pair<const char*, std::optional<int32_t>>{"bos_token_id", options.bos_token_id},
        {"eos_token_id", options.eos_token_id}}) {
    if (id.has_value() && (*id < 0 || *id >= options.vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " ", *id, " is outside the vocabulary ",
                                                     VocabularyRange(options.vocab_size)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Example> ParseExampleLine(absl::string_view text, absl::string_view source,
                                         int64_t line, const tokenizer::Tokenizer& tokenizer,
                                         const ExampleOptions& options) {
  const LineErrors errors(source, line);
  const json object = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return errors.BadLine("not valid JSON");
  if (!object.is_object()) {
    return errors.BadLine(absl::StrCat("not a JSON object (", object.type_name(), ")"));
  }
  const bool has_text = object.contains("text");
  const bool has_prompt = object.contains("prompt");
  const bool has_completion = object.contains("completion");
  const bool has_ids = object.contains("input_ids");
  const bool has_labels = object.contains("labels");
  const bool has_messages = object.contains("messages");

  std::vector<std::string> formats;
  if (has_text) formats.push_back("text");
  if (has_prompt || has_completion) formats.push_back("prompt/completion");
  if (has_ids) formats.push_back("input_ids");
  if (has_messages) formats.push_back("messages");
  if (formats.empty()) {
    return errors.BadLine(has_labels ? "labels: only with input_ids"
                                     : "no known format (expected \"text\", \"prompt\" and "
                                       "\"completion\", \"input_ids\", or \"messages\")");
  }
  if (formats.size() > 1) {
    return errors.BadLine(
        absl::StrCat("fields of several formats (", absl::StrJoin(formats, ", "), "); one a line"));
  }
  if (has_labels && !has_ids) return errors.Bad("labels", "only with input_ids");

  Example example;
  example.line = line;
  if (has_messages) {
    TESSERA_ASSIGN_OR_RETURN(example, ChatExample(object["messages"], tokenizer, options, errors));
    example.line = line;
    return example;
  }
  if (has_ids) {
    TESSERA_ASSIGN_OR_RETURN(example.tokens, ReadIds(object["input_ids"], "input_ids", errors));
    if (example.tokens.empty()) return errors.Bad("input_ids", "empty");
    TESSERA_RETURN_IF_ERROR(
        CheckIds(example.tokens, /*labels=*/false, options.vocab_size, "input_ids", errors));
    if (has_labels) {
      TESSERA_ASSIGN_OR_RETURN(example.labels, ReadIds(object["labels"], "labels", errors));
      if (example.labels.size() != example.tokens.size()) {
        return errors.Bad(
            "labels", absl::StrCat("length ", example.labels.size(), " differs from input_ids' ",
                                   example.tokens.size()));
      }
      TESSERA_RETURN_IF_ERROR(
          CheckIds(example.labels, /*labels=*/true, options.vocab_size, "labels", errors));
    } else {
      example.labels = example.tokens;
    }
    if (!HasTrainedToken(example.labels)) {
      return errors.Bad(has_labels ? "labels" : "input_ids",
                        "no trained token (labels after the first are all -100, or there is "
                        "only one token)");
    }
    return example;
  }

  if (options.bos_token_id.has_value()) AppendOne(*options.bos_token_id, false, &example);
  if (has_text) {
    TESSERA_ASSIGN_OR_RETURN(std::string body, ReadString(object, "text", errors));
    if (body.empty()) return errors.Bad("text", "empty");
    TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                             EncodeField(body, "text", tokenizer, options, errors));
    Append(ids, /*trained=*/true, &example);
  } else {
    if (!has_prompt) return errors.Bad("prompt", "missing (a completion needs a prompt)");
    if (!has_completion) return errors.Bad("completion", "missing (a prompt needs a completion)");
    TESSERA_ASSIGN_OR_RETURN(std::string prompt, ReadString(object, "prompt", errors));
    TESSERA_ASSIGN_OR_RETURN(std::string completion, ReadString(object, "completion", errors));
    if (completion.empty()) return errors.Bad("completion", "empty");
    TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> prompt_ids,
                             EncodeField(prompt, "prompt", tokenizer, options, errors));
    TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> completion_ids,
                             EncodeField(completion, "completion", tokenizer, options, errors));
    Append(prompt_ids, /*trained=*/false, &example);
    Append(completion_ids, /*trained=*/true, &example);
  }
  if (options.eos_token_id.has_value()) AppendOne(*options.eos_token_id, true, &example);
  if (!HasTrainedToken(example.labels)) {
    return errors.Bad(has_text ? "text" : "completion",
                      "no trained token (a single token without bos has nothing before it to "
                      "predict it from)");
  }
  return example;
}

absl::Status SkipOrStop(const absl::Status& line_error, const ExampleOptions& options,
                        ReadReport& report) {
  if (options.on_bad_line == BadLinePolicy::kStop ||
      line_error.code() != absl::StatusCode::kInvalidArgument) {
    return line_error;
  }
  ++report.skipped;
  if (report.skipped <= ReadReport::kMaxWarnings) {
    report.warnings.emplace_back(line_error.message());
  }
  return absl::OkStatus();
}

absl::Status FinishReadReport(const std::string& path, ReadReport& report) {
  if (report.skipped > ReadReport::kMaxWarnings) {
    report.warnings.push_back(absl::StrCat("... and ", report.skipped - ReadReport::kMaxWarnings,
                                           " more bad lines skipped"));
  }
  if (report.examples == 0) {
    return absl::InvalidArgumentError(
        report.skipped > 0
            ? absl::StrCat(path, ": no examples (all ", report.skipped,
                           " lines skipped; the first: ", report.warnings.front(), ")")
            : absl::StrCat(path, ": no examples (the file has no non-blank line)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Example>> ReadExamples(const std::string& path,
                                                  const tokenizer::Tokenizer& tokenizer,
                                                  const ExampleOptions& options,
                                                  ReadReport* report) {
  ReadReport local_report;
  ReadReport& counts = report != nullptr ? *report : local_report;
  counts = ReadReport();
  TESSERA_RETURN_IF_ERROR(CheckExampleOptions(options));
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::stringstream buffer;
  buffer << file.rdbuf();
  std::string contents = std::move(buffer).str();
  absl::string_view rest = contents;
  absl::ConsumePrefix(&rest, "\xef\xbb\xbf");  // a UTF-8 byte order mark

  std::vector<Example> examples;
  int64_t number = 0;
  for (absl::string_view line : absl::StrSplit(rest, '\n')) {
    ++number;
    absl::ConsumeSuffix(&line, "\r");
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    ++counts.lines;
    absl::StatusOr<Example> example = ParseExampleLine(line, path, number, tokenizer, options);
    if (example.ok()) {
      examples.push_back(*std::move(example));
      continue;
    }
    TESSERA_RETURN_IF_ERROR(SkipOrStop(example.status(), options, counts));
  }
  counts.examples = static_cast<int64_t>(examples.size());
  TESSERA_RETURN_IF_ERROR(FinishReadReport(path, counts));
  return examples;
}

absl::StatusOr<std::unique_ptr<JsonlFile>> JsonlFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::unique_ptr<JsonlFile> file(new JsonlFile(path, fd));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  int64_t offset = 0;
  int64_t number = 0;
  for (std::string text; std::getline(in, text);) {
    ++number;
    absl::string_view line = text;
    int64_t start = offset;
    offset += static_cast<int64_t>(text.size()) + 1;
    if (number == 1 && absl::ConsumePrefix(&line, "\xef\xbb\xbf")) start += 3;
    absl::ConsumeSuffix(&line, "\r");
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    file->lines_.push_back({number, start, static_cast<int64_t>(line.size())});
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": reading failed"));
  return file;
}

JsonlFile::~JsonlFile() { ::close(fd_); }

absl::StatusOr<std::string> JsonlFile::Read(int64_t i) const {
  const Line& line = lines_[i];
  std::string text(static_cast<size_t>(line.size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t got = ::pread(fd_, text.data() + done, text.size() - done,
                                static_cast<off_t>(line.offset + static_cast<int64_t>(done)));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      return absl::DataLossError(
          absl::StrCat(path_, ":", line.number, ": cannot be read again (",
                       got < 0 ? std::strerror(errno) : "the file is shorter",
                       "); was it changed during the run?"));
    }
    done += static_cast<size_t>(got);
  }
  return text;
}

}  // namespace tessera::train
