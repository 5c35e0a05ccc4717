// Python's operators and methods as jinja2 applies them: attribute and item lookup with jinja2's
// fallbacks (environment.getattr / getitem), slicing, arithmetic, comparison, iteration, and the
// str / dict / list methods the sandbox allows. Failed lookups give Undefined carrying jinja2's
// message; mutating methods (list.append, dict.update, ...) give the sandbox's "unsafe" Undefined.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "tokenizer/jinja_interpreter.h"

namespace kiln::jinja {

namespace {

// jinja2's object_type_repr, as Undefined messages print it.
std::string object_type(const Value& v) {
  if (v.is_none()) return "None";
  if (v.kind() == Kind::Namespace) return "Namespace object";
  return type_name(v) + " object";
}

Value no_attribute(const Value& object, const std::string& name) {
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_type(object), name));
}

Value unsafe(const Value& object, const std::string& name) {
  return Value::undefined(
      fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(object)));
}

bool one_of(const std::string& name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

const char* const kStringMethods[] = {"strip",      "lstrip",   "rstrip",  "split",   "rsplit", "splitlines",
                                      "startswith", "endswith", "upper",   "lower",   "title",  "capitalize",
                                      "replace",    "find",     "rfind",   "count",   "join",   "isspace",
                                      "isdigit",    "isalpha",  "isalnum", "islower", "isupper"};

// A method bound to its object: `content.strip` evaluates to one, `content.strip()` calls it.
struct Method : Callable {
  Value self;
  Value call(Interpreter& interpreter, CallArgs& args) const override;
};

Value bind(const Value& self, const std::string& name) {
  auto method = std::make_shared<Method>();
  method->name = name;
  method->self = self;
  return Value::function(std::move(method));
}

int64_t to_index(const Value& v, const char* what) {
  if (!v.is_integer()) fail(fmt::format("{} must be integers or None, not '{}'", what, type_name(v)));
  return v.as_int();
}

const Value& argument(const CallArgs& args, size_t i, const std::string& method, size_t max_args) {
  if (!args.keyword.empty()) fail(fmt::format("{}() takes no keyword arguments", method));
  if (args.positional.size() > max_args) {
    fail(fmt::format("{}() takes at most {} arguments ({} given)", method, max_args, args.positional.size()));
  }
  static const Value kNone = Value::none();
  return i < args.positional.size() ? args.positional[i] : kNone;
}

const std::string& string_argument(const Value& v, const std::string& method) {
  if (!v.is_string()) fail(fmt::format("{}() argument must be str, not '{}'", method, type_name(v)));
  return v.as_string();
}

Value string_list(std::vector<std::string> parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (std::string& part : parts) items.push_back(Value::string(std::move(part)));
  return Value::list(std::move(items));
}

bool all_chars(const std::string& text, bool (*predicate)(char32_t)) {
  const std::u32string s = decode_utf8(text);
  return !s.empty() && std::all_of(s.begin(), s.end(), predicate);
}

Value string_method(const std::string& s, const std::string& name, const CallArgs& args) {
  const auto arg = [&](size_t i, size_t max) -> const Value& { return argument(args, i, name, max); };
  const auto optional_string = [&](const Value& v) -> const std::string* {
    return v.is_none() ? nullptr : &string_argument(v, name);
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return Value::string(py_strip(s, optional_string(arg(0, 1)), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Value& max = arg(1, 2);
    return string_list(py_split(s, optional_string(arg(0, 2)), max.is_none() ? -1 : to_index(max, "maxsplit"),
                                name == "rsplit"));
  }
  if (name == "splitlines") return arg(0, 0), string_list(py_splitlines(s));
  if (name == "startswith" || name == "endswith") {
    const Value& affix = arg(0, 1);
    std::vector<Value> candidates =
        affix.is_list() && affix.as_list().is_tuple ? affix.as_list().items : std::vector<Value>{affix};
    for (const Value& candidate : candidates) {
      const std::string& a = string_argument(candidate, name);
      if (name == "startswith" ? s.starts_with(a) : s.ends_with(a)) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "upper") return arg(0, 0), Value::string(py_upper(s));
  if (name == "lower") return arg(0, 0), Value::string(py_lower(s));
  if (name == "title") return arg(0, 0), Value::string(py_title(s));
  if (name == "capitalize") return arg(0, 0), Value::string(py_capitalize(s));
  if (name == "replace") {
    const Value& count = arg(2, 3);
    return Value::string(py_replace(s, string_argument(arg(0, 3), name), string_argument(arg(1, 3), name),
                                    count.is_none() ? -1 : to_index(count, "count")));
  }
  if (name == "find" || name == "rfind")
    return Value::integer(py_find(s, string_argument(arg(0, 1), name), name == "rfind"));
  if (name == "count") return Value::integer(py_count(s, string_argument(arg(0, 1), name)));
  if (name == "join") {
    std::string out;
    const std::vector<Value> items = iterate(arg(0, 1));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) {
        fail(fmt::format("sequence item {}: expected str instance, {} found", i, type_name(items[i])));
      }
      if (i) out += s;
      out += items[i].as_string();
    }
    return Value::string(std::move(out));
  }
  arg(0, 0);
  if (name == "isspace") return Value::boolean(all_chars(s, is_python_space));
  if (name == "isdigit") return Value::boolean(all_chars(s, [](char32_t c) { return c >= '0' && c <= '9'; }));
  if (name == "isalpha")
    return Value::boolean(all_chars(s, [](char32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }));
  if (name == "isalnum") {
    return Value::boolean(all_chars(
        s, [](char32_t c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'); }));
  }
  if (name == "islower") return Value::boolean(py_islower(s));
  if (name == "isupper") return Value::boolean(py_isupper(s));
  fail(fmt::format("'str' object has no attribute '{}'", name));
}

Value Method::call(Interpreter& interpreter, CallArgs& args) const {
  (void)interpreter;
  if (self.is_string()) return string_method(self.as_string(), name, args);
  if (self.is_dict()) {
    const DictObject& dict = self.as_dict();
    if (name == "get") {
      const Value& key = argument(args, 0, name, 2);
      const Value* found = key.is_string() ? dict.find(key.as_string()) : nullptr;
      return found ? *found : argument(args, 1, name, 2);
    }
    argument(args, 0, name, 0);
    if (name == "copy") return self;  // dicts are immutable here
    std::vector<Value> items;
    for (const auto& [key, value] : dict.entries) {
      if (name == "keys") items.push_back(Value::string(key));
      if (name == "values") items.push_back(value);
      if (name == "items") items.push_back(Value::list({Value::string(key), value}, true));
    }
    return Value::list(std::move(items));
  }
  if (self.is_list()) {
    const auto& items = self.as_list().items;
    if (name == "copy") return argument(args, 0, name, 0), self;
    const Value& x = argument(args, 0, name, 1);
    const auto it = std::find_if(items.begin(), items.end(), [&](const Value& v) { return equals(v, x); });
    if (name == "index") {
      if (it == items.end()) fail(fmt::format("{} is not in list", repr(x)));
      return Value::integer(it - items.begin());
    }
    return Value::integer(
        std::count_if(items.begin(), items.end(), [&](const Value& v) { return equals(v, x); }));
  }
  if (self.kind() == Kind::Loop) {  // loop.cycle(a, b, ...)
    if (args.positional.empty()) fail("no items for cycling given");
    return args.positional[self.as_loop().index0 % args.positional.size()];
  }
  fail(fmt::format("'{}' object has no method '{}'", type_name(self), name));
}

Value loop_attribute(const Value& loop_value, const std::string& name) {
  const LoopObject& loop = loop_value.as_loop();
  const auto length = static_cast<int64_t>(loop.items->size());
  const auto i = static_cast<int64_t>(loop.index0);
  if (name == "index") return Value::integer(i + 1);
  if (name == "index0") return Value::integer(i);
  if (name == "revindex") return Value::integer(length - i);
  if (name == "revindex0") return Value::integer(length - i - 1);
  if (name == "first") return Value::boolean(i == 0);
  if (name == "last") return Value::boolean(i == length - 1);
  if (name == "length") return Value::integer(length);
  if (name == "depth") return Value::integer(1);
  if (name == "depth0") return Value::integer(0);
  if (name == "previtem") return i > 0 ? (*loop.items)[i - 1] : Value::undefined("there is no previous item");
  if (name == "nextitem")
    return i + 1 < length ? (*loop.items)[i + 1] : Value::undefined("there is no next item");
  if (name == "cycle") return bind(loop_value, name);
  return no_attribute(loop_value, name);
}

}  // namespace

Value get_attribute(const Value& object, const std::string& name) {
  if (object.is_undefined()) fail_undefined(object);
  if (name.starts_with("_")) return unsafe(object, name);
  switch (object.kind()) {
    case Kind::Dict: {
      if (one_of(name, {"items", "keys", "values", "get", "copy"})) return bind(object, name);
      if (one_of(name, {"update", "pop", "popitem", "setdefault", "clear"})) return unsafe(object, name);
      const Value* found = object.as_dict().find(name);
      return found ? *found : no_attribute(object, name);
    }
    case Kind::Namespace: {
      const Value* found = object.as_dict().find(name);
      return found ? *found : no_attribute(object, name);
    }
    case Kind::String:
      if (std::find(std::begin(kStringMethods), std::end(kStringMethods), name) != std::end(kStringMethods)) {
        return bind(object, name);
      }
      return no_attribute(object, name);
    case Kind::List:
      if (one_of(name, {"index", "count", "copy"})) return bind(object, name);
      if (one_of(name, {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"})) {
        return unsafe(object, name);
      }
      return no_attribute(object, name);
    case Kind::Loop:
      return loop_attribute(object, name);
    default:
      return no_attribute(object, name);
  }
}

Value get_item(const Value& object, const Value& key) {
  if (object.is_undefined()) fail_undefined(object);
  if (key.is_string()) {
    if (object.is_dict()) {
      const Value* found = object.as_dict().find(key.as_string());
      if (found) return *found;
    }
    return get_attribute(object, key.as_string());  // jinja2 falls back to getattr for string keys
  }
  if (key.is_integer() && (object.is_list() || object.is_string())) {
    int64_t i = key.as_int();
    if (object.is_list()) {
      const auto& items = object.as_list().items;
      const auto n = static_cast<int64_t>(items.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return items[static_cast<size_t>(i)];
    } else {
      const std::u32string s = decode_utf8(object.as_string());
      const auto n = static_cast<int64_t>(s.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value::string(encode_utf8(std::u32string(1, s[static_cast<size_t>(i)])));
    }
  }
  return Value::undefined(fmt::format("{} has no element {}", object_type(object), repr(key)));
}

Value get_slice(const Value& object, const Value& start_value, const Value& stop_value,
                const Value& step_value) {
  if (object.is_undefined()) fail_undefined(object);
  if (!object.is_list() && !object.is_string()) {
    return Value::undefined(fmt::format("{} cannot be sliced", object_type(object)));
  }
  const int64_t step = step_value.is_none() ? 1 : to_index(step_value, "slice indices");
  if (step == 0) fail("slice step cannot be zero");
  std::u32string chars;
  if (object.is_string()) chars = decode_utf8(object.as_string());
  const auto n = static_cast<int64_t>(object.is_string() ? chars.size() : object.as_list().items.size());
  // Python's PySlice_AdjustIndices.
  const auto adjust = [&](const Value& v, int64_t fallback) {
    if (v.is_none()) return fallback;
    int64_t i = to_index(v, "slice indices");
    if (i < 0) {
      i += n;
      if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= n) {
      i = step < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t start = adjust(start_value, step < 0 ? n - 1 : 0);
  const int64_t stop = adjust(stop_value, step < 0 ? -1 : n);
  std::vector<size_t> picked;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) picked.push_back(static_cast<size_t>(i));
  if (object.is_string()) {
    std::u32string out;
    for (size_t i : picked) out.push_back(chars[i]);
    return Value::string(encode_utf8(out));
  }
  std::vector<Value> items;
  for (size_t i : picked) items.push_back(object.as_list().items[i]);
  return Value::list(std::move(items), object.as_list().is_tuple);
}

std::vector<Value> iterate(const Value& value) {
  switch (value.kind()) {
    case Kind::Undefined:
      return {};
    case Kind::List:
      return value.as_list().items;
    case Kind::Dict: {
      std::vector<Value> keys;
      for (const auto& entry : value.as_dict().entries) keys.push_back(Value::string(entry.first));
      return keys;
    }
    case Kind::String: {
      std::vector<Value> chars;
      for (char32_t c : decode_utf8(value.as_string()))
        chars.push_back(Value::string(encode_utf8(std::u32string(1, c))));
      return chars;
    }
    default:
      fail(fmt::format("'{}' object is not iterable", type_name(value)));
  }
}

namespace {

[[noreturn]] void unsupported(const std::string& op, const Value& a, const Value& b) {
  fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
}

void check_overflow(bool overflow) {
  if (overflow) fail("integer overflow (kiln's integers are 64-bit)");
}

void check_length(size_t a, size_t b) {
  if (a + b > kMaxStringBytes) fail(fmt::format("string longer than {} MiB", kMaxStringBytes >> 20));
}

Value repeat(const Value& sequence, int64_t times) {
  times = std::max<int64_t>(times, 0);
  const size_t unit = sequence.is_string() ? sequence.as_string().size() : sequence.as_list().items.size();
  if (unit != 0 && static_cast<uint64_t>(times) > kMaxStringBytes / unit) fail("repetition result too large");
  if (sequence.is_string()) {
    std::string out;
    for (int64_t i = 0; i < times; ++i) out += sequence.as_string();
    return Value::string(std::move(out));
  }
  std::vector<Value> items;
  for (int64_t i = 0; i < times; ++i)
    items.insert(items.end(), sequence.as_list().items.begin(), sequence.as_list().items.end());
  return Value::list(std::move(items), sequence.as_list().is_tuple);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::Undefined:
      return false;
    case Kind::String:
      if (!item.is_string())
        fail(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Kind::List:
      return std::any_of(container.as_list().items.begin(), container.as_list().items.end(),
                         [&](const Value& v) { return equals(v, item); });
    case Kind::Dict:
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    default:
      fail(fmt::format("argument of type '{}' is not iterable", type_name(container)));
  }
}

}  // namespace

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string left = to_str(a), right = to_str(b);
    check_length(left.size(), right.size());
    return Value::string(left + right);
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  const bool ints = a.is_integer() && b.is_integer();
  const bool numbers = a.is_number() && b.is_number();
  int64_t r = 0;
  if (op == "+") {
    if (ints) return check_overflow(__builtin_add_overflow(a.as_int(), b.as_int(), &r)), Value::integer(r);
    if (numbers) return Value::number(a.as_float() + b.as_float());
    if (a.is_string() && b.is_string()) {
      check_length(a.as_string().size(), b.as_string().size());
      return Value::string(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list() && a.as_list().is_tuple == b.as_list().is_tuple) {
      std::vector<Value> items = a.as_list().items;
      items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
      return Value::list(std::move(items), a.as_list().is_tuple);
    }
    if (a.is_string() || a.is_list()) {
      fail(fmt::format("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b),
                       type_name(a)));
    }
    unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) return check_overflow(__builtin_sub_overflow(a.as_int(), b.as_int(), &r)), Value::integer(r);
    if (numbers) return Value::number(a.as_float() - b.as_float());
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) return check_overflow(__builtin_mul_overflow(a.as_int(), b.as_int(), &r)), Value::integer(r);
    if (numbers) return Value::number(a.as_float() * b.as_float());
    if ((a.is_string() || a.is_list()) && b.is_integer()) return repeat(a, b.as_int());
    if (a.is_integer() && (b.is_string() || b.is_list())) return repeat(b, a.as_int());
    unsupported(op, a, b);
  }
  if (!numbers) {
    if (op == "%" && a.is_string()) fail("printf-style string formatting ('%' on a string) is not supported");
    unsupported(op, a, b);
  }
  if (op == "/") {
    if (b.as_float() == 0.0) fail(ints ? "division by zero" : "float division by zero");
    return Value::number(a.as_float() / b.as_float());
  }
  if (op == "//" || op == "%") {
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) fail(op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
      if (x == INT64_MIN && y == -1) fail("integer overflow (kiln's integers are 64-bit)");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) --q, m += y;  // Python floors toward negative infinity
      return Value::integer(op == "//" ? q : m);
    }
    // CPython's float_divmod.
    const double x = a.as_float(), y = b.as_float();
    if (y == 0.0) fail(op == "//" ? "float floor division by zero" : "float modulo by zero");
    double mod = std::fmod(x, y);
    double div = (x - mod) / y;
    if (mod != 0.0) {
      if ((y < 0) != (mod < 0)) mod += y, div -= 1.0;
    } else {
      mod = std::copysign(0.0, y);
    }
    if (op == "%") return Value::number(mod);
    double floor_div = std::copysign(0.0, x / y);
    if (div != 0.0) {
      floor_div = std::floor(div);
      if (div - floor_div > 0.5) floor_div += 1.0;
    }
    return Value::number(floor_div);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t result = 1, base = a.as_int();
      for (int64_t e = b.as_int(); e > 0; e >>= 1) {
        if (e & 1) check_overflow(__builtin_mul_overflow(result, base, &result));
        if (e > 1) check_overflow(__builtin_mul_overflow(base, base, &base));
      }
      return Value::integer(result);
    }
    if (a.as_float() == 0.0 && b.as_float() < 0) fail("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(a.as_float(), b.as_float()));
  }
  fail("internal: unknown operator " + op);
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (op == "<") return less_than(a, b);
  if (op == ">") return less_than(b, a);
  // <= and >= as Python evaluates them for numbers (false with NaN), else through < and ==.
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer())
      return op == "<=" ? a.as_int() <= b.as_int() : a.as_int() >= b.as_int();
    return op == "<=" ? a.as_float() <= b.as_float() : a.as_float() >= b.as_float();
  }
  return op == "<=" ? (less_than(a, b) || equals(a, b)) : (less_than(b, a) || equals(a, b));
}

}  // namespace kiln::jinja
