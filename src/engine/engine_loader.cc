// parse_engine / load_engine: validates an engine image (engine_file.h) before anything reads it.
//
// Every check runs before the first dependent read, and every size comparison is written as a
// subtraction from a bound already known to hold, so no header or table value can overflow an
// offset computation (this file is the fuzzer's target: fuzz/fuzz_engine.cc).
#include <fmt/ranges.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <set>

#include "engine/engine_file.h"
#include "engine/engine_header.h"

namespace kiln {
namespace {

std::string printable_magic(const uint8_t* p) {
  std::string out;
  for (size_t i = 0; i < sizeof(kEngineMagic); ++i) {
    out += (p[i] >= 0x20 && p[i] < 0x7f) ? fmt::format("{:c}", static_cast<char>(p[i]))
                                         : fmt::format("\\x{:02x}", p[i]);
  }
  return out;
}

Result<EngineHeader> parse_header(const MappedFile& file, const LoadOptions& options) {
  const uint64_t size = file.size();
  if (size < kEngineHeaderSize) {
    return make_error("not a kiln engine: file is {} bytes, smaller than the {}-byte header", size,
                      kEngineHeaderSize);
  }
  const std::span<const uint8_t, kEngineHeaderSize> raw(file.data(), kEngineHeaderSize);
  if (std::memcmp(raw.data(), kEngineMagic, sizeof(kEngineMagic)) != 0) {
    return make_error("not a kiln engine: bad magic (expected 'KILNENG\\x00', found '{}')",
                      printable_magic(raw.data()));
  }
  const EngineHeader h = decode_engine_header(raw);
  // The version comes before every other field: a file of another version may lay them out differently.
  if (h.format_version != kEngineFormatVersion) {
    return make_error(
        "engine format version {}, this kiln reads version {}: rebuild the engine with this kiln",
        h.format_version, kEngineFormatVersion);
  }
  if (h.header_size != kEngineHeaderSize) {
    return make_error("engine header_size is {}, expected {}", h.header_size, kEngineHeaderSize);
  }
  KILN_TRY(check_engine_header_encoding(raw));

  const std::string backend = header_string(h.backend);
  if (!options.expected_backend.empty() && backend != options.expected_backend) {
    return make_error("engine built for backend '{}', this run uses '{}'", backend, options.expected_backend);
  }
  const std::string arch = header_string(h.device_arch);
  if (!options.expected_device_arch.empty() && arch != options.expected_device_arch) {
    return make_error("engine built for {}, this {} is {}", arch, backend == "cuda" ? "GPU" : "CPU",
                      options.expected_device_arch);
  }

  if (h.file_bytes > size)
    return make_error("engine truncated: header says {} bytes, file has {}", h.file_bytes, size);
  if (h.file_bytes < size) {
    return make_error("engine has {} bytes after its end: header says {} bytes, file has {}",
                      size - h.file_bytes, h.file_bytes, size);
  }
  // From here on file_bytes == size >= header_size.
  if (h.metadata_offset != kEngineHeaderSize) {
    return make_error("engine metadata_offset is {}, expected {}", h.metadata_offset, kEngineHeaderSize);
  }
  if (h.metadata_bytes > size - h.metadata_offset) {
    return make_error("engine metadata [{}, +{}) runs past the end of the file ({} bytes)", h.metadata_offset,
                      h.metadata_bytes, size);
  }
  const uint64_t metadata_end = h.metadata_offset + h.metadata_bytes;  // <= size
  // metadata_end <= size < 2^64 - 4096, so aligning up cannot wrap.
  const uint64_t expected_data_offset =
      (metadata_end + kEngineAlignment - 1) / kEngineAlignment * kEngineAlignment;
  if (h.data_offset != expected_data_offset) {
    return make_error("engine data_offset is {}, expected {} (metadata end {} aligned to {})", h.data_offset,
                      expected_data_offset, metadata_end, kEngineAlignment);
  }
  if (h.data_offset > size || h.data_bytes != size - h.data_offset) {
    return make_error("engine data area [{}, +{}) does not end at the file end ({} bytes)", h.data_offset,
                      h.data_bytes, size);
  }

  if (options.verify_checksum) {
    const uint64_t actual = XXH3_64bits(file.data() + h.header_size, size - h.header_size);
    if (actual != h.checksum) {
      return make_error(
          "engine checksum mismatch: header says {:#018x}, bytes [{}, {}) hash to {:#018x}: the file "
          "is corrupt",
          h.checksum, h.header_size, size, actual);
    }
  }
  return h;
}

// A JSON value for an error message. Containers are named, not dumped: dump() recurses, and a
// hostile file can nest a million levels deep (the parser and destructor are iterative).
std::string describe(const nlohmann::json& value) {
  return value.is_primitive() ? value.dump() : value.type_name();
}

// Reads a non-negative JSON integer field of a tensor entry.
Result<uint64_t> unsigned_field(const nlohmann::json& entry, const char* key, const std::string& what) {
  const auto it = entry.find(key);
  if (it == entry.end()) return make_error("{}: missing '{}'", what, key);
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  return make_error("{}: '{}' must be a non-negative integer, found {}", what, key, describe(*it));
}

Result<TensorView> parse_tensor_entry(const nlohmann::json& entry, size_t index, const EngineHeader& h,
                                      const std::shared_ptr<MappedFile>& file) {
  std::string what = fmt::format("tensor table entry {}", index);
  if (!entry.is_object()) return make_error("{}: expected an object, found {}", what, entry.type_name());

  TensorView view;
  const auto name = entry.find("name");
  if (name == entry.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
    return make_error("{}: 'name' must be a non-empty string", what);
  }
  view.name = name->get<std::string>();
  what = fmt::format("tensor '{}'", view.name);

  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) return make_error("{}: 'dtype' must be a string", what);
  const std::optional<DType> parsed = dtype_from_name(dtype->get_ref<const std::string&>());
  if (!parsed) return make_error("{}: unknown dtype {}", what, dtype->dump());
  view.dtype = *parsed;

  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) return make_error("{}: 'shape' must be an array", what);
  for (const nlohmann::json& d : *shape) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return make_error("{}: shape has a dimension {} that is not a non-negative integer", what, describe(d));
    }
    view.shape.push_back(d.get<int64_t>());
  }
  const std::string shape_text = fmt::format("[{}]", fmt::join(view.shape, ", "));
  // numel must fit int64 (TensorView::numel) and numel * dtype_size must fit uint64.
  uint64_t numel = 1;
  for (int64_t dim : view.shape) {
    const auto udim = static_cast<uint64_t>(dim);
    if (udim != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / udim) {
      return make_error("{}: shape {} overflows int64 elements", what, shape_text);
    }
    numel *= udim;
  }
  const uint64_t element_bytes = dtype_size(view.dtype);
  if (numel > std::numeric_limits<uint64_t>::max() / element_bytes) {
    return make_error("{}: {} {} overflows uint64 bytes", what, dtype_name(view.dtype), shape_text);
  }
  const uint64_t expected_nbytes = numel * element_bytes;

  KILN_ASSIGN(const uint64_t offset, unsigned_field(entry, "offset", what));
  KILN_ASSIGN(view.nbytes, unsigned_field(entry, "nbytes", what));
  if (view.nbytes != expected_nbytes) {
    return make_error("{}: {} {} needs {} bytes, table says {}", what, dtype_name(view.dtype), shape_text,
                      expected_nbytes, view.nbytes);
  }
  if (offset % kEngineAlignment != 0) {
    return make_error("{}: offset {} is not aligned to {} bytes", what, offset, kEngineAlignment);
  }
  if (offset < h.data_offset || offset > h.file_bytes || view.nbytes > h.file_bytes - offset) {
    return make_error("{}: bytes [{}, +{}) lie outside the data area [{}, {})", what, offset, view.nbytes,
                      h.data_offset, h.file_bytes);
  }
  view.data = file->data() + offset;
  view.owner = file;
  return view;
}

