// GGUF parsing: a small writer in the test builds a valid file, then each kind of corruption is
// built from it, and every error must be one line naming the file and what is wrong.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>

#include "format/gguf.h"
#include "format_test_util.h"
#include "gguf_writer.h"

namespace kiln {
namespace {

using namespace gguf_test;

std::string f32_bytes(std::initializer_list<float> values) {
  std::string out;
  for (const float v : values) put_u32(out, std::bit_cast<uint32_t>(v));
  return out;
}

// Q8_0 block: f16 scale + 32 int8 quants (34 bytes).
std::string q8_0_rows(int blocks) {
  std::string out;
  for (int b = 0; b < blocks; ++b) {
    put(out, f32_to_f16(0.5f), 2);
    for (int i = 0; i < 32; ++i) out += static_cast<char>(i - 16 + b);
  }
  return out;
}

// Every value type once, string and numeric arrays, a nested array, and four tensors.
GgufWriter sample_writer() {
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  w.kv_u32("llama.block_count", 2);
  w.raw_kv("u8", uint32_t(VT::U8), GgufWriter::le(200, 1));
  w.raw_kv("i8", uint32_t(VT::I8), GgufWriter::le(0xfe, 1));  // -2
  w.raw_kv("u16", uint32_t(VT::U16), GgufWriter::le(65535, 2));
  w.raw_kv("i16", uint32_t(VT::I16), GgufWriter::le(0x8000, 2));      // -32768
  w.raw_kv("i32", uint32_t(VT::I32), GgufWriter::le(0xffffffff, 4));  // -1
  w.raw_kv("u64", uint32_t(VT::U64), GgufWriter::le(~uint64_t{0}, 8));
  w.raw_kv("i64", uint32_t(VT::I64), GgufWriter::le(uint64_t{1} << 40, 8));
  w.raw_kv("f32", uint32_t(VT::F32), f32_bytes({1e5f}));
  w.raw_kv("f64", uint32_t(VT::F64), GgufWriter::le(std::bit_cast<uint64_t>(0.25), 8));
  w.raw_kv("bool", uint32_t(VT::Bool), GgufWriter::le(1, 1));
  w.kv_string_array("tokenizer.ggml.tokens", {"<s>", "a", "", "\xe4\xb8\xad"});
  {
    std::string v =
        GgufWriter::le(uint32_t(VT::F32), 4) + GgufWriter::le(3, 8) + f32_bytes({0.5f, -1.0f, 2.0f});
    w.raw_kv("tokenizer.ggml.scores", uint32_t(VT::Array), v);
  }
  {
    std::string v = GgufWriter::le(uint32_t(VT::I32), 4) + GgufWriter::le(3, 8) + GgufWriter::le(1, 4) +
                    GgufWriter::le(0xfffffffe, 4) + GgufWriter::le(6, 4);
    w.raw_kv("tokenizer.ggml.token_type", uint32_t(VT::Array), v);
  }
  {  // [[1, 2], []] as an array of arrays of i16
    std::string v = GgufWriter::le(uint32_t(VT::Array), 4) + GgufWriter::le(2, 8);
    v += GgufWriter::le(uint32_t(VT::I16), 4) + GgufWriter::le(2, 8) + GgufWriter::le(1, 2) +
         GgufWriter::le(2, 2);
    v += GgufWriter::le(uint32_t(VT::I16), 4) + GgufWriter::le(0, 8);
    w.raw_kv("nested", uint32_t(VT::Array), v);
  }
  w.tensor("token_embd.weight", {3, 2}, GgmlType::F32, f32_bytes({1, 2, 3, 4, 5, 6}));
  w.tensor("blk.0.attn_q.weight", {64, 2}, GgmlType::Q8_0, q8_0_rows(4));
  w.tensor("empty", {0, 4}, GgmlType::F32, "");
  w.tensor("output_norm.weight", {4}, GgmlType::F16,
           GgufWriter::le(f32_to_f16(1.0f), 2) + GgufWriter::le(f32_to_f16(2.0f), 2) +
               GgufWriter::le(f32_to_f16(3.0f), 2) + GgufWriter::le(f32_to_f16(4.0f), 2));
  return w;
}

Result<GgufFile> parse_image(std::string image) {
  return parse_gguf(MappedFile::from_memory(std::move(image), "test.gguf"));
}

// The error of parsing `image` ("" when it parses); asserts the one-line, file-named form.
std::string error_of(std::string image) {
  const auto result = parse_image(std::move(image));
  if (result.ok()) return "";
  const std::string& message = result.error().message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(message.rfind("test.gguf: ", 0), 0u) << message;
  return message;
}

// A file with one extra metadata entry of `type` and value bytes `value` after the sample's entries.
std::string with_kv(std::string_view key, uint32_t type, const std::string& value) {
  GgufWriter w = sample_writer();
  w.raw_kv(key, type, value);
  return w.image();
}

#define EXPECT_ERROR(image, fragment)                                                           \
  do {                                                                                          \
    const std::string message_ = error_of(image);                                               \
    EXPECT_NE(message_.find(fragment), std::string::npos)                                       \
        << "expected an error containing \"" << (fragment) << "\", got \"" << message_ << "\""; \
  } while (0)

TEST(Gguf, ParsesEveryValueType) {
  const auto file = parse_image(sample_writer().image());
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_EQ(file->version, 3u);
  EXPECT_EQ(file->alignment, 32u);
  ASSERT_EQ(file->metadata.size(), 16u);
  EXPECT_EQ(file->metadata[0].first, "general.architecture");  // file order
  EXPECT_EQ(file->get_string("general.architecture").value(), "llama");
  EXPECT_EQ(file->get_u32("llama.block_count").value(), 2u);
  EXPECT_EQ(file->get_u32("u8").value(), 200u);
  EXPECT_EQ(file->get_i32("i8").value(), -2);
  EXPECT_EQ(file->get_u32("u16").value(), 65535u);
  EXPECT_EQ(file->get_i64("i16").value(), -32768);
  EXPECT_EQ(file->get_i32("i32").value(), -1);
  EXPECT_EQ(file->get_u64("u64").value(), ~uint64_t{0});
  EXPECT_EQ(file->get_i64("i64").value(), int64_t{1} << 40);
  EXPECT_EQ(file->get_f32("f32").value(), 1e5f);
  EXPECT_EQ(file->get_f64("f32").value(), 1e5);
  EXPECT_EQ(file->get_f64("f64").value(), 0.25);
  EXPECT_TRUE(file->get_bool("bool").value());

  const auto tokens = file->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.error().message;
  ASSERT_EQ(tokens->size(), 4u);
  EXPECT_EQ((*tokens)[0], "<s>");
  EXPECT_EQ((*tokens)[2], "");
  EXPECT_EQ((*tokens)[3], "\xe4\xb8\xad");
  EXPECT_EQ(file->get_f32_array("tokenizer.ggml.scores").value(), (std::vector<float>{0.5f, -1.0f, 2.0f}));
  EXPECT_EQ(file->get_integer_array("tokenizer.ggml.token_type").value(), (std::vector<int64_t>{1, -2, 6}));

  const GgufValue* nested = file->get_array("nested", VT::Array).value();
  ASSERT_EQ(nested->arrays.size(), 2u);
  EXPECT_EQ(nested->arrays[0].element_type, VT::I16);
  ASSERT_EQ(nested->arrays[0].count, 2u);
  EXPECT_EQ(nested->arrays[0].integer_at(1), 2);
  EXPECT_EQ(nested->arrays[1].count, 0u);
}

TEST(Gguf, GettersNameKeyAndTypeFound) {
  const auto file = parse_image(sample_writer().image());
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_EQ(file->get_u32("absent").error().message, "test.gguf: metadata key 'absent' is missing");
  EXPECT_EQ(file->get_u32("i32").error().message, "test.gguf: i32: i32 -1 is out of range [0, 4294967295]");
  EXPECT_EQ(
      file->get_i64("u64").error().message,
      "test.gguf: u64: u64 18446744073709551615 is out of range [-9223372036854775808, 9223372036854775807]");
  EXPECT_EQ(file->get_u32("f32").error().message, "test.gguf: f32: expected an integer, found f32");
  EXPECT_EQ(file->get_f32("f64").error().message, "test.gguf: f64: expected f32, found f64");
  EXPECT_EQ(file->get_string("tokenizer.ggml.tokens").error().message,
            "test.gguf: tokenizer.ggml.tokens: expected a string, found array of string");
  EXPECT_EQ(file->get_f32_array("tokenizer.ggml.token_type").error().message,
            "test.gguf: tokenizer.ggml.token_type: expected an array of f32, found array of i32");
  EXPECT_EQ(file->get_integer_array("tokenizer.ggml.scores").error().message,
            "test.gguf: tokenizer.ggml.scores: expected an array of integers, found array of f32");
  EXPECT_FALSE(file->get_bool("u8").ok());
  EXPECT_FALSE(file->has("absent"));
  EXPECT_TRUE(file->has("nested"));
}

TEST(Gguf, TensorsInGgufDimsOrderWithRowMajorView) {
  const auto file = parse_image(sample_writer().image());
  ASSERT_TRUE(file.ok()) << file.error().message;
  ASSERT_EQ(file->tensors.size(), 4u);

  const GgufTensor* embd = file->find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::F32);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{3, 2}));  // ne[0] = 3 varies fastest
  EXPECT_EQ(embd->shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(embd->rows(), 2);
  EXPECT_EQ(embd->cols(), 3);
  EXPECT_EQ(embd->nbytes, 24u);
  EXPECT_EQ(embd->offset, 0u);
  EXPECT_EQ(embd->data, file->file->data() + file->data_offset);
  EXPECT_EQ(file->data_offset % 32, 0u);
  const auto view = file->view(*embd);
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(view->dtype, DType::F32);
  float row1[3];
  std::memcpy(row1, view->data + 12, 12);  // row 1 = elements 3..5
  EXPECT_EQ(row1[0], 4.0f);
  EXPECT_EQ(row1[2], 6.0f);

  const GgufTensor* q = file->find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgmlType::Q8_0);
  EXPECT_EQ(q->offset, 32u);  // 24 bytes of token_embd, padded to 32
  EXPECT_EQ(q->nbytes, 4u * 34u);
  EXPECT_EQ(q->row_bytes(), 2u * 34u);
  EXPECT_EQ(q->data[2], static_cast<uint8_t>(-16));  // first quant of block 0
  EXPECT_EQ(
      file->view(*q).error().message,
      "test.gguf: tensor 'blk.0.attn_q.weight': type Q8_0 has no plain element type (quantized or I16)");

  const GgufTensor* empty = file->find_tensor("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes, 0u);

  const auto norm = file->view(*file->find_tensor("output_norm.weight"));
  ASSERT_TRUE(norm.ok()) << norm.error().message;
  uint16_t h;
  std::memcpy(&h, norm->data + 6, 2);
  EXPECT_EQ(f16_to_f32(h), 4.0f);
  EXPECT_EQ(file->find_tensor("absent"), nullptr);
}

