// Byte-exact (de)serialization of EngineHeader. Internal to src/engine (and its tests).
//
// The header is encoded field by field in little-endian rather than by memcpy of the struct, so
// the file layout does not depend on the compiler's padding or the host's byte order. The
// static_asserts in engine_header.cc pin the struct to the same offsets, so offsetof(EngineHeader,
// field) is also the field's byte offset in the file.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/error.h"
#include "engine/engine_file.h"

namespace kiln {

// Bytes of the header that carry fields; the rest of the 4096-byte header is reserved, zero.
inline constexpr size_t kEngineHeaderFieldBytes = 144;

// Writes `header` into out[0, kEngineHeaderSize), zero-filling the reserved tail.
void encode_engine_header(const EngineHeader& header, std::span<uint8_t, kEngineHeaderSize> out);

// Reads the fields back as they are; validation is separate so that a loader can check the magic
// and the format version before anything else.
EngineHeader decode_engine_header(std::span<const uint8_t, kEngineHeaderSize> in);

// Checks what decoding cannot express: each string field is NUL-terminated within its width and
// the reserved tail [kEngineHeaderFieldBytes, kEngineHeaderSize) is zero.
Status check_engine_header_encoding(std::span<const uint8_t, kEngineHeaderSize> in);

// Copies `value` into a fixed char field, NUL-padded. False if it does not fit with its NUL.
template <size_t N>
bool set_header_string(char (&field)[N], std::string_view value) {
  if (value.size() >= N) return false;
  std::fill(field, field + N, '\0');
  std::copy(value.begin(), value.end(), field);
  return true;
}

// The string in a fixed char field (up to its first NUL).
template <size_t N>
std::string header_string(const char (&field)[N]) {
  size_t n = 0;
  while (n < N && field[n] != '\0') ++n;
  return std::string(field, n);
}

}  // namespace kiln
