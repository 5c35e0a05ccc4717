// A GGUF image writer for tests: valid files, and (through the raw_* methods) files no valid writer
// would produce. Used by test_gguf.cc (the reader) and test_gguf_model.cc (the model import).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "format/gguf.h"

namespace kiln::gguf_test {

using VT = GgufValueType;

// Little-endian encoders for hand-built (and hand-broken) GGUF images.
inline void put(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}
inline void put_u32(std::string& out, uint32_t v) { put(out, v, 4); }
inline void put_u64(std::string& out, uint64_t v) { put(out, v, 8); }
inline void put_string(std::string& out, std::string_view s) {
  put_u64(out, s.size());
  out += s;
}

// Writes GGUF images: metadata entries and tensors in call order, data packed at `alignment`.
// The raw_* methods take any bytes, so tests can write entries no valid writer would.
class GgufWriter {
 public:
  uint32_t version = 3;
  uint32_t alignment = 32;  // only where tensor data is placed; add a general.alignment entry to match

  // One metadata entry whose value bytes (after the type) are given.
  void raw_kv(std::string_view key, uint32_t type, const std::string& value) {
    put_string(kvs_, key);
    put_u32(kvs_, type);
    kvs_ += value;
    ++kv_count_;
  }
  void kv_u32(std::string_view key, uint32_t v) { raw_kv(key, uint32_t(VT::U32), le(v, 4)); }
  void kv_string(std::string_view key, std::string_view s) {
    std::string v;
    put_string(v, s);
    raw_kv(key, uint32_t(VT::String), v);
  }
  void kv_bool(std::string_view key, bool v) { raw_kv(key, uint32_t(VT::Bool), le(v ? 1 : 0, 1)); }
  void kv_f32(std::string_view key, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    raw_kv(key, uint32_t(VT::F32), le(bits, 4));
  }
  void kv_f32_array(std::string_view key, const std::vector<float>& items) {
    std::string v;
    put_u32(v, uint32_t(VT::F32));
    put_u64(v, items.size());
    for (const float x : items) {
      uint32_t bits;
      std::memcpy(&bits, &x, 4);
      put_u32(v, bits);
    }
    raw_kv(key, uint32_t(VT::Array), v);
  }
  void kv_i32_array(std::string_view key, const std::vector<int32_t>& items) {
    std::string v;
    put_u32(v, uint32_t(VT::I32));
    put_u64(v, items.size());
    for (const int32_t x : items) put_u32(v, static_cast<uint32_t>(x));
    raw_kv(key, uint32_t(VT::Array), v);
  }
  void kv_string_array(std::string_view key, const std::vector<std::string>& items) {
    std::string v;
    put_u32(v, uint32_t(VT::String));
    put_u64(v, items.size());
    for (const std::string& s : items) put_string(v, s);
    raw_kv(key, uint32_t(VT::Array), v);
  }

  // One tensor info with any fields; its data (if any) is added with add_data.
  void raw_tensor(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset) {
    put_string(infos_, name);
    put_u32(infos_, static_cast<uint32_t>(dims.size()));
    for (const uint64_t d : dims) put_u64(infos_, d);
    put_u32(infos_, type);
    put_u64(infos_, offset);
    ++tensor_count_;
  }
  // A well-formed tensor: data appended at the next aligned offset of the data section.
  void tensor(std::string_view name, const std::vector<uint64_t>& dims, GgmlType type,
              const std::string& bytes) {
    pad_data();
    raw_tensor(name, dims, static_cast<uint32_t>(type), data_.size());
    data_ += bytes;
  }
  void pad_data() { data_.resize((data_.size() + alignment - 1) / alignment * alignment, '\0'); }
  std::string& data() { return data_; }

  std::string header() const {
    std::string out = "GGUF";
    put_u32(out, version);
    put_u64(out, tensor_count_);
    put_u64(out, kv_count_);
    return out;
  }
  std::string image() const {
    std::string out = header() + kvs_ + infos_;
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    return out + data_;
  }

  static std::string le(uint64_t v, int n) {
    std::string out;
    put(out, v, n);
    return out;
  }

 private:
  std::string kvs_, infos_, data_;
  uint64_t kv_count_ = 0, tensor_count_ = 0;
};

}  // namespace kiln::gguf_test