TEST(Gguf, TypeTableMatchesGgufPy) {
  // Spot checks against gguf-py 0.19.0 GGML_QUANT_SIZES; the full table is in gguf.cc.
  const auto check = [](uint32_t id, std::string_view name, uint32_t block, uint32_t bytes) {
    const GgmlTypeTraits* t = ggml_type_traits(id);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->name, name);
    EXPECT_EQ(t->block_size, block) << name;
    EXPECT_EQ(t->type_size, bytes) << name;
  };
  check(0, "F32", 1, 4);
  check(3, "Q4_1", 32, 20);
  check(8, "Q8_0", 32, 34);
  check(10, "Q2_K", 256, 84);
  check(11, "Q3_K", 256, 110);
  check(14, "Q6_K", 256, 210);
  check(23, "IQ4_XS", 256, 136);
  check(30, "BF16", 1, 2);
  check(35, "TQ2_0", 256, 66);
  check(39, "MXFP4", 32, 17);
  for (const uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 42u}) {
    EXPECT_EQ(ggml_type_traits(removed), nullptr) << removed;
  }
  EXPECT_EQ(ggml_types().size(), 34u);
}

TEST(Gguf, AcceptsVersion2AndCustomAlignment) {
  GgufWriter w;
  w.version = 2;
  w.alignment = 64;
  w.kv_u32("general.alignment", 64);
  w.tensor("a", {2}, GgmlType::F32, f32_bytes({1, 2}));
  w.tensor("b", {4}, GgmlType::I8, "abcd");
  const auto file = parse_image(w.image());
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_EQ(file->version, 2u);
  EXPECT_EQ(file->alignment, 64u);
  EXPECT_EQ(file->data_offset % 64, 0u);
  EXPECT_EQ(file->tensors[1].offset, 64u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->tensors[1].data), 4), "abcd");
}

