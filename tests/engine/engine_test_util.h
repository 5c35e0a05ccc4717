// Helpers shared by the engine tests: a sample spec, file I/O, and image surgery that keeps the
// checksum valid so a test can reach the check it targets.
#pragma once

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/engine_file.h"
#include "engine/engine_header.h"

namespace kiln::testing {

// A fresh directory per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = std::filesystem::temp_directory_path() / fmt::format("kiln-engine-{}-{}", ::getpid(), name);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Owns the bytes an EngineTensorSource points at.
struct SampleTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

inline SampleTensor random_tensor(std::string name, DType dtype, std::vector<int64_t> shape, uint32_t seed) {
  SampleTensor t{std::move(name), dtype, std::move(shape), {}};
  uint64_t numel = 1;
  for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
  std::mt19937 rng(seed);
  t.bytes.resize(numel * dtype_size(dtype));
  for (char& c : t.bytes) c = static_cast<char>(rng());
  return t;
}

inline EngineWriteSpec make_spec(const std::vector<SampleTensor>& tensors, nlohmann::json metadata = {},
                                 std::string backend = "cpu", std::string device_arch = "x86_64-avx2") {
  EngineWriteSpec spec;
  spec.backend = std::move(backend);
  spec.device_arch = std::move(device_arch);
  spec.metadata = std::move(metadata);
  for (const SampleTensor& t : tensors) {
    spec.tensors.push_back(
        {t.name, t.dtype, t.shape, t.bytes.empty() ? nullptr : t.bytes.data(), t.bytes.size()});
  }
  return spec;
}

// Two small tensors: enough for table-level corruptions (overlap, duplicate names).
inline std::vector<SampleTensor> two_tensors() {
  return {random_tensor("embed", DType::F32, {4, 8}, 1), random_tensor("lm_hd", DType::F16, {8, 4}, 2)};
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

template <class T>
T get_field(const std::string& image, size_t offset) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    value |= static_cast<T>(static_cast<uint8_t>(image[offset + i])) << (8 * i);
  return value;
}

template <class T>
void put_field(std::string& image, size_t offset, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) image[offset + i] = static_cast<char>(value >> (8 * i));
}

// Recomputes the header checksum after the test edited bytes past the header.
inline void reseal(std::string& image) {
  put_field<uint64_t>(image, offsetof(EngineHeader, checksum),
                      XXH3_64bits(image.data() + kEngineHeaderSize, image.size() - kEngineHeaderSize));
}

inline nlohmann::json metadata_of(const std::string& image) {
  const uint64_t n = get_field<uint64_t>(image, offsetof(EngineHeader, metadata_bytes));
  return nlohmann::json::parse(image.substr(kEngineHeaderSize, n));
}

// Replaces the metadata JSON in place, padded with spaces to the old length (JSON allows
// trailing whitespace), so the layout is unchanged. Does not reseal.
inline void replace_metadata(std::string& image, const nlohmann::json& metadata) {
  const uint64_t n = get_field<uint64_t>(image, offsetof(EngineHeader, metadata_bytes));
  std::string text = metadata.dump();
  ASSERT_LE(text.size(), n) << "test metadata edit must not grow the metadata";
  text.resize(n, ' ');
  image.replace(kEngineHeaderSize, n, text);
}

inline bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace kiln::testing
