// UTF-8 helpers shared by the tokenizers and the streaming detokenizer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::utf8 {

// Length of the well-formed prefix of a UTF-8 sequence starting at text[pos] (Unicode 15, Table 3-7),
// and whether it is a complete character. A malformed or truncated sequence gives its maximal
// subpart (at least 1 byte), which becomes one U+FFFD, as WHATWG / Rust from_utf8_lossy do.
struct Scan {
  size_t length;
  bool complete;
};
Scan scan(std::string_view text, size_t pos);

// Length in bytes of the (possibly malformed) character at text[pos]; always >= 1.
inline size_t char_length(std::string_view text, size_t pos) { return scan(text, pos).length; }

bool is_valid(std::string_view text);
// `text` with each maximal ill-formed subpart replaced by U+FFFD.
std::string sanitize(std::string_view text);
// Bytes at the end of `text` that start a well-formed but unfinished character (0 if none).
size_t incomplete_suffix(std::string_view text);

// Code point of the well-formed character at text[pos] (U+FFFD when malformed).
char32_t decode(std::string_view text, size_t pos);
void append(std::string& out, char32_t code_point);
// Unicode White_Space (Rust char::is_whitespace), used for lstrip / rstrip of added tokens.
bool is_whitespace(char32_t code_point);

// GPT-2's bytes_to_unicode(): printable bytes map to themselves, the rest to U+0100 + n, so byte-level
// BPE works on printable characters (openai/gpt-2 encoder.py).
const std::array<std::string, 256>& byte_to_unicode();
// Inverse of byte_to_unicode(); -1 for code points outside it.
int byte_from_unicode(char32_t code_point);

}  // namespace kiln::utf8
