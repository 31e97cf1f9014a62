#include "runtime/chat/builtins.h"

#include <cmath>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/chat/python_text.h"

namespace tessera::chat {
namespace {

using NameSet = std::set<std::string, std::less<>>;

const NameSet kFilters = {"trim",    "length",  "count",      "tojson", "string",     "lower",
                          "upper",   "title",   "capitalize", "first",  "last",       "join",
                          "default", "d",       "items",      "list",   "selectattr", "rejectattr",
                          "map",     "replace", "int",        "float",  "abs"};
const NameSet kTests = {"defined",  "undefined", "none",    "string",      "mapping", "iterable",
                        "sequence", "number",    "integer", "float",       "boolean", "true",
                        "false",    "even",      "odd",     "divisibleby", "eq",      "equalto",
                        "==",       "ne",        "!=",      "lt",          "<",       "le",
                        "<=",       "gt",        ">",       "ge",          ">=",      "in"};
const NameSet kMethods = {"strip",   "lstrip", "rstrip", "startswith", "endswith",
                          "split",   "upper",  "lower",  "title",      "capitalize",
                          "replace", "items",  "keys",   "values",     "get"};
// Attributes that jinja2 resolves to a bound method rather than to a key or Undefined.
const NameSet kDictMethods = {"clear", "copy",    "fromkeys",   "get",    "items", "keys",
                              "pop",   "popitem", "setdefault", "update", "values"};
const NameSet kStrMethods = {
    "capitalize",   "casefold",    "center",    "count",      "encode",       "endswith",
    "expandtabs",   "find",        "format",    "format_map", "index",        "isalnum",
    "isalpha",      "isascii",     "isdecimal", "isdigit",    "isidentifier", "islower",
    "isnumeric",    "isprintable", "isspace",   "istitle",    "isupper",      "join",
    "ljust",        "lower",       "lstrip",    "maketrans",  "partition",    "removeprefix",
    "removesuffix", "replace",     "rfind",     "rindex",     "rjust",        "rpartition",
    "rsplit",       "rstrip",      "split",     "splitlines", "startswith",   "strip",
    "swapcase",     "title",       "translate", "upper",      "zfill"};
const NameSet kListMethods = {"append", "clear", "copy",   "count",   "extend", "index",
                              "insert", "pop",   "remove", "reverse", "sort"};

absl::Status TypeError(absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("TypeError: ", message));
}

absl::Status UndefinedError(const Value& v) {
  return absl::InvalidArgumentError(absl::StrCat("UndefinedError: ", v.undefined_hint()));
}

// Binds Python-style arguments to a signature's parameter names.
absl::StatusOr<std::vector<std::optional<Value>>> Bind(absl::string_view function,
                                                       const std::vector<std::string>& params,
                                                       const std::vector<Value>& args,
                                                       const KwArgs& kwargs) {
  if (args.size() > params.size()) {
    return TypeError(absl::StrCat(function, "() takes at most ", params.size(), " arguments"));
  }
  std::vector<std::optional<Value>> bound(params.size());
  for (size_t k = 0; k < args.size(); ++k) bound[k] = args[k];
  for (const auto& [key, value] : kwargs) {
    size_t k = 0;
    while (k < params.size() && params[k] != key) ++k;
    if (k == params.size() || bound[k].has_value()) {
      return TypeError(absl::StrCat(function, "() got an unexpected keyword argument '", key, "'"));
    }
    bound[k] = value;
  }
  return bound;
}

// str() that treats Undefined as "" (jinja's soft_str).
absl::StatusOr<std::string> SoftStr(const Value& v) { return v.Str(); }

absl::StatusOr<std::optional<std::string>> OptionalString(const std::optional<Value>& v,
                                                          absl::string_view what) {
  if (!v.has_value() || v->is_none()) return std::optional<std::string>();
  if (!v->is_string()) return TypeError(absl::StrCat(what, " must be None or a string"));
  return std::optional<std::string>(v->string_value());
}

absl::StatusOr<int64_t> IntArg(const std::optional<Value>& v, int64_t fallback,
                               absl::string_view what) {
  if (!v.has_value() || v->is_none()) return fallback;
  if (v->kind() != Value::Kind::kInt && v->kind() != Value::Kind::kBool) {
    return TypeError(absl::StrCat(what, " must be an integer"));
  }
  return v->int_value();
}

absl::StatusOr<int64_t> Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return CodePointCount(v.string_value());
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.entries().size());
    default:
      return TypeError(absl::StrCat("object of type '", v.TypeName(), "' has no len()"));
  }
}

