// Single-file safetensors parsing: a good file, then one test per kind of corruption, each
// asserting that the error names the file, the tensor and what was expected.
#include "format/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "format_test_util.h"

namespace kiln {
namespace {

using testing::f32_tensor;
using testing::safetensors_header;
using testing::safetensors_image;
using testing::TestTensor;
using Json = nlohmann::ordered_json;

std::vector<TestTensor> sample_tensors() {
  return {
      f32_tensor("model.embed_tokens.weight", {4, 3}, 1.0f),
      {"model.norm.weight", "F16", {3}, std::string("\x00\x3c\x00\x40\x00\x42", 6)},  // 1, 2, 3 in f16
      {"lm_head.weight", "BF16", {2, 2}, std::string("\x80\x3f\x00\x40\x40\x40\x80\x40", 8)},  // 1, 2, 3, 4
  };
}

Result<SafetensorsFile> parse_image(std::string image) {
  return parse_safetensors(MappedFile::from_memory(std::move(image), "test.safetensors"));
}

// Parses a sample image whose header was edited by `edit`; returns the error message ("" if it parsed).
template <class Edit>
std::string error_after(Edit edit) {
  const std::vector<TestTensor> tensors = sample_tensors();
  Json header = safetensors_header(tensors);
  std::string data = testing::concat_data(tensors);
  edit(header, data);
  const auto result = parse_image(safetensors_image(header.dump(), data));
  return result.ok() ? "" : result.error().message;
}

TEST(Safetensors, ParsesGoodFileInHeaderOrder) {
  const std::vector<TestTensor> tensors = sample_tensors();
  const auto file = parse_image(safetensors_image(tensors));
  ASSERT_TRUE(file.ok()) << file.error().message;
  ASSERT_EQ(file->tensors.size(), 3u);
  EXPECT_EQ(file->metadata.at("format"), "pt");
  const DType dtypes[] = {DType::F32, DType::F16, DType::BF16};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& view = file->tensors[i];
    EXPECT_EQ(view.name, tensors[i].name);
    EXPECT_EQ(view.dtype, dtypes[i]);
    EXPECT_EQ(view.shape, tensors[i].shape);
    ASSERT_EQ(view.nbytes, tensors[i].bytes.size());
    EXPECT_EQ(std::memcmp(view.data, tensors[i].bytes.data(), view.nbytes), 0) << view.name;
  }
  uint16_t half;
  std::memcpy(&half, file->tensors[1].data + 4, 2);
  EXPECT_EQ(f16_to_f32(half), 3.0f);
  std::memcpy(&half, file->tensors[2].data + 6, 2);
  EXPECT_EQ(bf16_to_f32(half), 4.0f);
}

TEST(Safetensors, ViewsKeepTheFileAlive) {
  testing::TempDir dir;
  const std::vector<TestTensor> tensors = sample_tensors();
  testing::write_file(dir.file("model.safetensors"), safetensors_image(tensors));
  TensorView embed;
  {
    auto file = open_safetensors(dir.file("model.safetensors"));
    ASSERT_TRUE(file.ok()) << file.error().message;
    embed = file->tensors[0];
  }  // SafetensorsFile gone; the view's owner still holds the mapping
  ASSERT_EQ(embed.nbytes, tensors[0].bytes.size());
  EXPECT_EQ(std::memcmp(embed.data, tensors[0].bytes.data(), embed.nbytes), 0);
}

TEST(Safetensors, AcceptsEmptyTensorsAndPaddedHeader) {
  const std::vector<TestTensor> tensors = {f32_tensor("a", {2}), {"empty", "F32", {0, 5}, ""}, f32_tensor("b", {1})};
  // The reference writer pads the header with spaces to an 8-byte boundary.
  const auto file = parse_image(safetensors_image(safetensors_header(tensors).dump() + "   ", testing::concat_data(tensors)));
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_EQ(file->tensors[1].numel(), 0);
  EXPECT_EQ(file->tensors[1].nbytes, 0u);
}

TEST(Safetensors, AcceptsOtherKnownDtypes) {
  const std::vector<TestTensor> tensors = {{"ids", "I64", {2}, std::string(16, '\1')},
                                           {"mask", "U8", {3}, std::string(3, '\1')},
                                           {"pos", "I32", {1}, std::string(4, '\1')},
                                           {"scale", "F64", {1}, std::string(8, '\0')}};
  const auto file = parse_image(safetensors_image(tensors));
  ASSERT_TRUE(file.ok()) << file.error().message;
  EXPECT_EQ(file->tensors[0].dtype, DType::I64);
  EXPECT_EQ(file->tensors[1].dtype, DType::U8);
  EXPECT_EQ(file->tensors[2].dtype, DType::I32);
  EXPECT_EQ(file->tensors[3].dtype, DType::F64);
}

TEST(Safetensors, RefusesFileShorterThanLengthField) {
  const auto result = parse_image("abc");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("test.safetensors: file is 3 bytes"), std::string::npos) << result.error().message;
}

