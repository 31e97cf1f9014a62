#include "runtime/chat/evaluator.h"

#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/chat/builtins.h"
#include "runtime/chat/python_text.h"

namespace tessera::chat {
namespace {

enum class Flow { kNormal, kBreak, kContinue };

// Deep enough for any real template, shallow enough that a hostile one cannot exhaust the
// stack through nested expressions.
constexpr int kMaxDepth = 200;

class Evaluator {
 public:
  Evaluator(const Value& context, absl::string_view origin) : origin_(origin) {
    scopes_.push_back(context.entries());
    scopes_.emplace_back();
  }

  absl::StatusOr<std::string> Run(const Body& body) {
    auto flow = RenderBody(body);
    if (!flow.ok()) return flow.status();
    return std::move(out_);
  }

 private:
  absl::Status At(const SourcePos& pos, const absl::Status& status) const {
    if (status.message().rfind(origin_, 0) == 0) return status;  // already placed
    return absl::Status(status.code(), absl::StrCat(origin_, ":", pos.line, ":", pos.column, ": ",
                                                    status.message()));
  }

  const Value* Lookup(absl::string_view name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      for (auto it = scope->rbegin(); it != scope->rend(); ++it) {
        if (it->first == name) return &it->second;
      }
    }
    return nullptr;
  }

  void Assign(const std::string& name, Value value) {
    for (auto& [key, v] : scopes_.back()) {
      if (key == name) {
        v = std::move(value);
        return;
      }
    }
    scopes_.back().emplace_back(name, std::move(value));
  }

  absl::Status Bind(const std::vector<std::string>& targets, const Value& value,
                    const SourcePos& pos) {
    if (targets.size() == 1) {
      Assign(targets[0], value);
      return absl::OkStatus();
    }
    auto items = Iterate(value);
    if (!items.ok()) return At(pos, items.status());
    if (items->size() != targets.size()) {
      return At(
          pos, absl::InvalidArgumentError(absl::StrCat("ValueError: cannot unpack ", items->size(),
                                                       " values into ", targets.size(), " names")));
    }
    for (size_t k = 0; k < targets.size(); ++k) Assign(targets[k], (*items)[k]);
    return absl::OkStatus();
  }

