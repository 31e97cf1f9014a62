#include "runtime/chat/value.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/chat/python_text.h"

namespace tessera::chat {
namespace {

// A json.dumps encoder over values, with Python's float and string spellings.
class JsonWriter {
 public:
  JsonWriter(int indent, bool sort_keys, std::string item_separator, std::string key_separator)
      : indent_(indent),
        sort_keys_(sort_keys),
        item_separator_(std::move(item_separator)),
        key_separator_(std::move(key_separator)) {}

  absl::Status Write(const Value& v, int level, std::string& out) const {
    switch (v.kind()) {
      case Value::Kind::kNone:
        out += "null";
        return absl::OkStatus();
      case Value::Kind::kBool:
        out += v.bool_value() ? "true" : "false";
        return absl::OkStatus();
      case Value::Kind::kInt:
        out += absl::StrCat(v.int_value());
        return absl::OkStatus();
      case Value::Kind::kFloat: {
        const double f = v.float_value();
        out += std::isnan(f)   ? "NaN"
               : std::isinf(f) ? (f > 0 ? "Infinity" : "-Infinity")
                               : PyFloatRepr(f);
        return absl::OkStatus();
      }
      case Value::Kind::kString:
        out += JsonQuote(v.string_value());
        return absl::OkStatus();
      case Value::Kind::kList:
      case Value::Kind::kTuple: {
        if (v.items().empty()) {
          out += "[]";
          return absl::OkStatus();
        }
        out += "[";
        Open(level + 1, out);
        for (size_t k = 0; k < v.items().size(); ++k) {
          if (k > 0) Separate(level + 1, out);
          if (auto s = Write(v.items()[k], level + 1, out); !s.ok()) return s;
        }
        Open(level, out);
        out += "]";
        return absl::OkStatus();
      }
      case Value::Kind::kDict: {
        if (v.entries().empty()) {
          out += "{}";
          return absl::OkStatus();
        }
        std::vector<const std::pair<std::string, Value>*> entries;
        for (const auto& e : v.entries()) entries.push_back(&e);
        if (sort_keys_) {
          std::stable_sort(entries.begin(), entries.end(),
                           [](const auto* a, const auto* b) { return a->first < b->first; });
        }
        out += "{";
        Open(level + 1, out);
        for (size_t k = 0; k < entries.size(); ++k) {
          if (k > 0) Separate(level + 1, out);
          out += JsonQuote(entries[k]->first);
          out += key_separator_;
          if (auto s = Write(entries[k]->second, level + 1, out); !s.ok()) return s;
        }
        Open(level, out);
        out += "}";
        return absl::OkStatus();
      }
      case Value::Kind::kUndefined:
      case Value::Kind::kNamespace:
        break;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("tojson: Object of type ", v.TypeName(), " is not JSON serializable"));
  }

 private:
  // With an indent, each level starts on a new line; without, nothing separates the bracket.
  void Open(int level, std::string& out) const {
    if (indent_ >= 0) out += "\n" + std::string(static_cast<size_t>(indent_ * level), ' ');
  }
  void Separate(int level, std::string& out) const {
    out += item_separator_;
    Open(level, out);
  }

  int indent_;
  bool sort_keys_;
  std::string item_separator_;
  std::string key_separator_;
};

int Sign(double d) { return d < 0 ? -1 : d > 0 ? 1 : 0; }

}  // namespace

Value Value::Undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}

Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}

Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}

Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}

Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}

Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.s_ = std::move(s);
  return v;
}

Value Value::List(ValueList items) {
  Value v;
  v.kind_ = Kind::kList;
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}

Value Value::Tuple(ValueList items) {
  Value v = List(std::move(items));
  v.kind_ = Kind::kTuple;
  return v;
}

Value Value::Dict(ValueDict entries) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<const ValueDict>(std::move(entries));
  return v;
}

Value Value::NewNamespace(ValueDict attrs) {
  Value v;
  v.kind_ = Kind::kNamespace;
  v.ns_ = std::make_shared<Namespace>(Namespace{std::move(attrs)});
  return v;
}