Result<LoadedEngine> parse_engine_impl(std::shared_ptr<MappedFile> file, const LoadOptions& options) {
  LoadedEngine engine;
  KILN_ASSIGN(engine.header, parse_header(*file, options));
  const EngineHeader& h = engine.header;

  const char* metadata_begin = reinterpret_cast<const char*>(file->data() + h.metadata_offset);
  try {
    engine.metadata = nlohmann::json::parse(metadata_begin, metadata_begin + h.metadata_bytes);
  } catch (const nlohmann::json::exception& e) {
    return make_error("engine metadata is not valid JSON: {}", e.what());
  }
  if (!engine.metadata.is_object()) {
    return make_error("engine metadata must be a JSON object, found {}", engine.metadata.type_name());
  }
  const auto table = engine.metadata.find("tensors");
  if (table == engine.metadata.end() || !table->is_array()) {
    return make_error("engine metadata has no 'tensors' array");
  }

  // [offset, end) of each non-empty tensor, to refuse two tensors sharing bytes.
  std::vector<std::pair<uint64_t, const TensorView*>> extents;
  for (size_t i = 0; i < table->size(); ++i) {
    KILN_ASSIGN(TensorView view, parse_tensor_entry((*table)[i], i, h, file));
    const std::string name = view.name;
    const auto [it, inserted] = engine.tensors.emplace(name, std::move(view));
    if (!inserted) return make_error("tensor '{}' appears twice in the tensor table", name);
    if (it->second.nbytes > 0)
      extents.emplace_back(static_cast<uint64_t>(it->second.data - file->data()), &it->second);
  }
  std::sort(extents.begin(), extents.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < extents.size(); ++i) {
    const auto& [prev_offset, prev] = extents[i - 1];
    if (extents[i].first - prev_offset < prev->nbytes) {
      return make_error("tensor '{}' at {} overlaps tensor '{}' at [{}, +{})", extents[i].second->name,
                        extents[i].first, prev->name, prev_offset, prev->nbytes);
    }
  }
  engine.file = std::move(file);
  return engine;
}

}  // namespace

const TensorView* LoadedEngine::find(const std::string& name) const {
  const auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

Result<LoadedEngine> parse_engine(std::shared_ptr<MappedFile> file, const LoadOptions& options) {
  const std::string path = file->path();
  Result<LoadedEngine> engine = parse_engine_impl(std::move(file), options);
  if (!engine.ok()) return engine.error().with_context(path);
  return engine;
}

Result<LoadedEngine> load_engine(const std::string& path, const LoadOptions& options) {
  KILN_ASSIGN(std::shared_ptr<MappedFile> file, MappedFile::open(path));  // its errors name the path
  return parse_engine(std::move(file), options);
}

}  // namespace kiln
