// A read-only memory mapping of a whole file (RAII). Weights are views into it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/error.h"

namespace kiln {

class MappedFile {
 public:
  // Maps `path` read-only. Errors name the file and the failing call.
  static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
  // An in-memory image treated like a mapped file (fuzzers, tests); owns a copy of `bytes`.
  static std::shared_ptr<MappedFile> from_memory(std::string bytes, std::string name = "<memory>");
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::string owned_;  // from_memory's bytes
};

// Reads a whole (small) file into a string.
Result<std::string> read_text_file(const std::string& path);

}  // namespace kiln