absl::StatusOr<Value> Value::FromJson(const nlohmann::ordered_json& json) {
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
      return None();
    case nlohmann::ordered_json::value_t::boolean:
      return Bool(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Int(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = json.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) {
        return absl::InvalidArgumentError(absl::StrCat("integer ", u, " does not fit in int64"));
      }
      return Int(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Float(json.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return String(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      items.reserve(json.size());
      for (const auto& item : json) {
        auto v = FromJson(item);
        if (!v.ok()) return v.status();
        items.push_back(*std::move(v));
      }
      return List(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      ValueDict entries;
      entries.reserve(json.size());
      for (const auto& [key, item] : json.items()) {
        auto v = FromJson(item);
        if (!v.ok()) return v.status();
        entries.emplace_back(key, *std::move(v));
      }
      return Dict(std::move(entries));
    }
    default:
      return absl::InvalidArgumentError("binary or discarded JSON values cannot be rendered");
  }
}

const Value* Value::Find(absl::string_view key) const {
  if (kind_ != Kind::kDict) return nullptr;
  for (const auto& [k, v] : *dict_) {
    if (k == key) return &v;
  }
  return nullptr;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !s_.empty();
    case Kind::kList:
    case Kind::kTuple:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->empty();
    case Kind::kNamespace:
      return true;
  }
  return false;
}

absl::StatusOr<std::string> Value::Str() const {
  switch (kind_) {
    case Kind::kUndefined:
      return std::string();
    case Kind::kString:
      return s_;
    default:
      return Repr();
  }
}

absl::StatusOr<std::string> Value::Repr() const {
  switch (kind_) {
    case Kind::kUndefined:
      return std::string();
    case Kind::kNone:
      return std::string("None");
    case Kind::kBool:
      return std::string(b_ ? "True" : "False");
    case Kind::kInt:
      return absl::StrCat(i_);
    case Kind::kFloat:
      return PyFloatRepr(f_);
    case Kind::kString:
      return PyStringRepr(s_);
    case Kind::kList:
    case Kind::kTuple: {
      std::string out = kind_ == Kind::kList ? "[" : "(";
      for (size_t k = 0; k < list_->size(); ++k) {
        const Value& item = (*list_)[k];
        // Only dict items produce tuples inside lists, and Python prints those as
        // dict_items([...]) or a generator; refuse rather than print something else.
        if (kind_ == Kind::kList && item.kind_ == Kind::kTuple) {
          return absl::UnimplementedError("printing a list of dict items is not supported");
        }
        auto r = item.Repr();
        if (!r.ok()) return r.status();
        if (k > 0) out += ", ";
        out += *r;
      }
      if (kind_ == Kind::kTuple && list_->size() == 1) out += ",";
      out += kind_ == Kind::kList ? "]" : ")";
      return out;
    }
    case Kind::kDict: {
      std::string out = "{";
      for (size_t k = 0; k < dict_->size(); ++k) {
        auto r = (*dict_)[k].second.Repr();
        if (!r.ok()) return r.status();
        if (k > 0) out += ", ";
        out += PyStringRepr((*dict_)[k].first) + ": " + *r;
      }
      return out + "}";
    }
    case Kind::kNamespace:
      break;
  }
  return absl::UnimplementedError("printing a namespace is not supported");
}

bool Value::Equals(const Value& other) const {
  if (is_number() && other.is_number()) {
    if (kind_ == Kind::kFloat || other.kind_ == Kind::kFloat) {
      return float_value() == other.float_value();
    }
    return int_value() == other.int_value();
  }
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return s_ == other.s_;
    case Kind::kList:
    case Kind::kTuple:
      if (list_->size() != other.list_->size()) return false;
      for (size_t k = 0; k < list_->size(); ++k) {
        if (!(*list_)[k].Equals((*other.list_)[k])) return false;
      }
      return true;
    case Kind::kDict:
      if (dict_->size() != other.dict_->size()) return false;
      for (const auto& [key, v] : *dict_) {
        const Value* o = other.Find(key);
        if (o == nullptr || !v.Equals(*o)) return false;
      }
      return true;
    case Kind::kNamespace:
      return ns_ == other.ns_;
    default:
      return false;
  }
}

absl::StatusOr<int> Value::Compare(const Value& other) const {
  if (is_number() && other.is_number()) {
    if (kind_ == Kind::kFloat || other.kind_ == Kind::kFloat) {
      return Sign(float_value() - other.float_value());
    }
    const int64_t a = int_value();
    const int64_t b = other.int_value();
    return a < b ? -1 : a > b ? 1 : 0;
  }
  if (kind_ == Kind::kString && other.kind_ == Kind::kString) {
    // UTF-8 byte order is code point order, which is Python's string order.
    const int c = s_.compare(other.s_);
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if ((kind_ == Kind::kList || kind_ == Kind::kTuple) && kind_ == other.kind_) {
    const size_t n = std::min(list_->size(), other.list_->size());
    for (size_t k = 0; k < n; ++k) {
      if ((*list_)[k].Equals((*other.list_)[k])) continue;
      return (*list_)[k].Compare((*other.list_)[k]);
    }
    return list_->size() < other.list_->size() ? -1 : list_->size() > other.list_->size() ? 1 : 0;
  }
  return absl::InvalidArgumentError(absl::StrCat("'<' not supported between instances of '",
                                                 TypeName(), "' and '", other.TypeName(), "'"));
}

absl::StatusOr<std::string> Value::ToJson(
    int indent, bool sort_keys,
    const std::optional<std::pair<std::string, std::string>>& separators) const {
  std::string item_sep = indent >= 0 ? "," : ", ";
  std::string key_sep = ": ";
  if (separators.has_value()) {
    item_sep = separators->first;
    key_sep = separators->second;
  }
  JsonWriter writer(indent, sort_keys, item_sep, key_sep);
  std::string out;
  if (auto s = writer.Write(*this, 0, out); !s.ok()) return s;
  return out;
}

std::string Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
  }
  return "object";
}

}  // namespace tessera::chat
