// jinja2's builtin filters and tests (jinja2/filters.py, tests.py) and the globals transformers adds
// (raise_exception, strftime_now, its namespace and tojson), restricted to what chat templates use.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <optional>

#include "tokenizer/jinja_interpreter.h"

namespace kiln::jinja {

namespace {

// Python-style binding of call arguments to parameter names.
class Args {
 public:
  Args(std::string_view function, const CallArgs& call, std::initializer_list<std::string_view> names,
       size_t required = 0)
      : values_(names.size(), nullptr) {
    if (call.positional.size() > names.size()) {
      fail(fmt::format("{}() takes at most {} arguments ({} given)", function, names.size(),
                       call.positional.size()));
    }
    for (size_t i = 0; i < call.positional.size(); ++i) values_[i] = &call.positional[i];
    for (const auto& [key, value] : call.keyword) {
      const auto it = std::find(names.begin(), names.end(), key);
      if (it == names.end()) fail(fmt::format("{}() got an unexpected keyword argument '{}'", function, key));
      const auto i = static_cast<size_t>(it - names.begin());
      if (values_[i]) fail(fmt::format("{}() got multiple values for argument '{}'", function, key));
      values_[i] = &value;
    }
    for (size_t i = 0; i < required; ++i) {
      if (!values_[i]) fail(fmt::format("{}() missing required argument '{}'", function, names.begin()[i]));
    }
  }
  bool has(size_t i) const { return values_[i] != nullptr; }
  const Value& operator[](size_t i) const { return *values_[i]; }
  Value get(size_t i, Value fallback) const { return values_[i] ? *values_[i] : std::move(fallback); }

