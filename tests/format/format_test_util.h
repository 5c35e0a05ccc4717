// Test helpers for format/: a scratch directory and a tiny safetensors writer, so each test
// builds exactly the (good or corrupt) file it needs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::testing {

// A fresh directory under $TMPDIR, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "kiln-format-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

struct TestTensor {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian data
};

// `count` float32 values start, start + 1, ... as bytes.
inline std::string f32_bytes(size_t count, float start = 0.0f) {
  std::string bytes(count * sizeof(float), '\0');
  for (size_t i = 0; i < count; ++i) {
    const float v = start + static_cast<float>(i);
    std::memcpy(bytes.data() + i * sizeof(float), &v, sizeof(float));
  }
  return bytes;
}

inline TestTensor f32_tensor(const std::string& name, std::vector<int64_t> shape, float start = 0.0f) {
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  return {name, "F32", std::move(shape), f32_bytes(count, start)};
}

// Header for `tensors` laid back to back in the data area, in order (as the reference writer does).
inline nlohmann::ordered_json safetensors_header(const std::vector<TestTensor>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TestTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  return header;
}

inline std::string concat_data(const std::vector<TestTensor>& tensors) {
  std::string data;
  for (const TestTensor& t : tensors) data += t.bytes;
  return data;
}

// u64 little-endian header length + header text + data: any header, consistent or not.
inline std::string safetensors_image(const std::string& header_text, const std::string& data) {
  std::string image(8, '\0');
  uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) image[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return image + header_text + data;
}

inline std::string safetensors_image(const std::vector<TestTensor>& tensors) {
  return safetensors_image(safetensors_header(tensors).dump(), concat_data(tensors));
}

}  // namespace kiln::testing
