// Every `tessera` command line in deploy/ parses: the Slurm script, the Kubernetes
// manifests, the container recipe and whatever is added there later. Each command is run
// through the real binary in parse-only mode (TESSERA_PARSE_ONLY=1, launcher/process.h), so
// a renamed or removed flag breaks this test rather than a deployment. Also here:
// `tessera launch --dry-run` prints command lines that parse the same way, and `tessera
// launch` runs and stops its coordinator and mpirun. TESSERA_BINARY and TESSERA_DEPLOY_DIR
// come from CMake.
//
// How command lines are found. A command line is a `tessera` word (any path whose last
// component is "tessera") followed by a subcommand word (lower-case letters, digits and
// '-'), and everything after it up to the end of its simple command.
// - Shell text (every file but YAML and Markdown: *.sh, *.sbatch, Containerfile) is read
//   by a small shell lexer: backslash-newline joins lines; quotes, escapes and comments are
//   honoured; a simple command ends at a newline, ';', '&', '|', '(' or ')'; redirections and
//   their targets are dropped, as are here-document bodies. Variables and command
//   substitutions become the placeholder "1", which every kind of flag value accepts (an
//   integer, a byte count, a duration in seconds, a string, host "1"); ${NAME:-default}
//   becomes its default; "$@" and "$*" become nothing. The line of a command is the line
//   of its `tessera` word.
// - YAML (*.yaml, *.yml): the block or flow sequences under `command:` and `args:` keys
//   (Kubernetes containers) are joined into one word list per container, `command` first,
//   a sibling `args` after it; Kubernetes $(NAME) references become the placeholder. A
//   block scalar item (| or >) or any item holding spaces is a script, as given to
//   `sh -c`, and read as shell text too. Other YAML (a ConfigMap's data) is not read.
// - Markdown (*.md): the fenced code blocks, as shell text.
// Comments are never read, so prose may name subcommands freely. kMinimumCommands below
// says how many commands each file must yield, so that extraction which silently finds
// nothing fails.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace {

namespace fs = std::filesystem;

// What every variable becomes: valid for every flag kind of launcher/flags.h.
constexpr char kPlaceholder[] = "1";

// Files under deploy/ that must yield at least this many `tessera` command lines.
const std::map<std::string, int>& MinimumCommands() {
  static const auto* minimum = new std::map<std::string, int>{
      // launch (mpirun mode), coordinator, client health, worker
      {"slurm/tessera.sbatch", 4},
      {"k8s/coordinator.yaml", 1},
      {"k8s/workers-mpijob.yaml", 1},
  };
  return *minimum;
}

struct Word {
  std::string text;
  int line = 0;
  bool vanishes = false;  // "$@": no word at all
};

// One `tessera <subcommand> ...` found in a file.
struct DeployCommand {
  std::string file;  // relative to deploy/
  int line = 0;
  std::vector<std::string> argv;  // argv[0] is the tessera word as written

  std::string Text() const { return absl::StrJoin(argv, " "); }
};

// ---------------------------------------------------------------------------------------
// Shell text.

bool IsNameStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsNameChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

class ShellLexer {
 public:
  ShellLexer(absl::string_view text, int first_line) : text_(text), line_(first_line) {}

  // The simple commands of the text, each a list of words.
  std::vector<std::vector<Word>> Commands() {
    std::vector<std::vector<Word>> commands;
    std::vector<Word> current;
    auto end_command = [&] {
      if (!current.empty()) commands.push_back(std::move(current));
      current.clear();
    };
    while (pos_ < text_.size()) {
      char c = text_[pos_];
      if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else if (c == '\\' && Peek(1) == '\n') {
        pos_ += 2;
        ++line_;
      } else if (c == '\n') {
        ++pos_;
        ++line_;
        end_command();
        SkipHereDocuments();
      } else if (c == '#') {
        while (pos_ < text_.size() && text_[pos_] != '\n') ++pos_;
      } else if (c == ';' || c == '&' || c == '|' || c == '(' || c == ')') {
        ++pos_;
        end_command();
      } else if (c == '<' || c == '>') {
        SkipRedirection();
      } else {
        std::optional<Word> word = ReadWord();
        // "2>&1": a word of digits right before a redirection is its file descriptor.
        if (pos_ < text_.size() && (text_[pos_] == '<' || text_[pos_] == '>') && word &&
            !word->text.empty() && std::all_of(word->text.begin(), word->text.end(), [](char d) {
              return std::isdigit(static_cast<unsigned char>(d));
            })) {
          SkipRedirection();
          continue;
        }
        if (word && !word->vanishes) current.push_back(*std::move(word));
      }
    }
    end_command();
    return commands;
  }

 private:
  char Peek(size_t ahead) const { return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : '\0'; }

  static bool EndsWord(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';' || c == '&' || c == '|' ||
           c == '(' || c == ')' || c == '<' || c == '>';
  }