TEST(Safetensors, RefusesTruncatedData) {
  std::string image = safetensors_image(sample_tensors());
  image.resize(image.size() - 3);
  const auto result = parse_image(image);
  ASSERT_FALSE(result.ok());
  const std::string& m = result.error().message;
  EXPECT_NE(m.find("tensor 'lm_head.weight'"), std::string::npos) << m;
  EXPECT_NE(m.find("run past the data area (59 bytes)"), std::string::npos) << m;  // 48 + 6 + 8 - 3
}

TEST(Safetensors, RefusesHeaderLengthBeyondFile) {
  std::string image = safetensors_image(sample_tensors());
  const uint64_t bogus = image.size();  // more than the bytes after the length field
  std::memcpy(image.data(), &bogus, 8);
  const auto result = parse_image(image);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find(fmt::format("header length {} runs past the end of the file ({} bytes",
                                                    bogus, bogus - 8)),
            std::string::npos)
      << result.error().message;

  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(image.data(), &huge, 8);
  const auto too_big = parse_image(image);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.error().message.find("exceeds the 100000000 byte limit"), std::string::npos);
}

TEST(Safetensors, RefusesBrokenHeaderJson) {
  std::string image = safetensors_image(sample_tensors());
  const size_t quote = image.find('"', 8);
  image[quote] ^= 0x01;  // '"' -> '#'
  const auto result = parse_image(image);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("test.safetensors header: invalid JSON"), std::string::npos)
      << result.error().message;
}

// Every single-bit flip of the header either is refused or still yields views inside the file.
TEST(Safetensors, SurvivesEveryHeaderBitFlip) {
  const std::string good = safetensors_image(sample_tensors());
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  int refused = 0;
  for (size_t byte = 0; byte < 8 + header_len; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string image = good;
      image[byte] ^= static_cast<char>(1 << bit);
      const auto mapped = MappedFile::from_memory(image, "flip");
      const auto result = parse_safetensors(mapped);
      if (!result.ok()) {
        ++refused;
        EXPECT_EQ(result.error().message.find('\n'), std::string::npos) << "error must be one line";
        continue;
      }
      for (const TensorView& view : result->tensors) {
        EXPECT_GE(view.data, mapped->data());
        EXPECT_LE(view.data + view.nbytes, mapped->data() + mapped->size());
        EXPECT_EQ(view.nbytes, static_cast<uint64_t>(view.numel()) * dtype_size(view.dtype));
      }
    }
  }
  EXPECT_GT(refused, 0);
}

TEST(Safetensors, RefusesNonObjectHeader) {
  const auto result = parse_image(safetensors_image("[1, 2]", ""));
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("expected a JSON object, found array"), std::string::npos);
}

TEST(Safetensors, RefusesOffsetsOutOfRange) {
  const std::string m = error_after([](Json& h, std::string&) { h["model.norm.weight"]["data_offsets"] = {48, 1000}; });
  EXPECT_NE(m.find("tensor 'model.norm.weight': data_offsets [48, 1000] run past the data area (62 bytes)"),
            std::string::npos)
      << m;
  const std::string reversed =
      error_after([](Json& h, std::string&) { h["model.norm.weight"]["data_offsets"] = {54, 48}; });
  EXPECT_NE(reversed.find("begin <= end"), std::string::npos) << reversed;
  const std::string negative =
      error_after([](Json& h, std::string&) { h["model.norm.weight"]["data_offsets"] = {-6, 0}; });
  EXPECT_NE(negative.find("data_offsets: expected non-negative integers"), std::string::npos) << negative;
}

