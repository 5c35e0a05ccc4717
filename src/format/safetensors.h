// Safetensors reader: single file or sharded (model.safetensors.index.json), mmapped, validated.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
// "__metadata__": {...}}, then the data area; offsets are relative to the data area.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/mapped_file.h"
#include "format/tensor_view.h"

namespace kiln {

struct SafetensorsFile {
  std::shared_ptr<MappedFile> file;
  std::vector<TensorView> tensors;  // in header order; views into file
  std::map<std::string, std::string> metadata;
};

// Parses and validates a safetensors image held in memory (used by open and by the fuzzer):
// header length within the buffer, JSON well-formed, known dtypes, shape * dtype size == byte
// length, offsets in range, tensors non-overlapping, the data area fully covered.
Result<SafetensorsFile> parse_safetensors(std::shared_ptr<MappedFile> file);
Result<SafetensorsFile> open_safetensors(const std::string& path);

// All tensors of a model directory (single file or sharded via model.safetensors.index.json).
struct WeightSet {
  std::vector<SafetensorsFile> shards;
  std::map<std::string, TensorView> tensors;  // by name; views into shards

  const TensorView* find(const std::string& name) const;
};

Result<WeightSet> open_safetensors_dir(const std::string& model_dir);

}  // namespace kiln