  // "> file", ">> file", ">&2", "<<EOF" (the body is skipped after the line ends).
  void SkipRedirection() {
    bool here_document = text_.substr(pos_, 2) == "<<";
    while (pos_ < text_.size() && (text_[pos_] == '<' || text_[pos_] == '>')) ++pos_;
    if (pos_ < text_.size() && (text_[pos_] == '&' || text_[pos_] == '-')) ++pos_;
    if (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;  // >&2
      return;
    }
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
    if (pos_ >= text_.size() || EndsWord(text_[pos_])) return;
    std::optional<Word> target = ReadWord(/*expand=*/false);
    if (here_document && target) here_delimiters_.push_back(target->text);
  }

  void SkipHereDocuments() {
    for (const std::string& delimiter : here_delimiters_) {
      while (pos_ < text_.size()) {
        size_t end = text_.find('\n', pos_);
        if (end == absl::string_view::npos) end = text_.size();
        absl::string_view line = text_.substr(pos_, end - pos_);
        pos_ = std::min(end + 1, text_.size());
        ++line_;
        if (absl::StripAsciiWhitespace(line) == delimiter) break;
      }
    }
    here_delimiters_.clear();
  }

  // Reads one word at pos_, removing quotes and expanding variables (unless !expand).
  std::optional<Word> ReadWord(bool expand = true) {
    Word word;
    word.line = line_;
    bool literal = false;  // anything but "$@"
    bool all_arguments = false;
    while (pos_ < text_.size() && !EndsWord(text_[pos_])) {
      char c = text_[pos_];
      if (c == '\\') {
        if (Peek(1) == '\n') {
          pos_ += 2;
          ++line_;
          continue;
        }
        if (pos_ + 1 < text_.size()) word.text += text_[pos_ + 1];
        pos_ += 2;
        literal = true;
      } else if (c == '\'') {
        size_t end = text_.find('\'', pos_ + 1);
        if (end == absl::string_view::npos) end = text_.size();
        absl::string_view quoted = text_.substr(pos_ + 1, end - pos_ - 1);
        line_ += static_cast<int>(std::count(quoted.begin(), quoted.end(), '\n'));
        word.text.append(quoted.data(), quoted.size());
        pos_ = std::min(end + 1, text_.size());
        literal = true;
      } else if (c == '"') {
        ++pos_;
        literal = true;
        while (pos_ < text_.size() && text_[pos_] != '"') {
          char d = text_[pos_];
          if (d == '\\' && absl::string_view("$`\"\\\n").find(Peek(1)) != absl::string_view::npos &&
              Peek(1) != '\0') {
            if (Peek(1) == '\n') {
              ++line_;
            } else {
              word.text += Peek(1);
            }
            pos_ += 2;
          } else if (d == '$' && expand) {
            bool at = false;
            word.text += Expand(&at);
            if (at) all_arguments = true;
          } else if (d == '`' && expand) {
            SkipBackticks();
            word.text += kPlaceholder;
          } else {
            if (d == '\n') ++line_;
            word.text += d;
            ++pos_;
          }
        }
        ++pos_;
      } else if (c == '$' && expand) {
        bool at = false;
        std::string value = Expand(&at);
        if (at) {
          all_arguments = true;
        } else {
          literal = true;
        }
        word.text += value;
      } else if (c == '`' && expand) {
        SkipBackticks();
        word.text += kPlaceholder;
        literal = true;
      } else {
        word.text += c;
        ++pos_;
        literal = true;
      }
    }
    // "$@" alone, quoted or not: however many words the arguments are (here: none).
    word.vanishes = all_arguments && word.text.empty();
    if (!literal && !all_arguments) return std::nullopt;
    return word;
  }

  void SkipBackticks() {
    size_t end = text_.find('`', pos_ + 1);
    pos_ = end == absl::string_view::npos ? text_.size() : end + 1;
  }

  // pos_ is at '$'. Returns what the expansion stands for; *all_arguments for $@ and $*.
  std::string Expand(bool* all_arguments) {
    char next = Peek(1);
    if (next == '@' || next == '*') {
      pos_ += 2;
      *all_arguments = true;
      return "";
    }
    if (next == '{') {
      size_t start = pos_ + 2;
      int depth = 1;
      size_t i = start;
      for (; i < text_.size() && depth > 0; ++i) {
        if (text_[i] == '{') ++depth;
        if (text_[i] == '}') --depth;
      }
      absl::string_view inside = text_.substr(start, i - 1 - start);
      pos_ = i;
      size_t name_end = 0;
      while (name_end < inside.size() && IsNameChar(inside[name_end])) ++name_end;
      absl::string_view rest = inside.substr(name_end);
      for (absl::string_view op : {":-", ":=", "-", "="}) {
        if (name_end > 0 && absl::StartsWith(rest, op)) {
          // The default, itself expanded: ${TP:-2} -> 2, ${A:-$B} -> 1.
          ShellLexer inner(rest.substr(op.size()), line_);
          std::optional<Word> value = inner.ReadWord();
          return value ? value->text : "";
        }
      }
      return kPlaceholder;
    }
    if (next == '(') {
      size_t i = pos_ + 2;
      int depth = 1;
      for (; i < text_.size() && depth > 0; ++i) {
        if (text_[i] == '(') ++depth;
        if (text_[i] == ')') --depth;
        if (text_[i] == '\n') ++line_;
      }
      pos_ = i;
      return kPlaceholder;
    }
    if (IsNameStart(next)) {
      pos_ += 1;
      while (pos_ < text_.size() && IsNameChar(text_[pos_])) ++pos_;
      return kPlaceholder;
    }
    if (std::isdigit(static_cast<unsigned char>(next)) ||
        absl::string_view("#?$!-").find(next) != absl::string_view::npos) {
      if (next != '\0') {
        pos_ += 2;
        return kPlaceholder;
      }
    }
    ++pos_;
    return "$";
  }

