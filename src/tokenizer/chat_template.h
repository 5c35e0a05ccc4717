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

#include "common/error.h"

namespace kiln {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant", ...
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

  const std::string& source() const;

 private:
  std::shared_ptr<const ChatTemplateImpl> impl_;
};

}  // namespace kiln
