// A pattern of HF tokenizers' {"String": ...} or {"Regex": ...} form. Regexes are compiled with PCRE2
// (PCRE2_UTF | PCRE2_UCP, JIT when available), which agrees with the Oniguruma engine HF uses on the
// GPT-2 / Llama 3 / Qwen2 pre-tokenizer patterns.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"

namespace kiln {

class Pattern {
 public:
  static Result<Pattern> literal(std::string text);
  static Result<Pattern> regex(const std::string& expression);

  // Non-overlapping matches [begin, end) left to right; `text` must be valid UTF-8. Empty matches are
  // reported (HF keeps them and drops empty pieces later); the search then moves one character on.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct Compiled;
  std::string literal_;
  std::shared_ptr<const Compiled> regex_;
};

}  // namespace kiln