  absl::string_view text_;
  size_t pos_ = 0;
  int line_;
  std::vector<std::string> here_delimiters_;
};

bool IsTesseraWord(const std::string& word) {
  return word == "tessera" || absl::EndsWith(word, "/tessera");
}

bool IsSubcommand(const std::string& word) {
  return !word.empty() && std::islower(static_cast<unsigned char>(word[0])) &&
         std::all_of(word.begin(), word.end(), [](char c) {
           return std::islower(static_cast<unsigned char>(c)) ||
                  std::isdigit(static_cast<unsigned char>(c)) || c == '-';
         });
}

void ExtractFromShell(absl::string_view text, int first_line, const std::string& file,
                      std::vector<DeployCommand>* found);

// The first `tessera <subcommand> ...` in `words`; words holding spaces are scripts too.
void ExtractFromWords(const std::vector<Word>& words, const std::string& file,
                      std::vector<DeployCommand>* found) {
  for (size_t i = 0; i < words.size(); ++i) {
    if (i + 1 < words.size() && IsTesseraWord(words[i].text) && IsSubcommand(words[i + 1].text)) {
      DeployCommand command{file, words[i].line, {}};
      for (size_t j = i; j < words.size(); ++j) command.argv.push_back(words[j].text);
      found->push_back(std::move(command));
      return;
    }
    if (words[i].text.find_first_of(" \t\n") != std::string::npos) {
      ExtractFromShell(words[i].text, words[i].line, file, found);
    }
  }
}

void ExtractFromShell(absl::string_view text, int first_line, const std::string& file,
                      std::vector<DeployCommand>* found) {
  for (const std::vector<Word>& words : ShellLexer(text, first_line).Commands()) {
    ExtractFromWords(words, file, found);
  }
}

// ---------------------------------------------------------------------------------------
// YAML: the sequences under `command:` and `args:`.

int IndentOf(absl::string_view line) {
  int indent = 0;
  while (indent < static_cast<int>(line.size()) && line[indent] == ' ') ++indent;
  return indent;
}

bool IsBlankOrComment(absl::string_view line) {
  absl::string_view stripped = absl::StripLeadingAsciiWhitespace(line);
  return stripped.empty() || stripped[0] == '#';
}

// A scalar as written in a sequence: quotes removed, a trailing comment dropped.
std::string YamlScalar(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (!text.empty() && text[0] == '"') {
    std::string value;
    for (size_t i = 1; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] == '\\' && i + 1 < text.size()) {
        char e = text[++i];
        value += e == 'n' ? '\n' : e == 't' ? '\t' : e;
      } else {
        value += text[i];
      }
    }
    return value;
  }
  if (!text.empty() && text[0] == '\'') {
    std::string value;
    for (size_t i = 1; i < text.size(); ++i) {
      if (text[i] == '\'') {
        if (i + 1 < text.size() && text[i + 1] == '\'') {
          value += '\'';
          ++i;
          continue;
        }
        break;
      }
      value += text[i];
    }
    return value;
  }
  if (size_t comment = text.find(" #"); comment != absl::string_view::npos) {
    text = absl::StripTrailingAsciiWhitespace(text.substr(0, comment));
  }
  return std::string(text);
}

// Kubernetes expands $(NAME) in command and args from the container's environment and
// turns $$ into $.
std::string KubernetesExpand(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '$' && i + 1 < text.size() && text[i + 1] == '$') {
      out += '$';
      ++i;
      continue;
    }
    if (text[i] == '$' && i + 1 < text.size() && text[i + 1] == '(') {
      size_t end = text.find(')', i);
      absl::string_view name =
          end == std::string::npos ? "" : absl::string_view(text).substr(i + 2, end - i - 2);
      if (!name.empty() && std::all_of(name.begin(), name.end(), IsNameChar)) {
        out += kPlaceholder;
        i = end;
        continue;
      }
    }
    out += text[i];
  }
  return out;
}

