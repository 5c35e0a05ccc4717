// Lexer for the Jinja2 subset of chat templates, rule by rule as jinja2 3.1's lexer.py: the same
// token regexes, whitespace control ("{%-", "-%}", "+%}"), trim_blocks (one newline after a block
// or comment tag is dropped), lstrip_blocks (spaces and tabs before a block or comment tag on its own
// line are dropped), string literals decoded as Python's unicode-escape codec does, and brackets
// balanced so "}}" inside a dict literal does not end a tag.
#include "tokenizer/jinja_lexer.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

namespace kiln::jinja {

namespace {

[[noreturn]] void fail_at(size_t offset, std::string message) {
  throw TemplateError{std::move(message), offset};
}

// Byte length of the whitespace character (Python's \s) at text[pos], 0 if there is none.
size_t space_at(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  const auto c = static_cast<unsigned char>(text[pos]);
  if (c < 0x80) return is_python_space(c) ? 1 : 0;
  const size_t length = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
  const std::u32string decoded = decode_utf8(text.substr(pos, length));
  return decoded.size() == 1 && is_python_space(decoded[0]) ? length : 0;
}

std::string rstrip_spaces(std::string_view text) {
  std::u32string chars = decode_utf8(text);
  while (!chars.empty() && is_python_space(chars.back())) chars.pop_back();
  return encode_utf8(chars);
}

bool all_spaces(std::string_view text) {
  const std::u32string chars = decode_utf8(text);
  return !chars.empty() && std::all_of(chars.begin(), chars.end(), is_python_space);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

// String literal body as jinja2 decodes it: non-ASCII characters are backslash-escaped, then the
// whole is decoded with Python's unicode-escape codec (so "\n", "\x41", "\u00e9", octal escapes and
// line continuations work, and unknown escapes such as "\d" stay as written).
std::string decode_string_literal(std::string_view body, size_t offset) {
  std::string ascii;
  for (char32_t c : decode_utf8(body)) {
    if (c < 0x80) {
      ascii.push_back(static_cast<char>(c));
    } else if (c <= 0xFF) {
      ascii += fmt::format("\\x{:02x}", static_cast<uint32_t>(c));
    } else if (c <= 0xFFFF) {
      ascii += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
    } else {
      ascii += fmt::format("\\U{:08x}", static_cast<uint32_t>(c));
    }
  }
  std::u32string out;
  const auto hex = [&](size_t at, int digits, const char* escape) {
    uint32_t value = 0;
    for (int k = 0; k < digits; ++k) {
      const char h = at + k < ascii.size() ? ascii[at + k] : '\0';
      const int d = is_digit(h)              ? h - '0'
                    : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                    : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                             : -1;
      if (d < 0) fail_at(offset, fmt::format("truncated {} escape in a string literal", escape));
      value = value * 16 + static_cast<uint32_t>(d);
    }
    return value;
  };
  for (size_t i = 0; i < ascii.size(); ++i) {
    const char c = ascii[i];
    if (c != '\\') {
      out.push_back(static_cast<unsigned char>(c));
      continue;
    }
    if (i + 1 >= ascii.size()) fail_at(offset, "\\ at end of string");
    const char e = ascii[++i];
    char32_t value;
    switch (e) {
      case '\n':
        continue;
      case '\\':
        value = '\\';
        break;
      case '\'':
        value = '\'';
        break;
      case '"':
        value = '"';
        break;
      case 'a':
        value = 7;
        break;
      case 'b':
        value = 8;
        break;
      case 'f':
        value = 12;
        break;
      case 'n':
        value = 10;
        break;
      case 'r':
        value = 13;
        break;
      case 't':
        value = 9;
        break;
      case 'v':
        value = 11;
        break;
      case 'x':
        value = hex(i + 1, 2, "\\xXX"), i += 2;
        break;
      case 'u':
        value = hex(i + 1, 4, "\\uXXXX"), i += 4;
        break;
      case 'U':
        value = hex(i + 1, 8, "\\UXXXXXXXX"), i += 8;
        if (value > 0x10FFFF) fail_at(offset, "illegal Unicode character in a string literal");
        break;
      case 'N':
        fail_at(offset, "\\N{...} escapes are not supported");
      default:
        if (e >= '0' && e <= '7') {
          value = static_cast<char32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < ascii.size() && ascii[i + 1] >= '0' && ascii[i + 1] <= '7'; ++k) {
            value = value * 8 + static_cast<char32_t>(ascii[++i] - '0');
          }
          break;
        }
        out.push_back('\\');
        value = static_cast<unsigned char>(e);
    }
    if (value >= 0xD800 && value <= 0xDFFF) fail_at(offset, "lone surrogate in a string literal");
    out.push_back(value);
  }
  return encode_utf8(out);
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(source) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      size_t open = src_.find('{', pos_);
      while (open != std::string::npos && open + 1 < src_.size() && src_[open + 1] != '{' &&
             src_[open + 1] != '%' && src_[open + 1] != '#') {
        open = src_.find('{', open + 1);
      }
      if (open == std::string::npos || open + 1 >= src_.size()) {
        push(Tok::Data, src_.substr(pos_), pos_);
        break;
      }
      const char kind = src_[open + 1];
      size_t after = open + 2;
      const char sign = after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after] : 0;
      if (sign) ++after;
      size_t raw_end = std::string::npos;
      if (kind == '%') raw_end = match_raw_begin(after);
      std::string text = src_.substr(pos_, open - pos_);
      if (sign == '-') {
        text = rstrip_spaces(text);
      } else if (sign != '+' && kind != '{') {           // lstrip_blocks: blocks and comments, not {{
        const size_t line_start = text.rfind('\n') + 1;  // npos + 1 == 0
        if ((line_start > 0 || line_starting_) && all_spaces(std::string_view(text).substr(line_start))) {
          text.resize(line_start);
        }
      }
      push(Tok::Data, std::move(text), pos_);
      if (raw_end != std::string::npos) {
        line_starting_ = src_[raw_end - 1] == '\n';
        lex_raw(raw_end, open);
      } else if (kind == '#') {
        lex_comment(after, open);
      } else {
        line_starting_ = false;
        lex_tag(kind == '{' ? Tok::VarBegin : Tok::BlockBegin, after, open);
      }
    }
    tokens_.push_back(Token{Tok::End, "", src_.size()});
    return std::move(tokens_);
  }

 private:
  void push(Tok type, std::string text, size_t offset) {
    if (type == Tok::Data && text.empty()) return;
    tokens_.push_back(Token{type, std::move(text), offset});
  }

  size_t skip_spaces(size_t pos) const {
    while (size_t n = space_at(src_, pos)) pos += n;
    return pos;
  }

  bool at(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  // `\s*raw\s*(-%}\s*|%})` at pos: the end of the match, or npos.
  size_t match_raw_begin(size_t pos) const {
    pos = skip_spaces(pos);
    if (!at(pos, "raw")) return std::string::npos;
    pos = skip_spaces(pos + 3);
    if (at(pos, "-%}")) return skip_spaces(pos + 3);
    if (at(pos, "%}")) return pos + 2;
    return std::string::npos;
  }

  // Block end `+%}`, `-%}\s*` or `%}\n?` (trim_blocks) at pos: the end of the match, or npos.
  size_t match_block_end(size_t pos) const {
    if (at(pos, "+%}")) return pos + 3;
    if (at(pos, "-%}")) return skip_spaces(pos + 3);
    if (at(pos, "%}")) return pos + 2 + (at(pos + 2, "\n") ? 1 : 0);
    return std::string::npos;
  }

  void lex_comment(size_t pos, size_t open) {
    const size_t close = src_.find("#}", pos);
    if (close == std::string::npos) fail_at(open, "missing end of comment tag");
    if (close > pos && src_[close - 1] == '-') {
      pos_ = skip_spaces(close + 2);
    } else {
      pos_ = close + 2 + (close > pos && src_[close - 1] == '+' ? 0 : (at(close + 2, "\n") ? 1 : 0));
    }
    line_starting_ = src_[pos_ - 1] == '\n';
  }

  void lex_raw(size_t pos, size_t open) {
    for (size_t search = pos;;) {
      const size_t tag = src_.find("{%", search);
      if (tag == std::string::npos) fail_at(open, "missing end of raw directive");
      size_t p = tag + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      p = skip_spaces(p);
      size_t end = std::string::npos;
      if (at(p, "endraw")) end = match_block_end(skip_spaces(p + 6));
      if (end == std::string::npos) {
        search = tag + 2;
        continue;
      }
      std::string text = src_.substr(pos, tag - pos);
      if (sign == '-') {
        text = rstrip_spaces(text);
      } else if (sign != '+') {
        const size_t line_start = text.rfind('\n') + 1;
        if ((line_start > 0 || line_starting_) && all_spaces(std::string_view(text).substr(line_start))) {
          text.resize(line_start);
        }
      }
      push(Tok::Data, std::move(text), pos);
      pos_ = end;
      line_starting_ = src_[end - 1] == '\n';
      return;
    }
  }

  void lex_tag(Tok begin, size_t pos, size_t open) {
    push(begin, begin == Tok::VarBegin ? "{{" : "{%", open);
    std::vector<char> balance;
    while (true) {
      if (pos >= src_.size()) {
        fail_at(open, begin == Tok::VarBegin ? "unexpected end of template: '{{' is never closed with '}}'"
                                             : "unexpected end of template: '{%' is never closed with '%}'");
      }
      if (balance.empty()) {
        size_t end = std::string::npos;
        if (begin == Tok::BlockBegin) {
          end = match_block_end(pos);
        } else if (at(pos, "-}}")) {
          end = skip_spaces(pos + 3);
        } else if (at(pos, "}}")) {
          end = pos + 2;
        }
        if (end != std::string::npos) {
          push(begin == Tok::VarBegin ? Tok::VarEnd : Tok::BlockEnd, begin == Tok::VarBegin ? "}}" : "%}",
               pos);
          pos_ = end;
          line_starting_ = src_[end - 1] == '\n';
          return;
        }
      }
      if (size_t n = space_at(src_, pos)) {
        pos += n;
        continue;
      }
      if (size_t end = match_float(pos); end != std::string::npos) {
        std::string digits;
        for (size_t i = pos; i < end; ++i) {
          if (src_[i] != '_') digits.push_back(src_[i]);
        }
        Token token{Tok::Float, src_.substr(pos, end - pos), pos};
        token.literal = Value::number(std::strtod(digits.c_str(), nullptr));
        tokens_.push_back(std::move(token));
        pos = end;
        continue;
      }
      if (is_digit(src_[pos])) {
        pos = lex_integer(pos);
        continue;
      }
      if (is_name_start(src_[pos])) {
        size_t end = pos;
        while (end < src_.size() && is_name_char(src_[end])) ++end;
        push(Tok::Name, src_.substr(pos, end - pos), pos);
        pos = end;
        continue;
      }
      if (src_[pos] == '\'' || src_[pos] == '"') {
        size_t end = pos + 1;
        while (end < src_.size() && src_[end] != src_[pos]) end += src_[end] == '\\' ? 2 : 1;
        if (end >= src_.size()) fail_at(pos, "unterminated string literal");
        push(Tok::String, decode_string_literal(std::string_view(src_).substr(pos + 1, end - pos - 1), pos),
             pos);
        pos = end + 1;
        continue;
      }
      pos = lex_operator(pos, balance);
    }
  }

  // (\d+_)*\d+ at pos: its end, or npos.
  size_t match_digits(size_t pos) const {
    if (pos >= src_.size() || !is_digit(src_[pos])) return std::string::npos;
    while (pos < src_.size() && is_digit(src_[pos])) ++pos;
    while (pos + 1 < src_.size() && src_[pos] == '_' && is_digit(src_[pos + 1])) {
      ++pos;
      while (pos < src_.size() && is_digit(src_[pos])) ++pos;
    }
    return pos;
  }

  // jinja2's float_re: digits, then an exponent (with an optional fraction before it) or a fraction.
  size_t match_float(size_t pos) const {
    if (pos > 0 && src_[pos - 1] == '.') return std::string::npos;
    const size_t whole = match_digits(pos);
    if (whole == std::string::npos) return std::string::npos;
    const auto exponent = [&](size_t p) -> size_t {
      if (p >= src_.size() || (src_[p] != 'e' && src_[p] != 'E')) return std::string::npos;
      ++p;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      return match_digits(p);
    };
    size_t fraction = std::string::npos;
    if (whole < src_.size() && src_[whole] == '.') fraction = match_digits(whole + 1);
    if (fraction != std::string::npos) {
      if (size_t e = exponent(fraction); e != std::string::npos) return e;
    }
    if (size_t e = exponent(whole); e != std::string::npos) return e;
    return fraction;
  }

  size_t lex_integer(size_t pos) {
    int base = 10;
    size_t start = pos;
    if (src_[pos] == '0' && pos + 1 < src_.size()) {
      const char p = static_cast<char>(src_[pos + 1] | 0x20);
      base = p == 'b' ? 2 : p == 'o' ? 8 : p == 'x' ? 16 : 10;
    }
    const auto digit = [&](char c) {
      const int d = is_digit(c)                                ? c - '0'
                    : ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') ? (c | 0x20) - 'a' + 10
                                                               : 99;
      return d < base ? d : -1;
    };
    std::string digits;
    size_t end = pos;
    if (base != 10) {
      end = pos + 2;
      while (end < src_.size()) {
        const size_t d = src_[end] == '_' ? end + 1 : end;
        if (d >= src_.size() || digit(src_[d]) < 0) break;
        digits.push_back(src_[d]);
        end = d + 1;
      }
      if (digits.empty()) base = 10, end = pos;  // "0x" without digits: the integer 0, then a name
    }
    if (base == 10) {
      const bool zero = src_[pos] == '0';
      digits = src_.substr(pos, 1);
      end = pos + 1;
      while (end < src_.size()) {
        const size_t d = src_[end] == '_' ? end + 1 : end;
        if (d >= src_.size() || !is_digit(src_[d]) || (zero && src_[d] != '0')) break;
        digits.push_back(src_[d]);
        end = d + 1;
      }
    }
    int64_t value = 0;
    const auto result = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
    if (result.ec != std::errc()) fail_at(start, "integer literal too large (kiln's integers are 64-bit)");
    Token token{Tok::Integer, src_.substr(start, end - start), start};
    token.literal = Value::integer(value);
    tokens_.push_back(std::move(token));
    return end;
  }

  size_t lex_operator(size_t pos, std::vector<char>& balance) {
    static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwo) {
      if (at(pos, op)) {
        push(Tok::Op, std::string(op), pos);
        return pos + 2;
      }
    }
    const char c = src_[pos];
    if (std::string_view("+-/*%~[](){}=<>.:|,;").find(c) == std::string_view::npos) {
      fail_at(pos, fmt::format("unexpected character {}", repr(Value::string(src_.substr(pos, 1)))));
    }
    if (c == '(' || c == '[' || c == '{') balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) fail_at(pos, fmt::format("unexpected '{}'", c));
      if (balance.back() != c) fail_at(pos, fmt::format("unexpected '{}', expected '{}'", c, balance.back()));
      balance.pop_back();
    }
    push(Tok::Op, std::string(1, c), pos);
    return pos + 1;
  }

  const std::string& src_;
  size_t pos_ = 0;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(const std::string& normalized_source) { return Lexer(normalized_source).run(); }

}  // namespace kiln::jinja
