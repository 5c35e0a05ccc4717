// write_engine: lays out header, metadata and tensors (engine_file.h) and writes them atomically.
#include <fcntl.h>
#include <fmt/ranges.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <set>

#include "engine/engine_file.h"
#include "engine/engine_header.h"

namespace kiln {
namespace {

constexpr uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// numel * dtype_size, or nothing if a dimension is negative or the product overflows.
std::optional<uint64_t> expected_nbytes(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) return std::nullopt;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Status validate_spec(const EngineWriteSpec& spec) {
  if (spec.backend.empty()) return make_error("engine spec has an empty backend, expected e.g. 'cpu'");
  if (spec.backend.size() >= sizeof(EngineHeader::backend)) {
    return make_error("engine backend '{}' is {} bytes, at most {} fit the header", spec.backend,
                      spec.backend.size(), sizeof(EngineHeader::backend) - 1);
  }
  if (spec.device_arch.size() >= sizeof(EngineHeader::device_arch)) {
    return make_error("engine device_arch '{}' is {} bytes, at most {} fit the header", spec.device_arch,
                      spec.device_arch.size(), sizeof(EngineHeader::device_arch) - 1);
  }
  if (!spec.metadata.is_null() && !spec.metadata.is_object()) {
    return make_error("engine metadata must be a JSON object, found {}", spec.metadata.type_name());
  }
  if (spec.metadata.is_object() && spec.metadata.contains("tensors")) {
    return make_error("engine metadata must not contain the key 'tensors': the writer adds the tensor table");
  }
  std::set<std::string> names;
  for (const EngineTensorSource& t : spec.tensors) {
    if (t.name.empty()) return make_error("engine tensor with an empty name");
    if (!names.insert(t.name).second)
      return make_error("tensor '{}' appears twice in the engine spec", t.name);
    if (dtype_size(t.dtype) == 0) {
      return make_error("tensor '{}': unknown dtype code {}", t.name, static_cast<int>(t.dtype));
    }
    const std::optional<uint64_t> nbytes = expected_nbytes(t.shape, t.dtype);
    if (!nbytes) return make_error("tensor '{}': invalid shape {}", t.name, shape_string(t.shape));
    if (*nbytes != t.nbytes) {
      return make_error("tensor '{}': {} {} needs {} bytes, source has {}", t.name, dtype_name(t.dtype),
                        shape_string(t.shape), *nbytes, t.nbytes);
    }
    if (t.nbytes > 0 && t.data == nullptr)
      return make_error("tensor '{}': {} bytes but no data", t.name, t.nbytes);
  }
  return {};
}

struct EngineLayout {
  std::string metadata;           // serialized JSON, including "tensors"
  std::vector<uint64_t> offsets;  // per spec tensor, from the file start
  uint64_t data_offset = 0;
  uint64_t file_bytes = 0;
};

// The tensor table holds absolute offsets, which depend on where the data area starts, which
// depends on the length of the table. Iterating from the smallest possible data offset converges
// to the least fixed point: the metadata length is nondecreasing in the offsets.
Result<EngineLayout> plan_layout(const EngineWriteSpec& spec) {
  EngineLayout layout;
  uint64_t data_offset = align_up(kEngineHeaderSize, kEngineAlignment);
  for (;;) {
    nlohmann::json metadata = spec.metadata.is_null() ? nlohmann::json::object() : spec.metadata;
    nlohmann::json table = nlohmann::json::array();
    layout.offsets.clear();
    uint64_t cursor = data_offset;
    for (const EngineTensorSource& t : spec.tensors) {
      cursor = align_up(cursor, kEngineAlignment);
      layout.offsets.push_back(cursor);
      table.push_back({{"name", t.name},
                       {"dtype", dtype_name(t.dtype)},
                       {"shape", t.shape},
                       {"offset", cursor},
                       {"nbytes", t.nbytes}});
      cursor += t.nbytes;
    }
    metadata["tensors"] = std::move(table);
    try {
      layout.metadata = metadata.dump();
    } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a string or tensor name
      return make_error("engine metadata cannot be serialized: {}", e.what());
    }
    const uint64_t needed = align_up(kEngineHeaderSize + layout.metadata.size(), kEngineAlignment);
    if (needed == data_offset) {
      layout.data_offset = data_offset;
      layout.file_bytes = cursor;
      return layout;
    }
    data_offset = needed;
  }
}

// An output file that hashes what it appends and removes itself unless committed.
class EngineFileWriter {
 public:
  explicit EngineFileWriter(std::string tmp_path) : tmp_path_(std::move(tmp_path)) {}
  ~EngineFileWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_path_.c_str());
    if (hash_ != nullptr) XXH3_freeState(hash_);
  }

  Status open() {
    hash_ = XXH3_createState();
    if (hash_ == nullptr || XXH3_64bits_reset(hash_) != XXH_OK)
      return make_error("cannot allocate XXH3 state");
    fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return io_error("cannot create");
    return {};
  }

  // Appends bytes; they count toward the checksum unless `hashed` is false (the header).
  Status append(const void* data, uint64_t size, bool hashed = true) {
    if (hashed) XXH3_64bits_update(hash_, data, size);
    const auto* p = static_cast<const uint8_t*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, std::min<uint64_t>(size, 1u << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return io_error("write failed");
      p += n;
      size -= static_cast<uint64_t>(n);
      position_ += static_cast<uint64_t>(n);
    }
    return {};
  }

  Status pad_to(uint64_t offset) {
    static constexpr uint8_t kZeros[kEngineAlignment] = {};
    while (position_ < offset)
      KILN_TRY(append(kZeros, std::min<uint64_t>(offset - position_, sizeof(kZeros))));
    return {};
  }

  uint64_t checksum() const { return XXH3_64bits_digest(hash_); }
  uint64_t position() const { return position_; }

  // Overwrites the placeholder header, flushes to disk, and renames over `final_path`; the fsync
  // makes the rename publish complete contents even across a crash.
  Status commit(std::span<const uint8_t> header, const std::string& final_path) {
    if (::pwrite(fd_, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size())) {
      return io_error("header write failed");
    }
    if (::fsync(fd_) != 0) return io_error("fsync failed");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return io_error("close failed");
    if (::rename(tmp_path_.c_str(), final_path.c_str()) != 0) return io_error("rename failed");
    committed_ = true;
    return {};
  }

 private:
  Error io_error(const char* what) const {
    return make_error("{}: {}: {}", what, tmp_path_, std::strerror(errno));
  }

  std::string tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t position_ = 0;
  XXH3_state_t* hash_ = nullptr;
};