// An attribute path as selectattr/map/join take it: "a.b" looks up a, then b.
absl::StatusOr<Value> AttributePath(const Value& item, const std::string& path) {
  Value v = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    int64_t index = 0;
    auto next = absl::SimpleAtoi(part, &index) ? GetItem(v, Value::Int(index))
                                               : GetItem(v, Value::String(part));
    if (!next.ok()) return next;
    v = *std::move(next);
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

// Results that jinja2 returns as generators or dict views (map, selectattr, rejectattr,
// items, keys, values). Templates iterate, join or list() them; printing one directly would
// show a list here where jinja2 shows an object's repr.
Value Lazy(ValueList items) { return Value::List(std::move(items)); }

absl::StatusOr<Value> Tojson(const Value& input, const std::vector<Value>& args,
                             const KwArgs& kwargs) {
  auto bound = Bind("tojson", {"ensure_ascii", "indent", "separators", "sort_keys"}, args, kwargs);
  if (!bound.ok()) return bound.status();
  const auto& b = *bound;
  if (b[0].has_value() && b[0]->Truthy()) {
    return absl::UnimplementedError("tojson(ensure_ascii=True) is not supported");
  }
  int indent = -1;
  if (b[1].has_value() && !b[1]->is_none()) {
    if (b[1]->kind() != Value::Kind::kInt) {
      return absl::UnimplementedError("tojson: only an integer indent is supported");
    }
    indent = static_cast<int>(std::max<int64_t>(0, b[1]->int_value()));
  }
  std::optional<std::pair<std::string, std::string>> separators;
  if (b[2].has_value() && !b[2]->is_none()) {
    if (!b[2]->is_sequence() || b[2]->items().size() != 2 || !b[2]->items()[0].is_string() ||
        !b[2]->items()[1].is_string()) {
      return TypeError("tojson separators must be two strings");
    }
    separators.emplace(b[2]->items()[0].string_value(), b[2]->items()[1].string_value());
  }
  const bool sort_keys = b[3].has_value() && b[3]->Truthy();
  auto out = input.ToJson(indent, sort_keys, separators);
  if (!out.ok()) return out.status();
  return Value::String(*std::move(out));
}

absl::StatusOr<Value> SelectOrReject(bool select, const Value& input,
                                     const std::vector<Value>& args, const KwArgs& kwargs) {
  if (!kwargs.empty() || args.empty() || !args[0].is_string()) {
    return TypeError("selectattr/rejectattr take an attribute name, then a test and its args");
  }
  std::string test;
  if (args.size() > 1) {
    if (!args[1].is_string() || !IsSupportedTest(args[1].string_value())) {
      return absl::UnimplementedError("selectattr/rejectattr: unsupported test");
    }
    test = args[1].string_value();
  }
  const std::vector<Value> test_args(args.begin() + std::min<size_t>(2, args.size()), args.end());
  auto items = Iterate(input);
  if (!items.ok()) return items.status();
  ValueList out;
  for (const Value& item : *items) {
    auto attr = AttributePath(item, args[0].string_value());
    if (!attr.ok()) return attr.status();
    bool pass = attr->Truthy();
    if (!test.empty()) {
      auto r = ApplyTest(test, *attr, test_args);
      if (!r.ok()) return r.status();
      pass = *r;
    }
    if (pass == select) out.push_back(item);
  }
  return Lazy(std::move(out));
}

absl::StatusOr<Value> Map(const Value& input, const std::vector<Value>& args,
                          const KwArgs& kwargs) {
  auto items = Iterate(input);
  if (!items.ok()) return items.status();
  ValueList out;
  if (args.empty()) {
    auto bound = Bind("map", {"attribute", "default"}, {}, kwargs);
    if (!bound.ok()) return bound.status();
    if (!(*bound)[0].has_value() || !(*bound)[0]->is_string()) {
      return TypeError("map needs a filter name or attribute=");
    }
    for (const Value& item : *items) {
      auto v = AttributePath(item, (*bound)[0]->string_value());
      if (!v.ok()) return v.status();
      out.push_back(v->is_undefined() && (*bound)[1].has_value() ? *(*bound)[1] : *v);
    }
    return Lazy(std::move(out));
  }
  if (!args[0].is_string() || !IsSupportedFilter(args[0].string_value())) {
    return absl::UnimplementedError("map: unsupported filter");
  }
  const std::vector<Value> rest(args.begin() + 1, args.end());
  for (const Value& item : *items) {
    auto v = ApplyFilter(args[0].string_value(), item, rest, kwargs);
    if (!v.ok()) return v.status();
    out.push_back(*std::move(v));
  }
  return Lazy(std::move(out));
}

absl::StatusOr<Value> ToInt(const Value& input, const std::vector<Value>& args,
                            const KwArgs& kwargs) {
  auto bound = Bind("int", {"default", "base"}, args, kwargs);
  if (!bound.ok()) return bound.status();
  const Value fallback = (*bound)[0].has_value() ? *(*bound)[0] : Value::Int(0);
  if ((*bound)[1].has_value()) return absl::UnimplementedError("int(base=...) is not supported");
  switch (input.kind()) {
    case Value::Kind::kInt:
    case Value::Kind::kBool:
      return Value::Int(input.int_value());
    case Value::Kind::kFloat:
      if (!std::isfinite(input.float_value())) return fallback;
      return Value::Int(static_cast<int64_t>(std::trunc(input.float_value())));
    case Value::Kind::kString: {
      const std::string s = PyStrip(input.string_value(), std::nullopt, true, true);
      int64_t i = 0;
      if (absl::SimpleAtoi(s, &i)) return Value::Int(i);
      double d = 0;
      if (absl::SimpleAtod(s, &d) && std::isfinite(d)) {
        return Value::Int(static_cast<int64_t>(std::trunc(d)));
      }
      return fallback;
    }
    default:
      return fallback;
  }
}

}  // namespace

