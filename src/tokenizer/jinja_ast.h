// Syntax tree of a parsed chat template (jinja_parser.cc builds it, jinja_interpreter.cc runs it).
// Nodes carry the byte offset of their first token in the newline-normalized source, so errors can
// name line and column.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace kiln::jinja {

enum class ExprType {
  Literal,    // literal
  Name,       // name
  List,       // args: elements
  Tuple,      // args: elements
  Dict,       // args: key, value, key, value, ...
  Attribute,  // args[0] . name
  Item,       // args[0] [ args[1] ]
  Slice,      // args[0] [ args[1] : args[2] : args[3] ] (absent parts are null)
  Call,       // args[0] ( args[1..], kwargs )
  Filter,     // args[0] | name ( args[1..], kwargs )
  Test,       // args[0] is [not] name ( args[1..], kwargs )
  Not,        // not args[0]
  Negate,     // -args[0]
  Plus,       // +args[0]
  Binary,     // args[0] name args[1]; name: + - * / // % ** ~
  Compare,    // args[0] ops[0] args[1] ops[1] args[2] ...; ops: == != < <= > >= in notin
  And,        // args[0] and args[1]
  Or,         // args[0] or args[1]
  Condition,  // args[1] if args[0] else args[2] (args[2] null: Undefined)
};

struct Expr {
  ExprType type;
  size_t offset = 0;
  std::string name;
  Value literal;
  bool negated = false;  // Test: `is not`
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<std::string> ops;
};
using ExprPtr = std::unique_ptr<Expr>;

enum class StmtType {
  Text,      // text
  Output,    // {{ expr }}
  If,        // conditions[i] -> bodies[i]; else_body
  For,       // for targets in expr [if filter]: body; else_body
  Set,       // set targets = expr; or set namespace_name.attribute = expr
  SetBlock,  // set targets[0] %}body{% endset (filters in `filters`, applied to the captured text)
  Macro,     // macro name(params = defaults): body
  Break,
  Continue,
  Block,  // body rendered as is ({% generation %})
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtType type;
  size_t offset = 0;
  std::string text;                  // Text; Macro: its name; Set on a namespace: the namespace
  std::string attribute;             // Set on a namespace: the attribute
  ExprPtr expr;                      // Output, Set, For (the iterable)
  ExprPtr filter;                    // For: `if` filter
  std::vector<ExprPtr> filters;      // SetBlock: Filter nodes whose args[0] is null (the captured text)
  std::vector<std::string> targets;  // For, Set, SetBlock: names (several: unpacking)
  std::vector<ExprPtr> conditions;   // If
  std::vector<Body> bodies;          // If
  Body body, else_body;
  std::vector<std::string> params;  // Macro
  std::vector<ExprPtr> defaults;    // Macro: one per param, null when none
};

struct Template {
  std::string source;  // newline-normalized, as Jinja sees it
  Body body;
};

// The source as jinja2's lexer reads it: "\r\n" and "\r" become "\n", and one final newline is
// dropped (keep_trailing_newline=False). Error offsets refer to this text.
std::string normalize_source(std::string_view source);

// Parses normalized Jinja source with transformers' settings (trim_blocks, lstrip_blocks). Throws
// TemplateError with the offset of the problem.
std::shared_ptr<const Template> parse_template(std::string normalized_source);

// "line:column" (1-based; the column counts code points) of a byte offset in `source`.
std::string position_of(const std::string& source, size_t offset);

}  // namespace kiln::jinja
