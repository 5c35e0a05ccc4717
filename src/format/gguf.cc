#include "format/gguf.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <utility>

namespace kiln {
namespace {

// gguf-py 0.19.0 GGML_QUANT_SIZES (block size, bytes per block), by type id.
constexpr std::array<GgmlTypeTraits, 34> kGgmlTypes = {{
    {GgmlType::F32, "F32", 1, 4},
    {GgmlType::F16, "F16", 1, 2},
    {GgmlType::Q4_0, "Q4_0", 32, 18},
    {GgmlType::Q4_1, "Q4_1", 32, 20},
    {GgmlType::Q5_0, "Q5_0", 32, 22},
    {GgmlType::Q5_1, "Q5_1", 32, 24},
    {GgmlType::Q8_0, "Q8_0", 32, 34},
    {GgmlType::Q8_1, "Q8_1", 32, 40},
    {GgmlType::Q2_K, "Q2_K", 256, 84},
    {GgmlType::Q3_K, "Q3_K", 256, 110},
    {GgmlType::Q4_K, "Q4_K", 256, 144},
    {GgmlType::Q5_K, "Q5_K", 256, 176},
    {GgmlType::Q6_K, "Q6_K", 256, 210},
    {GgmlType::Q8_K, "Q8_K", 256, 292},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66},
    {GgmlType::IQ2_XS, "IQ2_XS", 256, 74},
    {GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98},
    {GgmlType::IQ1_S, "IQ1_S", 256, 50},
    {GgmlType::IQ4_NL, "IQ4_NL", 32, 18},
    {GgmlType::IQ3_S, "IQ3_S", 256, 110},
    {GgmlType::IQ2_S, "IQ2_S", 256, 82},
    {GgmlType::IQ4_XS, "IQ4_XS", 256, 136},
    {GgmlType::I8, "I8", 1, 1},
    {GgmlType::I16, "I16", 1, 2},
    {GgmlType::I32, "I32", 1, 4},
    {GgmlType::I64, "I64", 1, 8},
    {GgmlType::F64, "F64", 1, 8},
    {GgmlType::IQ1_M, "IQ1_M", 256, 56},
    {GgmlType::BF16, "BF16", 1, 2},
    {GgmlType::TQ1_0, "TQ1_0", 256, 54},
    {GgmlType::TQ2_0, "TQ2_0", 256, 66},
    {GgmlType::MXFP4, "MXFP4", 32, 17},
    {GgmlType::NVFP4, "NVFP4", 64, 36},
    {GgmlType::Q1_0, "Q1_0", 128, 18},
}};

// Ids ggml once used and removed; named in the error so an old file is recognized.
std::string_view removed_ggml_type(uint32_t id) {
  switch (id) {
    case 4:
      return "Q4_2";
    case 5:
      return "Q4_3";
    case 31:
      return "Q4_0_4_4";
    case 32:
      return "Q4_0_4_8";
    case 33:
      return "Q4_0_8_8";
    case 36:
      return "IQ4_NL_4_4";
    case 37:
      return "IQ4_NL_4_8";
    case 38:
      return "IQ4_NL_8_8";
    default:
      return "";
  }
}

// Bytes of one fixed-size value; 0 for string and array.
uint64_t scalar_size(GgufValueType type) {
  switch (type) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool:
      return 1;
    case GgufValueType::U16:
    case GgufValueType::I16:
      return 2;
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::F32:
      return 4;
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::F64:
      return 8;
    case GgufValueType::String:
    case GgufValueType::Array:
      return 0;
  }
  return 0;
}

// The fewest bytes one array element of `type` takes: a string is at least its u64 length, an
// array its u32 type and u64 count. Bounds `count` against the bytes left before anything is allocated.
uint64_t min_element_size(GgufValueType type) {
  if (type == GgufValueType::String) return 8;
  if (type == GgufValueType::Array) return 12;
  return scalar_size(type);
}

bool is_known_value_type(uint32_t id) { return id <= static_cast<uint32_t>(GgufValueType::F64); }

