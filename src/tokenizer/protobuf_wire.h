// A minimal protocol-buffers wire-format reader (https://protobuf.dev/programming-guides/encoding/),
// enough to read sentencepiece's ModelProto without libprotobuf. Every read is bounds-checked.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace kiln {

class ProtoReader {
 public:
  enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

  explicit ProtoReader(std::string_view data) : data_(data) {}

  bool done() const { return pos_ >= data_.size() || failed_; }
  bool failed() const { return failed_; }
  size_t position() const { return pos_; }

  // Reads the next field key; false at the end or on malformed input (then failed() tells).
  bool next_field(uint32_t& field, WireType& type) {
    if (done()) return false;
    const uint64_t key = varint();
    field = static_cast<uint32_t>(key >> 3);
    type = static_cast<WireType>(key & 7);
    return !failed_;
  }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) break;
      const uint8_t byte = static_cast<uint8_t>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return value;
    }
    failed_ = true;
    return 0;
  }
  float fixed32_float() {
    if (data_.size() - pos_ < 4) return fail(), 0.0f;
    float value;
    std::memcpy(&value, data_.data() + pos_, 4);
    pos_ += 4;
    return value;
  }
  std::string_view bytes() {
    const uint64_t length = varint();
    if (failed_ || length > data_.size() - pos_) return fail(), std::string_view();
    const std::string_view value = data_.substr(pos_, length);
    pos_ += length;
    return value;
  }
  void skip(WireType type) {
    switch (type) {
      case kVarint: varint(); break;
      case kFixed64: advance(8); break;
      case kLengthDelimited: bytes(); break;
      case kFixed32: advance(4); break;
      default: fail();  // groups (3, 4) are not used by sentencepiece
    }
  }

 private:
  void fail() { failed_ = true; }
  void advance(size_t n) {
    if (data_.size() - pos_ < n) return fail();
    pos_ += n;
  }

  std::string_view data_;
  size_t pos_ = 0;
  bool failed_ = false;
};

}  // namespace kiln
