#include "format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include <fmt/ranges.h>

#include "format/json_util.h"

namespace kiln {
namespace {

using Json = nlohmann::ordered_json;

// Same cap as the reference implementation (huggingface/safetensors, MAX_HEADER_SIZE): a larger
// length is corruption, and refusing it early avoids parsing a huge bogus header.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kSupportedDtypes = "F32, F16, BF16, F64, I32, I64, U8";

std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A JSON integer in [0, max], or nullopt for anything else (negative, float, string, ...).
std::optional<uint64_t> as_unsigned(const Json& value, uint64_t max) {
  if (!value.is_number_unsigned()) return std::nullopt;  // nlohmann stores non-negative ints as unsigned
  const uint64_t v = value.get<uint64_t>();
  if (v > max) return std::nullopt;
  return v;
}

// Where one tensor's bytes lie in the data area: [begin, end).
struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  size_t tensor = 0;  // index into SafetensorsFile::tensors
};

// One header entry {"dtype": "F16", "shape": [out, in], "data_offsets": [begin, end]} -> view.
Result<TensorView> parse_tensor_entry(const std::string& path, const std::string& name, const Json& entry,
                                      const uint8_t* data_area, uint64_t data_size, ByteRange* range) {
  const std::string where = fmt::format("{}: tensor '{}'", path, name);
  if (!entry.is_object()) {
    return make_error("{}: expected an object with dtype, shape, data_offsets, found {}", where,
                      json_describe(entry));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) return make_error("{}: missing field '{}'", where, field);
  }

  TensorView view;
  view.name = name;
  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) return make_error("{}: dtype: expected a string, found {}", where, json_describe(dtype));
  const std::optional<DType> parsed_dtype = dtype_from_name(dtype.get<std::string>());
  if (!parsed_dtype) {
    return make_error("{}: unsupported dtype '{}' (supported: {})", where, dtype.get<std::string>(),
                      kSupportedDtypes);
  }
  view.dtype = *parsed_dtype;

  const Json& shape = entry["shape"];
  if (!shape.is_array()) return make_error("{}: shape: expected an array, found {}", where, json_describe(shape));
  uint64_t nbytes = dtype_size(view.dtype);
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    const std::optional<uint64_t> dim = as_unsigned(shape[i], std::numeric_limits<int64_t>::max());
    if (!dim) {
      return make_error("{}: shape dimension {}: expected a non-negative integer, found {}", where, i,
                        json_describe(shape[i]));
    }
    view.shape.push_back(static_cast<int64_t>(*dim));
    overflow = overflow || __builtin_mul_overflow(nbytes, *dim, &nbytes);
  }
  // A zero dimension makes the product 0 whatever overflowed before it.
  const bool empty = std::find(view.shape.begin(), view.shape.end(), 0) != view.shape.end();
  if (empty) nbytes = 0;
  if (overflow && !empty) {
    return make_error("{}: shape {} of {} overflows a 64-bit byte count", where, shape_string(view.shape),
                      dtype.get<std::string>());
  }

  const Json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return make_error("{}: data_offsets: expected [begin, end], found {}", where, json_describe(offsets));
  }
  const std::optional<uint64_t> begin = as_unsigned(offsets[0], std::numeric_limits<uint64_t>::max());
  const std::optional<uint64_t> end = as_unsigned(offsets[1], std::numeric_limits<uint64_t>::max());
  if (!begin || !end || *begin > *end) {
    return make_error("{}: data_offsets: expected non-negative integers begin <= end, found {}", where,
                      json_describe(offsets));
  }
  if (*end > data_size) {
    return make_error("{}: data_offsets [{}, {}] run past the data area ({} bytes)", where, *begin, *end,
                      data_size);
  }
  if (*end - *begin != nbytes) {
    return make_error("{}: shape {} of {} needs {} bytes, but data_offsets [{}, {}] hold {}", where,
                      shape_string(view.shape), dtype.get<std::string>(), nbytes, *begin, *end, *end - *begin);
  }
  view.data = data_area + *begin;
  view.nbytes = nbytes;
  range->begin = *begin;
  range->end = *end;
  return view;
}

Status parse_metadata(const std::string& path, const Json& value, std::map<std::string, std::string>* out) {
  if (!value.is_object()) {
    return make_error("{}: __metadata__: expected an object of strings, found {}", path, json_describe(value));
  }
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return make_error("{}: __metadata__ '{}': expected a string, found {}", path, key, json_describe(item));
    }
    (*out)[key] = item.get<std::string>();
  }
  return Status::Ok();
}

