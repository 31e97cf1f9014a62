#include "runtime/chat/python_text.h"

#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace tessera::chat {
namespace {

// Decodes one code point at `i`, advancing it; malformed input yields U+FFFD and one byte.
char32_t NextCodePoint(absl::string_view s, size_t& i, bool* ok) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    ++i;
    if (ok != nullptr) *ok = false;
    return 0xFFFD;
  }
  char32_t c = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      ++i;
      if (ok != nullptr) *ok = false;
      return 0xFFFD;
    }
    c = (c << 6) | (b & 0x3F);
  }
  static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < kMin[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
    ++i;
    if (ok != nullptr) *ok = false;
    return 0xFFFD;
  }
  i += len;
  return c;
}

void AppendUtf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::u16string ToUtf16(std::u32string_view text) {
  std::u16string out;
  for (char32_t c : text) {
    if (c >= 0x10000) {
      out.push_back(static_cast<char16_t>(0xD800 + ((c - 0x10000) >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + ((c - 0x10000) & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(c));
    }
  }
  return out;
}

std::string FromUtf16(const std::u16string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char32_t c = text[i];
    if (c >= 0xD800 && c < 0xDC00 && i + 1 < text.size()) {
      c = 0x10000 + ((c - 0xD800) << 10) + (text[i + 1] - 0xDC00);
      ++i;
    }
    AppendUtf8(c, out);
  }
  return out;
}

enum class CaseMap { kUpper, kLower, kTitle };

// ICU's root-locale full case mapping, the same mapping (SpecialCasing included) that
// Python's str methods apply.
std::string MapCase(std::u32string_view text, CaseMap map) {
  if (text.empty()) return "";
  std::u16string in = ToUtf16(text);
  std::u16string out(in.size() * 3 + 8, u'\0');
  UErrorCode status = U_ZERO_ERROR;
  auto* dest = reinterpret_cast<UChar*>(out.data());
  const auto* src = reinterpret_cast<const UChar*>(in.data());
  const int32_t cap = static_cast<int32_t>(out.size());
  const int32_t n = static_cast<int32_t>(in.size());
  int32_t len = 0;
  switch (map) {
    case CaseMap::kUpper:
      len = u_strToUpper(dest, cap, src, n, "", &status);
      break;
    case CaseMap::kLower:
      len = u_strToLower(dest, cap, src, n, "", &status);
      break;
    case CaseMap::kTitle:
      // One character at a time (callers pass one), so no word breaking takes part.
      len = u_strToTitle(dest, cap, src, n, nullptr, "", &status);
      break;
  }
  if (U_FAILURE(status)) return EncodeUtf8(text);
  out.resize(static_cast<size_t>(len));
  return FromUtf16(out);
}

bool IsCased(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASED); }

// Python's str.isprintable for one code point.
bool IsPrintable(char32_t c) {
  if (c == ' ') return true;
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

bool InChars(char32_t c, const std::u32string& chars) {
  return chars.find(c) != std::u32string::npos;
}

}  // namespace

std::u32string DecodeUtf8(absl::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) out.push_back(NextCodePoint(text, i, nullptr));
  return out;
}

std::string EncodeUtf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) AppendUtf8(c, out);
  return out;
}

bool IsValidUtf8(absl::string_view text) {
  bool ok = true;
  size_t i = 0;
  while (i < text.size() && ok) NextCodePoint(text, i, &ok);
  return ok;
}