struct YamlList {
  std::string key;  // command or args
  int key_indent = 0;
  int key_line = 0;  // index into the file's lines
  std::vector<Word> words;
};

// Splits a flow sequence's inside ("a", 'b', c) at commas outside quotes.
std::vector<std::string> FlowItems(absl::string_view inside) {
  std::vector<std::string> items;
  std::string current;
  char quote = 0;
  for (char c : inside) {
    if (quote != 0) {
      if (c == quote) quote = 0;
      current += c;
    } else if (c == '"' || c == '\'') {
      quote = c;
      current += c;
    } else if (c == ',') {
      items.push_back(YamlScalar(current));
      current.clear();
    } else {
      current += c;
    }
  }
  if (!absl::StripAsciiWhitespace(current).empty()) items.push_back(YamlScalar(current));
  return items;
}

std::vector<YamlList> YamlLists(const std::vector<std::string>& lines) {
  std::vector<YamlList> lists;
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    if (IsBlankOrComment(line)) continue;
    // The key's column, past any "- " that opens a mapping inside a sequence.
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line);
    while (absl::ConsumePrefix(&rest, "- ")) rest = absl::StripLeadingAsciiWhitespace(rest);
    int indent = static_cast<int>(line.size() - rest.size());
    YamlList list;
    if (absl::ConsumePrefix(&rest, "command:")) {
      list.key = "command";
    } else if (absl::ConsumePrefix(&rest, "args:")) {
      list.key = "args";
    } else {
      continue;
    }
    list.key_indent = indent;
    list.key_line = static_cast<int>(i);
    rest = absl::StripAsciiWhitespace(rest);
    if (absl::StartsWith(rest, "[")) {
      // A flow sequence, possibly over several lines.
      std::string flow(rest.substr(1));
      size_t j = i;
      while (flow.find(']') == std::string::npos && j + 1 < lines.size()) {
        flow += " " + lines[++j];
      }
      flow = flow.substr(0, flow.rfind(']'));
      for (std::string& item : FlowItems(flow)) {
        list.words.push_back({KubernetesExpand(item), static_cast<int>(i) + 1, false});
      }
      lists.push_back(std::move(list));
      continue;
    }
    if (!rest.empty() && rest[0] != '#') continue;  // a scalar: not a list
    // A block sequence: "- item" lines at one indentation, at or below the key's.
    int item_indent = -1;
    size_t j = i + 1;
    for (; j < lines.size(); ++j) {
      absl::string_view item = lines[j];
      if (IsBlankOrComment(item)) continue;
      int at = IndentOf(item);
      absl::string_view body = item.substr(at);
      if (item_indent < 0) {
        if (at < list.key_indent || !absl::StartsWith(body, "-")) break;
        item_indent = at;
      }
      if (at < item_indent || (at == item_indent && !absl::StartsWith(body, "-"))) break;
      if (at > item_indent) {
        // A plain scalar continued on the next line.
        if (!list.words.empty()) {
          list.words.back().text += " " + std::string(absl::StripAsciiWhitespace(body));
        }
        continue;
      }
      body = absl::StripLeadingAsciiWhitespace(body.substr(1));
      int item_line = static_cast<int>(j) + 1;
      if (absl::StartsWith(body, "|") || absl::StartsWith(body, ">")) {
        // A block scalar: the more-indented lines that follow.
        bool folded = body[0] == '>';
        std::vector<std::string> content;
        int content_indent = -1;
        while (j + 1 < lines.size()) {
          absl::string_view next = lines[j + 1];
          bool blank = absl::StripAsciiWhitespace(next).empty();
          if (!blank && IndentOf(next) <= item_indent) break;
          ++j;
          if (blank) {
            content.emplace_back();
            continue;
          }
          if (content_indent < 0) content_indent = IndentOf(next);
          content.emplace_back(next.substr(std::min<size_t>(content_indent, next.size())));
        }
        list.words.push_back(
            {KubernetesExpand(absl::StrJoin(content, folded ? " " : "\n")), item_line + 1, false});
        continue;
      }
      list.words.push_back({KubernetesExpand(YamlScalar(body)), item_line, false});
    }
    lists.push_back(std::move(list));
    i = j - 1;
  }
  return lists;
}

void ExtractFromYaml(const std::string& text, const std::string& file,
                     std::vector<DeployCommand>* found) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  std::vector<YamlList> lists = YamlLists(lines);
  // A container's command and its args: the same key indentation, with no line between
  // them that is less indented (which would end the mapping that holds both).
  auto same_mapping = [&](const YamlList& a, const YamlList& b) {
    if (a.key_indent != b.key_indent) return false;
    int from = std::min(a.key_line, b.key_line), to = std::max(a.key_line, b.key_line);
    for (int k = from + 1; k < to; ++k) {
      if (!IsBlankOrComment(lines[k]) && IndentOf(lines[k]) < a.key_indent) return false;
    }
    return true;
  };
  std::vector<bool> used(lists.size(), false);
  for (size_t a = 0; a < lists.size(); ++a) {
    if (lists[a].key != "command") continue;
    std::vector<Word> words = lists[a].words;
    for (size_t b = 0; b < lists.size(); ++b) {
      if (!used[b] && lists[b].key == "args" && same_mapping(lists[a], lists[b])) {
        words.insert(words.end(), lists[b].words.begin(), lists[b].words.end());
        used[b] = true;
        break;
      }
    }
    used[a] = true;
    ExtractFromWords(words, file, found);
  }
  for (size_t b = 0; b < lists.size(); ++b) {
    if (!used[b]) ExtractFromWords(lists[b].words, file, found);
  }
}

