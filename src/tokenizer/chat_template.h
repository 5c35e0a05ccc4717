// Chat templates: the Jinja2 subset Hugging Face chat templates use (tokenizer_config.json's
// "chat_template", or chat_template.jinja), rendered as transformers' apply_chat_template(...,
// tokenize=False) does: trim_blocks and lstrip_blocks on, raise_exception() available.
//
// Enough of Jinja for the templates of Llama 2, Llama 3 / 3.1, Mistral and Qwen2 / 2.5; anything else
// is a clear parse or render error, never a crash.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"

namespace kiln {

namespace jinja {
class Value;
}

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

class ChatTemplateImpl;

class ChatTemplate {
 public:
  // Parses `source`; bos_token / eos_token are the strings the template sees as bos_token and
  // eos_token. Errors: syntax the subset does not support, with line and column.
  static Result<ChatTemplate> parse(std::string source, std::string bos_token, std::string eos_token);

  // The prompt text for `messages`; with add_generation_prompt the template's assistant header is
  // appended. Errors: raise_exception() in the template (its message), type errors, runaway loops.
  Result<std::string> render(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

  // The prompt for a full template context given as a JSON object: "messages" (which may carry
  // tool_calls, tool_call_id, non-string content, ...), "tools", "add_generation_prompt" and any
  // extra variables the template reads (e.g. "date_string"), as apply_chat_template(**kwargs) passes
  // them. bos_token / eos_token are the template's unless the context sets them; tools and documents
  // are None unless it does. Errors: malformed JSON, no messages, and render's.
  Result<std::string> render_json(std::string_view context_json) const;

  const std::string& source() const;
  const std::string& bos_token() const;
  const std::string& eos_token() const;

 private:
  Result<std::string> render_variables(std::vector<std::pair<std::string, jinja::Value>> variables) const;

  std::shared_ptr<const ChatTemplateImpl> impl_;
};

}  // namespace kiln
