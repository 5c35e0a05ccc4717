// The engine file: everything the run side needs, in one versioned, mmap-able file.
//
// Layout (all integers little-endian):
//   [0, 4096)        EngineHeader (fixed size, padded with zeros)
//   [4096, ...)      metadata: UTF-8 JSON of metadata_bytes bytes (graph, config, tensor table,
//                    tokenizer description, build options, profile); the writer adds "tensors"
//   padding to 4 KiB
//   data area        each tensor at a 4 KiB-aligned offset (relative to the file start)
// The checksum is XXH3-64 over every byte after the header (metadata + padding + data).
//
// A loader refuses, with a message naming both sides: wrong magic, other format version, other
// backend, other device arch (when the caller names one), truncated file, checksum mismatch,
// tensor entries out of range or misaligned.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/mapped_file.h"
#include "common/tensor_view.h"

namespace kiln {

inline constexpr char kEngineMagic[8] = {'K', 'I', 'L', 'N', 'E', 'N', 'G', '\0'};
inline constexpr uint32_t kEngineFormatVersion = 1;
inline constexpr uint64_t kEngineAlignment = 4096;
inline constexpr uint64_t kEngineHeaderSize = 4096;

struct EngineHeader {
  char magic[8];              // kEngineMagic
  uint32_t format_version;    // kEngineFormatVersion
  uint32_t header_size;       // kEngineHeaderSize
  char kiln_version[32];      // NUL-terminated, e.g. "0.1.0"
  char backend[16];           // "cpu" or "cuda"
  char device_arch[32];       // "x86_64-avx2", "sm_90", ...; informational for cpu
  uint64_t metadata_offset;   // = header_size
  uint64_t metadata_bytes;
  uint64_t data_offset;       // 4 KiB aligned
  uint64_t data_bytes;
  uint64_t file_bytes;        // total size; a shorter file is truncated
  uint64_t checksum;          // XXH3-64 of bytes [header_size, file_bytes)
};

// One tensor to be written: bytes are copied from `data` (the writer does not keep them).
struct EngineTensorSource {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  uint64_t nbytes;
};

struct EngineWriteSpec {
  std::string backend;      // "cpu" | "cuda"
  std::string device_arch;
  nlohmann::json metadata;  // free-form object; must not contain the key "tensors"
  std::vector<EngineTensorSource> tensors;
};

// Writes atomically (to path + ".tmp", then rename).
Status write_engine(const std::string& path, const EngineWriteSpec& spec);

struct LoadOptions {
  std::string expected_backend;      // empty: accept any
  std::string expected_device_arch;  // empty: accept any
  bool verify_checksum = true;
};

struct LoadedEngine {
  std::shared_ptr<MappedFile> file;
  EngineHeader header;
  nlohmann::json metadata;                    // includes "tensors": [{name, dtype, shape, offset, nbytes}]
  std::map<std::string, TensorView> tensors;  // views into file

  const TensorView* find(const std::string& name) const;
};

// Parses an engine image already in memory (also the fuzzer's entry point).
Result<LoadedEngine> parse_engine(std::shared_ptr<MappedFile> file, const LoadOptions& options);
Result<LoadedEngine> load_engine(const std::string& path, const LoadOptions& options);

}  // namespace kiln
