#include "engine/engine_header.h"

#include <cstring>

namespace kiln {

// The struct has no implicit padding and its offsets equal the serialized ones; a layout change
// here is a format change and must bump kEngineFormatVersion (docs/ENGINE_FORMAT.md).
static_assert(offsetof(EngineHeader, magic) == 0);
static_assert(offsetof(EngineHeader, format_version) == 8);
static_assert(offsetof(EngineHeader, header_size) == 12);
static_assert(offsetof(EngineHeader, kiln_version) == 16);
static_assert(offsetof(EngineHeader, backend) == 48);
static_assert(offsetof(EngineHeader, device_arch) == 64);
static_assert(offsetof(EngineHeader, metadata_offset) == 96);
static_assert(offsetof(EngineHeader, metadata_bytes) == 104);
static_assert(offsetof(EngineHeader, data_offset) == 112);
static_assert(offsetof(EngineHeader, data_bytes) == 120);
static_assert(offsetof(EngineHeader, file_bytes) == 128);
static_assert(offsetof(EngineHeader, checksum) == 136);
static_assert(sizeof(EngineHeader) == kEngineHeaderFieldBytes);
static_assert(kEngineHeaderFieldBytes <= kEngineHeaderSize);

namespace {

template <class T>
void put_le(uint8_t* out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

template <class T>
T get_le(const uint8_t* in) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(in[i]) << (8 * i);
  return value;
}

template <size_t N>
void put_chars(uint8_t* out, const char (&field)[N]) {
  std::memcpy(out, field, N);
}

template <size_t N>
Status check_nul_terminated(const uint8_t* in, const char* name) {
  if (std::memchr(in, '\0', N) == nullptr) {
    return make_error("engine header field '{}' is not NUL-terminated within its {} bytes", name, N);
  }
  return {};
}

}  // namespace

void encode_engine_header(const EngineHeader& h, std::span<uint8_t, kEngineHeaderSize> out) {
  uint8_t* p = out.data();
  std::memset(p, 0, kEngineHeaderSize);
  put_chars(p + offsetof(EngineHeader, magic), h.magic);
  put_le(p + offsetof(EngineHeader, format_version), h.format_version);
  put_le(p + offsetof(EngineHeader, header_size), h.header_size);
  put_chars(p + offsetof(EngineHeader, kiln_version), h.kiln_version);
  put_chars(p + offsetof(EngineHeader, backend), h.backend);
  put_chars(p + offsetof(EngineHeader, device_arch), h.device_arch);
  put_le(p + offsetof(EngineHeader, metadata_offset), h.metadata_offset);
  put_le(p + offsetof(EngineHeader, metadata_bytes), h.metadata_bytes);
  put_le(p + offsetof(EngineHeader, data_offset), h.data_offset);
  put_le(p + offsetof(EngineHeader, data_bytes), h.data_bytes);
  put_le(p + offsetof(EngineHeader, file_bytes), h.file_bytes);
  put_le(p + offsetof(EngineHeader, checksum), h.checksum);
}

EngineHeader decode_engine_header(std::span<const uint8_t, kEngineHeaderSize> in) {
  const uint8_t* p = in.data();
  EngineHeader h{};
  std::memcpy(h.magic, p + offsetof(EngineHeader, magic), sizeof(h.magic));
  h.format_version = get_le<uint32_t>(p + offsetof(EngineHeader, format_version));
  h.header_size = get_le<uint32_t>(p + offsetof(EngineHeader, header_size));
  std::memcpy(h.kiln_version, p + offsetof(EngineHeader, kiln_version), sizeof(h.kiln_version));
  std::memcpy(h.backend, p + offsetof(EngineHeader, backend), sizeof(h.backend));
  std::memcpy(h.device_arch, p + offsetof(EngineHeader, device_arch), sizeof(h.device_arch));
  h.metadata_offset = get_le<uint64_t>(p + offsetof(EngineHeader, metadata_offset));
  h.metadata_bytes = get_le<uint64_t>(p + offsetof(EngineHeader, metadata_bytes));
  h.data_offset = get_le<uint64_t>(p + offsetof(EngineHeader, data_offset));
  h.data_bytes = get_le<uint64_t>(p + offsetof(EngineHeader, data_bytes));
  h.file_bytes = get_le<uint64_t>(p + offsetof(EngineHeader, file_bytes));
  h.checksum = get_le<uint64_t>(p + offsetof(EngineHeader, checksum));
  return h;
}

Status check_engine_header_encoding(std::span<const uint8_t, kEngineHeaderSize> in) {
  const uint8_t* p = in.data();
  KILN_TRY(check_nul_terminated<sizeof(EngineHeader::kiln_version)>(p + offsetof(EngineHeader, kiln_version),
                                                                    "kiln_version"));
  KILN_TRY(
      check_nul_terminated<sizeof(EngineHeader::backend)>(p + offsetof(EngineHeader, backend), "backend"));
  KILN_TRY(check_nul_terminated<sizeof(EngineHeader::device_arch)>(p + offsetof(EngineHeader, device_arch),
                                                                   "device_arch"));
  // Reserved bytes stay zero so that a field added later (with a version bump) can never be
  // mistaken for padding, and so that corruption of the unchecksummed header is caught.
  for (size_t i = kEngineHeaderFieldBytes; i < kEngineHeaderSize; ++i) {
    if (p[i] != 0) return make_error("engine header reserved byte {} is 0x{:02x}, expected 0", i, p[i]);
  }
  return {};
}

}  // namespace kiln