bool is_signed(GgufValueType type) {
  return type == GgufValueType::I8 || type == GgufValueType::I16 || type == GgufValueType::I32 ||
         type == GgufValueType::I64;
}
bool is_integer_type(GgufValueType type) {
  return type == GgufValueType::U8 || type == GgufValueType::U16 || type == GgufValueType::U32 ||
         type == GgufValueType::U64 || is_signed(type);
}

uint64_t load_le(const uint8_t* p, uint64_t n) {
  uint64_t v = 0;
  for (uint64_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// Sign-extends an n-byte two's complement value held in the low bits.
int64_t sign_extend(uint64_t bits, uint64_t n) {
  if (n == 8) return static_cast<int64_t>(bits);
  const uint64_t sign = uint64_t{1} << (8 * n - 1);
  return static_cast<int64_t>((bits ^ sign) - sign);
}

// Names and keys from the file go into one-line errors: non-printable bytes escaped, long ones cut.
std::string printable(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > kMax) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

// Sequential little-endian reads over the mapping; every read is bounds-checked and a failure names
// what was being read and where.
class Reader {
 public:
  Reader(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  Result<uint64_t> read_uint(uint64_t n, const std::string& what) {
    if (remaining() < n) {
      return make_error("{}: {}: truncated at byte {} (needs {} bytes, {} remain)", path_, what, pos_, n,
                        remaining());
    }
    const uint64_t v = load_le(data_ + pos_, n);
    pos_ += n;
    return v;
  }
  Result<uint32_t> u32(const std::string& what) {
    KILN_ASSIGN(const uint64_t v, read_uint(4, what));
    return static_cast<uint32_t>(v);
  }
  Result<uint64_t> u64(const std::string& what) { return read_uint(8, what); }

  Result<std::string_view> string(const std::string& what) {
    KILN_ASSIGN(const uint64_t length, u64(what + " length"));
    if (length > remaining()) {
      return make_error("{}: {}: string length {} at byte {} exceeds the {} bytes remaining", path_, what,
                        length, pos_ - 8, remaining());
    }
    const std::string_view s(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return s;
  }

  // `count` elements of at least `min_size` bytes each must fit in what is left.
  Status check_count(uint64_t count, uint64_t min_size, const std::string& what) {
    if (min_size != 0 && count > remaining() / min_size) {
      return make_error(
          "{}: {}: {} elements of at least {} bytes each at byte {} exceed the {} bytes remaining", path_,
          what, count, min_size, pos_, remaining());
    }
    return Status::Ok();
  }

  const uint8_t* here() const { return data_ + pos_; }
  void skip(uint64_t n) { pos_ += n; }  // after check_count
  const std::string& path() const { return path_; }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

Result<GgufValueType> read_value_type(Reader& in, const std::string& what) {
  KILN_ASSIGN(const uint32_t id, in.u32(what + " type"));
  if (!is_known_value_type(id)) {
    return make_error("{}: {}: unknown value type {} at byte {} (known: 0-12)", in.path(), what, id,
                      in.pos() - 4);
  }
  return static_cast<GgufValueType>(id);
}

Result<GgufValue> read_value(Reader& in, GgufValueType type, int depth, const std::string& what);

// u32 element type, u64 count, elements. `depth` is this array's nesting level (1 = a top-level value).
Result<GgufValue> read_array(Reader& in, int depth, const std::string& what) {
  if (depth > kGgufMaxArrayDepth) {
    return make_error("{}: {}: arrays nested more than {} deep at byte {}", in.path(), what,
                      kGgufMaxArrayDepth, in.pos());
  }
  GgufValue value;
  value.type = GgufValueType::Array;
  KILN_ASSIGN(value.element_type, read_value_type(in, what + " array element"));
  KILN_ASSIGN(value.count, in.u64(what + " array count"));
  KILN_TRY(in.check_count(value.count, min_element_size(value.element_type),
                          fmt::format("{} array of {}", what, gguf_value_type_name(value.element_type))));
  if (value.element_type == GgufValueType::String) {
    value.strings.reserve(value.count);
    for (uint64_t i = 0; i < value.count; ++i) {
      KILN_ASSIGN(const std::string_view s, in.string(fmt::format("{} element {}", what, i)));
      value.strings.push_back(s);
    }
  } else if (value.element_type == GgufValueType::Array) {
    value.arrays.reserve(value.count);
    for (uint64_t i = 0; i < value.count; ++i) {
      KILN_ASSIGN(GgufValue element, read_array(in, depth + 1, fmt::format("{} element {}", what, i)));
      value.arrays.push_back(std::move(element));
    }
  } else {
    value.elements = in.here();
    if (value.element_type == GgufValueType::Bool) {
      for (uint64_t i = 0; i < value.count; ++i) {
        if (value.elements[i] > 1) {
          return make_error("{}: {} element {}: bool must be 0 or 1, found {} at byte {}", in.path(), what, i,
                            value.elements[i], in.pos() + i);
        }
      }
    }
    in.skip(value.count * scalar_size(value.element_type));  // fits: checked by check_count
  }
  return value;
}

Result<GgufValue> read_value(Reader& in, GgufValueType type, int depth, const std::string& what) {
  if (type == GgufValueType::Array) return read_array(in, depth, what);
  GgufValue value;
  value.type = type;
  if (type == GgufValueType::String) {
    KILN_ASSIGN(value.string, in.string(what));
    return value;
  }
  KILN_ASSIGN(value.bits, in.read_uint(scalar_size(type), what));
  if (type == GgufValueType::Bool && value.bits > 1) {
    return make_error("{}: {}: bool must be 0 or 1, found {} at byte {}", in.path(), what, value.bits,
                      in.pos() - 1);
  }
  return value;
}

// The byte size of `tensor`'s data, or an error (unknown type, bad dims, overflow, partial block).
Status check_tensor_shape(const std::string& where, const GgmlTypeTraits& traits, GgufTensor* tensor) {
  const std::string dims = fmt::format("[{}]", fmt::join(tensor->dims, ", "));
  int64_t numel = 1;
  for (size_t i = 0; i < tensor->dims.size(); ++i) {
    if (tensor->dims[i] < 0) {
      return make_error("{}: ne[{}] = {} exceeds INT64_MAX", where, i,
                        static_cast<uint64_t>(tensor->dims[i]));
    }
  }
  const bool empty = std::find(tensor->dims.begin(), tensor->dims.end(), 0) != tensor->dims.end();
  for (const int64_t d : tensor->dims) {
    if (!empty && __builtin_mul_overflow(numel, d, &numel)) {
      return make_error("{}: dims {}: the element count overflows int64", where, dims);
    }
  }
  if (tensor->dims[0] % traits.block_size != 0) {
    return make_error("{}: dims {}: ne[0] = {} is not a multiple of {}'s block size {}", where, dims,
                      tensor->dims[0], traits.name, traits.block_size);
  }
  if (empty) {
    tensor->nbytes = 0;
    return Status::Ok();
  }
  // numel fits int64 and block_size divides ne[0], so numel / block_size blocks; bytes may still overflow.
  const uint64_t blocks = static_cast<uint64_t>(numel) / traits.block_size;
  if (__builtin_mul_overflow(blocks, uint64_t{traits.type_size}, &tensor->nbytes)) {
    return make_error("{}: dims {}: the byte size of {} {} blocks overflows 64 bits", where, dims, blocks,
                      traits.name);
  }
  return Status::Ok();
}

Result<GgufTensor> read_tensor_info(Reader& in, uint64_t index) {
  GgufTensor tensor;
  KILN_ASSIGN(tensor.name, in.string(fmt::format("tensor #{} name", index)));
  const std::string where = fmt::format("{}: tensor '{}'", in.path(), printable(tensor.name));
  const std::string what = fmt::format("tensor '{}'", printable(tensor.name));
  if (tensor.name.empty()) return make_error("{}: tensor #{} has an empty name", in.path(), index);
  KILN_ASSIGN(const uint32_t n_dims, in.u32(what + " n_dims"));
  if (n_dims < 1 || n_dims > static_cast<uint32_t>(kGgufMaxDims)) {
    return make_error("{}: n_dims {} is out of range (1 to {})", where, n_dims, kGgufMaxDims);
  }
  for (uint32_t i = 0; i < n_dims; ++i) {
    KILN_ASSIGN(const uint64_t d, in.u64(fmt::format("{} ne[{}]", what, i)));
    tensor.dims.push_back(
        static_cast<int64_t>(d));  // a value above INT64_MAX reads as negative: refused below
  }
  KILN_ASSIGN(const uint32_t type_id, in.u32(what + " type"));
  KILN_ASSIGN(tensor.offset, in.u64(what + " offset"));
  const GgmlTypeTraits* traits = ggml_type_traits(type_id);
  if (traits == nullptr) {
    const std::string_view removed = removed_ggml_type(type_id);
    if (!removed.empty()) {
      return make_error("{}: ggml type {} ({}) was removed from ggml; re-quantize the model", where, type_id,
                        removed);
    }
    return make_error("{}: unknown ggml type {}", where, type_id);
  }
  tensor.type = traits->type;
  KILN_TRY(check_tensor_shape(where, *traits, &tensor));
  return tensor;
}

Status check_alignment_key(const std::string& path, const GgufFile& out, uint32_t* alignment) {
  const GgufValue* value = out.find("general.alignment");
  if (value == nullptr) return Status::Ok();
  if (value->type != GgufValueType::U32) {
    return make_error("{}: general.alignment: expected u32, found {}", path,
                      gguf_value_type_name(value->type));
  }
  const uint64_t a = value->bits;
  if (a == 0 || !std::has_single_bit(a)) {
    return make_error("{}: general.alignment {} is not a power of two", path, a);
  }
  *alignment = static_cast<uint32_t>(a);
  return Status::Ok();
}

// Offsets aligned, data inside the file, no byte in two tensors.
Status check_tensor_data(const std::string& path, const MappedFile& file, GgufFile* out) {
  const uint64_t size = file.size();
  const uint64_t data_size = size > out->data_offset ? size - out->data_offset : 0;
  for (GgufTensor& t : out->tensors) {
    if (t.offset % out->alignment != 0) {
      return make_error("{}: tensor '{}': offset {} is not a multiple of the alignment {}", path,
                        printable(t.name), t.offset, out->alignment);
    }
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return make_error(
          "{}: tensor '{}': data [{}, +{}) runs past the end of the data section ({} bytes from byte {})",
          path, printable(t.name), t.offset, t.nbytes, data_size, out->data_offset);
    }
    t.data = file.data() + std::min(size, out->data_offset + t.offset);
  }
  std::vector<const GgufTensor*> order;
  for (const GgufTensor& t : out->tensors) {
    if (t.nbytes > 0) order.push_back(&t);
  }
  // Stable: of two tensors at one offset, the later one in the file is named as overlapping.
  std::stable_sort(order.begin(), order.end(),
                   [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const GgufTensor& prev = *order[i - 1];
    const GgufTensor& next = *order[i];
    if (next.offset < prev.offset + prev.nbytes) {
      return make_error("{}: tensor '{}' bytes [{}, {}) overlap tensor '{}' bytes [{}, {})", path,
                        printable(next.name), next.offset, next.offset + next.nbytes, printable(prev.name),
                        prev.offset, prev.offset + prev.nbytes);
    }
  }
  return Status::Ok();
}

std::string found_type(const GgufValue& v) {
  if (v.type != GgufValueType::Array) return std::string(gguf_value_type_name(v.type));
  return fmt::format("array of {}", gguf_value_type_name(v.element_type));
}

}  // namespace

std::string gguf_printable(std::string_view s) { return printable(s); }

std::string_view gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::U8:
      return "u8";
    case GgufValueType::I8:
      return "i8";
    case GgufValueType::U16:
      return "u16";
    case GgufValueType::I16:
      return "i16";
    case GgufValueType::U32:
      return "u32";
    case GgufValueType::I32:
      return "i32";
    case GgufValueType::F32:
      return "f32";
    case GgufValueType::Bool:
      return "bool";
    case GgufValueType::String:
      return "string";
    case GgufValueType::Array:
      return "array";
    case GgufValueType::U64:
      return "u64";
    case GgufValueType::I64:
      return "i64";
    case GgufValueType::F64:
      return "f64";
  }
  return "?";
}

const GgmlTypeTraits* ggml_type_traits(uint32_t id) {
  for (const GgmlTypeTraits& t : kGgmlTypes) {
    if (static_cast<uint32_t>(t.type) == id) return &t;
  }
  return nullptr;
}

std::string_view ggml_type_name(GgmlType type) {
  const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(type));
  return t == nullptr ? "?" : t->name;
}

std::span<const GgmlTypeTraits> ggml_types() { return kGgmlTypes; }

bool GgufValue::is_integer() const { return is_integer_type(type); }

template <class T>
std::optional<T> GgufValue::as_integer() const {
  if (!is_integer()) return std::nullopt;
  if (is_signed(type)) {
    const int64_t v = sign_extend(bits, scalar_size(type));
    if (!std::in_range<T>(v)) return std::nullopt;
    return static_cast<T>(v);
  }
  if (!std::in_range<T>(bits)) return std::nullopt;
  return static_cast<T>(bits);
}
template std::optional<uint32_t> GgufValue::as_integer<uint32_t>() const;
template std::optional<int32_t> GgufValue::as_integer<int32_t>() const;
template std::optional<uint64_t> GgufValue::as_integer<uint64_t>() const;
template std::optional<int64_t> GgufValue::as_integer<int64_t>() const;

std::optional<int64_t> GgufValue::integer_at(uint64_t i) const {
  const uint64_t n = scalar_size(element_type);
  const uint64_t bits_i = load_le(elements + i * n, n);
  if (is_signed(element_type)) return sign_extend(bits_i, n);
  if (!std::in_range<int64_t>(bits_i)) return std::nullopt;
  return static_cast<int64_t>(bits_i);
}

double GgufValue::float_at(uint64_t i) const {
  if (element_type == GgufValueType::F64) return std::bit_cast<double>(load_le(elements + i * 8, 8));
  return std::bit_cast<float>(static_cast<uint32_t>(load_le(elements + i * 4, 4)));
}

int64_t GgufTensor::numel() const {
  // No overflow: checked when parsed, except that a zero dim makes any product of the others valid
  // (found by fuzz_gguf: {2^56 + 3, 2^56, 0}), so a zero is answered first.
  for (const int64_t d : dims) {
    if (d == 0) return 0;
  }
  int64_t n = 1;
  for (const int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensor::shape() const { return {dims.rbegin(), dims.rend()}; }

int64_t GgufTensor::rows() const {
  for (size_t i = 1; i < dims.size(); ++i) {
    if (dims[i] == 0) return 0;  // as numel(): the other dims' product may not fit then
  }
  int64_t n = 1;
  for (size_t i = 1; i < dims.size(); ++i) n *= dims[i];
  return n;
}

uint64_t GgufTensor::row_bytes() const {
  const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(type));
  return static_cast<uint64_t>(dims[0]) / t->block_size * t->type_size;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = metadata_index.find(key);
  return it == metadata_index.end() ? nullptr : &metadata[it->second].second;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index.find(name);
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

namespace {

Result<const GgufValue*> find_value(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return make_error("{}: metadata key '{}' is missing", f.path(), key);
  return v;
}

}  // namespace

template <class T>
Result<T> GgufFile::get_integer(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (!v->is_integer())
    return make_error("{}: {}: expected an integer, found {}", path(), key, found_type(*v));
  const std::optional<T> out = v->as_integer<T>();
  if (!out) {
    const std::string value = is_signed(v->type) ? std::to_string(sign_extend(v->bits, scalar_size(v->type)))
                                                 : std::to_string(v->bits);
    return make_error("{}: {}: {} {} is out of range [{}, {}]", path(), key, gguf_value_type_name(v->type),
                      value, std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
  }
  return *out;
}
template Result<uint32_t> GgufFile::get_integer<uint32_t>(std::string_view) const;
template Result<int32_t> GgufFile::get_integer<int32_t>(std::string_view) const;
template Result<uint64_t> GgufFile::get_integer<uint64_t>(std::string_view) const;
template Result<int64_t> GgufFile::get_integer<int64_t>(std::string_view) const;

Result<float> GgufFile::get_f32(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (v->type != GgufValueType::F32)
    return make_error("{}: {}: expected f32, found {}", path(), key, found_type(*v));
  return std::bit_cast<float>(static_cast<uint32_t>(v->bits));
}

Result<double> GgufFile::get_f64(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (v->type == GgufValueType::F32)
    return static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(v->bits)));
  if (v->type == GgufValueType::F64) return std::bit_cast<double>(v->bits);
  return make_error("{}: {}: expected f32 or f64, found {}", path(), key, found_type(*v));
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (v->type != GgufValueType::Bool)
    return make_error("{}: {}: expected bool, found {}", path(), key, found_type(*v));
  return v->bits != 0;
}

Result<std::string_view> GgufFile::get_string(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (v->type != GgufValueType::String) {
    return make_error("{}: {}: expected a string, found {}", path(), key, found_type(*v));
  }
  return v->string;
}

Result<const GgufValue*> GgufFile::get_array(std::string_view key, GgufValueType element_type) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (v->type != GgufValueType::Array || v->element_type != element_type) {
    return make_error("{}: {}: expected an array of {}, found {}", path(), key,
                      gguf_value_type_name(element_type), found_type(*v));
  }
  return v;
}

Result<std::span<const std::string_view>> GgufFile::get_string_array(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, get_array(key, GgufValueType::String));
  return std::span<const std::string_view>(v->strings);
}