// Markdown: the fenced code blocks.
void ExtractFromMarkdown(const std::string& text, const std::string& file,
                         std::vector<DeployCommand>* found) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  std::string block;
  int block_line = 0;
  bool inside = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (absl::StartsWith(absl::StripLeadingAsciiWhitespace(lines[i]), "```")) {
      if (inside) ExtractFromShell(block, block_line, file, found);
      inside = !inside;
      block.clear();
      block_line = static_cast<int>(i) + 2;
    } else if (inside) {
      absl::StrAppend(&block, lines[i], "\n");
    }
  }
}

std::vector<DeployCommand> ExtractCommands(const std::string& text, const std::string& file) {
  std::vector<DeployCommand> found;
  if (absl::EndsWith(file, ".yaml") || absl::EndsWith(file, ".yml")) {
    ExtractFromYaml(text, file, &found);
  } else if (absl::EndsWith(file, ".md")) {
    ExtractFromMarkdown(text, file, &found);
  } else {
    ExtractFromShell(text, 1, file, &found);
  }
  return found;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Every file under deploy/, in name order (relative names), with its commands.
std::map<std::string, std::vector<DeployCommand>> ScanDeploy() {
  std::map<std::string, std::vector<DeployCommand>> files;
  std::error_code error;
  for (const fs::directory_entry& entry :
       fs::recursive_directory_iterator(TESSERA_DEPLOY_DIR, error)) {
    if (!entry.is_regular_file()) continue;
    std::string name = fs::relative(entry.path(), TESSERA_DEPLOY_DIR).generic_string();
    files[name] = ExtractCommands(ReadFile(entry.path()), name);
  }
  return files;
}

std::vector<DeployCommand> AllDeployCommands() {
  std::vector<DeployCommand> all;
  for (auto& [name, commands] : ScanDeploy()) {
    all.insert(all.end(), commands.begin(), commands.end());
  }
  return all;
}

// ---------------------------------------------------------------------------------------
// Running processes.

struct Outcome {
  int exit_code = -1;  // 128 + signal when killed
  std::string out;
  std::string err;
  std::string All() const { return out + err; }
};

// A child process with its output in files of a temporary folder.
class Process {
 public:
  Process(std::vector<std::string> argv, std::vector<std::string> env)
      : argv_(std::move(argv)), env_(std::move(env)) {
    char pattern[] = "/tmp/tessera-deploy-test-XXXXXX";
    dir_ = mkdtemp(pattern);
    std::vector<char*> args;
    for (std::string& arg : argv_) args.push_back(arg.data());
    args.push_back(nullptr);
    std::string out = dir_ + "/out", err = dir_ + "/err";
    pid_ = fork();
    if (pid_ == 0) {
      for (const std::string& setting : env_) putenv(const_cast<char*>(setting.c_str()));
      int out_fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err_fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int in_fd = open("/dev/null", O_RDONLY);
      dup2(out_fd, STDOUT_FILENO);
      dup2(err_fd, STDERR_FILENO);
      dup2(in_fd, STDIN_FILENO);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() {
    if (!done_ && pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }

  void Signal(int signal) { kill(pid_, signal); }

  // Waits up to `timeout`, then kills the process (the outcome then says 128 + 9).
  Outcome Wait(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    done_ = true;
    Outcome outcome;
    outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    outcome.out = ReadFile(dir_ + "/out");
    outcome.err = ReadFile(dir_ + "/err");
    return outcome;
  }

 private:
  std::vector<std::string> argv_;
  std::vector<std::string> env_;
  std::string dir_;
  pid_t pid_ = -1;
  bool done_ = false;
};

Outcome RunProcess(std::vector<std::string> argv, std::vector<std::string> env = {}) {
  return Process(std::move(argv), std::move(env)).Wait();
}

// The real binary over `command`'s arguments, in parse-only mode.
Outcome ParseOnly(const std::vector<std::string>& command) {
  std::vector<std::string> argv = {TESSERA_BINARY};
  argv.insert(argv.end(), command.begin() + 1, command.end());
  return RunProcess(argv, {"TESSERA_PARSE_ONLY=1"});
}

::testing::AssertionResult Parses(const DeployCommand& command) {
  Outcome outcome = ParseOnly(command.argv);
  bool help = std::find(command.argv.begin(), command.argv.end(), "--help") != command.argv.end();
  if (outcome.exit_code == 0 &&
      (help || absl::StrContains(outcome.out, "tessera: command line parses"))) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "deploy/" << command.file << ":" << command.line << ": `" << command.Text()
         << "` does not parse (exit " << outcome.exit_code << "):\n"
         << outcome.All();
}

// ---------------------------------------------------------------------------------------
// The extraction itself.

std::vector<std::string> Argv(const std::vector<DeployCommand>& found, size_t i) {
  return i < found.size() ? found[i].argv : std::vector<std::string>{};
}

TEST(ExtractCommandsTest, ShellContinuationsQuotesVariablesAndRedirections) {
  std::vector<DeployCommand> found = ExtractCommands(
      "#!/bin/sh\n"
      "# tessera coordinator in a comment is prose\n"
      "srun --mpi=pmix \\\n"
      "  /opt/bin/tessera worker --coordinator \"$HEAD:50051\" \\\n"
      "    --tp ${TP:-2} --model '/m odel' --zone \"${ZONE}\" \"$@\" >log 2>&1 &\n"
      "x=$(tessera --help) ; cp build/tessera /usr/local/bin/tessera\n"
      "cat <<EOF\n"
      "tessera generate --bogus\n"
      "EOF\n"
      "until tessera client health --target `hostname`:1; do sleep 1; done\n",
      "test.sh");
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].line, 4);
  EXPECT_EQ(Argv(found, 0),
            (std::vector<std::string>{"/opt/bin/tessera", "worker", "--coordinator", "1:50051",
                                      "--tp", "2", "--model", "/m odel", "--zone", "1"}));
  EXPECT_EQ(found[1].line, 10);
  EXPECT_EQ(Argv(found, 1),
            (std::vector<std::string>{"tessera", "client", "health", "--target", "1:1"}));
}

TEST(ExtractCommandsTest, ShellScriptsInsideWords) {
  std::vector<DeployCommand> found = ExtractCommands(
      "mpirun -np 2 sh -c 'exec tessera worker --advertise \"$(hostname -f)\"'\n", "run.sh");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(Argv(found, 0), (std::vector<std::string>{"tessera", "worker", "--advertise", "1"}));
}

TEST(ExtractCommandsTest, YamlCommandAndArgsOfOneContainerAreJoined) {
  std::vector<DeployCommand> found = ExtractCommands(
      "spec:\n"
      "  containers:\n"
      "    - name: a\n"
      "      command: [\"tessera\"]  # the entry point\n"
      "      args:\n"
      "        - coordinator\n"
      "        - --listen=0.0.0.0:50051\n"
      "        - \"--policy\"\n"
      "        - 'least-load'\n"
      "      ports: []\n"
      "    - name: b\n"
      "      args:\n"
      "      - worker\n"
      "    - name: c\n"
      "      command:\n"
      "        - mpirun\n"
      "        - -np\n"
      "        - $(NP)\n"
      "        - tessera\n"
      "        - worker\n"
      "        - --tp\n"
      "        - \"2\"\n"
      "    - name: d\n"
      "      command: [sh, -c]\n"
      "      args:\n"
      "        - >-\n"
      "          exec tessera worker\n"
      "          --coordinator $(HOST):50051\n"
      "          --advertise \"$$(hostname -f)\"\n",
      "test.yaml");
  ASSERT_EQ(found.size(), 3u);
  EXPECT_EQ(found[0].line, 4);
  EXPECT_EQ(Argv(found, 0),
            (std::vector<std::string>{"tessera", "coordinator", "--listen=0.0.0.0:50051",
                                      "--policy", "least-load"}));
  EXPECT_EQ(found[1].line, 19);
  EXPECT_EQ(Argv(found, 1), (std::vector<std::string>{"tessera", "worker", "--tp", "2"}));
  EXPECT_EQ(Argv(found, 2), (std::vector<std::string>{"tessera", "worker", "--coordinator",
                                                      "1:50051", "--advertise", "1"}));
}

TEST(ExtractCommandsTest, MarkdownReadsOnlyCodeBlocks) {
  std::vector<DeployCommand> found = ExtractCommands(
      "Run tessera launch with a hostfile:\n\n```sh\ntessera launch --hostfile h\n```\n",
      "README.md");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].line, 4);
  EXPECT_EQ(Argv(found, 0), (std::vector<std::string>{"tessera", "launch", "--hostfile", "h"}));
}

