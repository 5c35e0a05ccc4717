// Tokens of a chat template (jinja_lexer.cc produces them, jinja_parser.cc reads them).
#pragma once

#include <string>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace kiln::jinja {

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Op, End };

struct Token {
  Tok type;
  std::string text;   // Data: the text after whitespace control; Name / Op: itself; String: the decoded value
  size_t offset = 0;  // byte offset in the normalized source
  Value literal = {};  // Integer, Float
};

// Tokens of a normalized source (normalize_source in jinja_ast.h), ending with Tok::End. Throws
// TemplateError at the first malformed tag, string or number.
std::vector<Token> lex(const std::string& normalized_source);

}  // namespace kiln::jinja
