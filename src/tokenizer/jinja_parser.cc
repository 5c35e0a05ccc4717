// Parser for the Jinja2 subset of chat templates, following jinja2 3.1's parser.py rule by rule
// (statements, operator precedence, filters and tests, tuples, slices), because a prompt must come
// out byte for byte as transformers renders it.
#include <fmt/format.h>

#include <algorithm>
#include <initializer_list>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_lexer.h"

namespace kiln::jinja {

namespace {

constexpr size_t kMaxSourceBytes = 1 << 20;  // real chat templates are under 20 KB
constexpr int kMaxNesting = 64;              // nested blocks / sub-expressions

[[noreturn]] void fail_at(size_t offset, std::string message) {
  throw TemplateError{std::move(message), offset};
}

class Parser {
 public:
  Parser(const std::string& source, std::vector<Token> tokens)
      : source_(source), tokens_(std::move(tokens)) {}

  Body parse() {
    Body body = parse_body({}, "");
    return body;
  }

 private:
  struct DepthGuard {
    explicit DepthGuard(Parser& p) : parser(p) {
      if (++parser.depth_ > kMaxNesting) {
        fail_at(parser.current().offset, fmt::format("template nested deeper than {} levels", kMaxNesting));
      }
    }
    ~DepthGuard() { --parser.depth_; }
    Parser& parser;
  };

  const Token& current() const { return tokens_[pos_]; }
  const Token& peek(size_t k = 1) const { return tokens_[std::min(pos_ + k, tokens_.size() - 1)]; }
  Token next() { return tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_]; }
  bool is_op(std::string_view op) const { return current().type == Tok::Op && current().text == op; }
  bool is_name(std::string_view name) const { return current().type == Tok::Name && current().text == name; }
  bool skip_op(std::string_view op) { return is_op(op) ? (next(), true) : false; }
  bool skip_name(std::string_view name) { return is_name(name) ? (next(), true) : false; }

  static std::string describe(const Token& token) {
    switch (token.type) {
      case Tok::End:
        return "end of template";
      case Tok::Data:
        return "template data";
      case Tok::String:
        return "string literal";
      case Tok::Integer:
      case Tok::Float:
        return "number " + token.text;
      default:
        return "'" + token.text + "'";
    }
  }
  [[noreturn]] void fail_here(const std::string& message) const {
    fail_at(current().offset, message + ", got " + describe(current()));
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) fail_here(fmt::format("expected '{}'", op));
  }
  void expect_block_end() {
    if (current().type != Tok::BlockEnd) fail_here("expected '%}'");
    next();
  }
  std::string expect_name() {
    if (current().type != Tok::Name) fail_here("expected a name");
    return next().text;
  }
  ExprPtr node(ExprType type, size_t offset) {
    auto e = std::make_unique<Expr>();
    e->type = type;
    e->offset = offset;
    return e;
  }