Result<std::vector<int64_t>> GgufFile::get_integer_array(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, find_value(*this, key));
  if (v->type != GgufValueType::Array || !is_integer_type(v->element_type)) {
    return make_error("{}: {}: expected an array of integers, found {}", path(), key, found_type(*v));
  }
  std::vector<int64_t> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    const std::optional<int64_t> x = v->integer_at(i);
    if (!x) return make_error("{}: {}: element {} does not fit int64", path(), key, i);
    out[i] = *x;
  }
  return out;
}

Result<std::vector<float>> GgufFile::get_f32_array(std::string_view key) const {
  KILN_ASSIGN(const GgufValue* v, get_array(key, GgufValueType::F32));
  std::vector<float> out(v->count);
  if (v->count > 0) std::memcpy(out.data(), v->elements, v->count * sizeof(float));  // little-endian host
  return out;
}

Result<TensorView> GgufFile::view(const GgufTensor& tensor) const {
  DType dtype;
  switch (tensor.type) {
    case GgmlType::F32:
      dtype = DType::F32;
      break;
    case GgmlType::F16:
      dtype = DType::F16;
      break;
    case GgmlType::BF16:
      dtype = DType::BF16;
      break;
    case GgmlType::F64:
      dtype = DType::F64;
      break;
    case GgmlType::I8:
      dtype = DType::I8;
      break;
    case GgmlType::I32:
      dtype = DType::I32;
      break;
    case GgmlType::I64:
      dtype = DType::I64;
      break;
    default:
      return make_error("{}: tensor '{}': type {} has no plain element type (quantized or I16)", path(),
                        printable(tensor.name), ggml_type_name(tensor.type));
  }
  TensorView view;
  view.name = std::string(tensor.name);
  view.dtype = dtype;
  view.shape = tensor.shape();
  view.data = tensor.data;
  view.nbytes = tensor.nbytes;
  view.owner = file;
  return view;
}