bool IsSupportedFilter(absl::string_view name) { return kFilters.count(name) > 0; }
bool IsSupportedTest(absl::string_view name) { return kTests.count(name) > 0; }
bool IsSupportedMethod(absl::string_view name) { return kMethods.count(name) > 0; }

absl::StatusOr<std::vector<Value>> Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return std::vector<Value>();
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      return v.items();
    case Value::Kind::kString: {
      std::vector<Value> out;
      for (char32_t c : DecodeUtf8(v.string_value())) {
        out.push_back(Value::String(EncodeUtf8(std::u32string(1, c))));
      }
      return out;
    }
    case Value::Kind::kDict: {
      std::vector<Value> out;
      for (const auto& [key, value] : v.entries()) out.push_back(Value::String(key));
      return out;
    }
    default:
      return TypeError(absl::StrCat("'", v.TypeName(), "' object is not iterable"));
  }
}

absl::StatusOr<Value> GetAttr(const Value& obj, absl::string_view name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return UndefinedError(obj);
    case Value::Kind::kDict:
      if (kDictMethods.count(name) > 0) {
        return absl::UnimplementedError(absl::StrCat("dict method '", name, "' used as a value"));
      }
      if (const Value* v = obj.Find(name)) return *v;
      return Value::Undefined(absl::StrCat("'dict object' has no attribute '", name, "'"));
    case Value::Kind::kNamespace:
      for (const auto& [key, value] : obj.ns().attrs) {
        if (key == name) return value;
      }
      return Value::Undefined(absl::StrCat("'Namespace' has no attribute '", name, "'"));
    case Value::Kind::kString:
      if (kStrMethods.count(name) > 0) {
        return absl::UnimplementedError(absl::StrCat("str method '", name, "' used as a value"));
      }
      break;
    case Value::Kind::kList:
      if (kListMethods.count(name) > 0) {
        return absl::UnimplementedError(absl::StrCat("list method '", name, "' used as a value"));
      }
      break;
    default:
      break;
  }
  return Value::Undefined(
      absl::StrCat("'", obj.TypeName(), " object' has no attribute '", name, "'"));
}

