#include "tokenizer/jinja_value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace kiln::jinja {

void fail(std::string message) { throw TemplateError{std::move(message)}; }

// ---- construction and access ----

Value Value::undefined(std::string hint) {
  Value v;
  v.text_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}

Value Value::boolean(bool value) {
  Value v;
  v.kind_ = Kind::Bool;
  v.integer_ = value ? 1 : 0;
  return v;
}

Value Value::integer(int64_t value) {
  Value v;
  v.kind_ = Kind::Int;
  v.integer_ = value;
  return v;
}

Value Value::number(double value) {
  Value v;
  v.kind_ = Kind::Float;
  v.number_ = value;
  return v;
}

Value Value::string(std::string value) {
  Value v;
  v.kind_ = Kind::String;
  v.text_ = std::make_shared<const std::string>(std::move(value));
  return v;
}

Value Value::list(std::vector<Value> items, bool is_tuple) {
  auto object = std::make_shared<ListObject>();
  for (const Value& item : items) {
    object->depth = std::max(object->depth, item.depth() + 1);
    object->reaches_namespace = object->reaches_namespace || item.reaches_namespace();
  }
  if (object->depth > kMaxValueDepth)
    fail(fmt::format("values nested deeper than {} levels", kMaxValueDepth));
  object->items = std::move(items);
  object->is_tuple = is_tuple;
  Value v;
  v.kind_ = Kind::List;
  v.object_ = std::move(object);
  return v;
}

Value Value::dict(std::shared_ptr<DictObject> dict) {
  Value v;
  v.kind_ = Kind::Dict;
  v.object_ = std::move(dict);
  return v;
}

Value Value::new_namespace(std::shared_ptr<DictObject> attributes) {
  Value v;
  v.kind_ = Kind::Namespace;
  v.object_ = std::move(attributes);
  return v;
}

Value Value::function(std::shared_ptr<const Callable> callable) {
  Value v;
  v.kind_ = Kind::Function;
  v.object_ = std::const_pointer_cast<Callable>(std::move(callable));
  return v;
}

Value Value::loop(std::shared_ptr<const LoopObject> loop) {
  Value v;
  v.kind_ = Kind::Loop;
  v.object_ = std::const_pointer_cast<LoopObject>(std::move(loop));
  return v;
}

const ListObject& Value::as_list() const { return static_cast<const ListObject&>(*object_); }
const DictObject& Value::as_dict() const { return static_cast<const DictObject&>(*object_); }
DictObject& Value::namespace_attributes() const { return static_cast<DictObject&>(*object_); }
const Callable& Value::as_function() const { return static_cast<const Callable&>(*object_); }
const LoopObject& Value::as_loop() const { return static_cast<const LoopObject&>(*object_); }

int Value::depth() const {
  if (kind_ == Kind::List) return as_list().depth;
  if (kind_ == Kind::Dict || kind_ == Kind::Namespace) return as_dict().depth;
  return 1;
}

bool Value::reaches_namespace() const {
  if (kind_ == Kind::Namespace) return true;
  if (kind_ == Kind::List) return as_list().reaches_namespace;
  if (kind_ == Kind::Dict) return as_dict().reaches_namespace;
  // A loop's items and a macro's scope may hold namespaces too.
  return kind_ == Kind::Loop || kind_ == Kind::Function;
}

const Value* DictObject::find(std::string_view key) const {
  const auto it = index.find(key);
  return it == index.end() ? nullptr : &entries[it->second].second;
}

void DictObject::set(std::string key, Value value) {
  if (value.depth() + 1 > kMaxValueDepth)
    fail(fmt::format("values nested deeper than {} levels", kMaxValueDepth));
  depth = std::max(depth, value.depth() + 1);
  reaches_namespace = reaches_namespace || value.reaches_namespace();
  const auto it = index.find(key);
  if (it != index.end()) {
    entries[it->second].second = std::move(value);
    return;
  }
  index.emplace(key, entries.size());
  entries.emplace_back(std::move(key), std::move(value));
}