 private:
  std::vector<const Value*> values_;
};

// jinja2's make_attrgetter: "a.b.0" looks up a, then b, then item 0.
Value attribute_path(const Value& item, const Value& attribute, const Value& fallback = Value::none()) {
  Value v = item;
  if (!attribute.is_string()) {
    v = get_item(v, attribute);
  } else {
    static const std::string kDot = ".";
    for (const std::string& part : py_split(attribute.as_string(), &kDot, -1, false)) {
      const bool digits =
          !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      v = get_item(v, digits ? Value::integer(std::stoll(part)) : Value::string(part));
      if (!fallback.is_none() && v.is_undefined()) v = fallback;
    }
  }
  return v;
}

int64_t length_of(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined:
      return 0;
    case Kind::String:
      return static_cast<int64_t>(code_point_count(v.as_string()));
    case Kind::List:
      return static_cast<int64_t>(v.as_list().items.size());
    case Kind::Dict:
      return static_cast<int64_t>(v.as_dict().entries.size());
    default:
      fail(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

std::optional<int64_t> parse_python_int(const std::string& text, int base) {
  std::string digits;
  for (char c : py_strip(text, nullptr, true, true)) {
    if (c != '_') digits.push_back(c);
  }
  if (!digits.empty() && digits[0] == '+') digits.erase(0, 1);
  int64_t value = 0;
  const char* begin = digits.data();
  const auto result = std::from_chars(begin, begin + digits.size(), value, base);
  if (digits.empty() || result.ec != std::errc() || result.ptr != begin + digits.size()) return std::nullopt;
  return value;
}

std::optional<double> parse_python_float(const std::string& text) {
  const std::string s = py_strip(text, nullptr, true, true);
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return value;
}

Value filter_int(const Value& v, const CallArgs& call) {
  Args args("int", call, {"default", "base"});
  const Value fallback = args.get(0, Value::integer(0));
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_integer()) return Value::integer(v.as_int());
  if (v.kind() == Kind::Float) {
    const double f = std::trunc(v.as_float());
    if (!std::isfinite(f) || std::fabs(f) >= 9.2e18) fail("cannot convert float to a 64-bit integer");
    return Value::integer(static_cast<int64_t>(f));
  }
  if (v.is_string()) {
    const Value base = args.get(1, Value::integer(10));
    if (auto i = parse_python_int(v.as_string(), static_cast<int>(base.is_integer() ? base.as_int() : 10))) {
      return Value::integer(*i);
    }
    if (auto f = parse_python_float(v.as_string()); f && std::isfinite(*f) && std::fabs(*f) < 9.2e18) {
      return Value::integer(static_cast<int64_t>(std::trunc(*f)));
    }
  }
  return fallback;
}

Value filter_float(const Value& v, const CallArgs& call) {
  Args args("float", call, {"default"});
  if (v.is_undefined()) fail_undefined(v);
  if (v.is_number()) return Value::number(v.as_float());
  if (v.is_string()) {
    if (auto f = parse_python_float(v.as_string())) return Value::number(*f);
  }
  return args.get(0, Value::number(0.0));
}

Value filter_tojson(const Value& v, const CallArgs& call) {
  // transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  Args args("tojson", call, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions options;
  options.ensure_ascii = truthy(args.get(0, Value::boolean(false)));
  const Value indent = args.get(1, Value::none());
  if (indent.is_integer()) {
    options.has_indent = true;
    options.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(indent.as_int(), 0, 64)), ' ');
  } else if (indent.is_string()) {
    options.has_indent = true;
    options.indent = indent.as_string();
  } else if (!indent.is_none()) {
    fail(fmt::format("tojson: indent must be an integer or a string, not '{}'", type_name(indent)));
  }
  if (options.has_indent) options.item_separator = ",";
  const Value separators = args.get(2, Value::none());
  if (!separators.is_none()) {
    const std::vector<Value> parts = iterate(separators);
    if (parts.size() != 2 || !parts[0].is_string() || !parts[1].is_string()) {
      fail("tojson: separators must be a pair of strings");
    }
    options.item_separator = parts[0].as_string();
    options.key_separator = parts[1].as_string();
  }
  options.sort_keys = truthy(args.get(3, Value::boolean(false)));
  return Value::string(to_json(v, options));
}

Value filter_indent(const Value& v, const CallArgs& call) {
  Args args("indent", call, {"width", "first", "blank"});
  const Value width = args.get(0, Value::integer(4));
  const std::string indention =
      width.is_string()
          ? width.as_string()
          : std::string(
                static_cast<size_t>(std::clamp<int64_t>(width.is_integer() ? width.as_int() : 4, 0, 256)),
                ' ');
  const std::vector<std::string> lines = py_splitlines(to_str(v) + "\n");
  std::string out;
  if (truthy(args.get(2, Value::boolean(false)))) {
    for (size_t i = 0; i < lines.size(); ++i) out += (i ? "\n" + indention : "") + lines[i];
  } else {
    out = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) out += "\n" + (lines[i].empty() ? "" : indention) + lines[i];
  }
  if (truthy(args.get(1, Value::boolean(false)))) out = indention + out;
  return Value::string(std::move(out));
}

Value filter_join(const Value& v, const CallArgs& call) {
  Args args("join", call, {"d", "attribute"});
  const std::string separator = to_str(args.get(0, Value::string("")));
  std::string out;
  const std::vector<Value> items = iterate(v);
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += separator;
    out += to_str(args.has(1) ? attribute_path(items[i], args[1]) : items[i]);
  }
  return Value::string(std::move(out));
}

