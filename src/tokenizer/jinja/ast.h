// The syntax tree of the Jinja subset chat templates use. Parsed once, rendered many times.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace deepmoe::jinja {

struct Expr;
struct Node;
using ExprPtr = std::unique_ptr<Expr>;
using Body = std::vector<std::unique_ptr<Node>>;

struct Expr {
  enum class Kind {
    kLiteral,     // text: the literal's source form is in `name`, its kind in `literal`
    kName,        // a variable
    kList,        // [a, b]
    kDict,        // {k: v}: args alternate key, value
    kAttribute,   // args[0].name
    kSubscript,   // args[0][args[1]]
    kSlice,       // args[0][args[1]:args[2]:args[3]] (null parts allowed)
    kCall,        // args[0](args[1..]) with keyword arguments in kwargs
    kFilter,      // args[0] | name(args[1..], kwargs)
    kTest,        // args[0] is [not] name(args[1..]); negated in `negated`
    kUnary,       // op args[0]: "not", "-", "+"
    kBinary,      // args[0] op args[1]
    kConditional  // args[1] if args[0] else args[2] (args[2] may be null)
  };
  enum class Literal { kNone, kBool, kInt, kFloat, kString };
  Kind kind = Kind::kLiteral;
  std::string name;  // variable, attribute, filter, test or operator; literal text
  Literal literal = Literal::kNone;
  bool negated = false;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  int line = 0;
  // Levels of the tree below and including this node. Evaluating and destroying a tree recurse
  // once per level, and chains (a ~ b ~ c..., x|f|g...) are parsed by loops, not recursion: the
  // parser bounds the height of every tree it builds instead.
  int height = 1;
};

struct Node {
  enum class Kind {
    kText,    // text
    kOutput,  // {{ expr }}
    kIf,      // branches: (condition or null for else, body)
    kFor,     // for targets in iterable [if filter] body [else else_body]
    kSet,     // set target(.attribute) = value, or a block set capturing body
    kMacro,   // macro name(params with defaults) body
    kBreak,
    kContinue
  };
  Kind kind = Kind::kText;
  int line = 0;
  std::string text;                                // kText; kSet/kMacro: the name
  std::string attribute;                           // kSet: "ns.attr" form
  std::vector<std::string> targets;                // kFor loop variables; kMacro parameter names
  ExprPtr expr;                                    // kOutput value, kFor iterable, kSet value
  ExprPtr filter;                                  // kFor inline condition
  std::vector<ExprPtr> defaults;                   // kMacro parameter defaults (null where none)
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf
  Body body, else_body;
};

struct Template {
  Body body;
};

// Parses template source (HF's settings: trim_blocks and lstrip_blocks on). Throws Error naming
// the line and the construct for syntax errors, unsupported statements, and nesting or chains
// deeper than the parser's bounds (a few hundred levels; real templates use a handful).
Template parse(const std::string& source);

}  // namespace deepmoe::jinja
