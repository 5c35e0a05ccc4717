// Values of the chat-template interpreter (chat_template.h): Python's data model as Jinja2 sees it --
// None, bool, int, float, str, list / tuple, dict, Jinja's namespace and Undefined, callables -- with
// Python's rules for truth, equality, ordering, str() and repr(), and transformers' tojson filter
// (json.dumps with ensure_ascii=False).
//
// Strings are UTF-8; operations Python defines on code points (len, indexing, slicing) decode them.
// Lists and dicts are immutable once built (transformers renders in Jinja's ImmutableSandboxedEnvironment,
// where list.append and dict.update are refused), so values share them freely; only a namespace is
// mutable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/string_map.h"

namespace kiln::jinja {

class Value;

// An error while parsing or rendering. The interpreter throws it (every expression node can fail, and
// threading Result through a recursive evaluator would triple its size); chat_template.cc catches it
// and returns a kiln::Error, so nothing crosses the library's API as an exception.
struct TemplateError {
  std::string message;
  size_t offset = SIZE_MAX;  // byte offset in the (newline-normalized) source; SIZE_MAX: not known yet
  bool raised = false;       // from raise_exception(): the message is the template's own
};
[[noreturn]] void fail(std::string message);
// The error using an Undefined value raises (its hint, e.g. "'x' is undefined").
[[noreturn]] void fail_undefined(const Value& value);

// Strings longer than this are refused before they are built (a prompt is far shorter; the renderer's
// output limit is the same).
inline constexpr size_t kMaxStringBytes = size_t{32} << 20;

// Values nested deeper than this are refused, so printing, comparing and freeing them cannot exhaust
// the stack.
inline constexpr int kMaxValueDepth = 64;

enum class Kind : uint8_t {
  Undefined,
  None,
  Bool,
  Int,
  Float,
  String,
  List,
  Dict,
  Namespace,
  Function,
  Loop
};

struct Object {
  virtual ~Object() = default;
};
struct ListObject;
struct DictObject;
struct LoopObject;
struct Callable;

class Value {
 public:
  Value() = default;  // Undefined with no hint
  static Value undefined(std::string hint);
  static Value none();
  static Value boolean(bool value);
  static Value integer(int64_t value);
  static Value number(double value);
  static Value string(std::string value);
  static Value list(std::vector<Value> items, bool is_tuple = false);
  static Value dict(std::shared_ptr<DictObject> dict);
  static Value new_namespace(std::shared_ptr<DictObject> attributes);
  static Value function(std::shared_ptr<const Callable> callable);
  static Value loop(std::shared_ptr<const LoopObject> loop);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  // int or bool (Python's bool is an int); is_number() adds float.
  bool is_integer() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }
  bool is_number() const { return is_integer() || kind_ == Kind::Float; }

  bool as_bool() const { return integer_ != 0; }
  int64_t as_int() const { return integer_; }  // Int and Bool
  double as_float() const { return kind_ == Kind::Float ? number_ : static_cast<double>(integer_); }
  const std::string& as_string() const { return *text_; }  // String; Undefined: the reason it is undefined
  const ListObject& as_list() const;
  const DictObject& as_dict() const;  // Dict or Namespace
  DictObject& namespace_attributes() const;
  const Callable& as_function() const;
  const LoopObject& as_loop() const;
  // Nesting depth (1 for scalars) and whether a namespace is reachable from this value.
  int depth() const;
  bool reaches_namespace() const;
  const Object* identity() const { return object_.get(); }  // lists, dicts, namespaces, functions

 private:
  Kind kind_ = Kind::Undefined;
  int64_t integer_ = 0;
  double number_ = 0;
  std::shared_ptr<const std::string> text_;
  std::shared_ptr<Object> object_;
};

struct ListObject : Object {
  std::vector<Value> items;
  bool is_tuple = false;
  int depth = 1;
  bool reaches_namespace = false;
};

// A Python dict (insertion-ordered) with string keys; also a namespace's attributes.
struct DictObject : Object {
  std::vector<std::pair<std::string, Value>> entries;
  std::unordered_map<std::string, size_t, StringViewHash, std::equal_to<>> index;
  int depth = 1;
  bool reaches_namespace = false;

  const Value* find(std::string_view key) const;
  void set(std::string key, Value value);  // refuses values nested deeper than kMaxValueDepth
};

// The `loop` variable of a for loop: position in the (filtered) sequence.
struct LoopObject : Object {
  std::shared_ptr<const std::vector<Value>> items;
  size_t index0 = 0;
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

class Interpreter;
struct Callable : Object {
  std::string name;
  virtual Value call(Interpreter& interpreter, CallArgs& args) const = 0;
};

// Python semantics.
bool truthy(const Value& value);
bool equals(const Value& a, const Value& b);
// Python's a < b (and friends through it); TypeError for unorderable types.
bool less_than(const Value& a, const Value& b);
std::string type_name(const Value& value);  // Python's type(x).__name__
std::string to_str(const Value& value);     // str(x); Undefined prints as ""
std::string repr(const Value& value);       // repr(x)
std::string float_repr(double value);       // repr(float): shortest round-trip, Python's layout

struct JsonOptions {
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool has_indent = false;
  std::string indent;  // used when has_indent
  std::string item_separator = ", ", key_separator = ": ";
};
// json.dumps(value, **options) as transformers' tojson filter calls it.
std::string to_json(const Value& value, const JsonOptions& options);

// Python str operations on UTF-8 (invalid bytes survive a round trip as U+DC80 + byte, like
// Python's surrogateescape).
std::u32string decode_utf8(std::string_view text);
std::string encode_utf8(std::u32string_view text);
bool is_python_space(char32_t c);  // str.isspace() / re's \s
size_t code_point_count(std::string_view text);

// Python str methods (jinja_strings.cc). Case mapping covers ASCII only: other characters keep their
// case (Python maps all of Unicode).
std::string py_strip(std::string_view text, const std::string* chars, bool left, bool right);
std::vector<std::string> py_split(std::string_view text, const std::string* separator, int64_t max_splits,
                                  bool from_right);
std::vector<std::string> py_splitlines(std::string_view text);
std::string py_replace(std::string_view text, std::string_view old, std::string_view replacement,
                       int64_t count);
int64_t py_find(std::string_view text, std::string_view sub, bool from_right);  // code point index or -1
int64_t py_count(std::string_view text, std::string_view sub);
std::string py_upper(std::string_view text);
std::string py_lower(std::string_view text);
std::string py_title(std::string_view text);       // str.title()
std::string py_capitalize(std::string_view text);  // str.capitalize()
std::string jinja_title(std::string_view text);    // jinja2's |title filter
bool py_islower(std::string_view text);
bool py_isupper(std::string_view text);

}  // namespace kiln::jinja
