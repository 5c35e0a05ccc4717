// Every way a loader must refuse an engine, produced by corrupting a file the writer made. Each
// error must begin with the engine path and say what was expected and what was found.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <limits>

#include "engine/engine_file.h"
#include "engine_test_util.h"

namespace kiln {
namespace {

using namespace kiln::testing;
using ::testing::HasSubstr;

LoadOptions options(bool verify_checksum, std::string backend = "", std::string device_arch = "") {
  LoadOptions o;
  o.expected_backend = std::move(backend);
  o.expected_device_arch = std::move(device_arch);
  o.verify_checksum = verify_checksum;
  return o;
}

class EngineRefusal : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("model.engine");
    const Status written = write_engine(
        path_,
        make_spec(tensors_, {{"model", "tiny"}, {"slack", std::string(256, ' ')}}, "cpu", "x86_64-avx2"));
    ASSERT_TRUE(written.ok()) << written.error().message;
    image_ = read_bytes(path_);
    ASSERT_GT(image_.size(), 3 * kEngineAlignment);
  }

  // Writes `image` as a new file and returns the loader's error (failing the test if it loads).
  std::string refusal(const std::string& image, const LoadOptions& options = {}) {
    const std::string path = dir_.file("corrupt.engine");
    write_bytes(path, image);
    Result<LoadedEngine> engine = load_engine(path, options);
    EXPECT_FALSE(engine.ok()) << "a corrupt engine loaded";
    if (engine.ok()) return "";
    EXPECT_TRUE(starts_with(engine.error().message, path + ": ")) << engine.error().message;
    return engine.error().message;
  }

  TempDir dir_;
  std::vector<SampleTensor> tensors_ = two_tensors();
  std::string path_;
  std::string image_;
};

TEST_F(EngineRefusal, BadMagic) {
  image_[0] ^= 0x20;
  EXPECT_THAT(refusal(image_), HasSubstr("not a kiln engine: bad magic"));
}

TEST_F(EngineRefusal, OtherFormatVersion) {
  put_field<uint32_t>(image_, offsetof(EngineHeader, format_version), kEngineFormatVersion + 1);
  EXPECT_THAT(refusal(image_),
              HasSubstr(fmt::format("engine format version {}, this kiln reads version {}: rebuild "
                                    "the engine with this kiln",
                                    kEngineFormatVersion + 1, kEngineFormatVersion)));
}

TEST_F(EngineRefusal, TruncatedByOneByte) {
  const size_t n = image_.size();
  EXPECT_THAT(refusal(image_.substr(0, n - 1)),
              HasSubstr(fmt::format("engine truncated: header says {} bytes, file has {}", n, n - 1)));
}

TEST_F(EngineRefusal, TruncatedByHalf) {
  const size_t n = image_.size();
  EXPECT_THAT(refusal(image_.substr(0, n / 2)),
              HasSubstr(fmt::format("engine truncated: header says {} bytes, file has {}", n, n / 2)));
}

TEST_F(EngineRefusal, TrailingBytes) {
  EXPECT_THAT(refusal(image_ + "extra"), HasSubstr("5 bytes after its end"));
}

TEST_F(EngineRefusal, FlippedDataByteFailsTheChecksum) {
  const TensorView* view = nullptr;
  Result<LoadedEngine> good = load_engine(path_, {});
  ASSERT_TRUE(good.ok());
  view = good->find("lm_hd");
  const size_t offset = static_cast<size_t>(view->data - good->file->data()) + 3;
  image_[offset] ^= 0x01;
  const std::string error = refusal(image_);
  EXPECT_THAT(error, HasSubstr("engine checksum mismatch"));
  EXPECT_THAT(error, HasSubstr("the file is corrupt"));

  // Without verification the same file loads, and the flipped byte is visible: the check was the
  // checksum, not some structural test.
  const std::string path = dir_.file("corrupt.engine");
  Result<LoadedEngine> unchecked = load_engine(path, options(false));
  ASSERT_TRUE(unchecked.ok()) << unchecked.error().message;
  EXPECT_NE(unchecked->find("lm_hd")->data[3], view->data[3]);
}

TEST_F(EngineRefusal, FlippedMetadataPaddingByteFailsTheChecksum) {
  const uint64_t metadata_end =
      kEngineHeaderSize + get_field<uint64_t>(image_, offsetof(EngineHeader, metadata_bytes));
  ASSERT_LT(metadata_end, get_field<uint64_t>(image_, offsetof(EngineHeader, data_offset)));
  image_[metadata_end] = 'x';
  EXPECT_THAT(refusal(image_), HasSubstr("engine checksum mismatch"));
}