// ---- UTF-8 ----

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    int length = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    char32_t c = length == 1 ? b0 : length == 2 ? (b0 & 0x1F) : length == 3 ? (b0 & 0x0F) : (b0 & 0x07);
    bool ok = length > 0 && i + length <= text.size();
    for (int k = 1; ok && k < length; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      ok = (b & 0xC0) == 0x80;
      c = (c << 6) | (b & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid, as in Python's decoder.
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (ok && (c < kMin[length] || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF)) ok = false;
    if (!ok) {
      out.push_back(0xDC00 + b0);  // surrogateescape
      ++i;
      continue;
    }
    out.push_back(c);
    i += length;
  }
  return out;
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c >= 0xDC80 && c <= 0xDCFF) {
      out.push_back(static_cast<char>(c - 0xDC00));
    } else if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

size_t code_point_count(std::string_view text) { return decode_utf8(text).size(); }

// ---- Python semantics ----

void fail_undefined(const Value& value) {
  fail(value.as_string().empty() ? "undefined value" : value.as_string());
}

bool truthy(const Value& value) {
  switch (value.kind()) {
    case Kind::Undefined:
    case Kind::None:
      return false;
    case Kind::Bool:
    case Kind::Int:
      return value.as_int() != 0;
    case Kind::Float:
      return value.as_float() != 0.0;
    case Kind::String:
      return !value.as_string().empty();
    case Kind::List:
      return !value.as_list().items.empty();
    case Kind::Dict:
      return !value.as_dict().entries.empty();
    default:
      return true;
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer()) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::Undefined:
    case Kind::None:
      return true;
    case Kind::String:
      return a.as_string() == b.as_string();
    case Kind::List: {
      const auto& x = a.as_list();
      const auto& y = b.as_list();
      if (x.is_tuple != y.is_tuple || x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i) {
        if (!equals(x.items[i], y.items[i])) return false;
      }
      return true;
    }
    case Kind::Dict: {
      const auto& x = a.as_dict();
      const auto& y = b.as_dict();
      if (x.entries.size() != y.entries.size()) return false;
      for (const auto& [key, value] : x.entries) {
        const Value* other = y.find(key);
        if (!other || !equals(value, *other)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();  // namespaces, functions, loops
  }
}

bool less_than(const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (a.is_number() && b.is_number()) {
    if (a.is_integer() && b.is_integer()) return a.as_int() < b.as_int();
    return a.as_float() < b.as_float();
  }
  // UTF-8 byte order is code point order.
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
  if (a.is_list() && b.is_list() && a.as_list().is_tuple == b.as_list().is_tuple) {
    const auto& x = a.as_list().items;
    const auto& y = b.as_list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return less_than(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b)));
}

std::string type_name(const Value& value) {
  switch (value.kind()) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return value.as_list().is_tuple ? "tuple" : "list";
    case Kind::Dict:
      return "dict";
    case Kind::Namespace:
      return "Namespace";
    case Kind::Function:
      return "function";
    case Kind::Loop:
      return "LoopContext";
  }
  return "object";
}

std::string float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // Shortest round-trip digits (as Python's repr), laid out as Python does: positional for
  // exponents -4..15, else d.ddde+XX.
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  std::string_view text(buffer, static_cast<size_t>(result.ptr - buffer));
  std::string sign;
  if (text.front() == '-') {
    sign = "-";
    text.remove_prefix(1);
  }
  const size_t e = text.find('e');
  std::string digits;
  for (char c : text.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  const int exponent = std::stoi(std::string(text.substr(e + 1)));
  if (exponent >= -4 && exponent < 16) {
    if (exponent >= 0) {
      const size_t point = static_cast<size_t>(exponent) + 1;
      if (digits.size() <= point) return sign + digits + std::string(point - digits.size(), '0') + ".0";
      return sign + digits.substr(0, point) + "." + digits.substr(point);
    }
    return sign + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  }
  std::string mantissa = digits.substr(0, 1);
  if (digits.size() > 1) mantissa += "." + digits.substr(1);
  return fmt::format("{}{}e{}{:02d}", sign, mantissa, exponent < 0 ? '-' : '+', std::abs(exponent));
}

namespace {

// Python's str.isprintable() for the code points templates meet: controls, separators other than
// space, format characters, surrogates and private use are not printable.
bool is_printable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB))
    return false;
  if ((c >= 0xD800 && c <= 0xF8FF) || c >= 0xF0000 || c == 0xFFFE || c == 0xFFFF) return false;
  return true;
}

