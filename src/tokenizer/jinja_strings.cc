// Python's str methods on UTF-8 strings, as chat templates call them (strip, split, replace, ...):
// indices and lengths count code points, whitespace is str.isspace()'s.
#include <algorithm>

#include "tokenizer/jinja_value.h"

namespace kiln::jinja {

namespace {

char32_t ascii_upper(char32_t c) { return c >= 'a' && c <= 'z' ? c - 32 : c; }
char32_t ascii_lower(char32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
bool is_cased(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

}  // namespace

std::string py_strip(std::string_view text, const std::string* chars, bool left, bool right) {
  const std::u32string s = decode_utf8(text);
  const std::u32string set = chars ? decode_utf8(*chars) : std::u32string();
  const auto strip = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : is_python_space(c);
  };
  size_t begin = 0, end = s.size();
  while (left && begin < end && strip(s[begin])) ++begin;
  while (right && end > begin && strip(s[end - 1])) --end;
  return encode_utf8(std::u32string_view(s).substr(begin, end - begin));
}

std::vector<std::string> py_split(std::string_view text, const std::string* separator, int64_t max_splits,
                                  bool from_right) {
  std::vector<std::string> out;
  const auto more = [&](size_t splits) {
    return max_splits < 0 || static_cast<int64_t>(splits) < max_splits;
  };
  if (separator) {
    if (separator->empty()) fail("empty separator");
    const size_t n = separator->size();
    if (!from_right) {
      size_t pos = 0;
      for (size_t at; more(out.size()) && (at = text.find(*separator, pos)) != std::string_view::npos;
           pos = at + n) {
        out.emplace_back(text.substr(pos, at - pos));
      }
      out.emplace_back(text.substr(pos));
      return out;
    }
    size_t end = text.size();
    for (size_t at;
         more(out.size()) && end >= n && (at = text.rfind(*separator, end - n)) != std::string_view::npos;
         end = at) {
      out.emplace_back(text.substr(at + n, end - at - n));
    }
    out.emplace_back(text.substr(0, end));
    std::reverse(out.begin(), out.end());
    return out;
  }
  // No separator: runs of whitespace split, and none are kept at the ends.
  const std::u32string s = decode_utf8(text);
  if (!from_right) {
    size_t i = 0;
    while (true) {
      while (i < s.size() && is_python_space(s[i])) ++i;
      if (i == s.size()) break;
      if (!more(out.size())) {
        out.push_back(encode_utf8(std::u32string_view(s).substr(i)));
        break;
      }
      size_t j = i;
      while (j < s.size() && !is_python_space(s[j])) ++j;
      out.push_back(encode_utf8(std::u32string_view(s).substr(i, j - i)));
      i = j;
    }
    return out;
  }
  size_t i = s.size();
  while (true) {
    while (i > 0 && is_python_space(s[i - 1])) --i;
    if (i == 0) break;
    if (!more(out.size())) {
      out.push_back(encode_utf8(std::u32string_view(s).substr(0, i)));
      break;
    }
    size_t j = i;
    while (j > 0 && !is_python_space(s[j - 1])) --j;
    out.push_back(encode_utf8(std::u32string_view(s).substr(j, i - j)));
    i = j;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> py_splitlines(std::string_view text) {
  const std::u32string s = decode_utf8(text);
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    const bool boundary = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) ||
                          c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!boundary) continue;
    out.push_back(encode_utf8(std::u32string_view(s).substr(start, i - start)));
    if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
    start = i + 1;
  }
  if (start < s.size()) out.push_back(encode_utf8(std::u32string_view(s).substr(start)));
  return out;
}

std::string py_replace(std::string_view text, std::string_view old, std::string_view replacement,
                       int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {  // Python inserts the replacement before every character and at the end
    const std::u32string s = decode_utf8(text);
    for (char32_t c : s) {
      if (count < 0 || done < count) out += replacement, ++done;
      out += encode_utf8(std::u32string(1, c));
    }
    if (count < 0 || done < count) out += replacement;
    return out;
  }
  size_t pos = 0;
  for (size_t at; (count < 0 || done < count) && (at = text.find(old, pos)) != std::string_view::npos;
       pos = at + old.size(), ++done) {
    out += text.substr(pos, at - pos);
    out += replacement;
  }
  out += text.substr(pos);
  return out;
}

int64_t py_find(std::string_view text, std::string_view sub, bool from_right) {
  const size_t at = from_right ? text.rfind(sub) : text.find(sub);
  if (at == std::string_view::npos) return -1;
  return static_cast<int64_t>(code_point_count(text.substr(0, at)));
}

int64_t py_count(std::string_view text, std::string_view sub) {
  if (sub.empty()) return static_cast<int64_t>(code_point_count(text)) + 1;
  int64_t n = 0;
  for (size_t pos = 0; (pos = text.find(sub, pos)) != std::string_view::npos; pos += sub.size()) ++n;
  return n;
}

std::string py_upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(ascii_upper(static_cast<unsigned char>(c)));
  return out;
}

std::string py_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(ascii_lower(static_cast<unsigned char>(c)));
  return out;
}

std::string py_title(std::string_view text) {
  std::string out(text);
  bool previous_cased = false;
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    c = static_cast<char>(previous_cased ? ascii_lower(u) : ascii_upper(u));
    previous_cased = is_cased(u);
  }
  return out;
}

std::string py_capitalize(std::string_view text) {
  std::string out = py_lower(text);
  if (!out.empty()) out[0] = static_cast<char>(ascii_upper(static_cast<unsigned char>(out[0])));
  return out;
}

std::string jinja_title(std::string_view text) {
  // jinja2's do_title: split on runs of [-\s({\[<], then item[0].upper() + item[1:].lower() for each piece.
  std::u32string s = decode_utf8(text);
  bool word_start = true;
  for (char32_t& c : s) {
    const bool separator = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_python_space(c);
    if (separator) {
      word_start = true;
      continue;
    }
    c = word_start ? ascii_upper(c) : ascii_lower(c);
    word_start = false;
  }
  return encode_utf8(s);
}

bool py_islower(std::string_view text) {
  bool cased = false;
  for (unsigned char c : text) {
    if (c >= 'A' && c <= 'Z') return false;
    cased = cased || (c >= 'a' && c <= 'z');
  }
  return cased;
}

bool py_isupper(std::string_view text) {
  bool cased = false;
  for (unsigned char c : text) {
    if (c >= 'a' && c <= 'z') return false;
    cased = cased || (c >= 'A' && c <= 'Z');
  }
  return cased;
}

}  // namespace kiln::jinja
