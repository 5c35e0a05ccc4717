// GGUF reader (llama.cpp's model format, versions 2 and 3), mmapped and validated.
// Layout (ggml docs/gguf.md), all little-endian:
//   "GGUF" u32 version, u64 tensor_count, u64 kv_count,
//   kv_count x {string key, u32 value_type, value},
//   tensor_count x {string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset},
//   padding to `general.alignment` (default 32), then the data section; offsets are relative to it.
// A string is u64 length + bytes (no terminator); an array is u32 element type, u64 count, elements.
//
// Nothing is copied: keys, strings, string arrays and tensor data are views into the mapping, which
// GgufFile (and every TensorView it makes) keeps alive.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "common/mapped_file.h"
#include "format/tensor_view.h"

namespace kiln {

// Metadata value types (gguf_type), by their ids in the file.
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType type);  // "u32", "string", "array", ...

// ggml tensor types, by their ids in the file (ids 4, 5, 31-33, 36-38 were removed from ggml).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
};

// A row of `block_size` elements along ne[0] is stored in `type_size` bytes (gguf-py GGML_QUANT_SIZES).
struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // "Q4_K", as ggml and gguf-py spell it
  uint32_t block_size;    // elements per block
  uint32_t type_size;     // bytes per block
};
// nullptr for an id ggml does not define (or no longer does).
const GgmlTypeTraits* ggml_type_traits(uint32_t id);
std::string_view ggml_type_name(GgmlType type);
std::span<const GgmlTypeTraits> ggml_types();  // every known type, by id

// One metadata value. Scalars are decoded; arrays point into the mapping.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  // Integer, bool and float scalars: the value's little-endian bits, zero-extended to 64.
  uint64_t bits = 0;
  std::string_view string;  // String

  // Array: element type and count. Fixed-size elements stay in the file (`elements`, count x size
  // bytes, unaligned); strings and nested arrays are decoded into `strings` / `arrays`.
  GgufValueType element_type = GgufValueType::U8;
  uint64_t count = 0;
  const uint8_t* elements = nullptr;
  std::vector<std::string_view> strings;  // element_type String
  std::vector<GgufValue> arrays;          // element_type Array

  bool is_integer() const;  // u8 .. i64 scalars (not bool)
  // The integer scalar as T when it is one and its value fits T, else nullopt.
  template <class T>
  std::optional<T> as_integer() const;
  // The i-th element of an integer array as int64 (u64 above INT64_MAX: nullopt), i < count.
  std::optional<int64_t> integer_at(uint64_t i) const;
  double float_at(uint64_t i) const;  // f32 / f64 array element, i < count
};

// A tensor as the file describes it. dims are in GGUF / ggml order: dims[0] (ne[0]) varies fastest,
// so a Linear weight of PyTorch shape [out, in] has dims {in, out}. shape() gives kiln's row-major
// order (dims reversed); rows() x cols() is its 2-D view (cols = ne[0], the quantization axis).
struct GgufTensor {
  std::string_view name;  // into the mapping
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> dims;      // ne[0..n_dims), 1 <= n_dims <= 4, each >= 0
  uint64_t offset = 0;            // from the start of the data section, a multiple of the alignment
  uint64_t nbytes = 0;            // numel / block_size * type_size
  const uint8_t* data = nullptr;  // nbytes bytes in the mapping

  int64_t numel() const;
  std::vector<int64_t> shape() const;  // row-major: {ne[n-1], ..., ne[0]}
  int64_t cols() const { return dims[0]; }
  int64_t rows() const;        // ne[1] * ne[2] * ne[3]
  uint64_t row_bytes() const;  // bytes of one row of cols() elements
};

struct GgufFile {
  std::shared_ptr<MappedFile> file;
  uint32_t version = 0;                                          // 2 or 3
  uint32_t alignment = 32;                                       // general.alignment
  uint64_t data_offset = 0;                                      // where the data section starts in the file
  std::vector<std::pair<std::string_view, GgufValue>> metadata;  // file order
  std::vector<GgufTensor> tensors;                               // file order

  const std::string& path() const { return file->path(); }
  const GgufValue* find(std::string_view key) const;  // nullptr when absent
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GgufTensor* find_tensor(std::string_view name) const;

  // Typed getters: an error names the file and key, and the type found, when the key is missing or
  // of another type. Integer getters take any integer type whose value fits the result.
  template <class T>
  Result<T> get_integer(std::string_view key) const;  // T: uint32_t, int32_t, uint64_t, int64_t
  Result<uint32_t> get_u32(std::string_view key) const { return get_integer<uint32_t>(key); }
  Result<int32_t> get_i32(std::string_view key) const { return get_integer<int32_t>(key); }
  Result<uint64_t> get_u64(std::string_view key) const { return get_integer<uint64_t>(key); }
  Result<int64_t> get_i64(std::string_view key) const { return get_integer<int64_t>(key); }
  Result<float> get_f32(std::string_view key) const;   // f32 only
  Result<double> get_f64(std::string_view key) const;  // f32 or f64
  Result<bool> get_bool(std::string_view key) const;
  Result<std::string_view> get_string(std::string_view key) const;
  // An array whose elements are of `element_type` (errors name what was found).
  Result<const GgufValue*> get_array(std::string_view key, GgufValueType element_type) const;
  Result<std::span<const std::string_view>> get_string_array(std::string_view key) const;  // no copy
  Result<std::vector<int64_t>> get_integer_array(std::string_view key) const;  // any integer elements
  Result<std::vector<float>> get_f32_array(std::string_view key) const;

  // A TensorView (row-major shape, kiln DType) of an F32, F16, BF16, F64, I8, I32 or I64 tensor;
  // quantized and other types are an error naming the tensor and its type.
  Result<TensorView> view(const GgufTensor& tensor) const;

  // Lookup indexes (views into the mapping, so copies of a GgufFile stay valid).
  std::unordered_map<std::string_view, size_t> metadata_index;
  std::unordered_map<std::string_view, size_t> tensor_index;
};

// Limits of the reader: a deeper array nesting is refused before any recursion.
constexpr int kGgufMaxArrayDepth = 8;
constexpr uint32_t kGgufDefaultAlignment = 32;
constexpr int kGgufMaxDims = 4;  // GGML_MAX_DIMS

// Bytes from a file as they go into a one-line error: non-printable bytes escaped as \xNN, cut at 80.
std::string gguf_printable(std::string_view s);

// Parses and validates a GGUF image (used by open and by the fuzzer). Checked: magic, version (2 or
// 3; v1 and big-endian files refused by name), counts and every length against the bytes left
// (before allocating), value and array element types, array nesting depth, duplicate keys and
// tensor names, general.alignment (u32, a power of two), n_dims 1..4, dims >= 0, element count and
// byte size without overflow, ne[0] a multiple of the type's block size, known ggml types, offsets
// aligned and inside the file, tensors not overlapping. Each failure is one error line naming the
// file and the key or tensor.
Result<GgufFile> parse_gguf(std::shared_ptr<MappedFile> file);
Result<GgufFile> open_gguf(const std::string& path);

}  // namespace kiln
