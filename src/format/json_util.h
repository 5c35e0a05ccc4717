// Strict JSON parsing shared by the format readers (internal to format/): parse errors become
// Error values, and duplicate object keys are refused, because nlohmann::json silently keeps the
// last one, which would let a corrupt safetensors header or config.json shadow an entry.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace kiln {

// Parses `text`; `source` names it in errors ("model.safetensors header", "config.json").
// Objects keep their key order (safetensors tensors are reported in header order).
Result<nlohmann::ordered_json> parse_json_strict(std::string_view text, std::string_view source);

// A value for an error message: its type and a short excerpt, e.g. `string "64"`.
std::string json_describe(const nlohmann::ordered_json& value);

// Typed access to the fields of one JSON object (config.json and its sub-objects); errors name the
// source and the field. A null field counts as absent.
class JsonFields {
 public:
  using Json = nlohmann::ordered_json;
  JsonFields(const Json& object, std::string where) : object_(object), where_(std::move(where)) {}

  const std::string& where() const { return where_; }
  bool has(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }
  const Json& at(const char* key) const { return object_[key]; }

  Error type_error(const char* key, const std::string& expected) const {
    return make_error("{}: '{}': expected {}, found {}", where_, key, expected,
                      object_.contains(key) ? json_describe(object_[key]) : std::string("nothing"));
  }
  Error missing(const char* key) const { return make_error("{}: missing required field '{}'", where_, key); }

  Result<std::optional<int64_t>> optional_int(const char* key) const {
    if (!has(key)) return std::optional<int64_t>();
    const Json& v = object_[key];
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) {
      return type_error(key, "an integer");
    }
    return std::optional<int64_t>(v.get<int64_t>());
  }
  Result<int64_t> required_int(const char* key) const {
    KILN_ASSIGN(const std::optional<int64_t> v, optional_int(key));
    if (!v) return missing(key);
    return *v;
  }
  Result<std::optional<double>> optional_number(const char* key) const {
    if (!has(key)) return std::optional<double>();
    if (!object_[key].is_number()) return type_error(key, "a number");
    return std::optional<double>(object_[key].get<double>());
  }
  Result<double> required_number(const char* key) const {
    KILN_ASSIGN(const std::optional<double> v, optional_number(key));
    if (!v) return missing(key);
    return *v;
  }
  Result<bool> bool_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!object_[key].is_boolean()) return type_error(key, "true or false");
    return object_[key].get<bool>();
  }
  Result<std::optional<std::string>> optional_string(const char* key) const {
    if (!has(key)) return std::optional<std::string>();
    if (!object_[key].is_string()) return type_error(key, "a string");
    return std::optional<std::string>(object_[key].get<std::string>());
  }

 private:
  const Json& object_;
  std::string where_;
};

}  // namespace kiln
