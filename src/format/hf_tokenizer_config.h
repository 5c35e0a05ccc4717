// The chat template of a Hugging Face model directory and the special-token strings it is rendered
// with, found where transformers' AutoTokenizer finds them: chat_template.jinja beside the model
// (written by transformers >= 4.43; it wins) or tokenizer_config.json's "chat_template" (a string, or
// a list of {"name", "template"} of which "default" is used), and tokenizer_config.json's bos_token /
// eos_token (a string or an AddedToken object {"content": ...}).
#pragma once

#include <string>

#include "common/error.h"

namespace kiln {

struct HfChatTemplate {
  std::string source;     // the template text; empty when the model has none
  std::string origin;     // the file it came from (for messages), empty when none
  std::string bos_token;  // empty when unset or null
  std::string eos_token;
  bool has_tokenizer_config = false;  // tokenizer_config.json was read (so empty tokens mean "none")
};

// `json_text` is tokenizer_config.json; `origin` names it in errors and in HfChatTemplate::origin.
Result<HfChatTemplate> parse_hf_tokenizer_config(const std::string& json_text, const std::string& origin);

// Reads model_dir/tokenizer_config.json and model_dir/chat_template.jinja, either or both of which
// may be absent (then the result is empty).
Result<HfChatTemplate> read_hf_chat_template(const std::string& model_dir);

}  // namespace kiln