TEST(Gguf, AcceptsMetadataOnlyFileWithoutPadding) {
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  // The writer pads to 32 bytes; a file that stops right after its last entry is fine too.
  std::string unpadded = w.image();
  while (unpadded.back() == '\0') unpadded.pop_back();
  const auto file = parse_image(unpadded);
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_TRUE(file->tensors.empty());
  EXPECT_EQ(file->get_string("general.architecture").value(), "llama");
}

TEST(Gguf, OpenMapsFileAndViewsKeepItAlive) {
  testing::TempDir dir;
  testing::write_file(dir.file("m.gguf"), sample_writer().image());
  TensorView view;
  {
    auto file = open_gguf(dir.file("m.gguf"));
    ASSERT_TRUE(file.ok()) << file.error().message;
    view = file->view(file->tensors[0]).value();
  }
  ASSERT_EQ(view.nbytes, 24u);
  float v;
  std::memcpy(&v, view.data + 20, 4);
  EXPECT_EQ(v, 6.0f);
  EXPECT_FALSE(open_gguf(dir.file("absent.gguf")).ok());
}

TEST(Gguf, EveryTruncationIsOneError) {
  const std::string image = sample_writer().image();
  for (size_t n = 0; n < image.size(); ++n) {
    const std::string message = error_of(image.substr(0, n));
    EXPECT_FALSE(message.empty()) << "a prefix of " << n << " of " << image.size() << " bytes parsed";
  }
  // Spot-check the wording at a few cuts.
  EXPECT_ERROR(image.substr(0, 2), "too small for the GGUF magic");
  EXPECT_ERROR(image.substr(0, 10), "tensor count: truncated at byte 8 (needs 8 bytes, 2 remain)");
  const size_t last_name = image.find("output_norm.weight") + 18;
  EXPECT_ERROR(image.substr(0, last_name + 2), "tensor 'output_norm.weight' n_dims: truncated at byte");
  EXPECT_ERROR(image.substr(0, image.size() - 1), "tensor 'output_norm.weight': data");
}