TEST(Safetensors, RefusesOverlappingTensors) {
  // lm_head (8 bytes) moved onto the last 8 bytes of the embedding table.
  const std::string m = error_after([](Json& h, std::string& data) {
    h["lm_head.weight"]["data_offsets"] = {40, 48};
    data.resize(54);
  });
  EXPECT_NE(m.find("tensor 'lm_head.weight' bytes [40, 48) overlap tensor 'model.embed_tokens.weight' bytes [0, 48)"),
            std::string::npos)
      << m;
}

TEST(Safetensors, RefusesGapsAndTrailingBytes) {
  const std::string gap = error_after([](Json& h, std::string& data) {
    h["lm_head.weight"]["data_offsets"] = {56, 64};
    data.insert(54, 2, '\0');
  });
  EXPECT_NE(gap.find("data area bytes [54, 56) before tensor 'lm_head.weight' belong to no tensor"), std::string::npos)
      << gap;
  const std::string trailing = error_after([](Json&, std::string& data) { data += "junk"; });
  EXPECT_NE(trailing.find("data area is 66 bytes but tensors cover only the first 62"), std::string::npos) << trailing;
}

TEST(Safetensors, RefusesShapeByteMismatch) {
  const std::string m = error_after([](Json& h, std::string&) { h["model.embed_tokens.weight"]["shape"] = {4, 4}; });
  EXPECT_NE(m.find("tensor 'model.embed_tokens.weight': shape [4, 4] of F32 needs 64 bytes, but data_offsets [0, 48] "
                   "hold 48"),
            std::string::npos)
      << m;
}

TEST(Safetensors, RefusesBadShapes) {
  const std::string negative = error_after([](Json& h, std::string&) { h["model.norm.weight"]["shape"] = {-3}; });
  EXPECT_NE(negative.find("tensor 'model.norm.weight': shape dimension 0: expected a non-negative integer, found "
                          "number -3"),
            std::string::npos)
      << negative;
  const std::string fractional = error_after([](Json& h, std::string&) { h["model.norm.weight"]["shape"] = {1.5}; });
  EXPECT_NE(fractional.find("shape dimension 0"), std::string::npos) << fractional;
  // 2^62 * 2^62 * 4 bytes wraps around 64 bits; it must not be taken for a small size.
  const std::string overflow = error_after([](Json& h, std::string&) {
    h["lm_head.weight"]["shape"] = {uint64_t{1} << 62, uint64_t{1} << 62};
  });
  EXPECT_NE(overflow.find("overflows a 64-bit byte count"), std::string::npos) << overflow;
}

TEST(Safetensors, RefusesUnsupportedDtypeNamingTheTensor) {
  const std::string m = error_after([](Json& h, std::string&) { h["lm_head.weight"]["dtype"] = "F8_E5M2"; });
  EXPECT_NE(m.find("test.safetensors: tensor 'lm_head.weight': unsupported dtype 'F8_E5M2' (supported: F32, F16, "
                   "BF16"),
            std::string::npos)
      << m;
}

TEST(Safetensors, RefusesMissingFields) {
  const std::string m = error_after([](Json& h, std::string&) { h["model.norm.weight"].erase("data_offsets"); });
  EXPECT_NE(m.find("tensor 'model.norm.weight': missing field 'data_offsets'"), std::string::npos) << m;
  const std::string not_object = error_after([](Json& h, std::string&) { h["model.norm.weight"] = 7; });
  EXPECT_NE(not_object.find("expected an object with dtype, shape, data_offsets, found number 7"), std::string::npos)
      << not_object;
}

TEST(Safetensors, RefusesDuplicateTensorNames) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
      R"( "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})";
  const auto result = parse_image(safetensors_image(header, std::string(8, '\0')));
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("duplicate key \"w\""), std::string::npos) << result.error().message;
}

TEST(Safetensors, RefusesNonStringMetadata) {
  const std::string m = error_after([](Json& h, std::string&) { h["__metadata__"]["step"] = 3; });
  EXPECT_NE(m.find("__metadata__ 'step': expected a string, found number 3"), std::string::npos) << m;
}

TEST(Safetensors, RefusesMissingFile) {
  const auto result = open_safetensors("/nonexistent/dir/model.safetensors");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("/nonexistent/dir/model.safetensors: cannot open"), std::string::npos)
      << result.error().message;
}

}  // namespace
}  // namespace kiln
