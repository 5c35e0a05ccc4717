// Strict JSON parsing shared by the format readers (internal to format/): parse errors become
// Error values, and duplicate object keys are refused, because nlohmann::json silently keeps the
// last one, which would let a corrupt safetensors header or config.json shadow an entry.
#pragma once

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

}  // namespace kiln
