// Tree-walking evaluation of a chat template, following jinja2's runtime semantics: a for loop's
// body gets a fresh scope each iteration (so `set` inside a loop does not leak out, which is why
// templates use namespace()), `if` blocks share their enclosing scope, macros see the scope they
// were defined in, and Undefined prints as "" but fails when used as a value.
#include "tokenizer/jinja_interpreter.h"

#include <fmt/format.h>

namespace kiln::jinja {

struct Interpreter::Scope {
  std::unordered_map<std::string, Value, StringViewHash, std::equal_to<>> vars;
  std::shared_ptr<Scope> parent;
};

struct Interpreter::DepthGuard {
  explicit DepthGuard(Interpreter& in) : interpreter(in) {
    if (++interpreter.depth_ > interpreter.options_.limits.max_depth) {
      fail(fmt::format("template evaluation nested deeper than {} levels",
                       interpreter.options_.limits.max_depth));
    }
  }
  ~DepthGuard() { --interpreter.depth_; }
  Interpreter& interpreter;
};

namespace {

// A macro holds its defining scope weakly: the scope owns the macro, and a macro cannot outlive
// the render (namespaces refuse to store functions).
struct Macro : Callable {
  const Stmt* stmt = nullptr;
  std::weak_ptr<Interpreter::Scope> closure;
  Value call(Interpreter& interpreter, CallArgs& args) const override {
    const auto scope = closure.lock();
    if (!scope) fail(fmt::format("macro '{}' called after its scope ended", name));
    return interpreter.call_macro(*stmt, scope, args);
  }
};

void with_offset(TemplateError& error, size_t offset) {
  if (error.offset == SIZE_MAX) error.offset = offset;
}

}  // namespace

Interpreter::Interpreter(const Template& tmpl, RenderOptions options) : template_(tmpl), options_(options) {}

std::time_t Interpreter::now() const { return options_.now ? *options_.now : std::time(nullptr); }

void Interpreter::step() {
  if (++steps_ > options_.limits.max_steps) {
    fail(fmt::format("template ran more than {} evaluation steps", options_.limits.max_steps));
  }
}

void Interpreter::charge(const Value& produced) {
  size_t bytes = 0;
  if (produced.is_string()) bytes = produced.as_string().size();
  if (produced.is_list()) bytes = produced.as_list().items.size() * sizeof(Value);
  if (produced.is_dict()) bytes = produced.as_dict().entries.size() * (sizeof(Value) + 32);
  produced_ += bytes;
  if (produced_ > options_.limits.max_produced_bytes) {
    fail(fmt::format("template built more than {} MiB of strings and lists",
                     options_.limits.max_produced_bytes >> 20));
  }
}

void Interpreter::emit(std::string_view text) {
  if (out_->size() + text.size() > options_.limits.max_output_bytes) {
    fail(fmt::format("template output exceeds {} MiB", options_.limits.max_output_bytes >> 20));
  }
  out_->append(text);
}

std::string Interpreter::render(std::vector<std::pair<std::string, Value>> variables) {
  scope_ = std::make_shared<Scope>();
  for (auto& [name, value] : variables) scope_->vars[name] = std::move(value);
  std::string out;
  out_ = &out;
  exec_body(template_.body);
  scope_.reset();
  return out;
}

Value Interpreter::lookup(const std::string& name) const {
  for (const Scope* s = scope_.get(); s; s = s->parent.get()) {
    const auto it = s->vars.find(name);
    if (it != s->vars.end()) return it->second;
  }
  Value global = global_function(name);
  if (!global.is_undefined()) return global;
  return Value::undefined(fmt::format("'{}' is undefined", name));
}

// ---- statements ----

Interpreter::Flow Interpreter::exec_body(const Body& body) {
  for (const StmtPtr& stmt : body) {
    const Flow flow = exec(*stmt);
    if (flow != Flow::Normal) return flow;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec(const Stmt& stmt) {
  try {
    DepthGuard guard(*this);
    step();
    switch (stmt.type) {
      case StmtType::Text:
        emit(stmt.text);
        return Flow::Normal;
      case StmtType::Output:
        emit(to_str(eval(*stmt.expr)));
        return Flow::Normal;
      case StmtType::If:
        for (size_t i = 0; i < stmt.conditions.size(); ++i) {
          if (truthy(eval(*stmt.conditions[i]))) return exec_body(stmt.bodies[i]);
        }
        return exec_body(stmt.else_body);
      case StmtType::For:
        return exec_for(stmt);
      case StmtType::Set:
      case StmtType::SetBlock:
        exec_set(stmt);
        return Flow::Normal;
      case StmtType::Macro: {
        auto macro = std::make_shared<Macro>();
        macro->name = stmt.text;
        macro->stmt = &stmt;
        macro->closure = scope_;
        scope_->vars[stmt.text] = Value::function(std::move(macro));
        return Flow::Normal;
      }
      case StmtType::Break:
        return Flow::Break;
      case StmtType::Continue:
        return Flow::Continue;
      case StmtType::Block:
        return exec_body(stmt.body);
    }
    return Flow::Normal;
  } catch (TemplateError& error) {
    with_offset(error, stmt.offset);
    throw;
  }
}

void Interpreter::assign(const std::vector<std::string>& targets, const Value& value) {
  if (targets.size() == 1) {
    scope_->vars[targets[0]] = value;
    return;
  }
  const std::vector<Value> items = iterate(value);
  if (items.size() != targets.size()) {
    fail(
        items.size() > targets.size()
            ? fmt::format("too many values to unpack (expected {})", targets.size())
            : fmt::format("not enough values to unpack (expected {}, got {})", targets.size(), items.size()));
  }
  for (size_t i = 0; i < targets.size(); ++i) scope_->vars[targets[i]] = items[i];
}

void Interpreter::exec_set(const Stmt& stmt) {
  Value value;
  if (stmt.type == StmtType::SetBlock) {
    std::string captured;
    std::string* outer = out_;
    out_ = &captured;
    try {
      exec_body(stmt.body);
    } catch (...) {
      out_ = outer;
      throw;
    }
    out_ = outer;
    value = Value::string(std::move(captured));
    for (const ExprPtr& filter : stmt.filters) {
      CallArgs args;
      for (size_t i = 1; i < filter->args.size(); ++i) args.positional.push_back(eval(*filter->args[i]));
      for (const auto& [key, arg] : filter->kwargs) args.keyword.emplace_back(key, eval(*arg));
      value = apply_filter(*this, filter->name, std::move(value), args);
    }
  } else {
    value = eval(*stmt.expr);
  }
  if (stmt.attribute.empty()) {
    assign(stmt.targets, value);
    return;
  }
  const Value target = lookup(stmt.text);
  if (target.kind() != Kind::Namespace) {
    fail(fmt::format("cannot assign attribute '{}' on '{}': it is not a namespace", stmt.attribute,
                     stmt.text));
  }
  if (stmt.attribute.starts_with("_")) fail("namespace attribute names cannot start with '_'");
  // Storing a namespace, a loop or a macro in a namespace could make a reference cycle.
  if (value.reaches_namespace()) fail("a namespace cannot hold a namespace, a loop or a macro");
  target.namespace_attributes().set(stmt.attribute, value);
}

Interpreter::Flow Interpreter::exec_for(const Stmt& stmt) {
  const Value iterable = eval(*stmt.expr);
  std::vector<Value> items = iterate(iterable);
  const std::shared_ptr<Scope> outer = scope_;
  const auto enter = [&](const Value& item) {
    scope_ = std::make_shared<Scope>();
    scope_->parent = outer;
    assign(stmt.targets, item);
  };
  try {
    if (stmt.filter) {  // `for x in xs if cond`: loop.index and loop.length count the kept items
      std::vector<Value> kept;
      for (const Value& item : items) {
        if (++iterations_ > options_.limits.max_loop_iterations) break;
        enter(item);
        if (truthy(eval(*stmt.filter))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const auto shared_items = std::make_shared<const std::vector<Value>>(std::move(items));
    for (size_t i = 0; i < shared_items->size(); ++i) {
      if (++iterations_ > options_.limits.max_loop_iterations) {
        fail(fmt::format("template ran more than {} loop iterations", options_.limits.max_loop_iterations));
      }
      enter((*shared_items)[i]);
      auto loop = std::make_shared<LoopObject>();
      loop->items = shared_items;
      loop->index0 = i;
      scope_->vars["loop"] = Value::loop(std::move(loop));
      if (exec_body(stmt.body) == Flow::Break) break;
    }
    if (iterations_ > options_.limits.max_loop_iterations) {
      fail(fmt::format("template ran more than {} loop iterations", options_.limits.max_loop_iterations));
    }
    if (shared_items->empty() && !stmt.else_body.empty()) {
      scope_ = std::make_shared<Scope>();
      scope_->parent = outer;
      exec_body(stmt.else_body);
    }
  } catch (...) {
    scope_ = outer;
    throw;
  }
  scope_ = outer;
  return Flow::Normal;
}

Value Interpreter::call_macro(const Stmt& macro, const std::shared_ptr<Scope>& closure, CallArgs& args) {
  if (macro_depth_ >= options_.limits.max_macro_depth) {
    fail(fmt::format("macro calls nested deeper than {} levels", options_.limits.max_macro_depth));
  }
  if (args.positional.size() > macro.params.size()) {
    fail(fmt::format("macro '{}' takes not more than {} argument(s)", macro.text, macro.params.size()));
  }
  const std::shared_ptr<Scope> caller_scope = scope_;
  std::string* caller_out = out_;
  std::string captured;
  scope_ = std::make_shared<Scope>();
  scope_->parent = closure;
  out_ = &captured;
  ++macro_depth_;
  try {
    std::vector<bool> bound(macro.params.size(), false);
    for (size_t i = 0; i < args.positional.size(); ++i) {
      scope_->vars[macro.params[i]] = args.positional[i];
      bound[i] = true;
    }
    for (auto& [key, value] : args.keyword) {
      const auto it = std::find(macro.params.begin(), macro.params.end(), key);
      if (it == macro.params.end())
        fail(fmt::format("macro '{}' takes no keyword argument '{}'", macro.text, key));
      scope_->vars[key] = value;
      bound[static_cast<size_t>(it - macro.params.begin())] = true;
    }
    for (size_t i = 0; i < macro.params.size(); ++i) {
      if (bound[i]) continue;
      scope_->vars[macro.params[i]] =
          macro.defaults[i]
              ? eval(*macro.defaults[i])
              : Value::undefined(fmt::format("parameter '{}' was not provided", macro.params[i]));
    }
    exec_body(macro.body);
  } catch (...) {
    --macro_depth_;
    scope_ = caller_scope;
    out_ = caller_out;
    throw;
  }
  --macro_depth_;
  scope_ = caller_scope;
  out_ = caller_out;
  return Value::string(std::move(captured));
}

Value Interpreter::call(const Value& function, CallArgs& args) {
  if (function.is_undefined()) fail_undefined(function);
  if (function.kind() != Kind::Function)
    fail(fmt::format("'{}' object is not callable", type_name(function)));
  return function.as_function().call(*this, args);
}

// ---- expressions ----

Value Interpreter::eval(const Expr& expr) {
  try {
    DepthGuard guard(*this);
    step();
    return eval_node(expr);
  } catch (TemplateError& error) {
    with_offset(error, expr.offset);
    throw;
  }
}

Value Interpreter::eval_call(const Expr& expr) {
  const Value callee = eval(*expr.args[0]);
  CallArgs args;
  for (size_t i = 1; i < expr.args.size(); ++i) args.positional.push_back(eval(*expr.args[i]));
  for (const auto& [key, arg] : expr.kwargs) args.keyword.emplace_back(key, eval(*arg));
  Value result = call(callee, args);
  charge(result);
  return result;
}

Value Interpreter::eval_node(const Expr& expr) {
  switch (expr.type) {
    case ExprType::Literal:
      return expr.literal;
    case ExprType::Name:
      return lookup(expr.name);
    case ExprType::List:
    case ExprType::Tuple: {
      std::vector<Value> items;
      items.reserve(expr.args.size());
      for (const ExprPtr& arg : expr.args) items.push_back(eval(*arg));
      Value result = Value::list(std::move(items), expr.type == ExprType::Tuple);
      charge(result);
      return result;
    }
    case ExprType::Dict: {
      auto dict = std::make_shared<DictObject>();
      for (size_t i = 0; i + 1 < expr.args.size(); i += 2) {
        const Value key = eval(*expr.args[i]);
        if (!key.is_string()) fail(fmt::format("dict keys must be strings here, not '{}'", type_name(key)));
        dict->set(key.as_string(), eval(*expr.args[i + 1]));
      }
      Value result = Value::dict(std::move(dict));
      charge(result);
      return result;
    }
    case ExprType::Attribute:
      return get_attribute(eval(*expr.args[0]), expr.name);
    case ExprType::Item:
      return get_item(eval(*expr.args[0]), eval(*expr.args[1]));
    case ExprType::Slice: {
      const Value object = eval(*expr.args[0]);
      const auto part = [&](size_t i) { return expr.args[i] ? eval(*expr.args[i]) : Value::none(); };
      Value result = get_slice(object, part(1), part(2), part(3));
      charge(result);
      return result;
    }
    case ExprType::Call:
      return eval_call(expr);
    case ExprType::Filter: {
      Value subject = eval(*expr.args[0]);
      CallArgs args;
      for (size_t i = 1; i < expr.args.size(); ++i) args.positional.push_back(eval(*expr.args[i]));
      for (const auto& [key, arg] : expr.kwargs) args.keyword.emplace_back(key, eval(*arg));
      Value result = apply_filter(*this, expr.name, std::move(subject), args);
      charge(result);
      return result;
    }
    case ExprType::Test: {
      const Value subject = eval(*expr.args[0]);
      CallArgs args;
      for (size_t i = 1; i < expr.args.size(); ++i) args.positional.push_back(eval(*expr.args[i]));
      for (const auto& [key, arg] : expr.kwargs) args.keyword.emplace_back(key, eval(*arg));
      return Value::boolean(apply_test(*this, expr.name, subject, args) != expr.negated);
    }
    case ExprType::Not:
      return Value::boolean(!truthy(eval(*expr.args[0])));
    case ExprType::Negate:
    case ExprType::Plus: {
      const Value operand = eval(*expr.args[0]);
      if (operand.is_undefined()) fail_undefined(operand);
      if (!operand.is_number()) {
        fail(fmt::format("bad operand type for unary {}: '{}'", expr.type == ExprType::Negate ? '-' : '+',
                         type_name(operand)));
      }
      if (expr.type == ExprType::Plus)
        return operand.kind() == Kind::Bool ? Value::integer(operand.as_int()) : operand;
      if (operand.kind() == Kind::Float) return Value::number(-operand.as_float());
      if (operand.as_int() == INT64_MIN) fail("integer overflow (kiln's integers are 64-bit)");
      return Value::integer(-operand.as_int());
    }
    case ExprType::Binary: {
      Value result = binary_op(expr.name, eval(*expr.args[0]), eval(*expr.args[1]));
      charge(result);
      return result;
    }
    case ExprType::Compare: {
      Value left = eval(*expr.args[0]);
      for (size_t i = 0; i < expr.ops.size(); ++i) {
        Value right = eval(*expr.args[i + 1]);
        if (!compare_op(expr.ops[i], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case ExprType::And: {
      Value left = eval(*expr.args[0]);
      return truthy(left) ? eval(*expr.args[1]) : left;
    }
    case ExprType::Or: {
      Value left = eval(*expr.args[0]);
      return truthy(left) ? left : eval(*expr.args[1]);
    }
    case ExprType::Condition:
      if (truthy(eval(*expr.args[0]))) return eval(*expr.args[1]);
      if (expr.args[2]) return eval(*expr.args[2]);
      return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
  }
  fail("internal: unknown expression");
}

}  // namespace kiln::jinja