Result<GgufFile> parse_gguf(std::shared_ptr<MappedFile> file) {
  static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");
  const std::string& path = file->path();
  Reader in(path, file->data(), file->size());
  GgufFile out;
  out.file = file;

  if (file->size() < 4)
    return make_error("{}: file is {} bytes, too small for the GGUF magic", path, file->size());
  const std::string_view magic(reinterpret_cast<const char*>(file->data()), 4);
  if (magic != "GGUF") {
    if (magic == "FUGG")
      return make_error("{}: magic \"FUGG\": a byte-swapped GGUF header; not supported", path);
    return make_error("{}: not a GGUF file (magic \"{}\", expected \"GGUF\")", path, printable(magic));
  }
  in.skip(4);
  KILN_ASSIGN(out.version, in.u32("version"));
  if (out.version != 2 && out.version != 3) {
    const uint32_t swapped = __builtin_bswap32(out.version);
    if (swapped >= 1 && swapped <= 3) {
      return make_error(
          "{}: big-endian GGUF (version {} byte-swapped); only little-endian files are supported", path,
          swapped);
    }
    if (out.version == 1) {
      return make_error("{}: GGUF version 1 is not supported (versions 2 and 3 are; re-convert the model)",
                        path);
    }
    return make_error("{}: unsupported GGUF version {} (supported: 2, 3)", path, out.version);
  }
  KILN_ASSIGN(const uint64_t tensor_count, in.u64("tensor count"));
  KILN_ASSIGN(const uint64_t kv_count, in.u64("metadata count"));
  // Smallest entries: a key/value of a 1-byte key and a u8 (8 + 1 + 4 + 1 bytes); a tensor info of a
  // 1-byte name, one dim, type and offset (8 + 1 + 4 + 8 + 4 + 8). Larger counts cannot be this file's.
  constexpr uint64_t kMinKv = 14, kMinTensor = 33;
  if (kv_count > in.remaining() / kMinKv || tensor_count > in.remaining() / kMinTensor ||
      kv_count * kMinKv + tensor_count * kMinTensor > in.remaining()) {
    return make_error(
        "{}: header claims {} metadata entries and {} tensors, more than the {} bytes after it can hold",
        path, kv_count, tensor_count, in.remaining());
  }

  out.metadata.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    KILN_ASSIGN(const std::string_view key, in.string(fmt::format("metadata #{} key", i)));
    if (key.empty()) return make_error("{}: metadata #{} has an empty key", path, i);
    const std::string what = fmt::format("metadata '{}'", printable(key));
    KILN_ASSIGN(const GgufValueType type, read_value_type(in, what));
    KILN_ASSIGN(GgufValue value, read_value(in, type, 1, what));
    if (!out.metadata_index.emplace(key, out.metadata.size()).second) {
      return make_error("{}: duplicate metadata key '{}'", path, printable(key));
    }
    out.metadata.emplace_back(key, std::move(value));
  }
  KILN_TRY(check_alignment_key(path, out, &out.alignment));

  out.tensors.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    KILN_ASSIGN(GgufTensor tensor, read_tensor_info(in, i));
    if (!out.tensor_index.emplace(tensor.name, out.tensors.size()).second) {
      return make_error("{}: duplicate tensor name '{}'", path, printable(tensor.name));
    }
    out.tensors.push_back(std::move(tensor));
  }
  // The data section starts at the next multiple of the alignment (a file without tensor data may
  // end before it).
  out.data_offset = (in.pos() + out.alignment - 1) / out.alignment * out.alignment;
  KILN_TRY(check_tensor_data(path, *file, &out));
  return out;
}

Result<GgufFile> open_gguf(const std::string& path) {
  KILN_ASSIGN(std::shared_ptr<MappedFile> file, MappedFile::open(path));
  return parse_gguf(std::move(file));
}

}  // namespace kiln