absl::StatusOr<Value> GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.Find(key.string_value())) return *v;
    // jinja2 falls back to getattr, which for these names is a bound method.
    return GetAttr(obj, key.string_value());
  }
  if (obj.kind() == Value::Kind::kNamespace && key.is_string())
    return GetAttr(obj, key.string_value());
  if ((obj.is_sequence() || obj.is_string()) &&
      (key.kind() == Value::Kind::kInt || key.kind() == Value::Kind::kBool)) {
    if (obj.is_string()) {
      const std::u32string s = DecodeUtf8(obj.string_value());
      int64_t i = key.int_value();
      if (i < 0) i += static_cast<int64_t>(s.size());
      if (i < 0 || i >= static_cast<int64_t>(s.size()))
        return Value::Undefined("string index out of range");
      return Value::String(EncodeUtf8(std::u32string(1, s[static_cast<size_t>(i)])));
    }
    int64_t i = key.int_value();
    const int64_t n = static_cast<int64_t>(obj.items().size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::Undefined("list index out of range");
    return obj.items()[static_cast<size_t>(i)];
  }
  if (key.is_string()) return GetAttr(obj, key.string_value());
  return Value::Undefined(absl::StrCat("'", obj.TypeName(), " object' has no such item"));
}

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& input,
                                  const std::vector<Value>& args, const KwArgs& kwargs) {
  if (name == "tojson") return Tojson(input, args, kwargs);
  if (name == "length" || name == "count") {
    auto n = Length(input);
    if (!n.ok()) return n.status();
    return Value::Int(*n);
  }
  if (name == "default" || name == "d") {
    auto bound = Bind("default", {"default_value", "boolean"}, args, kwargs);
    if (!bound.ok()) return bound.status();
    const bool boolean = (*bound)[1].has_value() && (*bound)[1]->Truthy();
    if (input.is_undefined() || (boolean && !input.Truthy())) {
      return (*bound)[0].has_value() ? *(*bound)[0] : Value::String("");
    }
    return input;
  }
  if (name == "trim" || name == "string" || name == "lower" || name == "upper" || name == "title" ||
      name == "capitalize" || name == "replace") {
    auto s = SoftStr(input);
    if (!s.ok()) return s.status();
    if (name == "trim") {
      auto bound = Bind("trim", {"chars"}, args, kwargs);
      if (!bound.ok()) return bound.status();
      auto chars = OptionalString((*bound)[0], "trim chars");
      if (!chars.ok()) return chars.status();
      return Value::String(PyStrip(*s, *chars, true, true));
    }
    if (name == "replace") {
      auto bound = Bind("replace", {"old", "new", "count"}, args, kwargs);
      if (!bound.ok()) return bound.status();
      if (!(*bound)[0].has_value() || !(*bound)[1].has_value()) {
        return TypeError("replace() needs old and new");
      }
      auto old_text = SoftStr(*(*bound)[0]);
      auto new_text = SoftStr(*(*bound)[1]);
      auto count = IntArg((*bound)[2], -1, "replace count");
      if (!old_text.ok() || !new_text.ok() || !count.ok()) return TypeError("replace() arguments");
      return Value::String(PyReplace(*s, *old_text, *new_text, *count));
    }
    if (!args.empty() || !kwargs.empty())
      return TypeError(absl::StrCat(name, "() takes no arguments"));
    if (name == "string") return input.is_string() ? input : Value::String(*s);
    if (name == "lower") return Value::String(PyLower(*s));
    if (name == "upper") return Value::String(PyUpper(*s));
    if (name == "title") return Value::String(JinjaTitle(*s));
    return Value::String(PyCapitalize(*s));
  }
  if (name == "first" || name == "last") {
    if (name == "last" && input.is_undefined()) return UndefinedError(input);
    auto items = Iterate(input);
    if (!items.ok()) return items.status();
    if (items->empty())
      return Value::Undefined(absl::StrCat("No ", name, " item, sequence was empty."));
    return name == "first" ? items->front() : items->back();
  }
  if (name == "join") {
    auto bound = Bind("join", {"d", "attribute"}, args, kwargs);
    if (!bound.ok()) return bound.status();
    std::string sep;
    if ((*bound)[0].has_value()) {
      auto s = SoftStr(*(*bound)[0]);
      if (!s.ok()) return s.status();
      sep = *s;
    }
    auto items = Iterate(input);
    if (!items.ok()) return items.status();
    std::string out;
    for (size_t k = 0; k < items->size(); ++k) {
      Value item = (*items)[k];
      if ((*bound)[1].has_value()) {
        auto attr = AttributePath(
            item, (*bound)[1]->is_string() ? (*bound)[1]->string_value() : std::string());
        if (!attr.ok()) return attr.status();
        item = *attr;
      }
      auto s = SoftStr(item);
      if (!s.ok()) return s.status();
      if (k > 0) out += sep;
      out += *s;
    }
    return Value::String(std::move(out));
  }
  if (name == "items") {
    if (input.is_undefined()) return Lazy({});
    if (!input.is_dict()) return TypeError("items filter needs a mapping");
    ValueList out;
    for (const auto& [key, value] : input.entries()) {
      out.push_back(Value::Tuple({Value::String(key), value}));
    }
    return Lazy(std::move(out));
  }
  if (name == "list") {
    auto items = Iterate(input);
    if (!items.ok()) return items.status();
    return Value::List(*std::move(items));
  }
  if (name == "selectattr" || name == "rejectattr") {
    return SelectOrReject(name == "selectattr", input, args, kwargs);
  }
  if (name == "map") return Map(input, args, kwargs);
  if (name == "int") return ToInt(input, args, kwargs);
  if (name == "float") {
    auto bound = Bind("float", {"default"}, args, kwargs);
    if (!bound.ok()) return bound.status();
    const Value fallback = (*bound)[0].has_value() ? *(*bound)[0] : Value::Float(0.0);
    if (input.is_number()) return Value::Float(input.float_value());
    double d = 0;
    if (input.is_string() &&
        absl::SimpleAtod(PyStrip(input.string_value(), std::nullopt, true, true), &d)) {
      return Value::Float(d);
    }
    return fallback;
  }
  if (name == "abs") {
    if (input.kind() == Value::Kind::kFloat) return Value::Float(std::fabs(input.float_value()));
    if (input.is_number()) return Value::Int(std::llabs(input.int_value()));
    return TypeError(absl::StrCat("bad operand type for abs(): '", input.TypeName(), "'"));
  }
  return absl::UnimplementedError(absl::StrCat("filter '", name, "'"));
}

absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& input,
                               const std::vector<Value>& args) {
  const Value::Kind k = input.kind();
  if (name == "defined") return !input.is_undefined();
  if (name == "undefined") return input.is_undefined();
  if (name == "none") return input.is_none();
  if (name == "string") return input.is_string();
  if (name == "mapping") return input.is_dict();
  if (name == "iterable") {
    return k == Value::Kind::kUndefined || input.is_string() || input.is_sequence() ||
           input.is_dict();
  }
  if (name == "sequence") {
    return k == Value::Kind::kUndefined || input.is_string() || input.is_sequence() ||
           input.is_dict();
  }
  if (name == "number") return input.is_number();
  if (name == "integer") return k == Value::Kind::kInt;
  if (name == "float") return k == Value::Kind::kFloat;
  if (name == "boolean") return k == Value::Kind::kBool;
  if (name == "true") return k == Value::Kind::kBool && input.bool_value();
  if (name == "false") return k == Value::Kind::kBool && !input.bool_value();
  if (name == "even" || name == "odd" || name == "divisibleby") {
    if (k != Value::Kind::kInt && k != Value::Kind::kBool) {
      return absl::UnimplementedError(absl::StrCat("test '", name, "' on a ", input.TypeName()));
    }
    int64_t divisor = 2;
    if (name == "divisibleby") {
      if (args.size() != 1 || args[0].kind() != Value::Kind::kInt || args[0].int_value() == 0) {
        return absl::UnimplementedError("divisibleby needs a non-zero integer");
      }
      divisor = args[0].int_value();
    }
    const int64_t r = input.int_value() % divisor;
    return name == "odd" ? r != 0 : r == 0;
  }
  if (args.size() != 1) return TypeError(absl::StrCat("test '", name, "' takes one argument"));
  const Value& other = args[0];
  if (name == "eq" || name == "equalto" || name == "==") return input.Equals(other);
  if (name == "ne" || name == "!=") return !input.Equals(other);
  if (name == "in") {
    if (other.is_string()) {
      if (!input.is_string()) return TypeError("'in <string>' requires string as left operand");
      return other.string_value().find(input.string_value()) != std::string::npos;
    }
    if (other.is_dict()) return input.is_string() && other.Find(input.string_value()) != nullptr;
    if (other.is_undefined()) return false;
    if (!other.is_sequence())
      return TypeError(absl::StrCat("argument of type '", other.TypeName(), "' is not iterable"));
    for (const Value& item : other.items()) {
      if (input.Equals(item)) return true;
    }
    return false;
  }
  auto c = input.Compare(other);
  if (!c.ok()) return c.status();
  if (name == "lt" || name == "<") return *c < 0;
  if (name == "le" || name == "<=") return *c <= 0;
  if (name == "gt" || name == ">") return *c > 0;
  return *c >= 0;
}