TEST(Gguf, RefusesMagicAndVersions) {
  std::string image = sample_writer().image();
  EXPECT_ERROR("GGML" + image.substr(4), "not a GGUF file (magic \"GGML\", expected \"GGUF\")");
  EXPECT_ERROR("FUGG" + image.substr(4), "byte-swapped");
  EXPECT_ERROR(
      "\x7f"
      "ELF" +
          image.substr(4),
      "magic \"\\x7fELF\"");
  GgufWriter w = sample_writer();
  w.version = 1;
  EXPECT_ERROR(w.image(), "GGUF version 1 is not supported");
  w.version = 4;
  EXPECT_ERROR(w.image(), "unsupported GGUF version 4 (supported: 2, 3)");
  w.version = 0x03000000;  // a big-endian writer's version 3
  EXPECT_ERROR(w.image(), "big-endian GGUF (version 3 byte-swapped)");
}

TEST(Gguf, RefusesCountsTheFileCannotHold) {
  std::string image = sample_writer().image();
  std::string huge_tensors = image;
  std::memcpy(huge_tensors.data() + 8, "\xff\xff\xff\xff\xff\xff\xff\x7f", 8);
  EXPECT_ERROR(huge_tensors, "header claims 16 metadata entries and 9223372036854775807 tensors");
  std::string huge_kvs = image;
  std::memcpy(huge_kvs.data() + 16, "\x00\x00\x00\x00\x01\x00\x00\x00", 8);
  EXPECT_ERROR(huge_kvs, "header claims 4294967296 metadata entries");
}

TEST(Gguf, RefusesHugeStringsAndArrays) {
  GgufWriter w;
  std::string key_bomb;
  put_u64(key_bomb, uint64_t{1} << 62);
  EXPECT_ERROR(w.header().substr(0, 16) + GgufWriter::le(1, 8) + key_bomb + "xxxxxx",
               "metadata #0 key: string length 4611686018427387904 at byte 24 exceeds the 6 bytes remaining");
  EXPECT_ERROR(with_kv("s", uint32_t(VT::String), GgufWriter::le(~uint64_t{0}, 8)),
               "metadata 's': string length 18446744073709551615");
  EXPECT_ERROR(
      with_kv("a", uint32_t(VT::Array), GgufWriter::le(uint32_t(VT::U64), 4) + GgufWriter::le(1 << 20, 8)),
      "metadata 'a' array of u64: 1048576 elements of at least 8 bytes each");
  EXPECT_ERROR(with_kv("a", uint32_t(VT::Array),
                       GgufWriter::le(uint32_t(VT::String), 4) + GgufWriter::le(uint64_t{1} << 61, 8)),
               "array of string: 2305843009213693952 elements of at least 8 bytes");
  // A string element inside an array that claims more than is left.
  EXPECT_ERROR(
      with_kv("a", uint32_t(VT::Array),
              GgufWriter::le(uint32_t(VT::String), 4) + GgufWriter::le(1, 8) + GgufWriter::le(1000, 8)),
      "metadata 'a' element 0: string length 1000");
}