// ---------------------------------------------------------------------------------------
// deploy/.

TEST(DeployFilesTest, EachFileYieldsItsCommands) {
  std::map<std::string, std::vector<DeployCommand>> files = ScanDeploy();
  ASSERT_FALSE(files.empty()) << "nothing under " << TESSERA_DEPLOY_DIR;
  for (const auto& [name, minimum] : MinimumCommands()) {
    auto file = files.find(name);
    ASSERT_NE(file, files.end()) << "deploy/" << name << " is missing";
    EXPECT_GE(static_cast<int>(file->second.size()), minimum)
        << "deploy/" << name << ": expected at least " << minimum
        << " tessera command lines, found " << file->second.size();
  }
  for (const auto& [name, commands] : files) {
    for (const DeployCommand& command : commands) {
      std::printf("deploy/%s:%d: %s\n", name.c_str(), command.line, command.Text().c_str());
    }
  }
}

class DeployCommandTest : public ::testing::TestWithParam<DeployCommand> {};

TEST_P(DeployCommandTest, ParsesInParseOnlyMode) { EXPECT_TRUE(Parses(GetParam())); }

std::string CommandTestName(const ::testing::TestParamInfo<DeployCommand>& info) {
  std::string name = absl::StrCat(info.param.file, "_line", info.param.line, "_",
                                  info.param.argv.size() > 1 ? info.param.argv[1] : "");
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Deploy, DeployCommandTest, ::testing::ValuesIn(AllDeployCommands()),
                         CommandTestName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(DeployCommandTest);

// ---------------------------------------------------------------------------------------
// tessera launch.

class LaunchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tessera-launch-e2e-XXXXXX";
    dir_ = mkdtemp(pattern);
    hostfile_ = dir_ + "/hosts";
    std::ofstream(hostfile_) << "# two nodes\nnode-a slots=4\nnode-b slots=4\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir_;
  std::string hostfile_;
};