static_assert(sizeof(KILN_VERSION) <= sizeof(EngineHeader::kiln_version), "KILN_VERSION must fit the header");

Status write_engine_impl(const std::string& path, const EngineWriteSpec& spec) {
  KILN_TRY(validate_spec(spec));
  KILN_ASSIGN(const EngineLayout layout, plan_layout(spec));

  EngineHeader header{};
  std::memcpy(header.magic, kEngineMagic, sizeof(header.magic));
  header.format_version = kEngineFormatVersion;
  header.header_size = kEngineHeaderSize;
  set_header_string(header.kiln_version, KILN_VERSION);
  set_header_string(header.backend, spec.backend);
  set_header_string(header.device_arch, spec.device_arch);
  header.metadata_offset = kEngineHeaderSize;
  header.metadata_bytes = layout.metadata.size();
  header.data_offset = layout.data_offset;
  header.data_bytes = layout.file_bytes - layout.data_offset;
  header.file_bytes = layout.file_bytes;

  EngineFileWriter out(path + ".tmp");
  KILN_TRY(out.open());
  uint8_t header_bytes[kEngineHeaderSize] = {};
  KILN_TRY(out.append(header_bytes, sizeof(header_bytes), /*hashed=*/false));  // placeholder
  KILN_TRY(out.append(layout.metadata.data(), layout.metadata.size()));
  KILN_TRY(out.pad_to(layout.data_offset));
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    KILN_TRY(out.pad_to(layout.offsets[i]));
    KILN_TRY(out.append(spec.tensors[i].data, spec.tensors[i].nbytes));
  }
  assert(out.position() == layout.file_bytes);

  header.checksum = out.checksum();
  encode_engine_header(header, header_bytes);
  return out.commit(header_bytes, path);
}

}  // namespace

Status write_engine(const std::string& path, const EngineWriteSpec& spec) {
  Status status = write_engine_impl(path, spec);
  if (!status.ok()) return status.error().with_context(path);
  return status;
}

}  // namespace kiln