TEST_F(EngineRefusal, WrongBackend) {
  const std::string path = dir_.file("gpu.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors_, {}, "cuda", "sm_90")).ok());
  Result<LoadedEngine> engine = load_engine(path, options(true, "cpu"));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().message, path + ": engine built for backend 'cuda', this run uses 'cpu'");
  EXPECT_TRUE(load_engine(path, options(true, "cuda")).ok());
}

TEST_F(EngineRefusal, WrongDeviceArch) {
  const std::string path = dir_.file("gpu.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors_, {}, "cuda", "sm_90")).ok());
  Result<LoadedEngine> engine = load_engine(path, options(true, "cuda", "sm_80"));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.error().message, path + ": engine built for sm_90, this GPU is sm_80");
  EXPECT_TRUE(load_engine(path, options(true, "cuda", "sm_90")).ok());
}

TEST_F(EngineRefusal, GarbageFile) {
  std::string garbage = random_tensor("g", DType::U8, {3 * 4096 + 17}, 42).bytes;
  EXPECT_THAT(refusal(garbage), HasSubstr("not a kiln engine: bad magic"));
  EXPECT_THAT(refusal("hello, world\n"), HasSubstr("not a kiln engine: file is 13 bytes"));
}

TEST_F(EngineRefusal, EmptyFile) {
  EXPECT_THAT(refusal(""), HasSubstr("not a kiln engine: file is 0 bytes"));
}

TEST_F(EngineRefusal, MissingFile) {
  const std::string path = dir_.file("does-not-exist.engine");
  Result<LoadedEngine> engine = load_engine(path, {});
  ASSERT_FALSE(engine.ok());
  EXPECT_TRUE(starts_with(engine.error().message, path + ": ")) << engine.error().message;
  EXPECT_THAT(engine.error().message, HasSubstr("No such file"));
}

TEST_F(EngineRefusal, MetadataNotJson) {
  image_[kEngineHeaderSize] = '#';  // the opening '{'
  reseal(image_);                   // so the JSON check, not the checksum, is what fails
  EXPECT_THAT(refusal(image_), HasSubstr("engine metadata is not valid JSON"));
}

