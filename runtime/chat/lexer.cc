#include "runtime/chat/lexer.h"

#include <cctype>

#include "absl/strings/str_cat.h"
#include "runtime/chat/python_text.h"

namespace tessera::chat {
namespace {

// Operators, longest first so that "**" wins over "*".
constexpr absl::string_view kOperators[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                            "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                            "]",  "{",  "}",  ",",  ".",  ":",  "|", ";"};

class Lexer {
 public:
  Lexer(std::string source, absl::string_view origin) : src_(std::move(source)), origin_(origin) {}

  absl::StatusOr<std::vector<Token>> Run() {
    if (!IsValidUtf8(src_)) return Error(0, "template is not valid UTF-8");
    bool line_starting = true;
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t tag = FindTagStart(pos);
      if (tag == std::string::npos) {
        Emit(Token::Type::kText, src_.substr(pos), pos);
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      std::string text = src_.substr(pos, tag - pos);
      if (sign == '-') {
        text = RStripSpace(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: a block or comment tag alone after the line's indentation takes
        // that indentation away.
        const size_t line_start = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if ((line_start > 0 || line_starting) &&
            text.find_first_not_of(" \t", line_start) == std::string::npos) {
          text.resize(line_start);
        }
      }
      if (!text.empty()) Emit(Token::Type::kText, std::move(text), pos);
      size_t body = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      absl::StatusOr<size_t> end = kind == '#' ? SkipComment(tag, body) : LexTag(tag, body, kind);
      if (!end.ok()) return end.status();
      pos = *end;
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    tokens_.push_back(Token{Token::Type::kEnd, "", PosOf(src_.size())});
    return std::move(tokens_);
  }

 private:
  size_t FindTagStart(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        return i;
      }
    }
    return std::string::npos;
  }

  // After a tag's closer: "-" strips all following whitespace, a plain block or comment
  // closer takes one newline (trim_blocks), "+" keeps everything.
  size_t AfterCloser(size_t closer_end, char sign, bool is_block) const {
    size_t p = closer_end;
    if (sign == '-') {
      const std::u32string rest = DecodeUtf8(absl::string_view(src_).substr(p));
      size_t k = 0;
      while (k < rest.size() && IsPySpace(rest[k])) ++k;
      return p + EncodeUtf8(std::u32string_view(rest).substr(0, k)).size();
    }
    if (sign != '+' && is_block && p < src_.size() && src_[p] == '\n') ++p;
    return p;
  }

  absl::StatusOr<size_t> SkipComment(size_t tag, size_t body) {
    const size_t close = src_.find("#}", body);
    if (close == std::string::npos) return Error(tag, "comment is not closed ('#}' missing)");
    const char sign =
        close > body && (src_[close - 1] == '-' || src_[close - 1] == '+') ? src_[close - 1] : '\0';
    return AfterCloser(close + 2, sign, /*is_block=*/true);
  }