// select / reject / selectattr / rejectattr: keep items whose (attribute) passes the test.
Value filter_select(Interpreter& interpreter, const std::string& name, const Value& v, const CallArgs& call) {
  const bool by_attribute = name.ends_with("attr");
  const bool keep_passing = name.starts_with("select");
  const size_t off = by_attribute ? 1 : 0;
  if (by_attribute && call.positional.empty())
    fail(fmt::format("{}: missing parameter for attribute name", name));
  std::vector<Value> kept;
  for (const Value& item : iterate(v)) {
    const Value subject = by_attribute ? attribute_path(item, call.positional[0]) : item;
    bool passed;
    if (call.positional.size() > off) {
      const Value& test = call.positional[off];
      if (!test.is_string()) fail(fmt::format("{}: the test name must be a string", name));
      CallArgs test_args;
      test_args.positional.assign(call.positional.begin() + static_cast<ptrdiff_t>(off + 1),
                                  call.positional.end());
      test_args.keyword = call.keyword;
      passed = apply_test(interpreter, test.as_string(), subject, test_args);
    } else {
      passed = truthy(subject);
    }
    if (passed == keep_passing) kept.push_back(item);
  }
  return Value::list(std::move(kept));
}

Value filter_map(Interpreter& interpreter, const Value& v, const CallArgs& call) {
  std::vector<Value> out;
  if (call.positional.empty()) {
    Args args("map", call, {"attribute", "default"}, 1);
    for (const Value& item : iterate(v))
      out.push_back(attribute_path(item, args[0], args.get(1, Value::none())));
    return Value::list(std::move(out));
  }
  const Value& filter = call.positional[0];
  if (!filter.is_string()) fail("map: the filter name must be a string");
  for (const Value& item : iterate(v)) {
    CallArgs filter_args;
    filter_args.positional.assign(call.positional.begin() + 1, call.positional.end());
    filter_args.keyword = call.keyword;
    out.push_back(apply_filter(interpreter, filter.as_string(), item, filter_args));
  }
  return Value::list(std::move(out));
}

Value filter_sort(const Value& v, const CallArgs& call) {
  Args args("sort", call, {"reverse", "case_sensitive", "attribute"});
  const bool reverse = truthy(args.get(0, Value::boolean(false)));
  const bool case_sensitive = truthy(args.get(1, Value::boolean(false)));
  std::vector<Value> items = iterate(v);
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t i = 0; i < items.size(); ++i) {
    Value key = args.has(2) ? attribute_path(items[i], args[2]) : items[i];
    if (!case_sensitive && key.is_string()) key = Value::string(py_lower(key.as_string()));
    keyed.emplace_back(std::move(key), i);
  }
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    return reverse ? less_than(b.first, a.first) : less_than(a.first, b.first);
  });
  std::vector<Value> out;
  for (const auto& [key, i] : keyed) out.push_back(items[i]);
  return Value::list(std::move(out));
}

std::string html_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

constexpr std::string_view kFilters[] = {
    "abs",        "capitalize", "count",  "d",          "default", "e",       "escape", "first",
    "float",      "indent",     "int",    "items",      "join",    "last",    "length", "list",
    "lower",      "map",        "reject", "rejectattr", "replace", "reverse", "safe",   "select",
    "selectattr", "sort",       "string", "sum",        "title",   "tojson",  "trim",   "upper"};

constexpr std::string_view kTests[] = {
    "!=",      "<",           "<=",   "==",        ">",       ">=",       "boolean", "callable",
    "defined", "divisibleby", "eq",   "equalto",   "escaped", "even",     "false",   "filter",
    "float",   "ge",          "gt",   "in",        "integer", "iterable", "le",      "lower",
    "lt",      "mapping",     "ne",   "none",      "number",  "odd",      "sameas",  "sequence",
    "string",  "test",        "true", "undefined", "upper"};

}  // namespace

bool is_known_filter(std::string_view name) {
  return std::find(std::begin(kFilters), std::end(kFilters), name) != std::end(kFilters);
}

bool is_known_test(std::string_view name) {
  return std::find(std::begin(kTests), std::end(kTests), name) != std::end(kTests);
}