TEST(Gguf, RefusesNestedArrayBombs) {
  // 1,000 levels of array-of-array: refused at level 9, before reading deeper.
  std::string deep;
  for (int i = 0; i < 1000; ++i) deep += GgufWriter::le(uint32_t(VT::Array), 4) + GgufWriter::le(1, 8);
  deep += GgufWriter::le(uint32_t(VT::U8), 4) + GgufWriter::le(0, 8);
  EXPECT_ERROR(with_kv("bomb", uint32_t(VT::Array), deep.substr(12)), "arrays nested more than 8 deep");
  // Exactly 8 levels is accepted.
  std::string eight;
  for (int i = 0; i < 7; ++i) eight += GgufWriter::le(uint32_t(VT::Array), 4) + GgufWriter::le(1, 8);
  eight += GgufWriter::le(uint32_t(VT::U8), 4) + GgufWriter::le(1, 8) + "x";
  const auto file = parse_image(with_kv("deep", uint32_t(VT::Array), eight));
  ASSERT_TRUE(file.ok()) << file.error().message;
  const GgufValue* v = file->find("deep");
  for (int i = 0; i < 7; ++i) v = &v->arrays.at(0);
  EXPECT_EQ(v->element_type, VT::U8);
  EXPECT_EQ(v->elements[0], 'x');
  // A wide bomb: 2^60 empty arrays claimed in a few bytes.
  EXPECT_ERROR(with_kv("wide", uint32_t(VT::Array),
                       GgufWriter::le(uint32_t(VT::Array), 4) + GgufWriter::le(uint64_t{1} << 60, 8)),
               "1152921504606846976 elements of at least 12 bytes each");
}

TEST(Gguf, RefusesBadValueTypes) {
  EXPECT_ERROR(with_kv("x", 13, GgufWriter::le(0, 4)), "metadata 'x': unknown value type 13 at byte");
  EXPECT_ERROR(with_kv("x", uint32_t(VT::Array), GgufWriter::le(0xffffffff, 4) + GgufWriter::le(0, 8)),
               "metadata 'x' array element: unknown value type 4294967295");
  EXPECT_ERROR(with_kv("flag", uint32_t(VT::Bool), GgufWriter::le(2, 1)),
               "metadata 'flag': bool must be 0 or 1, found 2");
  EXPECT_ERROR(
      with_kv("flags", uint32_t(VT::Array),
              GgufWriter::le(uint32_t(VT::Bool), 4) + GgufWriter::le(2, 8) + std::string("\x01\x07", 2)),
      "metadata 'flags' element 1: bool must be 0 or 1, found 7");
  EXPECT_ERROR(with_kv("", uint32_t(VT::U8), "x"), "metadata #16 has an empty key");
  EXPECT_ERROR(with_kv("bad\nkey", 99, ""), "metadata 'bad\\x0akey': unknown value type 99");
}

TEST(Gguf, RefusesDuplicates) {
  EXPECT_ERROR(with_kv("general.architecture", uint32_t(VT::U8), "x"),
               "duplicate metadata key 'general.architecture'");
  GgufWriter w = sample_writer();
  w.tensor("token_embd.weight", {1}, GgmlType::F32, f32_bytes({0}));
  EXPECT_ERROR(w.image(), "duplicate tensor name 'token_embd.weight'");
}

TEST(Gguf, RefusesBadAlignmentKey) {
  GgufWriter w;
  w.raw_kv("general.alignment", uint32_t(VT::U64), GgufWriter::le(32, 8));
  EXPECT_ERROR(w.image(), "general.alignment: expected u32, found u64");
  GgufWriter zero;
  zero.kv_u32("general.alignment", 0);
  EXPECT_ERROR(zero.image(), "general.alignment 0 is not a power of two");
  GgufWriter odd;
  odd.kv_u32("general.alignment", 48);
  EXPECT_ERROR(odd.image(), "general.alignment 48 is not a power of two");
}