  absl::StatusOr<size_t> LexTag(size_t tag, size_t body, char kind) {
    const bool is_block = kind == '%';
    Emit(is_block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, "", tag);
    const char closer = is_block ? '%' : '}';
    int depth = 0;  // open brackets: inside them a closer is an operator, as in jinja2
    size_t p = body;
    while (true) {
      while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
      if (p >= src_.size()) {
        return Error(tag, is_block ? "block tag is not closed ('%}' missing)"
                                   : "expression tag is not closed ('}}' missing)");
      }
      if (depth == 0) {
        char sign = '\0';
        size_t q = p;
        if ((src_[q] == '-' || src_[q] == '+') && q + 2 < src_.size() && src_[q + 1] == closer &&
            src_[q + 2] == '}') {
          sign = src_[q];
          ++q;
        }
        if (q + 1 < src_.size() && src_[q] == closer && src_[q + 1] == '}') {
          if (sign == '+' && !is_block) return Error(p, "'+}}' is not valid");
          Emit(is_block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, "", p);
          return AfterCloser(q + 2, sign, is_block);
        }
      }
      const char c = src_[p];
      const size_t start = p;
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (p < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[p])) || src_[p] == '_')) {
          ++p;
        }
        Emit(Token::Type::kName, src_.substr(start, p - start), start);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        if (auto n = LexNumber(p); !n.ok()) return n;
      } else if (c == '\'' || c == '"') {
        if (auto s = LexString(p); !s.ok()) return s;
      } else {
        bool matched = false;
        for (absl::string_view op : kOperators) {
          if (absl::string_view(src_).substr(p, op.size()) == op) {
            if (op == "(" || op == "[" || op == "{") ++depth;
            if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
            Emit(Token::Type::kOperator, std::string(op), p);
            p += op.size();
            matched = true;
            break;
          }
        }
        if (!matched)
          return Error(p, absl::StrCat("unexpected character '", std::string(1, c), "'"));
      }
    }
  }

  absl::Status LexNumber(size_t& p) {
    const size_t start = p;
    auto digits = [&] {
      while (p < src_.size() &&
             (std::isdigit(static_cast<unsigned char>(src_[p])) || src_[p] == '_'))
        ++p;
    };
    digits();
    bool is_float = false;
    if (p + 1 < src_.size() && src_[p] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[p + 1]))) {
      is_float = true;
      ++p;
      digits();
    }
    if (p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
      size_t q = p + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
        is_float = true;
        p = q;
        digits();
      }
    }
    std::string text;
    for (size_t k = start; k < p; ++k) {
      if (src_[k] != '_') text.push_back(src_[k]);
    }
    Emit(is_float ? Token::Type::kFloat : Token::Type::kInt, std::move(text), start);
    return absl::OkStatus();
  }

  // A quoted literal, decoded as jinja2 decodes it (Python's "unicode-escape").
  absl::Status LexString(size_t& p) {
    const size_t start = p;
    const char quote = src_[p++];
    std::string raw;
    while (true) {
      if (p >= src_.size()) return Error(start, "string literal is not closed");
      const char c = src_[p];
      if (c == quote) break;
      if (c == '\\' && p + 1 < src_.size()) {
        raw.push_back(c);
        raw.push_back(src_[p + 1]);
        p += 2;
        continue;
      }
      raw.push_back(c);
      ++p;
    }
    ++p;
    auto decoded = DecodeEscapes(raw, start);
    if (!decoded.ok()) return decoded.status();
    Emit(Token::Type::kString, *std::move(decoded), start);
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> DecodeEscapes(const std::string& raw, size_t at) {
    std::string out;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] != '\\' || i + 1 >= raw.size()) {
        out.push_back(raw[i]);
        continue;
      }
      const char e = raw[++i];
      auto hex = [&](int n) -> absl::StatusOr<char32_t> {
        if (i + n >= raw.size()) return Error(at, "truncated escape in string literal");
        char32_t v = 0;
        for (int k = 1; k <= n; ++k) {
          const char h = raw[i + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) {
            return Error(at, "truncated escape in string literal");
          }
          v = v * 16 +
              static_cast<char32_t>(std::isdigit(static_cast<unsigned char>(h))
                                        ? h - '0'
                                        : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10);
        }
        i += n;
        return v;
      };
      switch (e) {
        case '\n':
          break;  // a backslash before a newline continues the line
        case '\\':
        case '\'':
        case '"':
          out.push_back(e);
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
        case 'u':
        case 'U': {
          auto v = hex(e == 'x' ? 2 : e == 'u' ? 4 : 8);
          if (!v.ok()) return v.status();
          if (*v > 0x10FFFF || (*v >= 0xD800 && *v <= 0xDFFF)) {
            return Error(at, "string literal escapes a surrogate or an invalid code point");
          }
          out += EncodeUtf8(std::u32string(1, *v));
          break;
        }
        case 'N':
          return Error(at, "unsupported construct '\\N{...}' escape in string literal");
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int k = 0; k < 2 && i + 1 < raw.size() && raw[i + 1] >= '0' && raw[i + 1] <= '7';
                 ++k) {
              v = v * 8 + static_cast<char32_t>(raw[++i] - '0');
            }
            out += EncodeUtf8(std::u32string(1, v));
          } else {
            // Python keeps an unknown escape as written.
            out.push_back('\\');
            out.push_back(e);
          }
      }
    }
    return out;
  }

  static std::string RStripSpace(const std::string& text) {
    std::u32string s = DecodeUtf8(text);
    while (!s.empty() && IsPySpace(s.back())) s.pop_back();
    return EncodeUtf8(s);
  }

  SourcePos PosOf(size_t offset) const {
    SourcePos pos;
    for (size_t k = 0; k < offset && k < src_.size(); ++k) {
      if (src_[k] == '\n') {
        ++pos.line;
        pos.column = 1;
      } else if ((static_cast<unsigned char>(src_[k]) & 0xC0) != 0x80) {
        ++pos.column;
      }
    }
    return pos;
  }

  void Emit(Token::Type type, std::string text, size_t offset) {
    tokens_.push_back(Token{type, std::move(text), PosOf(offset)});
  }

  absl::Status Error(size_t offset, absl::string_view message) const {
    const SourcePos pos = PosOf(offset);
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ":", pos.line, ":", pos.column, ": ", message));
  }

  std::string src_;
  std::string origin_;
  std::vector<Token> tokens_;
};

// jinja2 turns "\r\n" and "\r" into "\n" and, keep_trailing_newline being off, drops one
// final newline.
std::string NormalizeNewlines(absl::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view source, absl::string_view origin) {
  return Lexer(NormalizeNewlines(source), origin).Run();
}

}  // namespace tessera::chat
