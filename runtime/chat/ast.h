#ifndef TESSERA_RUNTIME_CHAT_AST_H_
#define TESSERA_RUNTIME_CHAT_AST_H_

// The parsed form of a chat template: statements (text, output, if, for, set, ...) over
// expressions. Only constructs the evaluator implements exist here; the parser refuses the
// rest, so a template that parses renders as jinja2 would.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/chat/lexer.h"
#include "runtime/chat/value.h"

namespace tessera::chat {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // args: the items
    kDict,       // kwargs: key expression pairs in `dict_items`
    kAttr,       // a.name
    kSubscript,  // a[b]
    kSlice,      // a[b:c:d]; missing parts are null
    kCall,       // a(args, kwargs): a is a kName (global or function) or a kAttr (method)
    kFilter,     // a | name(args, kwargs)
    kTest,       // a is [not] name(args); `negate`
    kNeg,        // -a
    kPos,        // +a
    kNot,        // not a
    kBinary,     // a op b: + - * / // % ** ~
    kAnd,
    kOr,
    kCompare,    // a op b for ==, !=, <, <=, >, >=, in, not in; chains nest as kAnd
    kCondition,  // b if a else c (c may be null)
  };
  Kind kind;
  SourcePos pos;
  Value value;
  std::string name;  // name, attribute, filter, test or operator
  bool negate = false;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::pair<ExprPtr, ExprPtr>> dict_items;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    kText,     // text
    kOutput,   // {{ expr }}
    kIf,       // branches: (condition, body); else_body
    kFor,      // for targets in expr [if filter] body [else else_body]
    kSet,      // set targets = expr
    kSetAttr,  // set targets[0].attr = expr (a namespace)
    kBreak,
    kContinue,
    kScope,  // {% generation %}: its body, rendered in place
  };
  Kind kind;
  SourcePos pos;
  std::string text;
  std::string attr;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
};

}  // namespace tessera::chat

#endif  // TESSERA_RUNTIME_CHAT_AST_H_