// A sample file with one more tensor info (no data) appended.
std::string with_tensor(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type,
                        uint64_t offset) {
  GgufWriter w = sample_writer();
  w.raw_tensor(name, dims, type, offset);
  return w.image();
}

TEST(Gguf, RefusesBadTensorInfos) {
  EXPECT_ERROR(with_tensor("t", {4}, 99, 0), "test.gguf: tensor 't': unknown ggml type 99");
  EXPECT_ERROR(with_tensor("t", {32}, 4, 0), "tensor 't': ggml type 4 (Q4_2) was removed from ggml");
  EXPECT_ERROR(with_tensor("t", {}, 0, 0), "tensor 't': n_dims 0 is out of range (1 to 4)");
  EXPECT_ERROR(with_tensor("t", {1, 1, 1, 1, 1}, 0, 0), "tensor 't': n_dims 5 is out of range (1 to 4)");
  EXPECT_ERROR(with_tensor("t", {4, ~uint64_t{0}}, 0, 0),
               "tensor 't': ne[1] = 18446744073709551615 exceeds INT64_MAX");
  EXPECT_ERROR(with_tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0),
               "tensor 't': dims [1099511627776, 1099511627776]: the element count overflows int64");
  EXPECT_ERROR(with_tensor("t", {uint64_t{1} << 31, uint64_t{1} << 31}, uint32_t(GgmlType::F64), 0),
               "the byte size of 4611686018427387904 F64 blocks overflows 64 bits");
  EXPECT_ERROR(with_tensor("t", {33, 2}, uint32_t(GgmlType::Q4_0), 0),
               "tensor 't': dims [33, 2]: ne[0] = 33 is not a multiple of Q4_0's block size 32");
  EXPECT_ERROR(with_tensor("t", {128}, uint32_t(GgmlType::Q4_K), 0),
               "not a multiple of Q4_K's block size 256");
  EXPECT_ERROR(with_tensor("", {1}, 0, 0), "tensor #4 has an empty name");
  // A zero dimension makes an empty tensor whatever the others are: no overflow, no bytes.
  const auto file = parse_image(with_tensor("t", {0, ~uint64_t{0} >> 1}, 0, 0));
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_EQ(file->find_tensor("t")->nbytes, 0u);
}

TEST(Gguf, RefusesBadOffsets) {
  // The sample's data section holds 4 tensors: [0, 24), [32, 168), (empty), [192, 200).
  EXPECT_ERROR(with_tensor("t", {1}, 0, 4), "tensor 't': offset 4 is not a multiple of the alignment 32");
  EXPECT_ERROR(with_tensor("t", {2}, 0, 224),
               "tensor 't': data [224, +8) runs past the end of the data section (200 bytes");
  EXPECT_ERROR(with_tensor("t", {8}, 0, 192), "tensor 't': data [192, +32) runs past the end");
  EXPECT_ERROR(with_tensor("t", {1}, 0, ~uint64_t{0} - 31),
               "tensor 't': data [18446744073709551584, +4) runs past");
  EXPECT_ERROR(with_tensor("t", {2}, 0, 160),
               "tensor 't' bytes [160, 168) overlap tensor 'blk.0.attn_q.weight' bytes [32, 168)");
  EXPECT_ERROR(with_tensor("t", {16}, 0, 0),
               "tensor 't' bytes [0, 64) overlap tensor 'token_embd.weight' bytes [0, 24)");
  // An empty tensor may sit anywhere inside the data section, even on another tensor's bytes.
  EXPECT_EQ(error_of(with_tensor("t", {0}, 0, 192)), "");
}

TEST(Gguf, TensorErrorsNameUnprintableNamesSafely) {
  const std::string name = std::string("a\0b", 3) + std::string(200, 'x');
  const std::string message = error_of(with_tensor(name, {4}, 99, 0));
  EXPECT_NE(message.find("tensor 'a\\x00bxxx"), std::string::npos) << message;
  EXPECT_NE(message.find("... (203 bytes)"), std::string::npos) << message;
}

}  // namespace
}  // namespace kiln
