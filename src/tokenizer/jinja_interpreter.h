// Renders a parsed chat template (jinja_ast.h) as jinja2 renders it in transformers'
// ImmutableSandboxedEnvironment, within limits: a hostile template gets an error, never a hang, a
// crash or unbounded memory.
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_ast.h"
#include "tokenizer/jinja_value.h"

namespace kiln::jinja {

struct RenderLimits {
  size_t max_output_bytes = kMaxStringBytes;      // the prompt, and any text a macro or set block captures
  size_t max_produced_bytes = size_t{128} << 20;  // all strings and lists built while rendering, together
  int64_t max_loop_iterations = 1'000'000;        // all for loops together
  int64_t max_steps = 20'000'000;                 // expression and statement evaluations
  int max_depth = 200;                            // nested evaluation (expressions, blocks, macro calls)
  int max_macro_depth = 20;                       // macro calls in progress
};

struct RenderOptions {
  RenderLimits limits;
  std::optional<std::time_t> now;  // strftime_now's clock; unset: the current time
};

class Interpreter {
 public:
  Interpreter(const Template& tmpl, RenderOptions options);

  // Renders with `variables` (messages, add_generation_prompt, bos_token, ...) in the template's scope.
  std::string render(std::vector<std::pair<std::string, Value>> variables);

  // For builtins: call a function value, count bytes produced against the limits, the clock.
  Value call(const Value& function, CallArgs& args);
  void charge(const Value& produced);
  std::time_t now() const;

  // A macro defined by {% macro %} (jinja_interpreter.cc).
  struct Scope;
  Value call_macro(const Stmt& macro, const std::shared_ptr<Scope>& closure, CallArgs& args);

 private:
  enum class Flow { Normal, Break, Continue };
  struct DepthGuard;

  Flow exec_body(const Body& body);
  Flow exec(const Stmt& stmt);
  Flow exec_for(const Stmt& stmt);
  void exec_set(const Stmt& stmt);
  Value eval(const Expr& expr);
  Value eval_node(const Expr& expr);
  Value eval_call(const Expr& expr);
  Value lookup(const std::string& name) const;
  void assign(const std::vector<std::string>& targets, const Value& value);
  void emit(std::string_view text);
  void step();

  const Template& template_;
  RenderOptions options_;
  std::shared_ptr<Scope> scope_;
  std::string* out_ = nullptr;
  int64_t steps_ = 0;
  int64_t iterations_ = 0;
  size_t produced_ = 0;
  int depth_ = 0;
  int macro_depth_ = 0;
};

// Builtins (jinja_builtins.cc): jinja2's filters, tests and globals, Python's str / dict / list
// methods, and attribute and item lookup with jinja2's fallbacks.
Value apply_filter(Interpreter& interpreter, const std::string& name, Value subject, CallArgs& args);
bool apply_test(Interpreter& interpreter, const std::string& name, const Value& subject, CallArgs& args);
bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);
Value global_function(std::string_view name);  // Undefined when `name` is not a global
Value get_attribute(const Value& object, const std::string& name);
Value get_item(const Value& object, const Value& key);
Value get_slice(const Value& object, const Value& start, const Value& stop, const Value& step);
Value binary_op(const std::string& op, const Value& a, const Value& b);
bool compare_op(const std::string& op, const Value& a, const Value& b);
std::vector<Value> iterate(const Value& value);  // for loops and filters: list items, dict keys, characters

// Fails at the first filter or test the builtins lack (jinja2 refuses those when compiling).
void check_names(const Template& tmpl);

}  // namespace kiln::jinja