int64_t CodePointCount(absl::string_view text) {
  int64_t n = 0;
  for (char ch : text) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

bool IsPySpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string PyStrip(absl::string_view text, const std::optional<std::string>& chars, bool left,
                    bool right) {
  const std::u32string s = DecodeUtf8(text);
  const std::u32string set = chars.has_value() ? DecodeUtf8(*chars) : std::u32string();
  auto strip = [&](char32_t c) { return chars.has_value() ? InChars(c, set) : IsPySpace(c); };
  size_t begin = 0;
  size_t end = s.size();
  if (left) {
    while (begin < end && strip(s[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strip(s[end - 1])) --end;
  }
  return EncodeUtf8(std::u32string_view(s).substr(begin, end - begin));
}

std::vector<std::string> PySplit(absl::string_view text, const std::optional<std::string>& sep,
                                 int64_t maxsplit) {
  std::vector<std::string> parts;
  if (sep.has_value()) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      const size_t at = text.find(*sep, start);
      if (at == absl::string_view::npos) break;
      parts.emplace_back(text.substr(start, at - start));
      start = at + sep->size();
    }
    parts.emplace_back(text.substr(start));
    return parts;
  }
  const std::u32string s = DecodeUtf8(text);
  size_t i = 0;
  while (true) {
    while (i < s.size() && IsPySpace(s[i])) ++i;
    if (i == s.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
      // The rest, with its trailing whitespace stripped, is the last part.
      size_t end = s.size();
      while (end > i && IsPySpace(s[end - 1])) --end;
      parts.push_back(EncodeUtf8(std::u32string_view(s).substr(i, end - i)));
      break;
    }
    size_t j = i;
    while (j < s.size() && !IsPySpace(s[j])) ++j;
    parts.push_back(EncodeUtf8(std::u32string_view(s).substr(i, j - i)));
    i = j;
  }
  return parts;
}

std::string PyReplace(absl::string_view text, absl::string_view old_text,
                      absl::string_view new_text, int64_t count) {
  std::string out;
  if (old_text.empty()) {
    // Python inserts `new_text` before every code point and at the end.
    const std::u32string s = DecodeUtf8(text);
    int64_t done = 0;
    for (char32_t c : s) {
      if (count < 0 || done < count) {
        out.append(std::string(new_text));
        ++done;
      }
      AppendUtf8(c, out);
    }
    if (count < 0 || done < count) out.append(std::string(new_text));
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = text.find(old_text, start);
    if (at == absl::string_view::npos) break;
    out.append(std::string(text.substr(start, at - start)));
    out.append(std::string(new_text));
    start = at + old_text.size();
    ++done;
  }
  out.append(std::string(text.substr(start)));
  return out;
}

std::string PyUpper(absl::string_view text) { return MapCase(DecodeUtf8(text), CaseMap::kUpper); }

std::string PyLower(absl::string_view text) { return MapCase(DecodeUtf8(text), CaseMap::kLower); }

std::string PyTitle(absl::string_view text) {
  std::string out;
  bool previous_is_cased = false;
  for (char32_t c : DecodeUtf8(text)) {
    const std::u32string one(1, c);
    out += MapCase(one, previous_is_cased ? CaseMap::kLower : CaseMap::kTitle);
    previous_is_cased = IsCased(c);
  }
  return out;
}

std::string PyCapitalize(absl::string_view text) {
  const std::u32string s = DecodeUtf8(text);
  if (s.empty()) return "";
  return MapCase(std::u32string_view(s).substr(0, 1), CaseMap::kTitle) +
         MapCase(std::u32string_view(s).substr(1), CaseMap::kLower);
}

std::string JinjaTitle(absl::string_view text) {
  const std::u32string s = DecodeUtf8(text);
  auto is_boundary = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || IsPySpace(c);
  };
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    const bool boundary = is_boundary(s[i]);
    while (j < s.size() && is_boundary(s[j]) == boundary) ++j;
    const std::u32string_view piece = std::u32string_view(s).substr(i, j - i);
    out += MapCase(piece.substr(0, 1), CaseMap::kUpper) + MapCase(piece.substr(1), CaseMap::kLower);
    i = j;
  }
  return out;
}

std::string PyFloatRepr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // The shortest round-trip digits, as Python's repr uses, then Python's layout of them.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e_at = sci.find('e');
  const int exponent = std::atoi(sci.c_str() + e_at + 1);
  std::string digits;
  for (size_t k = 0; k < e_at; ++k) {
    if (sci[k] != '.') digits.push_back(sci[k]);
  }
  const int decpt = exponent + 1;
  const int ndigits = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    std::string mantissa = digits.substr(0, 1);
    if (ndigits > 1) mantissa += "." + digits.substr(1);
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                  std::abs(exponent));
    return sign + mantissa + exp_buf;
  }
  if (decpt <= 0) return sign + "0." + std::string(-decpt, '0') + digits;
  if (decpt >= ndigits) return sign + digits + std::string(decpt - ndigits, '0') + ".0";
  return sign + digits.substr(0, decpt) + "." + digits.substr(decpt);
}

std::string PyStringRepr(absl::string_view text) {
  const bool has_single = text.find('\'') != absl::string_view::npos;
  const bool has_double = text.find('"') != absl::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : DecodeUtf8(text)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      out += absl::StrCat("\\x", absl::Hex(static_cast<uint32_t>(c), absl::kZeroPad2));
    } else if (c < 0x7F || IsPrintable(c)) {
      AppendUtf8(c, out);
    } else if (c < 0x100) {
      out += absl::StrCat("\\x", absl::Hex(static_cast<uint32_t>(c), absl::kZeroPad2));
    } else if (c < 0x10000) {
      out += absl::StrCat("\\u", absl::Hex(static_cast<uint32_t>(c), absl::kZeroPad4));
    } else {
      out += absl::StrCat("\\U", absl::Hex(static_cast<uint32_t>(c), absl::kZeroPad8));
    }
  }
  out.push_back(quote);
  return out;
}

}  // namespace tessera::chat
