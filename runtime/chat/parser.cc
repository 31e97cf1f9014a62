#include "runtime/chat/parser.h"

#include <cstdlib>
#include <set>

#include "absl/strings/str_cat.h"
#include "runtime/chat/builtins.h"

namespace tessera::chat {
namespace {

const std::set<std::string, std::less<>> kLoopAttributes = {
    "index", "index0", "revindex", "revindex0", "first", "last", "length", "previtem", "nextitem"};
const std::set<std::string, std::less<>> kGlobalFunctions = {"raise_exception", "namespace",
                                                             "range"};

class Parser {
 public:
  Parser(std::vector<Token> tokens, absl::string_view origin)
      : tokens_(std::move(tokens)), origin_(origin) {}

  absl::StatusOr<Body> ParseTemplate() {
    Body body;
    std::string end;
    if (auto s = ParseBody({}, body, end); !s.ok()) return s;
    return body;
  }

 private:
  const Token& Peek(size_t ahead = 0) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  const Token& Next() { return tokens_[std::min(pos_++, tokens_.size() - 1)]; }
  bool IsOp(absl::string_view op, size_t ahead = 0) const {
    return Peek(ahead).type == Token::Type::kOperator && Peek(ahead).text == op;
  }
  bool IsName(absl::string_view name, size_t ahead = 0) const {
    return Peek(ahead).type == Token::Type::kName && Peek(ahead).text == name;
  }

