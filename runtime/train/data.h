#ifndef TESSERA_RUNTIME_TRAIN_DATA_H_
#define TESSERA_RUNTIME_TRAIN_DATA_H_

// Fine-tuning examples read from JSON Lines, one example a line (blank lines are ignored):
//
//   {"text": s}                             every token trained
//   {"prompt": p, "completion": c}          loss on the completion (and eos) only
//   {"input_ids": [...], "labels": [...]}   as given; labels optional (= input_ids), -100 masks
//   {"messages": [{"role", "content"}...]}  the model's chat template; loss on the assistant
//                                           turns only
//
// Fields of no format ("id", "source", ...) are ignored, as dataset files often carry them;
// fields of two formats on one line are an error. Text is encoded with
// Tokenizer::Encode(text, add_special_tokens=false); bos and eos come from ExampleOptions, not
// from the tokenizer's post-processor, so that a prompt and its completion, encoded apart, are
// joined without a special token between them. The prompt and the completion are encoded
// separately: the completion's first token starts at the boundary whatever BPE would merge
// across it (as TRL's prompt/completion datasets do). input_ids examples get no bos or eos.
//
// A "messages" conversation is rendered with ExampleOptions::chat_format (the template writes
// bos, eos and turn markers itself: no bos or eos of ExampleOptions is added) and trained on
// its assistant turns, as torchtune, LLaMA-Factory and axolotl do by default: the text that
// assistant message i adds, Render(messages[:i+1], add_generation_prompt=false) after
// Render(messages[:i], add_generation_prompt=true), has its labels (the reply and the
// template's end-of-turn marker); the system and user turns, each assistant header and
// anything after the last assistant turn have kIgnoreLabel. The tokens are those of the whole
// conversation's rendering, cut at those boundaries and each piece encoded apart (so a reply's
// first token starts at its boundary); where BPE would not merge across a boundary they are
// transformers' apply_chat_template(messages, tokenize=True). The template must be incremental
// (each of those renderings a prefix of the next, and of the whole conversation's), and the
// first message may not be the assistant's: nothing renders before it as its prompt.
//
// Errors. Options that cannot work (vocab_size not positive, a bos/eos id outside the
// vocabulary) are INVALID_ARGUMENT before anything is read; an unreadable file is NOT_FOUND; a
// "messages" line when the model has no usable chat template (ExampleOptions::chat_format) is
// FAILED_PRECONDITION whatever on_bad_line says (skipping it would silently drop a chat
// dataset). A bad line is INVALID_ARGUMENT "<path>:<line>: <field>: <what>", e.g.
//   "train.jsonl:7: input_ids: id 70000 at index 3 is outside the vocabulary [0, 32000)".
// Bad lines: not JSON or not an object; no known format or fields of two; a field of the wrong
// type; an empty text, completion or input_ids; an id or label outside the vocabulary (labels
// may also be -100); labels of another length than input_ids; text the tokenizer refuses
// (invalid UTF-8); and an example with no trained token (a conversation without an assistant
// message). For messages also: a malformed message ("messages[2].role: required", as
// chat::ValidateMessages says), an error of the template's own (raise_exception, e.g. roles
// out of order: "messages: ..."), and a template that is not incremental at an assistant
// message or an assistant message first ("messages[3]: ..."). A file without a single example
// is INVALID_ARGUMENT too.
//
// Thread safety: the functions keep no state; the tokenizer and the chat format are only read.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/tokenizer/tokenizer.h"

namespace tessera::chat {
struct LoadedChatFormat;
}  // namespace tessera::chat

