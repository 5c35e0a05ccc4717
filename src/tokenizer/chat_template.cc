#include "tokenizer/chat_template.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "tokenizer/jinja_interpreter.h"

namespace kiln {

class ChatTemplateImpl {
 public:
  std::string source;
  std::string bos_token, eos_token;
  std::shared_ptr<const jinja::Template> parsed;
};

namespace {

Error to_error(const jinja::TemplateError& error, const std::string& normalized_source) {
  // raise_exception() messages are the template author's words for the caller ("Conversation roles
  // must alternate ..."): pass them on as they are.
  if (error.raised) return Error{error.message};
  if (error.offset == SIZE_MAX) return make_error("chat template: {}", error.message);
  return make_error("chat template {}: {}", jinja::position_of(normalized_source, error.offset),
                    error.message);
}

}  // namespace

Result<ChatTemplate> ChatTemplate::parse(std::string source, std::string bos_token, std::string eos_token) {
  auto impl = std::make_shared<ChatTemplateImpl>();
  std::string normalized = jinja::normalize_source(source);
  try {
    impl->parsed = jinja::parse_template(normalized);
    jinja::check_names(*impl->parsed);
  } catch (const jinja::TemplateError& error) {
    return to_error(error, normalized);
  }
  impl->source = std::move(source);
  impl->bos_token = std::move(bos_token);
  impl->eos_token = std::move(eos_token);
  ChatTemplate result;
  result.impl_ = std::move(impl);
  return result;
}

namespace {

constexpr const char* kEmptyConversation =
    "Cannot apply chat template to an empty conversation. Provide at least one message.";

jinja::Value from_json(const nlohmann::ordered_json& json, int depth) {
  using jinja::Value;
  if (depth > jinja::kMaxValueDepth) jinja::fail("context JSON nested too deeply");
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::boolean(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::integer(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const auto v = json.get<uint64_t>();
      return v <= INT64_MAX ? Value::integer(static_cast<int64_t>(v)) : Value::number(static_cast<double>(v));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Value::number(json.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::string(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      for (const auto& item : json) items.push_back(from_json(item, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto dict = std::make_shared<jinja::DictObject>();
      for (const auto& [key, item] : json.items()) dict->set(key, from_json(item, depth + 1));
      return Value::dict(std::move(dict));
    }
    default:
      jinja::fail("unsupported JSON value in the context");
  }
}

}  // namespace

Result<std::string> ChatTemplate::render(std::span<const ChatMessage> messages,
                                         bool add_generation_prompt) const {
  using jinja::Value;
  if (messages.empty()) return Error{kEmptyConversation};
  std::vector<Value> items;
  items.reserve(messages.size());
  for (const ChatMessage& message : messages) {
    auto dict = std::make_shared<jinja::DictObject>();
    dict->set("role", Value::string(message.role));
    dict->set("content", Value::string(message.content));
    items.push_back(Value::dict(std::move(dict)));
  }
  std::vector<std::pair<std::string, Value>> variables;
  variables.emplace_back("messages", Value::list(std::move(items)));
  variables.emplace_back("add_generation_prompt", Value::boolean(add_generation_prompt));
  return render_variables(std::move(variables));
}

Result<std::string> ChatTemplate::render_json(std::string_view context_json) const {
  auto json = nlohmann::ordered_json::parse(context_json, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) return make_error("chat template context: not a JSON object");
  const auto messages = json.find("messages");
  if (messages == json.end() || !messages->is_array()) {
    return make_error("chat template context: \"messages\" must be an array");
  }
  if (messages->empty()) return Error{kEmptyConversation};
  // apply_chat_template drops message keys whose value is None (an OpenAI-style "content": null).
  for (auto& message : *messages) {
    if (!message.is_object()) return make_error("chat template context: each message must be a JSON object");
    for (auto it = message.begin(); it != message.end();) it = it->is_null() ? message.erase(it) : std::next(it);
  }
  std::vector<std::pair<std::string, jinja::Value>> variables;
  try {
    for (const auto& [key, value] : json.items()) variables.emplace_back(key, from_json(value, 0));
  } catch (const jinja::TemplateError& error) {
    return make_error("chat template context: {}", error.message);
  }
  return render_variables(std::move(variables));
}

Result<std::string> ChatTemplate::render_variables(
    std::vector<std::pair<std::string, jinja::Value>> variables) const {
  using jinja::Value;
  // What transformers' apply_chat_template passes besides the caller's: tools and documents (None),
  // and the tokenizer's special tokens.
  const auto set_default = [&](const char* name, Value value) {
    for (const auto& entry : variables) {
      if (entry.first == name) return;
    }
    variables.emplace_back(name, std::move(value));
  };
  set_default("tools", Value::none());
  set_default("documents", Value::none());
  set_default("bos_token", Value::string(impl_->bos_token));
  set_default("eos_token", Value::string(impl_->eos_token));
  try {
    jinja::Interpreter interpreter(*impl_->parsed, jinja::RenderOptions{});
    return interpreter.render(std::move(variables));
  } catch (const jinja::TemplateError& error) {
    return to_error(error, impl_->parsed->source);
  }
}

const std::string& ChatTemplate::source() const { return impl_->source; }
const std::string& ChatTemplate::bos_token() const { return impl_->bos_token; }
const std::string& ChatTemplate::eos_token() const { return impl_->eos_token; }

}  // namespace kiln
