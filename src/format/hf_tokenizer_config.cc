#include "format/hf_tokenizer_config.h"

#include <filesystem>

#include "common/mapped_file.h"
#include "format/json_util.h"

namespace kiln {
namespace {

using Json = nlohmann::ordered_json;

// A special token is a string, an AddedToken object ({"content": "<s>", "lstrip": false, ...},
// sometimes with "__type": "AddedToken"), or null.
Result<std::string> special_token(const Json& config, const char* key, const std::string& origin) {
  if (!config.contains(key) || config[key].is_null()) return std::string();
  const Json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return make_error("{}: '{}': expected a string or an object with \"content\", found {}", origin, key,
                    json_describe(v));
}

}  // namespace

Result<HfChatTemplate> parse_hf_tokenizer_config(const std::string& json_text, const std::string& origin) {
  KILN_ASSIGN(const Json config, parse_json_strict(json_text, origin));
  if (!config.is_object())
    return make_error("{}: expected a JSON object, found {}", origin, json_describe(config));
  HfChatTemplate result;
  result.has_tokenizer_config = true;
  KILN_ASSIGN(result.bos_token, special_token(config, "bos_token", origin));
  KILN_ASSIGN(result.eos_token, special_token(config, "eos_token", origin));
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return result;
  const Json& chat_template = config["chat_template"];
  if (chat_template.is_string()) {
    result.source = chat_template.get<std::string>();
  } else if (chat_template.is_array()) {
    // Named templates (e.g. "default", "tool_use", "rag"): transformers uses "default" when no tools
    // are passed.
    bool found = false;
    for (const Json& entry : chat_template) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
          !entry["name"].is_string() || !entry["template"].is_string()) {
        return make_error("{}: 'chat_template': expected {{\"name\", \"template\"}} entries, found {}",
                          origin, json_describe(entry));
      }
      if (entry["name"] == "default") {
        result.source = entry["template"].get<std::string>();
        found = true;
      }
    }
    if (!found) return make_error("{}: 'chat_template' has no template named \"default\"", origin);
  } else {
    return make_error("{}: 'chat_template': expected a string or a list of named templates, found {}", origin,
                      json_describe(chat_template));
  }
  result.origin = origin;
  return result;
}

Result<HfChatTemplate> read_hf_chat_template(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  HfChatTemplate result;
  const std::string config_path = (fs::path(model_dir) / "tokenizer_config.json").string();
  if (fs::exists(config_path, ec)) {
    KILN_ASSIGN(const std::string text, read_text_file(config_path));
    KILN_ASSIGN(result, parse_hf_tokenizer_config(text, config_path));
  }
  const std::string jinja_path = (fs::path(model_dir) / "chat_template.jinja").string();
  if (fs::exists(jinja_path, ec)) {
    KILN_ASSIGN(result.source, read_text_file(jinja_path));
    result.origin = jinja_path;
  }
  return result;
}

}  // namespace kiln
