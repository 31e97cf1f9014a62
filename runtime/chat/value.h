#ifndef TESSERA_RUNTIME_CHAT_VALUE_H_
#define TESSERA_RUNTIME_CHAT_VALUE_H_

// The values a chat template computes with, and the Python semantics Jinja gives them:
// truthiness, str(), ==, ordering, and json.dumps. JSON input converts to these values with
// its object key order kept (Python dicts keep insertion order, and tojson prints it).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace tessera::chat {

class Value;
using ValueList = std::vector<Value>;
// A Python dict with string keys, in insertion order.
using ValueDict = std::vector<std::pair<std::string, Value>>;

// Jinja's namespace(): the one mutable object a template can make.
struct Namespace {
  ValueDict attrs;
};

class Value {
 public:
  enum class Kind {
    kUndefined,  // jinja2.Undefined: prints "", is falsy, iterates empty, fails elsewhere.
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kTuple,
    kDict,
    kNamespace,
  };

  Value() : kind_(Kind::kUndefined) {}
  // `hint` names what was undefined, for the error a later use of it raises.
  static Value Undefined(std::string hint);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  static Value List(ValueList items);
  static Value Tuple(ValueList items);
  static Value Dict(ValueDict entries);
  static Value NewNamespace(ValueDict attrs);
  // JSON numbers keep their kind: integers (signed or unsigned within int64) stay ints.
  static absl::StatusOr<Value> FromJson(const nlohmann::ordered_json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  // list or tuple
  bool is_sequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  // int or bool (Python's bool is an int) or float
  bool is_number() const {
    return kind_ == Kind::kInt || kind_ == Kind::kBool || kind_ == Kind::kFloat;
  }

  bool bool_value() const { return b_; }
  int64_t int_value() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double float_value() const {
    return kind_ == Kind::kFloat ? f_ : static_cast<double>(int_value());
  }
  const std::string& string_value() const { return s_; }
  const std::string& undefined_hint() const { return s_; }
  const ValueList& items() const { return *list_; }
  const ValueDict& entries() const { return *dict_; }
  Namespace& ns() const { return *ns_; }

  // The entry under `key` in a dict, or nullptr.
  const Value* Find(absl::string_view key) const;

  // Python truthiness.
  bool Truthy() const;
  // Python str(); an error for values whose str() Python prints as an object address
  // (namespaces) or that Tessera does not render (a list of dict items).
  absl::StatusOr<std::string> Str() const;
  // Python repr().
  absl::StatusOr<std::string> Repr() const;
  // Python ==.
  bool Equals(const Value& other) const;
  // Python <, as -1/0/1; an error for types Python does not order.
  absl::StatusOr<int> Compare(const Value& other) const;
  // json.dumps(self, ensure_ascii=False, indent=indent, separators=..., sort_keys=sort_keys),
  // as transformers' tojson filter calls it. `indent` < 0 means None.
  absl::StatusOr<std::string> ToJson(
      int indent, bool sort_keys,
      const std::optional<std::pair<std::string, std::string>>& separators) const;
  // Python's type name, for error messages ("str", "dict", "undefined").
  std::string TypeName() const;

 private:
  Kind kind_;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<const ValueDict> dict_;
  std::shared_ptr<Namespace> ns_;
};

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_VALUE_H_