// nlohmann's parser and destructor are iterative, but dump() recurses: an error message must not
// dump a hostile value nested a million levels deep (this would overflow the stack).
TEST_F(EngineRefusal, DeeplyNestedValueIsNamedNotDumped) {
  constexpr size_t kDepth = 1'000'000;
  const std::string path = dir_.file("deep.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors_, {{"slack", std::string(2 * kDepth + 64, ' ')}})).ok());
  std::string image = read_bytes(path);
  const uint64_t n = get_field<uint64_t>(image, offsetof(EngineHeader, metadata_bytes));
  std::string text = image.substr(kEngineHeaderSize, n);
  const size_t slack = text.find("\"slack\":\"");
  ASSERT_NE(slack, std::string::npos);
  text.erase(slack + 9, 2 * kDepth + 64);  // keep "slack":""
  const size_t offset = text.find("\"offset\":");
  ASSERT_NE(offset, std::string::npos);
  const size_t number_end = text.find_first_not_of("0123456789", offset + 9);
  text.replace(offset + 9, number_end - (offset + 9), std::string(kDepth, '[') + std::string(kDepth, ']'));
  ASSERT_LE(text.size(), n);
  text.resize(n, ' ');
  image.replace(kEngineHeaderSize, n, text);
  reseal(image);
  EXPECT_THAT(refusal(image), HasSubstr("'offset' must be a non-negative integer, found array"));
}

TEST_F(EngineRefusal, HeaderReservedByteSet) {
  image_[kEngineHeaderFieldBytes + 100] = 1;
  EXPECT_THAT(refusal(image_), HasSubstr("reserved byte 244"));
}

TEST_F(EngineRefusal, BackendNotTerminated) {
  std::memset(image_.data() + offsetof(EngineHeader, backend), 'c', sizeof(EngineHeader::backend));
  EXPECT_THAT(refusal(image_), HasSubstr("'backend' is not NUL-terminated"));
}

TEST_F(EngineRefusal, OtherHeaderSize) {
  put_field<uint32_t>(image_, offsetof(EngineHeader, header_size), 2 * kEngineHeaderSize);
  EXPECT_THAT(refusal(image_), HasSubstr("engine header_size is 8192, expected 4096"));
}

TEST_F(EngineRefusal, MetadataOffsetMoved) {
  put_field<uint64_t>(image_, offsetof(EngineHeader, metadata_offset), kEngineHeaderSize + 1);
  EXPECT_THAT(refusal(image_), HasSubstr("engine metadata_offset is 4097, expected 4096"));
}

TEST_F(EngineRefusal, HugeMetadataSizeDoesNotOverflow) {
  put_field<uint64_t>(image_, offsetof(EngineHeader, metadata_bytes),
                      std::numeric_limits<uint64_t>::max() - 100);
  EXPECT_THAT(refusal(image_), HasSubstr("runs past the end of the file"));
}

TEST_F(EngineRefusal, DataOffsetMisplaced) {
  const uint64_t data_offset = get_field<uint64_t>(image_, offsetof(EngineHeader, data_offset));
  put_field<uint64_t>(image_, offsetof(EngineHeader, data_offset), data_offset + kEngineAlignment);
  EXPECT_THAT(refusal(image_), HasSubstr(fmt::format("data_offset is {}, expected {}",
                                                     data_offset + kEngineAlignment, data_offset)));
}

TEST_F(EngineRefusal, DataBytesInconsistent) {
  const uint64_t data_bytes = get_field<uint64_t>(image_, offsetof(EngineHeader, data_bytes));
  put_field<uint64_t>(image_, offsetof(EngineHeader, data_bytes), data_bytes - 1);
  EXPECT_THAT(refusal(image_), HasSubstr("does not end at the file end"));
}

// Tensor-table corruptions. Each runs twice: resealed with the checksum verified, and unsealed
// with verify_checksum = false, which must still validate the structure.
struct TableCase {
  const char* name;
  std::function<void(nlohmann::json& table)> corrupt;  // table: metadata["tensors"]
  const char* expected;
};

void PrintTo(const TableCase& table_case, std::ostream* os) { *os << table_case.name; }

class EngineTableRefusal : public EngineRefusal,
                           public ::testing::WithParamInterface<std::tuple<TableCase, bool>> {};

TEST_P(EngineTableRefusal, IsRefused) {
  const auto& [table_case, verify] = GetParam();
  nlohmann::json metadata = metadata_of(image_);
  metadata.erase("slack");  // room for corruptions that lengthen the JSON
  table_case.corrupt(metadata["tensors"]);
  ASSERT_NO_FATAL_FAILURE(replace_metadata(image_, metadata));
  if (verify) reseal(image_);
  EXPECT_THAT(refusal(image_, options(verify)), HasSubstr(table_case.expected));
}

const TableCase kTableCases[] = {
    {"MisalignedOffset", [](nlohmann::json& t) { t[1]["offset"] = t[1]["offset"].get<uint64_t>() + 4; },
     "is not aligned to 4096 bytes"},
    {"OffsetPastEnd", [](nlohmann::json& t) { t[1]["offset"] = t[1]["offset"].get<uint64_t>() + 4096; },
     "lie outside the data area"},
    {"OffsetInMetadata", [](nlohmann::json& t) { t[0]["offset"] = 4096; }, "lie outside the data area"},
    {"HugeOffset", [](nlohmann::json& t) { t[0]["offset"] = std::numeric_limits<uint64_t>::max() - 4095; },
     "lie outside the data area"},
    {"UnknownDtype", [](nlohmann::json& t) { t[0]["dtype"] = "Q4"; }, "unknown dtype \"Q4\""},
    {"NbytesDisagreesWithShape",
     [](nlohmann::json& t) {
       t[0]["shape"] = {4, 7};
     },
     "needs 112 bytes, table says 128"},
    {"ShapeOverflows",
     [](nlohmann::json& t) {
       t[0]["shape"] = {1ull << 62, 1ull << 62};
     },
     "overflows"},
    {"NegativeDimension",
     [](nlohmann::json& t) {
       t[0]["shape"] = {-4, -8};
     },
     "not a non-negative integer"},
    {"FloatOffset", [](nlohmann::json& t) { t[0]["offset"] = 8192.0; },
     "'offset' must be a non-negative integer"},
    {"MissingNbytes", [](nlohmann::json& t) { t[0].erase("nbytes"); }, "missing 'nbytes'"},
    {"EmptyName", [](nlohmann::json& t) { t[0]["name"] = ""; }, "'name' must be a non-empty string"},
    {"EntryNotObject", [](nlohmann::json& t) { t[1] = 7; }, "tensor table entry 1: expected an object"},
    {"DuplicateName", [](nlohmann::json& t) { t[1]["name"] = t[0]["name"]; }, "appears twice"},
    {"OverlappingTensors",
     [](nlohmann::json& t) {
       t[1] = t[0];
       t[1]["name"] = "other";
     },
     "overlaps tensor 'embed'"},
    {"TableNotArray", [](nlohmann::json& t) { t = "none"; }, "no 'tensors' array"},
};

INSTANTIATE_TEST_SUITE_P(Corruptions, EngineTableRefusal,
                         ::testing::Combine(::testing::ValuesIn(kTableCases), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_Checksummed" : "_Unverified");
                         });

TEST_F(EngineRefusal, MetadataNotAnObject) {
  ASSERT_NO_FATAL_FAILURE(replace_metadata(image_, nlohmann::json::array({1, 2})));
  reseal(image_);
  EXPECT_THAT(refusal(image_), HasSubstr("engine metadata must be a JSON object, found array"));
}

}  // namespace
}  // namespace kiln