  // Statements until a block tag named in `ends` (left as the current token) or the end of input.
  Body parse_body(std::initializer_list<std::string_view> ends, std::string_view opener,
                  size_t opener_at = 0) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& token = current();
      if (token.type == Tok::End) {
        if (ends.size() == 0) return body;
        std::string expected;
        for (std::string_view e : ends) expected += (expected.empty() ? "'" : " or '") + std::string(e) + "'";
        fail_at(token.offset, fmt::format("unexpected end of template: expected {} to close the '{}' at {}",
                                          expected, opener, position_of(source_, opener_at)));
      }
      if (token.type == Tok::Data) {
        auto stmt = std::make_unique<Stmt>();
        stmt->type = StmtType::Text;
        stmt->offset = token.offset;
        stmt->text = next().text;
        body.push_back(std::move(stmt));
      } else if (token.type == Tok::VarBegin) {
        auto stmt = std::make_unique<Stmt>();
        stmt->type = StmtType::Output;
        stmt->offset = next().offset;
        stmt->expr = parse_tuple(true, false);
        if (current().type != Tok::VarEnd) fail_here("expected '}}'");
        next();
        body.push_back(std::move(stmt));
      } else if (token.type == Tok::BlockBegin) {
        const Token& name = peek();
        if (name.type == Tok::Name && std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
          next();
          return body;
        }
        tag_offset_ = next().offset;  // statements (and errors about them) point at their {%
        body.push_back(parse_statement());
      } else {
        fail_here("unexpected token");
      }
    }
  }

  // A statement starting at the current tag; consumes its name.
  StmtPtr make_stmt(StmtType type) {
    auto stmt = std::make_unique<Stmt>();
    stmt->type = type;
    stmt->offset = tag_offset_;
    next();
    return stmt;
  }

  StmtPtr parse_statement() {
    const Token& token = current();
    if (token.type != Tok::Name) fail_here("expected a tag name");
    const std::string& tag = token.text;
    if (tag == "if") return parse_if();
    if (tag == "for") return parse_for();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "generation") {
      auto stmt = make_stmt(StmtType::Block);
      expect_block_end();
      stmt->body = parse_body({"endgeneration"}, "generation", stmt->offset);
      next();
      expect_block_end();
      return stmt;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail_at(token.offset, fmt::format("'{}' outside of a for loop", tag));
      auto stmt = make_stmt(tag == "break" ? StmtType::Break : StmtType::Continue);
      expect_block_end();
      return stmt;
    }
    if (tag.starts_with("end") || tag == "else" || tag == "elif")
      fail_at(token.offset, fmt::format("unexpected '{}'", tag));
    fail_at(token.offset, fmt::format("unsupported tag '{}'", tag));
  }

  StmtPtr parse_if() {
    auto stmt = make_stmt(StmtType::If);
    stmt->conditions.push_back(parse_tuple(false, false));
    expect_block_end();
    while (true) {
      stmt->bodies.push_back(parse_body({"elif", "else", "endif"}, "if", stmt->offset));
      const std::string end = next().text;
      if (end == "elif") {
        stmt->conditions.push_back(parse_tuple(false, false));
        expect_block_end();
        continue;
      }
      expect_block_end();
      if (end == "else") {
        stmt->else_body = parse_body({"endif"}, "if", stmt->offset);
        next();
        expect_block_end();
      }
      return stmt;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> targets;
    const bool parens = skip_op("(");
    do {
      targets.push_back(expect_name());
    } while (skip_op(",") && current().type == Tok::Name && !is_name("in"));
    if (parens) expect_op(")");
    return targets;
  }

  StmtPtr parse_for() {
    auto stmt = make_stmt(StmtType::For);
    stmt->targets = parse_targets();
    if (!skip_name("in")) fail_here("expected 'in'");
    stmt->expr = parse_tuple(false, false);
    if (is_name("recursive")) fail_at(current().offset, "recursive loops are not supported");
    if (skip_name("if")) stmt->filter = parse_expression(true);
    expect_block_end();
    ++loop_depth_;
    stmt->body = parse_body({"endfor", "else"}, "for", stmt->offset);
    --loop_depth_;
    if (next().text == "else") {
      expect_block_end();
      stmt->else_body = parse_body({"endfor"}, "for", stmt->offset);
      next();
    }
    expect_block_end();
    return stmt;
  }

  StmtPtr parse_set() {
    auto stmt = make_stmt(StmtType::Set);
    if (current().type == Tok::Name && peek().type == Tok::Op && peek().text == "." &&
        peek(2).type == Tok::Name) {
      stmt->text = next().text;
      next();
      stmt->attribute = next().text;
    } else {
      stmt->targets = parse_targets();
    }
    if (skip_op("=")) {
      stmt->expr = parse_tuple(true, false);
      expect_block_end();
      return stmt;
    }
    if (!stmt->attribute.empty() || stmt->targets.size() != 1) fail_here("expected '='");
    stmt->type = StmtType::SetBlock;
    while (is_op("|")) stmt->filters.push_back(parse_filter(nullptr));
    expect_block_end();
    stmt->body = parse_body({"endset"}, "set", stmt->offset);
    next();
    expect_block_end();
    return stmt;
  }

  StmtPtr parse_macro() {
    auto stmt = make_stmt(StmtType::Macro);
    stmt->text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!stmt->params.empty()) expect_op(",");
      if (is_op(")")) break;
      stmt->params.push_back(expect_name());
      if (skip_op("=")) {
        stmt->defaults.push_back(parse_expression(true));
      } else {
        if (!stmt->defaults.empty() && stmt->defaults.back())
          fail_here("non-default argument follows default argument");
        stmt->defaults.push_back(nullptr);
      }
    }
    next();
    expect_block_end();
    const int loops = loop_depth_;
    loop_depth_ = 0;
    stmt->body = parse_body({"endmacro"}, "macro", stmt->offset);
    loop_depth_ = loops;
    next();
    expect_block_end();
    return stmt;
  }

  // ---- expressions (jinja2 parser.py precedence: condexpr < or < and < not < compare < + - < ~
  //      < * / // % < ** < unary - + < postfix, filters and tests) ----

  bool is_tuple_end() const {
    return current().type == Tok::VarEnd || current().type == Tok::BlockEnd || is_op(")") ||
           is_name("recursive");
  }

  ExprPtr parse_tuple(bool with_condition, bool explicit_parens) {
    const size_t offset = current().offset;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end()) break;
      items.push_back(with_condition ? parse_expression(true) : parse_or());
      if (!is_op(",")) break;
      is_tuple = true;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail_here("expected an expression");
    }
    auto tuple = node(ExprType::Tuple, offset);
    tuple->args = std::move(items);
    return tuple;
  }

  ExprPtr parse_expression(bool with_condition) { return with_condition ? parse_condition() : parse_or(); }

  ExprPtr parse_condition() {
    DepthGuard guard(*this);
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      auto cond = node(ExprType::Condition, next().offset);
      cond->args.push_back(parse_or());
      cond->args.push_back(std::move(expr));
      cond->args.push_back(skip_name("else") ? parse_condition() : nullptr);
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr binary(ExprType type, std::string op, ExprPtr left, ExprPtr right, size_t offset) {
    auto e = node(type, offset);
    e->name = std::move(op);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const size_t offset = next().offset;
      left = binary(ExprType::Or, "or", std::move(left), parse_and(), offset);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const size_t offset = next().offset;
      left = binary(ExprType::And, "and", std::move(left), parse_not(), offset);
    }
    return left;
  }

  ExprPtr parse_not() {
    DepthGuard guard(*this);
    if (is_name("not")) {
      auto e = node(ExprType::Not, next().offset);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const size_t offset = current().offset;
    ExprPtr first = parse_math1();
    auto compare = node(ExprType::Compare, offset);
    while (true) {
      static constexpr std::string_view kOps[] = {"==", "!=", "<", "<=", ">", ">="};
      if (current().type == Tok::Op &&
          std::find(std::begin(kOps), std::end(kOps), current().text) != std::end(kOps)) {
        compare->ops.push_back(next().text);
      } else if (skip_name("in")) {
        compare->ops.push_back("in");
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        next(), next();
        compare->ops.push_back("notin");
      } else {
        break;
      }
      compare->args.push_back(parse_math1());
    }
    if (compare->ops.empty()) return first;
    compare->args.insert(compare->args.begin(), std::move(first));
    return compare;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token op = next();
      left = binary(ExprType::Binary, op.text, std::move(left), parse_concat(), op.offset);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const Token op = next();
      left = binary(ExprType::Binary, "~", std::move(left), parse_math2(), op.offset);
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token op = next();
      left = binary(ExprType::Binary, op.text, std::move(left), parse_pow(), op.offset);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const Token op = next();
      left = binary(ExprType::Binary, "**", std::move(left), parse_unary(true), op.offset);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token op = next();
      e = node(op.text == "-" ? ExprType::Negate : ExprType::Plus, op.offset);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& token = current();
    switch (token.type) {
      case Tok::Name: {
        const Token name = next();
        if (name.text == "true" || name.text == "True" || name.text == "false" || name.text == "False") {
          auto e = node(ExprType::Literal, name.offset);
          e->literal = Value::boolean(name.text[0] == 't' || name.text[0] == 'T');
          return e;
        }
        if (name.text == "none" || name.text == "None") {
          auto e = node(ExprType::Literal, name.offset);
          e->literal = Value::none();
          return e;
        }
        auto e = node(ExprType::Name, name.offset);
        e->name = name.text;
        return e;
      }
      case Tok::String: {
        auto e = node(ExprType::Literal, token.offset);
        std::string text;
        while (current().type == Tok::String) text += next().text;  // adjacent literals concatenate
        e->literal = Value::string(std::move(text));
        return e;
      }
      case Tok::Integer:
      case Tok::Float: {
        auto e = node(ExprType::Literal, token.offset);
        e->literal = next().literal;
        return e;
      }
      case Tok::Op:
        if (token.text == "(") {
          next();
          ExprPtr e = parse_tuple(true, true);
          expect_op(")");
          return e;
        }
        if (token.text == "[") return parse_list();
        if (token.text == "{") return parse_dict();
        [[fallthrough]];
      default:
        fail_here("unexpected token in an expression");
    }
  }

  ExprPtr parse_list() {
    auto e = node(ExprType::List, next().offset);
    while (!is_op("]")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("]")) break;
      e->args.push_back(parse_expression(true));
    }
    next();
    return e;
  }

  ExprPtr parse_dict() {
    auto e = node(ExprType::Dict, next().offset);
    while (!is_op("}")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("}")) break;
      e->args.push_back(parse_expression(true));
      expect_op(":");
      e->args.push_back(parse_expression(true));
    }
    next();
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr subject) {
    const Token token = next();
    if (token.text == ".") {
      if (current().type == Tok::Name) {
        auto e = node(ExprType::Attribute, token.offset);
        e->name = next().text;
        e->args.push_back(std::move(subject));
        return e;
      }
      if (current().type != Tok::Integer) fail_here("expected a name or a number after '.'");
      auto e = node(ExprType::Item, token.offset);
      e->args.push_back(std::move(subject));
      auto index = node(ExprType::Literal, current().offset);
      index->literal = next().literal;
      e->args.push_back(std::move(index));
      return e;
    }
    // [expr] or a slice [start:stop:step]
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) {
        if (is_op(",")) fail_at(current().offset, "tuple subscripts are not supported");
        expect_op("]");
        auto e = node(ExprType::Item, token.offset);
        e->args.push_back(std::move(subject));
        e->args.push_back(std::move(start));
        return e;
      }
    }
    next();  // ':'
    auto e = node(ExprType::Slice, token.offset);
    e->args.push_back(std::move(subject));
    e->args.push_back(std::move(start));
    e->args.push_back(is_op(":") || is_op("]") ? nullptr : parse_expression(true));
    ExprPtr step;
    if (skip_op(":") && !is_op("]")) step = parse_expression(true);
    e->args.push_back(std::move(step));
    expect_op("]");
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) {
        expect_op(",");
        if (is_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**"))
        fail_at(current().offset, "*args and **kwargs in calls are not supported");
      if (current().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail_here("positional argument follows keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    next();
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = node(ExprType::Call, current().offset);
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return e;
  }

  std::string parse_dotted_name() {
    std::string name = expect_name();
    while (is_op(".") && peek().type == Tok::Name) {
      next();
      name.push_back('.');
      name += next().text;
    }
    return name;
  }

  ExprPtr parse_filter(ExprPtr subject) {
    auto e = node(ExprType::Filter, next().offset);  // '|'
    e->args.push_back(std::move(subject));
    e->name = parse_dotted_name();
    if (is_op("(")) parse_call_args(*e);
    return e;
  }

  ExprPtr parse_test(ExprPtr subject) {
    auto e = node(ExprType::Test, next().offset);  // 'is'
    e->negated = skip_name("not");
    e->args.push_back(std::move(subject));
    e->name = parse_dotted_name();
    const Token& t = current();
    const bool starts_argument = t.type == Tok::Name || t.type == Tok::String || t.type == Tok::Integer ||
                                 t.type == Tok::Float ||
                                 (t.type == Tok::Op && (t.text == "[" || t.text == "{"));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if (starts_argument && !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail_here("you cannot chain multiple tests with is");
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  const std::string& source_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  size_t tag_offset_ = 0;
};

}  // namespace

std::string position_of(const std::string& source, size_t offset) {
  offset = std::min(offset, source.size());
  const size_t line_start = offset == 0 ? 0 : source.rfind('\n', offset - 1) + 1;
  const size_t line = static_cast<size_t>(std::count(source.begin(), source.begin() + offset, '\n')) + 1;
  const size_t column =
      code_point_count(std::string_view(source).substr(line_start, offset - line_start)) + 1;
  return fmt::format("{}:{}", line, column);
}

std::string normalize_source(std::string_view source) {
  // jinja2 splits on \r\n, \r and \n, joins with \n, and drops the empty line after a final newline.
  std::string normalized;
  normalized.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      normalized.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      normalized.push_back(source[i]);
    }
  }
  if (!normalized.empty() && normalized.back() == '\n') normalized.pop_back();
  return normalized;
}

std::shared_ptr<const Template> parse_template(std::string normalized_source) {
  if (normalized_source.size() > kMaxSourceBytes) {
    fail(fmt::format("template is {} bytes, more than the {} this reader accepts", normalized_source.size(),
                     kMaxSourceBytes));
  }
  auto result = std::make_shared<Template>();
  result->source = std::move(normalized_source);
  Parser parser(result->source, lex(result->source));
  result->body = parser.parse();
  return result;
}

}  // namespace kiln::jinja