  absl::Status ErrorAt(const SourcePos& pos, absl::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ":", pos.line, ":", pos.column, ": ", message));
  }
  absl::Status Unsupported(const SourcePos& pos, absl::string_view what) const {
    return ErrorAt(pos, absl::StrCat("unsupported construct '", what, "'"));
  }
  absl::Status Expect(absl::string_view op) {
    if (!IsOp(op)) {
      return ErrorAt(Peek().pos,
                     absl::StrCat("expected '", op, "', found '", Describe(Peek()), "'"));
    }
    ++pos_;
    return absl::OkStatus();
  }
  absl::Status ExpectBlockEnd() {
    if (Peek().type != Token::Type::kBlockEnd) {
      return ErrorAt(Peek().pos, absl::StrCat("expected '%}', found '", Describe(Peek()), "'"));
    }
    ++pos_;
    return absl::OkStatus();
  }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Token::Type::kBlockEnd:
        return "%}";
      case Token::Type::kVarEnd:
        return "}}";
      case Token::Type::kEnd:
        return "end of template";
      default:
        return t.text;
    }
  }

  // Parses statements until a block tag named in `ends`, which is consumed up to its name
  // and returned in `end` (the caller reads the rest of that tag).
  absl::Status ParseBody(const std::set<std::string, std::less<>>& ends, Body& body,
                         std::string& end) {
    while (true) {
      const Token& t = Peek();
      switch (t.type) {
        case Token::Type::kEnd:
          if (!ends.empty()) {
            return ErrorAt(t.pos, absl::StrCat("template ended inside a block; expected '",
                                               *ends.begin(), "'"));
          }
          return absl::OkStatus();
        case Token::Type::kText: {
          auto node = std::make_unique<Node>();
          node->kind = Node::Kind::kText;
          node->pos = t.pos;
          node->text = t.text;
          body.push_back(std::move(node));
          ++pos_;
          break;
        }
        case Token::Type::kVarBegin: {
          auto node = std::make_unique<Node>();
          node->kind = Node::Kind::kOutput;
          node->pos = Next().pos;
          auto e = ParseExpression(true);
          if (!e.ok()) return e.status();
          node->expr = *std::move(e);
          if (Peek().type != Token::Type::kVarEnd) {
            return ErrorAt(Peek().pos,
                           absl::StrCat("expected '}}', found '", Describe(Peek()), "'"));
          }
          ++pos_;
          body.push_back(std::move(node));
          break;
        }
        case Token::Type::kBlockBegin: {
          ++pos_;
          const Token& tag = Peek();
          if (tag.type != Token::Type::kName) return ErrorAt(tag.pos, "expected a tag name");
          if (ends.count(tag.text) > 0) {
            ++pos_;
            end = tag.text;
            return absl::OkStatus();
          }
          auto s = ParseStatement(body);
          if (!s.ok()) return s;
          break;
        }
        default:
          return ErrorAt(t.pos, absl::StrCat("unexpected '", Describe(t), "'"));
      }
    }
  }

  absl::Status ParseStatement(Body& body) {
    const Token tag = Next();
    auto node = std::make_unique<Node>();
    node->pos = tag.pos;
    if (tag.text == "if") {
      node->kind = Node::Kind::kIf;
      std::string end = "if";
      while (end == "if" || end == "elif") {
        auto cond = ParseExpression(true);
        if (!cond.ok()) return cond.status();
        if (auto s = ExpectBlockEnd(); !s.ok()) return s;
        Body branch;
        if (auto s = ParseBody({"elif", "else", "endif"}, branch, end); !s.ok()) return s;
        node->branches.emplace_back(*std::move(cond), std::move(branch));
      }
      if (end == "else") {
        if (auto s = ExpectBlockEnd(); !s.ok()) return s;
        if (auto s = ParseBody({"endif"}, node->else_body, end); !s.ok()) return s;
      }
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
    } else if (tag.text == "for") {
      node->kind = Node::Kind::kFor;
      if (auto s = ParseTargets(node->targets); !s.ok()) return s;
      if (!IsName("in")) return ErrorAt(Peek().pos, "expected 'in' in for loop");
      ++pos_;
      auto iter = ParseExpression(false);
      if (!iter.ok()) return iter.status();
      node->expr = *std::move(iter);
      if (IsName("if")) {
        ++pos_;
        auto filter = ParseExpression(true);
        if (!filter.ok()) return filter.status();
        node->filter = *std::move(filter);
      }
      if (IsName("recursive")) return Unsupported(Peek().pos, "recursive for loop");
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
      ++loop_depth_;
      std::string end;
      if (auto s = ParseBody({"else", "endfor"}, node->body, end); !s.ok()) return s;
      --loop_depth_;
      if (end == "else") {
        if (auto s = ExpectBlockEnd(); !s.ok()) return s;
        if (auto s = ParseBody({"endfor"}, node->else_body, end); !s.ok()) return s;
      }
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
    } else if (tag.text == "set") {
      if (Peek().type == Token::Type::kName && IsOp(".", 1)) {
        node->kind = Node::Kind::kSetAttr;
        node->targets.push_back(Next().text);
        ++pos_;
        if (Peek().type != Token::Type::kName)
          return ErrorAt(Peek().pos, "expected an attribute name");
        node->attr = Next().text;
      } else {
        node->kind = Node::Kind::kSet;
        if (auto s = ParseTargets(node->targets); !s.ok()) return s;
      }
      if (!IsOp("=")) {
        return Unsupported(tag.pos, IsOp("|") || Peek().type == Token::Type::kBlockEnd
                                        ? "set block"
                                        : "set target");
      }
      ++pos_;
      auto value = ParseExpression(true);
      if (!value.ok()) return value.status();
      node->expr = *std::move(value);
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
    } else if (tag.text == "break" || tag.text == "continue") {
      if (loop_depth_ == 0)
        return ErrorAt(tag.pos, absl::StrCat("'", tag.text, "' outside a loop"));
      node->kind = tag.text == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
    } else if (tag.text == "generation") {
      // transformers' assistant-mask tag; it renders its body unchanged.
      node->kind = Node::Kind::kScope;
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
      std::string end;
      if (auto s = ParseBody({"endgeneration"}, node->body, end); !s.ok()) return s;
      if (auto s = ExpectBlockEnd(); !s.ok()) return s;
    } else if (tag.text == "elif" || tag.text == "else" || tag.text.rfind("end", 0) == 0) {
      return ErrorAt(tag.pos, absl::StrCat("unexpected '", tag.text, "'"));
    } else {
      return Unsupported(tag.pos, tag.text);
    }
    body.push_back(std::move(node));
    return absl::OkStatus();
  }

  // "a" or "a, b" or "(a, b)": names a for loop or set binds.
  absl::Status ParseTargets(std::vector<std::string>& targets) {
    const bool paren = IsOp("(");
    if (paren) ++pos_;
    while (true) {
      if (Peek().type != Token::Type::kName) return ErrorAt(Peek().pos, "expected a variable name");
      targets.push_back(Next().text);
      if (!IsOp(",")) break;
      ++pos_;
    }
    if (paren) return Expect(")");
    return absl::OkStatus();
  }

  ExprPtr Make(Expr::Kind kind, const SourcePos& pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    const SourcePos pos = Peek().pos;
    auto e = with_condexpr ? ParseCondition() : ParseOr();
    if (!e.ok()) return e;
    if (IsOp(",")) return Unsupported(pos, "tuple literal");
    return e;
  }

  absl::StatusOr<ExprPtr> ParseCondition() {
    auto e = ParseOr();
    if (!e.ok()) return e;
    ExprPtr expr = *std::move(e);
    while (IsName("if")) {
      auto node = Make(Expr::Kind::kCondition, Next().pos);
      auto cond = ParseOr();
      if (!cond.ok()) return cond;
      node->a = *std::move(cond);
      node->b = std::move(expr);
      if (IsName("else")) {
        ++pos_;
        auto other = ParseCondition();
        if (!other.ok()) return other;
        node->c = *std::move(other);
      }
      expr = std::move(node);
    }
    return expr;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    auto left = ParseAnd();
    if (!left.ok()) return left;
    ExprPtr expr = *std::move(left);
    while (IsName("or")) {
      auto node = Make(Expr::Kind::kOr, Next().pos);
      auto right = ParseAnd();
      if (!right.ok()) return right;
      node->a = std::move(expr);
      node->b = *std::move(right);
      expr = std::move(node);
    }
    return expr;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    auto left = ParseNot();
    if (!left.ok()) return left;
    ExprPtr expr = *std::move(left);
    while (IsName("and")) {
      auto node = Make(Expr::Kind::kAnd, Next().pos);
      auto right = ParseNot();
      if (!right.ok()) return right;
      node->a = std::move(expr);
      node->b = *std::move(right);
      expr = std::move(node);
    }
    return expr;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      auto node = Make(Expr::Kind::kNot, Next().pos);
      auto inner = ParseNot();
      if (!inner.ok()) return inner;
      node->a = *std::move(inner);
      return node;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    auto left = ParseMath1();
    if (!left.ok()) return left;
    ExprPtr expr = *std::move(left);
    Expr* last_operand = expr.get();
    ExprPtr chain;
    while (true) {
      std::string op;
      const SourcePos pos = Peek().pos;
      if (Peek().type == Token::Type::kOperator &&
          (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" ||
           Peek().text == "<=" || Peek().text == ">" || Peek().text == ">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        ++pos_;
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        pos_ += 2;
        op = "not in";
      } else {
        break;
      }
      auto right = ParseMath1();
      if (!right.ok()) return right;
      auto node = Make(Expr::Kind::kCompare, pos);
      node->name = op;
      if (chain == nullptr) {
        node->a = std::move(expr);
      } else {
        // a < b < c is (a < b) and (b < c); b is parsed again from its tokens.
        return Unsupported(pos, "chained comparison");
      }
      node->b = *std::move(right);
      last_operand = node->b.get();
      chain = std::move(node);
    }
    (void)last_operand;
    return chain != nullptr ? std::move(chain) : std::move(expr);
  }

  absl::StatusOr<ExprPtr> ParseBinaryLevel(const std::vector<absl::string_view>& ops,
                                           absl::StatusOr<ExprPtr> (Parser::*next)()) {
    auto left = (this->*next)();
    if (!left.ok()) return left;
    ExprPtr expr = *std::move(left);
    while (true) {
      std::string op;
      for (absl::string_view candidate : ops) {
        if (IsOp(candidate)) op = std::string(candidate);
      }
      if (op.empty()) return expr;
      auto node = Make(Expr::Kind::kBinary, Next().pos);
      auto right = (this->*next)();
      if (!right.ok()) return right;
      node->name = op;
      node->a = std::move(expr);
      node->b = *std::move(right);
      expr = std::move(node);
    }
  }

  absl::StatusOr<ExprPtr> ParseMath1() {
    return ParseBinaryLevel({"+", "-"}, &Parser::ParseConcat);
  }
  absl::StatusOr<ExprPtr> ParseConcat() { return ParseBinaryLevel({"~"}, &Parser::ParseMath2); }
  absl::StatusOr<ExprPtr> ParseMath2() {
    return ParseBinaryLevel({"*", "/", "//", "%"}, &Parser::ParsePow);
  }
  absl::StatusOr<ExprPtr> ParsePow() {
    return ParseBinaryLevel({"**"}, &Parser::ParseUnaryFiltered);
  }
  absl::StatusOr<ExprPtr> ParseUnaryFiltered() { return ParseUnary(true); }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    absl::StatusOr<ExprPtr> node;
    if (IsOp("-") || IsOp("+")) {
      const Expr::Kind kind = IsOp("-") ? Expr::Kind::kNeg : Expr::Kind::kPos;
      auto e = Make(kind, Next().pos);
      auto inner = ParseUnary(false);
      if (!inner.ok()) return inner;
      e->a = *std::move(inner);
      node = std::move(e);
    } else {
      node = ParsePrimary();
    }
    if (!node.ok()) return node;
    node = ParsePostfix(*std::move(node));
    if (!node.ok() || !with_filter) return node;
    return ParseFilterChain(*std::move(node));
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Peek();
    switch (t.type) {
      case Token::Type::kName: {
        ++pos_;
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = Make(Expr::Kind::kLiteral, t.pos);
          e->value = Value::Bool(t.text == "true" || t.text == "True");
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = Make(Expr::Kind::kLiteral, t.pos);
          e->value = Value::None();
          return e;
        }
        auto e = Make(Expr::Kind::kName, t.pos);
        e->name = t.text;
        if (t.text == "loop" && loop_depth_ > 0 && !IsOp(".")) {
          return Unsupported(t.pos, "loop used as a value");
        }
        return e;
      }
      case Token::Type::kString: {
        auto e = Make(Expr::Kind::kLiteral, t.pos);
        std::string s;
        while (Peek().type == Token::Type::kString) s += Next().text;
        e->value = Value::String(std::move(s));
        return e;
      }
      case Token::Type::kInt: {
        ++pos_;
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(t.text.c_str(), &end, 10);
        if (errno != 0) return Unsupported(t.pos, "integer literal beyond 64 bits");
        auto e = Make(Expr::Kind::kLiteral, t.pos);
        e->value = Value::Int(v);
        return e;
      }
      case Token::Type::kFloat: {
        ++pos_;
        auto e = Make(Expr::Kind::kLiteral, t.pos);
        e->value = Value::Float(std::strtod(t.text.c_str(), nullptr));
        return e;
      }
      case Token::Type::kOperator:
        if (t.text == "(") {
          ++pos_;
          if (IsOp(")")) return Unsupported(t.pos, "tuple literal");
          auto inner = ParseExpression(true);
          if (!inner.ok()) return inner;
          if (auto s = Expect(")"); !s.ok()) return s;
          return inner;
        }
        if (t.text == "[") {
          auto e = Make(Expr::Kind::kList, Next().pos);
          while (!IsOp("]")) {
            auto item = ParseCondition();
            if (!item.ok()) return item;
            e->args.push_back(*std::move(item));
            if (!IsOp(",")) break;
            ++pos_;
          }
          if (auto s = Expect("]"); !s.ok()) return s;
          return e;
        }
        if (t.text == "{") {
          auto e = Make(Expr::Kind::kDict, Next().pos);
          while (!IsOp("}")) {
            auto key = ParseCondition();
            if (!key.ok()) return key;
            if (auto s = Expect(":"); !s.ok()) return s;
            auto value = ParseCondition();
            if (!value.ok()) return value;
            e->dict_items.emplace_back(*std::move(key), *std::move(value));
            if (!IsOp(",")) break;
            ++pos_;
          }
          if (auto s = Expect("}"); !s.ok()) return s;
          return e;
        }
        break;
      default:
        break;
    }
    return ErrorAt(t.pos, absl::StrCat("unexpected '", Describe(t), "'"));
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr expr) {
    while (true) {
      if (IsOp(".")) {
        const SourcePos pos = Next().pos;
        if (Peek().type != Token::Type::kName) return Unsupported(Peek().pos, "attribute syntax");
        const std::string name = Next().text;
        if (expr->kind == Expr::Kind::kName && expr->name == "loop" && loop_depth_ > 0 &&
            kLoopAttributes.count(name) == 0) {
          return Unsupported(pos, absl::StrCat("loop.", name));
        }
        auto node = Make(Expr::Kind::kAttr, pos);
        node->name = name;
        node->a = std::move(expr);
        expr = std::move(node);
      } else if (IsOp("[")) {
        auto node = ParseSubscript(std::move(expr));
        if (!node.ok()) return node;
        expr = *std::move(node);
      } else if (IsOp("(")) {
        auto node = ParseCall(std::move(expr));
        if (!node.ok()) return node;
        expr = *std::move(node);
      } else {
        return expr;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr target) {
    const SourcePos pos = Next().pos;
    ExprPtr parts[3];
    int colons = 0;
    while (!IsOp("]")) {
      if (IsOp(":")) {
        if (++colons > 2) return ErrorAt(Peek().pos, "too many ':' in slice");
        ++pos_;
        continue;
      }
      if (parts[colons] != nullptr) return Unsupported(Peek().pos, "subscript syntax");
      auto e = ParseCondition();
      if (!e.ok()) return e;
      parts[colons] = *std::move(e);
    }
    ++pos_;
    auto node = Make(colons == 0 ? Expr::Kind::kSubscript : Expr::Kind::kSlice, pos);
    if (colons == 0 && parts[0] == nullptr) return ErrorAt(pos, "empty subscript");
    node->a = std::move(target);
    node->b = std::move(parts[0]);
    node->c = std::move(parts[1]);
    node->d = std::move(parts[2]);
    return node;
  }

  absl::Status ParseArgs(Expr& call) {
    if (auto s = Expect("("); !s.ok()) return s;
    while (!IsOp(")")) {
      if (IsOp("*") || IsOp("**")) return Unsupported(Peek().pos, "*args in a call");
      if (Peek().type == Token::Type::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        ++pos_;
        auto value = ParseCondition();
        if (!value.ok()) return value.status();
        call.kwargs.emplace_back(std::move(key), *std::move(value));
      } else {
        if (!call.kwargs.empty()) {
          return ErrorAt(Peek().pos, "positional argument after keyword argument");
        }
        auto value = ParseCondition();
        if (!value.ok()) return value.status();
        call.args.push_back(*std::move(value));
      }
      if (!IsOp(",")) break;
      ++pos_;
    }
    return Expect(")");
  }

  absl::StatusOr<ExprPtr> ParseCall(ExprPtr callee) {
    auto node = Make(Expr::Kind::kCall, callee->pos);
    if (callee->kind == Expr::Kind::kName) {
      if (kGlobalFunctions.count(callee->name) == 0) {
        return Unsupported(callee->pos, absl::StrCat(callee->name, "()"));
      }
    } else if (callee->kind == Expr::Kind::kAttr) {
      if (!IsSupportedMethod(callee->name)) {
        return Unsupported(callee->pos, absl::StrCat(".", callee->name, "()"));
      }
    } else {
      return Unsupported(node->pos, "call of an expression");
    }
    node->a = std::move(callee);
    if (auto s = ParseArgs(*node); !s.ok()) return s;
    return node;
  }

  absl::StatusOr<ExprPtr> ParseFilterChain(ExprPtr expr) {
    while (true) {
      if (IsOp("|")) {
        ++pos_;
        const Token& name = Peek();
        if (name.type != Token::Type::kName) return ErrorAt(name.pos, "expected a filter name");
        ++pos_;
        if (!IsSupportedFilter(name.text) || IsOp(".")) {
          return Unsupported(name.pos, absl::StrCat("filter '", name.text, "'"));
        }
        auto node = Make(Expr::Kind::kFilter, name.pos);
        node->name = name.text;
        node->a = std::move(expr);
        if (IsOp("(")) {
          if (auto s = ParseArgs(*node); !s.ok()) return s;
        }
        expr = std::move(node);
      } else if (IsName("is")) {
        ++pos_;
        auto node = Make(Expr::Kind::kTest, Peek().pos);
        if (IsName("not")) {
          node->negate = true;
          ++pos_;
        }
        const Token& name = Peek();
        if (name.type != Token::Type::kName &&
            !(name.type == Token::Type::kOperator &&
              (name.text == "==" || name.text == "!=" || name.text == "<" || name.text == "<=" ||
               name.text == ">" || name.text == ">="))) {
          return ErrorAt(name.pos, "expected a test name");
        }
        ++pos_;
        if (!IsSupportedTest(name.text) || IsOp(".")) {
          return Unsupported(name.pos, absl::StrCat("test '", name.text, "'"));
        }
        node->name = name.text;
        node->pos = name.pos;
        node->a = std::move(expr);
        if (IsOp("(")) {
          if (auto s = ParseArgs(*node); !s.ok()) return s;
        } else {
          const Token& arg = Peek();
          const bool starts_arg = arg.type == Token::Type::kName ||
                                  arg.type == Token::Type::kString ||
                                  arg.type == Token::Type::kInt ||
                                  arg.type == Token::Type::kFloat || IsOp("[") || IsOp("{");
          if (starts_arg && !IsName("else") && !IsName("or") && !IsName("and")) {
            if (IsName("is")) return ErrorAt(arg.pos, "tests cannot be chained with 'is'");
            auto primary = ParsePrimary();
            if (!primary.ok()) return primary;
            auto value = ParsePostfix(*std::move(primary));
            if (!value.ok()) return value;
            node->args.push_back(*std::move(value));
          }
        }
        expr = std::move(node);
      } else if (IsOp("(")) {
        return Unsupported(Peek().pos, "call of an expression");
      } else {
        return expr;
      }
    }
  }

  std::vector<Token> tokens_;
  std::string origin_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

absl::StatusOr<Body> Parse(absl::string_view source, absl::string_view origin) {
  auto tokens = Tokenize(source, origin);
  if (!tokens.ok()) return tokens.status();
  return Parser(*std::move(tokens), origin).ParseTemplate();
}

}  // namespace tessera::chat
