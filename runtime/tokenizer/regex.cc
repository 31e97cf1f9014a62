#include "runtime/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tessera::tokenizer {
namespace {

std::string ErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  if (n < 0) return absl::StrCat("PCRE2 error ", code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

// One match-data block per thread, shared by every pattern: only the overall match is read,
// so one ovector pair is enough (PCRE2 returns 0 instead of the group count then).
pcre2_match_data* ThreadMatchData() {
  struct Deleter {
    void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
  };
  thread_local std::unique_ptr<pcre2_match_data, Deleter> match_data(
      pcre2_match_data_create(1, nullptr));
  return match_data.get();
}

// pcre2_match, falling back from the JIT to the interpreter when the JIT's stack runs out.
int Match(const pcre2_code* code, absl::string_view text, size_t start, uint32_t options,
          pcre2_match_data* match_data) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  options |= PCRE2_NO_UTF_CHECK;
  int rc = pcre2_match(code, subject, text.size(), start, options, match_data, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    rc =
        pcre2_match(code, subject, text.size(), start, options | PCRE2_NO_JIT, match_data, nullptr);
  }
  return rc;
}

absl::Status MatchError(const std::string& pattern, int rc) {
  return absl::InternalError(
      absl::StrCat("regex /", pattern, "/ failed to match: ", ErrorMessage(rc)));
}

// `pattern` with \s and \S spelled as the White_Space property. Oniguruma, which Hugging Face
// runs these patterns with, means White_Space by \s; PCRE2 keeps a list of its own that also
// has U+180E MONGOLIAN VOWEL SEPARATOR (a format character since Unicode 6.3), which would cut
// "\u180e's" differently. Escapes inside \Q...\E stay literal.
std::string WithUnicodeWhiteSpace(absl::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  bool quoted = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c != '\\' || i + 1 == pattern.size()) {
      out.push_back(c);
      continue;
    }
    const char next = pattern[++i];
    if (quoted) {
      if (next == 'E') quoted = false;
      out.push_back(c);
      out.push_back(next);
    } else if (next == 's') {
      out.append("\\p{White_Space}");
    } else if (next == 'S') {
      out.append("\\P{White_Space}");
    } else {
      if (next == 'Q') quoted = true;
      out.push_back(c);
      out.push_back(next);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(absl::string_view pattern) {
  const std::string translated = WithUnicodeWhiteSpace(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("regex /%s/ does not compile at offset %d: %s", pattern, error_offset,
                        ErrorMessage(error_code)));
  }
  // Without JIT support (or when the JIT cannot take this pattern) the interpreter runs it.
  const bool jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<Regex>(new Regex(std::string(pattern), code, jit));
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::CompileLiteral(absl::string_view literal) {
  std::string pattern;
  for (const char c : literal) {
    // Escaping every ASCII punctuation character is always allowed; letters and digits must
    // not be escaped, and bytes of multi-byte characters stand for themselves.
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u) && c != ' ' && u >= 0x20) pattern.push_back('\\');
    if (u < 0x20) {
      absl::StrAppendFormat(&pattern, "\\x{%x}", u);
      continue;
    }
    pattern.push_back(c);
  }
  return Compile(pattern);
}

Regex::~Regex() { pcre2_code_free(code_); }

absl::Status Regex::ForEachMatch(absl::string_view text,
                                 absl::FunctionRef<void(size_t, size_t)> on_match) const {
  pcre2_match_data* match_data = ThreadMatchData();
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
  size_t start = 0;
  while (start <= text.size()) {
    const int rc = Match(code_, text, start, 0, match_data);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return MatchError(pattern_, rc);
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (end > begin) {
      on_match(begin, end);
      start = end;
      continue;
    }
    // An empty match: step over one character so the search moves on.
    if (end >= text.size()) break;
    size_t next = end + 1;
    while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xc0) == 0x80) ++next;
    start = next;
  }
  return absl::OkStatus();
}

bool Regex::MayMatchEmpty() const {
  uint32_t min_length = 0;
  return pcre2_pattern_info(code_, PCRE2_INFO_MINLENGTH, &min_length) != 0 || min_length == 0;
}

absl::StatusOr<bool> Regex::MatchesAt(absl::string_view text, size_t pos) const {
  pcre2_match_data* match_data = ThreadMatchData();
  const int rc = Match(code_, text, pos, PCRE2_ANCHORED, match_data);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) return MatchError(pattern_, rc);
  return true;
}

}  // namespace tessera::tokenizer