TEST_F(LaunchTest, DryRunPrintsCommandsThatParse) {
  std::vector<std::string> argv = {TESSERA_BINARY,     "launch",  "--dry-run",
                                   "--hostfile",       hostfile_, "--model",
                                   "/models/my model", "--env",   "FOO=bar baz"};
  for (absl::string_view flag :
       absl::StrSplit("--ranks-per-node 4 --tp 4 --bind-to core --cores-per-rank 2 --model-name "
                      "glm --version v2 --zone rack-1 --env=BAR=1 --coordinator head:6000 "
                      "--policy least-load -- --dtype bf16 --kv-cache-memory 1G",
                      ' ')) {
    argv.emplace_back(flag);
  }
  Outcome outcome = RunProcess(argv);
  ASSERT_EQ(outcome.exit_code, 0) << outcome.All();
  std::vector<std::string> lines = absl::StrSplit(outcome.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << outcome.out;  // the coordinator, one job per node

  std::vector<DeployCommand> coordinator = ExtractCommands(lines[0], "coordinator line");
  ASSERT_EQ(coordinator.size(), 1u) << lines[0];
  EXPECT_EQ(coordinator[0].argv[1], "coordinator");
  EXPECT_TRUE(absl::StrContains(lines[0], "--listen 0.0.0.0:6000 --policy least-load")) << lines[0];

  EXPECT_TRUE(Parses(coordinator[0]));
  for (int replica = 0; replica < 2; ++replica) {
    const std::string& line = lines[1 + replica];
    EXPECT_TRUE(absl::StartsWith(
        line, absl::StrCat("mpirun --host ", replica == 0 ? "node-a" : "node-b", ":4 -np 4 ")))
        << line;
    for (const std::string& part :
         {std::string("--map-by slot:PE=2"), std::string("--bind-to core"),
          std::string("-x TESSERA_CPU_THREADS=2"), std::string("-x 'FOO=bar baz'"),
          std::string("-x BAR=1"), std::string("--coordinator head:6000"), std::string("--tp 4"),
          absl::StrCat("--replica-offset ", replica), std::string("--model '/models/my model'"),
          std::string("--model-name glm"), std::string("--version v2"),
          std::string("--zone rack-1"), std::string("--dtype bf16 --kv-cache-memory 1G")}) {
      EXPECT_TRUE(absl::StrContains(line, part)) << "'" << part << "' not in " << line;
    }
    std::vector<DeployCommand> workers = ExtractCommands(line, "worker line");
    ASSERT_EQ(workers.size(), 1u) << line;
    EXPECT_EQ(workers[0].argv[1], "worker");
    EXPECT_EQ(workers[0].argv.back(), "1G");
    EXPECT_TRUE(Parses(workers[0]));
  }
}

TEST_F(LaunchTest, ParseOnlyStopsBeforeAnyCheckOrRun) {
  // No hostfile at that path: parse-only mode stops before it is read.
  Outcome outcome =
      RunProcess({TESSERA_BINARY, "launch", "--hostfile", dir_ + "/none", "--tp", "3"},
                 {"TESSERA_PARSE_ONLY=1"});
  EXPECT_EQ(outcome.exit_code, 0) << outcome.All();
  EXPECT_EQ(outcome.out, "tessera: command line parses\n");

  outcome = RunProcess({TESSERA_BINARY, "launch", "--hostfile"}, {"TESSERA_PARSE_ONLY=1"});
  EXPECT_EQ(outcome.exit_code, 2) << outcome.All();
  EXPECT_TRUE(absl::StrContains(outcome.err, "'--hostfile' needs a value")) << outcome.All();
}

TEST_F(LaunchTest, ValidationErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const Case cases[] = {
      {{"--hostfile", dir_ + "/none"}, "--hostfile: cannot read"},
      {{"--hostfile", hostfile_, "--ranks-per-node", "4", "--tp", "3"},
       "--tp 3 does not divide --ranks-per-node 4"},
      {{"--hostfile", hostfile_, "--bind-to", "socket"}, "--bind-to: 'socket'"},
      {{"--hostfile", hostfile_, "--env", "not a name"}, "--env: 'not a name'"},
  };
  for (const Case& test : cases) {
    std::vector<std::string> argv = {TESSERA_BINARY, "launch", "--dry-run"};
    argv.insert(argv.end(), test.flags.begin(), test.flags.end());
    Outcome outcome = RunProcess(argv);
    EXPECT_EQ(outcome.exit_code, 2) << outcome.All();
    EXPECT_TRUE(absl::StrContains(outcome.err, test.message))
        << "'" << test.message << "' not in: " << outcome.err;
    EXPECT_TRUE(outcome.out.empty()) << outcome.out;
  }
}

// A TCP port that was free a moment ago; 0 if none could be had.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  bool bound = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
               getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0;
  close(fd);
  return bound ? ntohs(address.sin_port) : 0;
}