// Tensors must tile the data area exactly: no byte owned twice (overlap), no byte owned by none
// (the reference implementation refuses both, so a file with holes was not written by it).
Status check_coverage(const std::string& path, std::vector<ByteRange> ranges, const std::vector<TensorView>& tensors,
                      uint64_t data_size) {
  std::sort(ranges.begin(), ranges.end(),
            [](const ByteRange& a, const ByteRange& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t covered = 0;  // every byte below this belongs to a tensor
  const ByteRange* last = nullptr;
  for (const ByteRange& r : ranges) {
    if (r.begin == r.end) continue;  // empty tensors own no bytes
    if (r.begin < covered) {
      return make_error("{}: tensor '{}' bytes [{}, {}) overlap tensor '{}' bytes [{}, {})", path,
                        tensors[r.tensor].name, r.begin, r.end, tensors[last->tensor].name, last->begin,
                        last->end);
    }
    if (r.begin > covered) {
      return make_error("{}: data area bytes [{}, {}) before tensor '{}' belong to no tensor", path, covered,
                        r.begin, tensors[r.tensor].name);
    }
    covered = r.end;
    last = &r;
  }
  if (covered != data_size) {
    return make_error("{}: data area is {} bytes but tensors cover only the first {} (trailing bytes)", path,
                      data_size, covered);
  }
  return Status::Ok();
}

}  // namespace

Result<SafetensorsFile> parse_safetensors(std::shared_ptr<MappedFile> file) {
  const std::string& path = file->path();
  const uint64_t size = file->size();
  if (size < 8) return make_error("{}: file is {} bytes, too small for the 8-byte header length", path, size);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->data()[i];  // little-endian u64
  if (header_len > kMaxHeaderBytes) {
    return make_error("{}: header length {} exceeds the {} byte limit (corrupt or not a safetensors file)", path,
                      header_len, kMaxHeaderBytes);
  }
  if (header_len > size - 8) {
    return make_error("{}: header length {} runs past the end of the file ({} bytes follow the length field)", path,
                      header_len, size - 8);
  }
  const std::string_view header_text(reinterpret_cast<const char*>(file->data() + 8), header_len);
  KILN_ASSIGN(const Json header, parse_json_strict(header_text, path + " header"));
  if (!header.is_object()) {
    return make_error("{}: header: expected a JSON object, found {}", path, json_describe(header));
  }

  const uint8_t* data_area = file->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  SafetensorsFile out;
  out.file = file;
  std::vector<ByteRange> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      KILN_TRY(parse_metadata(path, entry, &out.metadata));
      continue;
    }
    ByteRange range;
    range.tensor = out.tensors.size();
    KILN_ASSIGN(TensorView view, parse_tensor_entry(path, name, entry, data_area, data_size, &range));
    view.owner = file;
    out.tensors.push_back(std::move(view));
    ranges.push_back(range);
  }
  KILN_TRY(check_coverage(path, std::move(ranges), out.tensors, data_size));
  return out;
}

Result<SafetensorsFile> open_safetensors(const std::string& path) {
  KILN_ASSIGN(std::shared_ptr<MappedFile> file, MappedFile::open(path));
  return parse_safetensors(std::move(file));
}

const TensorView* WeightSet::find(const std::string& name) const {
  const auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

namespace {

// Sharded checkpoints (transformers' save_pretrained with max_shard_size): an index
// {"metadata": {...}, "weight_map": {tensor: shard file}} beside the shard files.
Result<WeightSet> open_sharded(const std::filesystem::path& dir, const std::filesystem::path& index_path) {
  const std::string index_name = index_path.string();
  KILN_ASSIGN(const std::string index_text, read_text_file(index_name));
  KILN_ASSIGN(const Json index, parse_json_strict(index_text, index_name));
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return make_error("{}: expected an object with a \"weight_map\" object", index_name);
  }
  const Json& weight_map = index["weight_map"];
  if (weight_map.empty()) return make_error("{}: weight_map is empty", index_name);

  // Shard file names sorted (model-00001-of-N first), so errors and shard order are deterministic.
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : weight_map.items()) {
    if (!shard.is_string()) {
      return make_error("{}: weight_map '{}': expected a shard file name, found {}", index_name, tensor,
                        json_describe(shard));
    }
    const std::string name = shard.get<std::string>();
    // Shards live beside the index; a path could reach outside the model directory.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
      return make_error("{}: weight_map '{}': shard \"{}\" is not a file name in the model directory", index_name,
                        tensor, name);
    }
    shard_names.insert(name);
  }

  WeightSet set;
  std::map<std::string, std::string> shard_of;  // tensor -> the shard holding it
  for (const std::string& shard_name : shard_names) {
    auto shard = open_safetensors((dir / shard_name).string());
    if (!shard.ok()) return shard.error().with_context(fmt::format("{}: shard '{}'", index_name, shard_name));
    for (const TensorView& view : shard->tensors) {
      const auto [seen, inserted] = shard_of.emplace(view.name, shard_name);
      if (!inserted) {
        return make_error("{}: tensor '{}' is in two shards: '{}' and '{}'", index_name, view.name, seen->second,
                          shard_name);
      }
      set.tensors.emplace(view.name, view);
    }
    set.shards.push_back(std::move(shard).value());
  }
  // The index and the shards must agree both ways.
  for (const auto& [tensor, shard_name] : shard_of) {
    if (!weight_map.contains(tensor)) {
      return make_error("{}: tensor '{}' in shard '{}' is not listed in weight_map", index_name, tensor, shard_name);
    }
    const std::string mapped = weight_map[tensor].get<std::string>();
    if (mapped != shard_name) {
      return make_error("{}: tensor '{}' found in shard '{}', but weight_map maps it to '{}'", index_name, tensor,
                        shard_name, mapped);
    }
  }
  for (const auto& [tensor, shard] : weight_map.items()) {
    if (!shard_of.contains(tensor)) {
      return make_error("{}: weight_map maps tensor '{}' to '{}', which does not contain it", index_name, tensor,
                        shard.get<std::string>());
    }
  }
  return set;
}

}  // namespace

Result<WeightSet> open_safetensors_dir(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  const std::filesystem::path single_path = dir / "model.safetensors";
  std::error_code ec;
  if (std::filesystem::exists(index_path, ec)) return open_sharded(dir, index_path);
  if (!std::filesystem::exists(single_path, ec)) {
    return make_error("{}: no model.safetensors or model.safetensors.index.json found", model_dir);
  }
  KILN_ASSIGN(SafetensorsFile file, open_safetensors(single_path.string()));
  WeightSet set;
  for (const TensorView& view : file.tensors) set.tensors.emplace(view.name, view);
  set.shards.push_back(std::move(file));
  return set;
}

}  // namespace kiln