std::string string_repr(const std::string& text) {
  const bool has_single = text.find('\'') != std::string::npos;
  const bool has_double = text.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : decode_utf8(text)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (is_printable(c)) {
      out += encode_utf8(std::u32string(1, c));
    } else if (c <= 0xFF) {
      out += fmt::format("\\x{:02x}", static_cast<uint32_t>(c));
    } else if (c <= 0xFFFF) {
      out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
    } else {
      out += fmt::format("\\U{:08x}", static_cast<uint32_t>(c));
    }
  }
  out += quote;
  return out;
}

std::string dict_repr(const DictObject& dict) {
  std::string out = "{";
  for (size_t i = 0; i < dict.entries.size(); ++i) {
    if (i) out += ", ";
    out += string_repr(dict.entries[i].first) + ": " + repr(dict.entries[i].second);
  }
  return out + "}";
}

}  // namespace

std::string repr(const Value& value) {
  switch (value.kind()) {
    case Kind::String:
      return string_repr(value.as_string());
    case Kind::List: {
      const auto& list = value.as_list();
      std::string out = list.is_tuple ? "(" : "[";
      for (size_t i = 0; i < list.items.size(); ++i) {
        if (i) out += ", ";
        out += repr(list.items[i]);
      }
      if (list.is_tuple && list.items.size() == 1) out += ",";
      return out + (list.is_tuple ? ")" : "]");
    }
    case Kind::Dict:
      return dict_repr(value.as_dict());
    case Kind::Undefined:
      return "Undefined";
    default:
      return to_str(value);
  }
}

std::string to_str(const Value& value) {
  switch (value.kind()) {
    case Kind::Undefined:
      return "";
    case Kind::None:
      return "None";
    case Kind::Bool:
      return value.as_bool() ? "True" : "False";
    case Kind::Int:
      return std::to_string(value.as_int());
    case Kind::Float:
      return float_repr(value.as_float());
    case Kind::String:
      return value.as_string();
    case Kind::Namespace:
      return "<Namespace " + dict_repr(value.as_dict()) + ">";
    case Kind::Function:
      return "<function " + value.as_function().name + ">";
    case Kind::Loop: {
      const auto& loop = value.as_loop();
      return fmt::format("<LoopContext {}/{}>", loop.index0 + 1, loop.items->size());
    }
    default:
      return repr(value);
  }
}

namespace {

void json_string(const std::string& text, bool ensure_ascii, std::string& out) {
  out += '"';
  for (char32_t c : decode_utf8(text)) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7F && c <= 0xFFFF)) {
          out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
        } else if (ensure_ascii && c > 0xFFFF) {
          const uint32_t v = static_cast<uint32_t>(c) - 0x10000;
          out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
        } else {
          out += encode_utf8(std::u32string(1, c));
        }
    }
  }
  out += '"';
}

void json_value(const Value& value, const JsonOptions& options, int level, std::string& out) {
  const auto newline = [&](int at) {
    if (!options.has_indent) return;
    out += '\n';
    for (int i = 0; i < at; ++i) out += options.indent;
  };
  switch (value.kind()) {
    case Kind::None:
      out += "null";
      return;
    case Kind::Bool:
      out += value.as_bool() ? "true" : "false";
      return;
    case Kind::Int:
      out += std::to_string(value.as_int());
      return;
    case Kind::Float: {
      const double v = value.as_float();
      out += std::isnan(v) ? "NaN" : std::isinf(v) ? (v > 0 ? "Infinity" : "-Infinity") : float_repr(v);
      return;
    }
    case Kind::String:
      json_string(value.as_string(), options.ensure_ascii, out);
      return;
    case Kind::List: {
      const auto& items = value.as_list().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += options.item_separator;
        newline(level + 1);
        json_value(items[i], options, level + 1, out);
      }
      newline(level);
      out += ']';
      return;
    }
    case Kind::Dict: {
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& entry : value.as_dict().entries) entries.push_back(&entry);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (options.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += options.item_separator;
        newline(level + 1);
        json_string(entries[i]->first, options.ensure_ascii, out);
        out += options.key_separator;
        json_value(entries[i]->second, options, level + 1, out);
      }
      newline(level);
      out += '}';
      return;
    }
    default:
      fail(fmt::format("Object of type {} is not JSON serializable", type_name(value)));
  }
}

}  // namespace

std::string to_json(const Value& value, const JsonOptions& options) {
  std::string out;
  json_value(value, options, 0, out);
  return out;
}

}  // namespace kiln::jinja