bool Listening(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return connected;
}

// An mpirun stand-in: writes its arguments to `args_file`, then runs `then`.
std::string FakeMpirun(const std::string& dir, const std::string& args_file,
                       const std::string& then) {
  std::string path = dir + "/mpirun";
  std::ofstream(path) << "#!/bin/sh\necho \"$@\" > " << args_file << ".tmp\nmv " << args_file
                      << ".tmp " << args_file << "\n"
                      << then << "\n";
  fs::permissions(path, fs::perms::owner_all);
  return path;
}

// Each replica's job is restarted when it exits; one that keeps exiting before it could
// serve ends the launch with the reason.
TEST_F(LaunchTest, RestartsAReplicaThatExitsAndGivesUpWhenItKeepsFailing) {
  int port = FreePort();
  ASSERT_GT(port, 0);
  std::string args_file = dir_ + "/args";
  std::string starts_file = dir_ + "/starts";
  Outcome outcome = RunProcess(
      {TESSERA_BINARY, "launch", "--hostfile", hostfile_, "--tp", "4", "--coordinator",
       absl::StrCat("127.0.0.1:", port), "--coordinator-metrics-listen", "off",
       "--coordinator-http-listen", "off", "--restart-backoff", "0.1s", "--max-failed-starts", "3",
       "--mpirun",
       FakeMpirun(dir_, args_file, absl::StrCat("echo started >> ", starts_file, "; exit 3"))});
  EXPECT_EQ(outcome.exit_code, 1) << outcome.All();
  EXPECT_TRUE(absl::StrContains(outcome.err,
                                "exited 3 times in a row before serving (last exit "
                                "status 3); giving up"))
      << outcome.All();
  EXPECT_TRUE(absl::StrContains(outcome.err, "starting replica 0 again (restart 1)"))
      << outcome.All();
  // Two replicas (one per node), each started once and restarted at least once.
  std::vector<std::string> starts = absl::StrSplit(ReadFile(starts_file), '\n', absl::SkipEmpty());
  EXPECT_GE(starts.size(), 4u) << outcome.All();
  ASSERT_TRUE(fs::exists(args_file)) << outcome.All();
  std::string args = ReadFile(args_file);
  EXPECT_TRUE(absl::StrContains(args, absl::StrCat("worker --coordinator 127.0.0.1:", port)))
      << args;
  EXPECT_FALSE(Listening(port)) << "the coordinator outlived the launch";
}

TEST_F(LaunchTest, SigtermStopsMpirunAndTheCoordinator) {
  int port = FreePort();
  ASSERT_GT(port, 0);
  std::string args_file = dir_ + "/args";
  Process launch({TESSERA_BINARY, "launch", "--hostfile", hostfile_, "--coordinator",
                  absl::StrCat("127.0.0.1:", port), "--coordinator-metrics-listen", "off",
                  "--coordinator-http-listen", "off", "--mpirun",
                  FakeMpirun(dir_, args_file, "exec sleep 120")},
                 {});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(args_file) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(fs::exists(args_file)) << launch.Wait(std::chrono::seconds(1)).All();
  EXPECT_TRUE(Listening(port));
  auto start = std::chrono::steady_clock::now();
  launch.Signal(SIGTERM);
  Outcome outcome = launch.Wait(std::chrono::seconds(60));
  EXPECT_EQ(outcome.exit_code, 128 + SIGTERM) << outcome.All();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_FALSE(Listening(port)) << "the coordinator outlived the launch";
}

}  // namespace