Value apply_filter(Interpreter& interpreter, const std::string& name, Value v, CallArgs& call) {
  const auto no_args = [&] { Args args(name, call, {}); };
  if (name == "trim") {
    Args args(name, call, {"chars"});
    const Value chars = args.get(0, Value::none());
    const std::string chars_text = chars.is_none() ? "" : to_str(chars);
    return Value::string(py_strip(to_str(v), chars.is_none() ? nullptr : &chars_text, true, true));
  }
  if (name == "length" || name == "count") return no_args(), Value::integer(length_of(v));
  if (name == "tojson") return filter_tojson(v, call);
  if (name == "upper") return no_args(), Value::string(py_upper(to_str(v)));
  if (name == "lower") return no_args(), Value::string(py_lower(to_str(v)));
  if (name == "title") return no_args(), Value::string(jinja_title(to_str(v)));
  if (name == "capitalize") return no_args(), Value::string(py_capitalize(to_str(v)));
  if (name == "default" || name == "d") {
    Args args(name, call, {"default_value", "boolean"});
    const bool use_default = v.is_undefined() || (truthy(args.get(1, Value::boolean(false))) && !truthy(v));
    return use_default ? args.get(0, Value::string("")) : v;
  }
  if (name == "first" || name == "last") {
    no_args();
    const std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined(fmt::format("No {} item, sequence was empty.", name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") return filter_join(v, call);
  if (name == "replace") {
    Args args(name, call, {"old", "new", "count"}, 2);
    const Value count = args.get(2, Value::none());
    return Value::string(
        py_replace(to_str(v), to_str(args[0]), to_str(args[1]), count.is_integer() ? count.as_int() : -1));
  }
  if (name == "list") return no_args(), Value::list(iterate(v));
  if (name == "string") return no_args(), Value::string(to_str(v));
  if (name == "safe") return no_args(), v;
  if (name == "escape" || name == "e") return no_args(), Value::string(html_escape(to_str(v)));
  if (name == "int") return filter_int(v, call);
  if (name == "float") return filter_float(v, call);
  if (name == "abs") {
    no_args();
    if (v.is_integer())
      return v.as_int() == INT64_MIN ? (fail("integer overflow"), v) : Value::integer(std::abs(v.as_int()));
    if (v.kind() == Kind::Float) return Value::number(std::fabs(v.as_float()));
    fail(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
  }
  if (name == "items") {
    no_args();
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) fail("Can only get item pairs from a mapping.");
    std::vector<Value> pairs;
    for (const auto& [key, value] : v.as_dict().entries)
      pairs.push_back(Value::list({Value::string(key), value}, true));
    return Value::list(std::move(pairs));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    return filter_select(interpreter, name, v, call);
  }
  if (name == "map") return filter_map(interpreter, v, call);
  if (name == "indent") return filter_indent(v, call);
  if (name == "reverse") {
    no_args();
    if (v.is_string()) {
      std::u32string s = decode_utf8(v.as_string());
      std::reverse(s.begin(), s.end());
      return Value::string(encode_utf8(s));
    }
    std::vector<Value> items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "sort") return filter_sort(v, call);
  if (name == "sum") {
    Args args(name, call, {"attribute", "start"});
    Value total = args.get(1, Value::integer(0));
    for (const Value& item : iterate(v))
      total = binary_op("+", total, args.has(0) ? attribute_path(item, args[0]) : item);
    return total;
  }
  fail(fmt::format("no filter named '{}'", name));
}

bool apply_test(Interpreter& interpreter, const std::string& name, const Value& v, CallArgs& call) {
  (void)interpreter;
  const auto arg = [&]() -> const Value& {
    Args args(name, call, {"other"}, 1);
    return args[0];
  };
  const auto no_args = [&] { Args args(name, call, {}); };
  const Kind k = v.kind();
  if (name == "defined") return no_args(), !v.is_undefined();
  if (name == "undefined") return no_args(), v.is_undefined();
  if (name == "none") return no_args(), v.is_none();
  if (name == "string") return no_args(), v.is_string();
  if (name == "mapping") return no_args(), v.is_dict();
  // Jinja's Undefined is iterable (and a sequence): it iterates as empty.
  if (name == "iterable" || name == "sequence")
    return no_args(), v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "number") return no_args(), v.is_number();
  if (name == "integer") return no_args(), k == Kind::Int;
  if (name == "float") return no_args(), k == Kind::Float;
  if (name == "boolean") return no_args(), k == Kind::Bool;
  if (name == "true") return no_args(), k == Kind::Bool && v.as_bool();
  if (name == "false") return no_args(), k == Kind::Bool && !v.as_bool();
  if (name == "callable") return no_args(), k == Kind::Function || v.is_undefined();
  if (name == "escaped") return no_args(), false;
  if (name == "equalto" || name == "eq" || name == "==") return equals(v, arg());
  if (name == "ne" || name == "!=") return !equals(v, arg());
  if (name == "lt" || name == "<") return compare_op("<", v, arg());
  if (name == "le" || name == "<=") return compare_op("<=", v, arg());
  if (name == "gt" || name == ">") return compare_op(">", v, arg());
  if (name == "ge" || name == ">=") return compare_op(">=", v, arg());
  if (name == "in") return compare_op("in", v, arg());
  if (name == "sameas") {
    const Value& other = arg();
    if (k != other.kind()) return false;
    if (k == Kind::None || k == Kind::Undefined) return true;
    if (k == Kind::Bool || k == Kind::Int) return v.as_int() == other.as_int();
    return v.identity() != nullptr && v.identity() == other.identity();
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    const Value divisor = name == "divisibleby" ? arg() : (no_args(), Value::integer(2));
    const Value remainder = binary_op("%", v, divisor);
    const bool zero = remainder.kind() == Kind::Float ? remainder.as_float() == 0.0 : remainder.as_int() == 0;
    return name == "odd" ? !zero : zero;
  }
  if (name == "lower") return no_args(), py_islower(to_str(v));
  if (name == "upper") return no_args(), py_isupper(to_str(v));
  if (name == "filter") return no_args(), v.is_string() && is_known_filter(v.as_string());
  if (name == "test") return no_args(), v.is_string() && is_known_test(v.as_string());
  fail(fmt::format("no test named '{}'", name));
}

// ---- globals ----

namespace {

struct RaiseException : Callable {
  Value call(Interpreter&, CallArgs& call) const override {
    Args args(name, call, {"message"}, 1);
    throw TemplateError{to_str(args[0]), SIZE_MAX, true};
  }
};

struct NamespaceFunction : Callable {
  Value call(Interpreter&, CallArgs& call) const override {
    auto attributes = std::make_shared<DictObject>();
    const auto set = [&](const std::string& key, const Value& value) {
      // transformers' TemplateNamespace refuses these (they could reach Python internals).
      if (key.starts_with("_")) {
        fail(fmt::format(
            "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '{}'. "
            "Please rename the attribute.",
            key));
      }
      if (value.reaches_namespace()) fail("a namespace cannot hold a namespace, a loop or a macro");
      attributes->set(key, value);
    };
    for (const Value& mapping : call.positional) {
      if (!mapping.is_dict()) fail(fmt::format("namespace() takes mappings, not '{}'", type_name(mapping)));
      for (const auto& [key, value] : mapping.as_dict().entries) set(key, value);
    }
    for (const auto& [key, value] : call.keyword) set(key, value);
    return Value::new_namespace(std::move(attributes));
  }
};

struct DictFunction : Callable {
  Value call(Interpreter&, CallArgs& call) const override {
    auto dict = std::make_shared<DictObject>();
    for (const Value& mapping : call.positional) {
      if (!mapping.is_dict()) fail(fmt::format("dict() takes mappings, not '{}'", type_name(mapping)));
      for (const auto& [key, value] : mapping.as_dict().entries) dict->set(key, value);
    }
    for (const auto& [key, value] : call.keyword) dict->set(key, value);
    return Value::dict(std::move(dict));
  }
};

struct RangeFunction : Callable {
  Value call(Interpreter&, CallArgs& call) const override {
    if (!call.keyword.empty()) fail("range() takes no keyword arguments");
    const size_t n = call.positional.size();
    if (n < 1 || n > 3) fail(fmt::format("range expected 1 to 3 arguments, got {}", n));
    int64_t bounds[3] = {0, 0, 1};
    for (size_t i = 0; i < n; ++i) {
      const Value& v = call.positional[i];
      if (!v.is_integer()) fail(fmt::format("'{}' object cannot be interpreted as an integer", type_name(v)));
      bounds[n == 1 ? 1 : i] = v.as_int();
    }
    const int64_t start = bounds[0], stop = bounds[1], step = bounds[2];
    if (step == 0) fail("range() arg 3 must not be zero");
    const long double count = step > 0 ? std::ceil((static_cast<long double>(stop) - start) / step)
                                       : std::ceil((static_cast<long double>(start) - stop) / -step);
    // jinja2's sandbox limit.
    if (count > 100000) fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    std::vector<Value> items;
    for (int64_t i = 0; i < static_cast<int64_t>(std::max<long double>(count, 0)); ++i)
      items.push_back(Value::integer(start + i * step));
    return Value::list(std::move(items));
  }
};

struct StrftimeNow : Callable {
  Value call(Interpreter& interpreter, CallArgs& call) const override {
    Args args(name, call, {"format"}, 1);
    const std::string format = to_str(args[0]);
    const std::time_t now = interpreter.now();
    std::tm local{};
    localtime_r(&now, &local);
    std::string out(256, '\0');
    for (size_t size = 256; size <= (size_t{1} << 16); size *= 2) {
      out.resize(size);
      const size_t n = std::strftime(out.data(), size, format.c_str(), &local);
      if (n > 0 || format.empty()) {
        out.resize(n);
        return Value::string(out);
      }
    }
    return Value::string("");
  }
};

template <class T>
Value make(const char* name) {
  auto f = std::make_shared<T>();
  f->name = name;
  return Value::function(std::move(f));
}

}  // namespace

Value global_function(std::string_view name) {
  static const Value raise_exception = make<RaiseException>("raise_exception");
  static const Value namespace_function = make<NamespaceFunction>("namespace");
  static const Value dict_function = make<DictFunction>("dict");
  static const Value range_function = make<RangeFunction>("range");
  static const Value strftime_now = make<StrftimeNow>("strftime_now");
  if (name == "raise_exception") return raise_exception;
  if (name == "namespace") return namespace_function;
  if (name == "dict") return dict_function;
  if (name == "range") return range_function;
  if (name == "strftime_now") return strftime_now;
  return Value();
}

namespace {

void check_expr(const Expr* e) {
  if (!e) return;
  if (e->type == ExprType::Filter && !is_known_filter(e->name)) {
    throw TemplateError{fmt::format("no filter named '{}'", e->name), e->offset};
  }
  if (e->type == ExprType::Test && !is_known_test(e->name)) {
    throw TemplateError{fmt::format("no test named '{}'", e->name), e->offset};
  }
  for (const ExprPtr& arg : e->args) check_expr(arg.get());
  for (const auto& [key, arg] : e->kwargs) check_expr(arg.get());
}

void check_body(const Body& body) {
  for (const StmtPtr& stmt : body) {
    check_expr(stmt->expr.get());
    check_expr(stmt->filter.get());
    for (const ExprPtr& e : stmt->filters) check_expr(e.get());
    for (const ExprPtr& e : stmt->conditions) check_expr(e.get());
    for (const ExprPtr& e : stmt->defaults) check_expr(e.get());
    for (const Body& b : stmt->bodies) check_body(b);
    check_body(stmt->body);
    check_body(stmt->else_body);
  }
}

}  // namespace

void check_names(const Template& tmpl) { check_body(tmpl.body); }

}  // namespace kiln::jinja