absl::StatusOr<Value> CallMethod(absl::string_view name, const Value& receiver,
                                 const std::vector<Value>& args, const KwArgs& kwargs) {
  if (receiver.is_undefined()) return UndefinedError(receiver);
  if (receiver.is_dict()) {
    if (name == "items" || name == "keys" || name == "values") {
      if (!args.empty() || !kwargs.empty())
        return TypeError(absl::StrCat(name, "() takes no arguments"));
      ValueList out;
      for (const auto& [key, value] : receiver.entries()) {
        out.push_back(name == "items"  ? Value::Tuple({Value::String(key), value})
                      : name == "keys" ? Value::String(key)
                                       : value);
      }
      return Lazy(std::move(out));
    }
    if (name == "get") {
      auto bound = Bind("get", {"key", "default"}, args, kwargs);
      if (!bound.ok()) return bound.status();
      if (!(*bound)[0].has_value()) return TypeError("get() needs a key");
      if ((*bound)[0]->is_string()) {
        if (const Value* v = receiver.Find((*bound)[0]->string_value())) return *v;
      }
      return (*bound)[1].has_value() ? *(*bound)[1] : Value::None();
    }
  }
  if (receiver.is_string()) {
    const std::string& s = receiver.string_value();
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      auto bound = Bind(name, {"chars"}, args, kwargs);
      if (!bound.ok()) return bound.status();
      auto chars = OptionalString((*bound)[0], "strip chars");
      if (!chars.ok()) return chars.status();
      return Value::String(PyStrip(s, *chars, name != "rstrip", name != "lstrip"));
    }
    if (name == "startswith" || name == "endswith") {
      if (args.size() != 1 || !kwargs.empty() || !args[0].is_string()) {
        return absl::UnimplementedError(absl::StrCat(name, "() with other than one string"));
      }
      const std::string& p = args[0].string_value();
      const bool match = p.size() <= s.size() &&
                         (name == "startswith" ? s.compare(0, p.size(), p) == 0
                                               : s.compare(s.size() - p.size(), p.size(), p) == 0);
      return Value::Bool(match);
    }
    if (name == "split") {
      auto bound = Bind("split", {"sep", "maxsplit"}, args, kwargs);
      if (!bound.ok()) return bound.status();
      auto sep = OptionalString((*bound)[0], "split sep");
      if (!sep.ok()) return sep.status();
      if (sep->has_value() && (*sep)->empty())
        return absl::InvalidArgumentError("ValueError: empty separator");
      auto maxsplit = IntArg((*bound)[1], -1, "split maxsplit");
      if (!maxsplit.ok()) return maxsplit.status();
      ValueList out;
      for (auto& part : PySplit(s, *sep, *maxsplit)) out.push_back(Value::String(std::move(part)));
      return Value::List(std::move(out));
    }
    if (name == "replace") {
      auto bound = Bind("replace", {"old", "new", "count"}, args, kwargs);
      if (!bound.ok()) return bound.status();
      if (!(*bound)[0].has_value() || !(*bound)[1].has_value() || !(*bound)[0]->is_string() ||
          !(*bound)[1]->is_string()) {
        return TypeError("replace() needs two strings");
      }
      auto count = IntArg((*bound)[2], -1, "replace count");
      if (!count.ok()) return count.status();
      return Value::String(
          PyReplace(s, (*bound)[0]->string_value(), (*bound)[1]->string_value(), *count));
    }
    if (!args.empty() || !kwargs.empty())
      return TypeError(absl::StrCat(name, "() takes no arguments"));
    if (name == "upper") return Value::String(PyUpper(s));
    if (name == "lower") return Value::String(PyLower(s));
    if (name == "title") return Value::String(PyTitle(s));
    if (name == "capitalize") return Value::String(PyCapitalize(s));
  }
  return absl::InvalidArgumentError(absl::StrCat("UndefinedError: '", receiver.TypeName(),
                                                 " object' has no attribute '", name, "'"));
}

}  // namespace tessera::chat