  absl::StatusOr<Flow> RenderBody(const Body& body) {
    for (const NodePtr& node : body) {
      auto flow = RenderNode(*node);
      if (!flow.ok() || *flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> RenderNode(const Node& node) {
    switch (node.kind) {
      case Node::Kind::kText:
        out_ += node.text;
        return Flow::kNormal;
      case Node::Kind::kOutput: {
        auto v = Eval(*node.expr);
        if (!v.ok()) return v.status();
        auto s = v->Str();
        if (!s.ok()) return At(node.expr->pos, s.status());
        out_ += *s;
        return Flow::kNormal;
      }
      case Node::Kind::kIf:
        for (const auto& [cond, branch] : node.branches) {
          auto c = Eval(*cond);
          if (!c.ok()) return c.status();
          if (c->Truthy()) return RenderBody(branch);
        }
        return RenderBody(node.else_body);
      case Node::Kind::kFor:
        return RenderFor(node);
      case Node::Kind::kSet: {
        auto v = Eval(*node.expr);
        if (!v.ok()) return v.status();
        if (auto s = Bind(node.targets, *v, node.pos); !s.ok()) return s;
        return Flow::kNormal;
      }
      case Node::Kind::kSetAttr: {
        const Value* target = Lookup(node.targets[0]);
        if (target == nullptr || target->kind() != Value::Kind::kNamespace) {
          return At(node.pos,
                    absl::InvalidArgumentError("TemplateRuntimeError: cannot assign attribute on "
                                               "non-namespace object"));
        }
        auto v = Eval(*node.expr);
        if (!v.ok()) return v.status();
        ValueDict& attrs = target->ns().attrs;
        for (auto& [key, value] : attrs) {
          if (key == node.attr) {
            value = *std::move(v);
            return Flow::kNormal;
          }
        }
        attrs.emplace_back(node.attr, *std::move(v));
        return Flow::kNormal;
      }
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
      case Node::Kind::kScope:
        return RenderBody(node.body);
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> RenderFor(const Node& node) {
    auto iterable = Eval(*node.expr);
    if (!iterable.ok()) return iterable.status();
    auto all = Iterate(*iterable);
    if (!all.ok()) return At(node.expr->pos, all.status());
    std::vector<Value> items;
    if (node.filter == nullptr) {
      items = *std::move(all);
    } else {
      // The `if` filter sees each item bound to the loop targets, without `loop`.
      for (const Value& item : *all) {
        scopes_.emplace_back();
        auto bound = Bind(node.targets, item, node.pos);
        absl::StatusOr<Value> keep = bound.ok() ? Eval(*node.filter) : bound;
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (keep->Truthy()) items.push_back(item);
      }
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      ValueDict loop = {
          {"index", Value::Int(i + 1)},    {"index0", Value::Int(i)},
          {"revindex", Value::Int(n - i)}, {"revindex0", Value::Int(n - i - 1)},
          {"first", Value::Bool(i == 0)},  {"last", Value::Bool(i == n - 1)},
          {"length", Value::Int(n)},
      };
      loop.emplace_back("previtem",
                        i > 0 ? items[i - 1] : Value::Undefined("there is no previous item"));
      loop.emplace_back("nextitem",
                        i + 1 < n ? items[i + 1] : Value::Undefined("there is no next item"));
      scopes_.emplace_back();
      scopes_.back().emplace_back("loop", Value::Dict(std::move(loop)));
      absl::StatusOr<Flow> flow = Flow::kNormal;
      if (auto s = Bind(node.targets, items[static_cast<size_t>(i)], node.pos); !s.ok()) {
        flow = s;
      } else {
        flow = RenderBody(node.body);
      }
      scopes_.pop_back();
      if (!flow.ok()) return flow;
      if (*flow == Flow::kBreak) break;
    }
    if (n == 0) return RenderBody(node.else_body);
    return Flow::kNormal;
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    if (++depth_ > kMaxDepth) {
      --depth_;
      return At(e.pos, absl::ResourceExhaustedError("expression nests too deeply"));
    }
    auto v = EvalInner(e);
    --depth_;
    if (!v.ok()) return At(e.pos, v.status());
    return v;
  }

  absl::StatusOr<std::vector<Value>> EvalAll(const std::vector<ExprPtr>& exprs) {
    std::vector<Value> out;
    for (const ExprPtr& e : exprs) {
      auto v = Eval(*e);
      if (!v.ok()) return v.status();
      out.push_back(*std::move(v));
    }
    return out;
  }

  absl::StatusOr<KwArgs> EvalKwargs(const std::vector<std::pair<std::string, ExprPtr>>& kwargs) {
    KwArgs out;
    for (const auto& [key, e] : kwargs) {
      auto v = Eval(*e);
      if (!v.ok()) return v.status();
      out.emplace_back(key, *std::move(v));
    }
    return out;
  }

  absl::StatusOr<Value> EvalInner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName: {
        const Value* v = Lookup(e.name);
        if (v == nullptr) return Value::Undefined(absl::StrCat("'", e.name, "' is undefined"));
        return *v;
      }
      case Expr::Kind::kList: {
        auto items = EvalAll(e.args);
        if (!items.ok()) return items.status();
        return Value::List(*std::move(items));
      }
      case Expr::Kind::kDict: {
        ValueDict entries;
        for (const auto& [k, v] : e.dict_items) {
          auto key = Eval(*k);
          if (!key.ok()) return key.status();
          if (!key->is_string())
            return absl::UnimplementedError("dict literal with a non-string key");
          auto value = Eval(*v);
          if (!value.ok()) return value.status();
          bool replaced = false;
          for (auto& [ek, ev] : entries) {
            if (ek == key->string_value()) {
              ev = *value;
              replaced = true;
            }
          }
          if (!replaced) entries.emplace_back(key->string_value(), *std::move(value));
        }
        return Value::Dict(std::move(entries));
      }
      case Expr::Kind::kAttr: {
        auto obj = Eval(*e.a);
        if (!obj.ok()) return obj;
        return GetAttr(*obj, e.name);
      }
      case Expr::Kind::kSubscript: {
        auto obj = Eval(*e.a);
        if (!obj.ok()) return obj;
        auto key = Eval(*e.b);
        if (!key.ok()) return key;
        return GetItem(*obj, *key);
      }
      case Expr::Kind::kSlice:
        return EvalSlice(e);
      case Expr::Kind::kCall:
        return EvalCall(e);
      case Expr::Kind::kFilter: {
        auto input = Eval(*e.a);
        if (!input.ok()) return input;
        auto args = EvalAll(e.args);
        if (!args.ok()) return args.status();
        auto kwargs = EvalKwargs(e.kwargs);
        if (!kwargs.ok()) return kwargs.status();
        return ApplyFilter(e.name, *input, *args, *kwargs);
      }
      case Expr::Kind::kTest: {
        auto input = Eval(*e.a);
        if (!input.ok()) return input;
        auto args = EvalAll(e.args);
        if (!args.ok()) return args.status();
        if (!e.kwargs.empty()) return absl::UnimplementedError("keyword arguments to a test");
        auto r = ApplyTest(e.name, *input, *args);
        if (!r.ok()) return r.status();
        return Value::Bool(*r != e.negate);
      }
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        auto v = Eval(*e.a);
        if (!v.ok()) return v;
        if (v->kind() == Value::Kind::kFloat) {
          return Value::Float(e.kind == Expr::Kind::kNeg ? -v->float_value() : v->float_value());
        }
        if (v->kind() == Value::Kind::kInt || v->kind() == Value::Kind::kBool) {
          if (e.kind == Expr::Kind::kPos) return Value::Int(v->int_value());
          if (v->int_value() == std::numeric_limits<int64_t>::min()) return Overflow();
          return Value::Int(-v->int_value());
        }
        return UndefinedOr(*v, absl::StrCat("bad operand type for unary -: '", v->TypeName(), "'"));
      }
      case Expr::Kind::kNot: {
        auto v = Eval(*e.a);
        if (!v.ok()) return v;
        return Value::Bool(!v->Truthy());
      }
      case Expr::Kind::kAnd:
      case Expr::Kind::kOr: {
        auto left = Eval(*e.a);
        if (!left.ok()) return left;
        if (left->Truthy() == (e.kind == Expr::Kind::kOr)) return left;
        return Eval(*e.b);
      }
      case Expr::Kind::kCondition: {
        auto cond = Eval(*e.a);
        if (!cond.ok()) return cond;
        if (cond->Truthy()) return Eval(*e.b);
        if (e.c == nullptr) return Value::Undefined("the inline if-expression on its false branch");
        return Eval(*e.c);
      }
      case Expr::Kind::kCompare: {
        auto left = Eval(*e.a);
        if (!left.ok()) return left;
        auto right = Eval(*e.b);
        if (!right.ok()) return right;
        if (e.name == "not in" || e.name == "in") {
          auto r = ApplyTest("in", *left, {*right});
          if (!r.ok()) return r.status();
          return Value::Bool(*r == (e.name == "in"));
        }
        if (e.name == "==" || e.name == "!=") {
          return Value::Bool(left->Equals(*right) == (e.name == "=="));
        }
        if (left->is_undefined()) return UndefinedOr(*left, "");
        if (right->is_undefined()) return UndefinedOr(*right, "");
        auto r = ApplyTest(e.name, *left, {*right});
        if (!r.ok()) return r.status();
        return Value::Bool(*r);
      }
      case Expr::Kind::kBinary: {
        auto left = Eval(*e.a);
        if (!left.ok()) return left;
        auto right = Eval(*e.b);
        if (!right.ok()) return right;
        return Binary(e.name, *left, *right);
      }
    }
    return absl::InternalError("unknown expression");
  }

  static absl::Status Overflow() {
    return absl::UnimplementedError("integer arithmetic beyond 64 bits");
  }

  static absl::Status UndefinedOr(const Value& v, absl::string_view type_error) {
    if (v.is_undefined()) {
      return absl::InvalidArgumentError(absl::StrCat("UndefinedError: ", v.undefined_hint()));
    }
    return absl::InvalidArgumentError(absl::StrCat("TypeError: ", type_error));
  }

  static absl::StatusOr<Value> Binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      auto sa = a.Str();
      if (!sa.ok()) return sa.status();
      auto sb = b.Str();
      if (!sb.ok()) return sb.status();
      return Value::String(*sa + *sb);
    }
    if (a.is_undefined()) return UndefinedOr(a, "");
    if (b.is_undefined()) return UndefinedOr(b, "");
    const std::string type_error = absl::StrCat("unsupported operand type(s) for ", op, ": '",
                                                a.TypeName(), "' and '", b.TypeName(), "'");
    if (a.is_number() && b.is_number()) {
      const bool floats = a.kind() == Value::Kind::kFloat || b.kind() == Value::Kind::kFloat;
      if (op == "/") {
        if (b.float_value() == 0)
          return absl::InvalidArgumentError("ZeroDivisionError: division by zero");
        return Value::Float(a.float_value() / b.float_value());
      }
      if (floats) {
        const double x = a.float_value();
        const double y = b.float_value();
        if (op == "+") return Value::Float(x + y);
        if (op == "-") return Value::Float(x - y);
        if (op == "*") return Value::Float(x * y);
        if (op == "**") return Value::Float(std::pow(x, y));
        if (y == 0) return absl::InvalidArgumentError("ZeroDivisionError: float modulo");
        const double m = std::fmod(x, y);
        const double mod = (m != 0 && ((m < 0) != (y < 0))) ? m + y : m;
        if (op == "%") return Value::Float(mod);
        return Value::Float(std::floor(x / y));  // "//"
      }
      const int64_t x = a.int_value();
      const int64_t y = b.int_value();
      int64_t r = 0;
      if (op == "+") {
        if (__builtin_add_overflow(x, y, &r)) return Overflow();
        return Value::Int(r);
      }
      if (op == "-") {
        if (__builtin_sub_overflow(x, y, &r)) return Overflow();
        return Value::Int(r);
      }
      if (op == "*") {
        if (__builtin_mul_overflow(x, y, &r)) return Overflow();
        return Value::Int(r);
      }
      if (op == "**") {
        if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
        int64_t acc = 1;
        for (int64_t k = 0; k < y; ++k) {
          if (__builtin_mul_overflow(acc, x, &acc)) return Overflow();
        }
        return Value::Int(acc);
      }
      if (y == 0)
        return absl::InvalidArgumentError("ZeroDivisionError: integer division or modulo by zero");
      if (x == std::numeric_limits<int64_t>::min() && y == -1) return Overflow();
      int64_t q = x / y;
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return Value::Int(op == "%" ? m : q);
    }
    if (op == "+" && a.is_string() && b.is_string()) {
      return Value::String(a.string_value() + b.string_value());
    }
    if (op == "+" && a.is_sequence() && a.kind() == b.kind()) {
      ValueList items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return a.kind() == Value::Kind::kList ? Value::List(std::move(items))
                                            : Value::Tuple(std::move(items));
    }
    if (op == "*" && (a.is_string() || a.is_sequence() || b.is_string() || b.is_sequence())) {
      const Value& seq = a.is_number() ? b : a;
      const Value& count = a.is_number() ? a : b;
      if (count.kind() != Value::Kind::kInt && count.kind() != Value::Kind::kBool) {
        return absl::InvalidArgumentError(absl::StrCat("TypeError: ", type_error));
      }
      const int64_t n = std::max<int64_t>(0, count.int_value());
      if (n > (1 << 20)) return absl::ResourceExhaustedError("sequence repetition too large");
      if (seq.is_string()) {
        std::string out;
        for (int64_t k = 0; k < n; ++k) out += seq.string_value();
        return Value::String(std::move(out));
      }
      ValueList items;
      for (int64_t k = 0; k < n; ++k)
        items.insert(items.end(), seq.items().begin(), seq.items().end());
      return seq.kind() == Value::Kind::kList ? Value::List(std::move(items))
                                              : Value::Tuple(std::move(items));
    }
    if (op == "%" && a.is_string()) {
      return absl::UnimplementedError("printf-style string formatting with '%'");
    }
    return absl::InvalidArgumentError(absl::StrCat("TypeError: ", type_error));
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e) {
    auto obj = Eval(*e.a);
    if (!obj.ok()) return obj;
    std::optional<int64_t> parts[3];
    const Expr* exprs[3] = {e.b.get(), e.c.get(), e.d.get()};
    for (int k = 0; k < 3; ++k) {
      if (exprs[k] == nullptr) continue;
      auto v = Eval(*exprs[k]);
      if (!v.ok()) return v;
      if (v->is_none()) continue;
      if (v->kind() != Value::Kind::kInt && v->kind() != Value::Kind::kBool) {
        return absl::InvalidArgumentError("TypeError: slice indices must be integers or None");
      }
      parts[k] = v->int_value();
    }
    const int64_t step = parts[2].value_or(1);
    if (step == 0) return absl::InvalidArgumentError("ValueError: slice step cannot be zero");
    if (obj->is_undefined()) return UndefinedOr(*obj, "");
    std::u32string chars;
    int64_t n = 0;
    if (obj->is_string()) {
      chars = DecodeUtf8(obj->string_value());
      n = static_cast<int64_t>(chars.size());
    } else if (obj->is_sequence()) {
      n = static_cast<int64_t>(obj->items().size());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("TypeError: '", obj->TypeName(), "' object is not subscriptable"));
    }
    // Python's slice.indices().
    auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
      if (!v.has_value()) return fallback;
      int64_t i = *v;
      if (i < 0) i += n;
      if (step > 0) return std::clamp<int64_t>(i, 0, n);
      return std::clamp<int64_t>(i, -1, n - 1);
    };
    const int64_t start = clamp(parts[0], step > 0 ? 0 : n - 1);
    const int64_t stop = clamp(parts[1], step > 0 ? n : -1);
    std::vector<int64_t> picks;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) picks.push_back(i);
    if (obj->is_string()) {
      std::u32string out;
      for (int64_t i : picks) out.push_back(chars[static_cast<size_t>(i)]);
      return Value::String(EncodeUtf8(out));
    }
    ValueList out;
    for (int64_t i : picks) out.push_back(obj->items()[static_cast<size_t>(i)]);
    return obj->kind() == Value::Kind::kList ? Value::List(std::move(out))
                                             : Value::Tuple(std::move(out));
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    auto args = EvalAll(e.args);
    if (!args.ok()) return args.status();
    auto kwargs = EvalKwargs(e.kwargs);
    if (!kwargs.ok()) return kwargs.status();
    const Expr& callee = *e.a;
    if (callee.kind == Expr::Kind::kAttr) {
      auto receiver = Eval(*callee.a);
      if (!receiver.ok()) return receiver;
      return CallMethod(callee.name, *receiver, *args, *kwargs);
    }
    if (Lookup(callee.name) != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("TypeError: '", callee.name, "' is not callable"));
    }
    if (callee.name == "raise_exception") {
      std::string message;
      if (!args->empty()) {
        auto s = (*args)[0].Str();
        if (s.ok()) message = *s;
      }
      return absl::InvalidArgumentError(absl::StrCat("raise_exception: ", message));
    }
    if (callee.name == "namespace") {
      ValueDict attrs;
      if (args->size() > 1 || (args->size() == 1 && !(*args)[0].is_dict())) {
        return absl::UnimplementedError("namespace() takes a dict and keyword arguments");
      }
      if (args->size() == 1) attrs = (*args)[0].entries();
      for (auto& [key, value] : *kwargs) attrs.emplace_back(key, value);
      for (const auto& [key, value] : attrs) {
        if (!key.empty() && key[0] == '_') {
          return absl::InvalidArgumentError(absl::StrCat(
              "SecurityError: chat templates cannot store underscore-prefixed attributes on a "
              "namespace, but got '",
              key, "'"));
        }
      }
      return Value::NewNamespace(std::move(attrs));
    }
    // range()
    if (!kwargs->empty() || args->empty() || args->size() > 3) {
      return absl::InvalidArgumentError("TypeError: range() takes 1 to 3 integer arguments");
    }
    int64_t bounds[3] = {0, 0, 1};
    for (size_t k = 0; k < args->size(); ++k) {
      if ((*args)[k].kind() != Value::Kind::kInt && (*args)[k].kind() != Value::Kind::kBool) {
        return absl::InvalidArgumentError("TypeError: range() arguments must be integers");
      }
    }
    if (args->size() == 1) {
      bounds[1] = (*args)[0].int_value();
    } else {
      bounds[0] = (*args)[0].int_value();
      bounds[1] = (*args)[1].int_value();
      if (args->size() == 3) bounds[2] = (*args)[2].int_value();
    }
    if (bounds[2] == 0)
      return absl::InvalidArgumentError("ValueError: range() arg 3 must not be zero");
    ValueList out;
    for (int64_t i = bounds[0]; bounds[2] > 0 ? i < bounds[1] : i > bounds[1]; i += bounds[2]) {
      // The sandbox caps range() at 100000 items (MAX_RANGE).
      if (out.size() >= 100000) {
        return absl::InvalidArgumentError("OverflowError: range too big, maximum size is 100000");
      }
      out.push_back(Value::Int(i));
    }
    return Value::List(std::move(out));
  }

  std::string origin_;
  std::vector<ValueDict> scopes_;
  std::string out_;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<std::string> Evaluate(const Body& body, const Value& context,
                                     absl::string_view origin) {
  if (!context.is_dict()) return absl::InvalidArgumentError("the context must be a JSON object");
  return Evaluator(context, origin).Run(body);
}

}  // namespace tessera::chat