namespace tessera::train {

// The label of a position that carries no loss (PyTorch's cross-entropy ignore_index).
inline constexpr int32_t kIgnoreLabel = -100;

// One training example: tokens and, aligned with them, labels in Hugging Face's convention:
// labels[t] is the id the model should predict AT position t (the trainer shifts: position
// t-1's output is trained towards labels[t]), or kIgnoreLabel for no loss. labels[0] is
// therefore never trained; "trained tokens" below means labels[1..] that are not kIgnoreLabel.
struct Example {
  std::vector<int32_t> tokens;
  std::vector<int32_t> labels;  // same length as tokens
  int64_t line = 0;             // 1-based line in its file
};

enum class BadLinePolicy {
  kSkip,  // count the line, keep a warning, go on
  kStop,  // fail with the line's error
};

struct ExampleOptions {
  // Every id (read, encoded, bos, eos) must lie in [0, vocab_size): the model's vocabulary,
  // which may be larger than the tokenizer's.
  int32_t vocab_size = 0;
  // Prepended to text and prompt/completion examples when set; its label is kIgnoreLabel.
  std::optional<int32_t> bos_token_id;
  // Appended after the text and after the completion when set; trained, so the model learns
  // to stop.
  std::optional<int32_t> eos_token_id;
  BadLinePolicy on_bad_line = BadLinePolicy::kStop;
  // The model's chat format (chat/chat_format.h), which "messages" lines are rendered with;
  // shared so that a stream that reads its lines again as it trains (sharded_data.h) keeps
  // it. Null, or one that cannot render (its status says why: no template, or one Tessera
  // does not render): such a line is FAILED_PRECONDITION with that reason.
  std::shared_ptr<const chat::LoadedChatFormat> chat_format;
};

struct ReadReport {
  int64_t lines = 0;     // non-blank lines read (= examples + skipped)
  int64_t examples = 0;  // examples returned
  int64_t skipped = 0;   // bad lines skipped under BadLinePolicy::kSkip
  // The errors of the first kMaxWarnings skipped lines in full, then one line counting the
  // rest.
  std::vector<std::string> warnings;
  static constexpr int kMaxWarnings = 10;
};

// Reads the JSONL file at `path` (format and errors above). `report` may be null; when given
// it is overwritten, also when an error is returned.
absl::StatusOr<std::vector<Example>> ReadExamples(const std::string& path,
                                                  const tokenizer::Tokenizer& tokenizer,
                                                  const ExampleOptions& options,
                                                  ReadReport* report);

// The checks ReadExamples makes of `options` before it reads: INVALID_ARGUMENT for a
// vocab_size that is not positive or a bos/eos id outside the vocabulary.
absl::Status CheckExampleOptions(const ExampleOptions& options);

// How ReadExamples handles the error of a line: returns it when the line stops the read
// (BadLinePolicy::kStop, or an error other than INVALID_ARGUMENT), else counts the line as
// skipped in `report` (keeping the first kMaxWarnings messages) and returns OK.
absl::Status SkipOrStop(const absl::Status& line_error, const ExampleOptions& options,
                        ReadReport& report);

// Completes `report` after the last line (the warning that counts the skipped lines beyond
// kMaxWarnings), and returns INVALID_ARGUMENT naming `path` when it has no examples.
absl::Status FinishReadReport(const std::string& path, ReadReport& report);

// One line of such a file (`text` without its newline) as an example; errors are those of a
// bad line (or FAILED_PRECONDITION for "messages" without a chat template), their messages
// starting "<source>:<line>: ".
// Does not check `options` themselves (ReadExamples does).
absl::StatusOr<Example> ParseExampleLine(absl::string_view text, absl::string_view source,
                                         int64_t line, const tokenizer::Tokenizer& tokenizer,
                                         const ExampleOptions& options);

// Random access to the non-blank lines of a JSON Lines file, for readers that parse only some
// of them (sharded_data.h). The lines are those ReadExamples sees: the file split at '\n',
// a trailing '\r' and a leading UTF-8 byte order mark left out, blank lines skipped, numbered
// from 1 with the blank ones counted. Thread safe.
class JsonlFile {
 public:
  // Scans the file for its lines, without parsing them; NOT_FOUND for an unreadable file.
  static absl::StatusOr<std::unique_ptr<JsonlFile>> Open(const std::string& path);
  ~JsonlFile();
  JsonlFile(const JsonlFile&) = delete;
  JsonlFile& operator=(const JsonlFile&) = delete;

  const std::string& path() const { return path_; }
  // Non-blank lines.
  int64_t size() const { return static_cast<int64_t>(lines_.size()); }
  // The 1-based number in the file of non-blank line `i` (0 <= i < size()).
  int64_t number(int64_t i) const { return lines_[i].number; }
  // The text of non-blank line `i`; DATA_LOSS naming the file and line when it can no longer
  // be read where it was (the file was cut since Open).
  absl::StatusOr<std::string> Read(int64_t i) const;

 private:
  struct Line {
    int64_t number = 0;
    int64_t offset = 0;  // bytes from the start of the file
    int64_t size = 0;
  };
  JsonlFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

  std::string path_;
  int fd_;  // read with pread: no shared file position between threads
  std::vector<Line> lines_;
};

}  // namespace tessera::train

#endif  // TESSERA_RUNTIME_TRAIN_DATA_H_
