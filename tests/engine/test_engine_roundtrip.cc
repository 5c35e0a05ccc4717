// Writing an engine and loading it back gives the same tensors, metadata and header fields.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "engine/engine_file.h"
#include "engine_test_util.h"

namespace kiln {
namespace {

using namespace kiln::testing;

// Loads `path` and checks every tensor of `expected` byte for byte, plus the layout rules.
LoadedEngine load_and_compare(const std::string& path, const std::vector<SampleTensor>& expected) {
  Result<LoadedEngine> engine = load_engine(path, {});
  EXPECT_TRUE(engine.ok()) << engine.error().message;
  if (!engine.ok()) return {};
  EXPECT_EQ(engine->tensors.size(), expected.size());
  for (const SampleTensor& t : expected) {
    const TensorView* view = engine->find(t.name);
    EXPECT_NE(view, nullptr) << t.name;
    if (view == nullptr) continue;
    EXPECT_EQ(view->dtype, t.dtype) << t.name;
    EXPECT_EQ(view->shape, t.shape) << t.name;
    EXPECT_EQ(view->nbytes, t.bytes.size()) << t.name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(view->data), view->nbytes), t.bytes) << t.name;
    EXPECT_EQ(view->owner.get(), static_cast<const void*>(engine->file.get())) << t.name;
    const uint64_t offset = static_cast<uint64_t>(view->data - engine->file->data());
    EXPECT_EQ(offset % kEngineAlignment, 0u) << t.name;
    EXPECT_GE(offset, engine->header.data_offset) << t.name;
  }
  return std::move(engine).value();
}

TEST(EngineRoundTrip, SeveralDtypesAndShapes) {
  TempDir dir;
  const std::vector<SampleTensor> tensors = {
      random_tensor("tok_embeddings.weight", DType::F32, {3, 5}, 1),
      random_tensor("norm.weight", DType::F16, {7}, 2),
      random_tensor("layers.0.attention.wq.weight", DType::BF16, {2, 3, 4}, 3),
      random_tensor("positions", DType::I32, {1}, 4),
      random_tensor("ids", DType::I64, {2, 2}, 5),
      random_tensor("bytes_across_a_page", DType::U8, {4097}, 6),  // spans two alignment units
      random_tensor("scalar", DType::F64, {}, 7),                  // rank 0: one element
  };
  const nlohmann::json metadata = {{"model", "tiny"}, {"vocab_size", 32}};
  const std::string path = dir.file("model.engine");
  const Status written = write_engine(path, make_spec(tensors, metadata, "cpu", "x86_64-avx2"));
  ASSERT_TRUE(written.ok()) << written.error().message;
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const LoadedEngine engine = load_and_compare(path, tensors);
  ASSERT_NE(engine.file, nullptr);
  EXPECT_EQ(std::memcmp(engine.header.magic, kEngineMagic, sizeof(kEngineMagic)), 0);
  EXPECT_EQ(engine.header.format_version, kEngineFormatVersion);
  EXPECT_EQ(engine.header.header_size, kEngineHeaderSize);
  EXPECT_EQ(header_string(engine.header.kiln_version), KILN_VERSION);
  EXPECT_EQ(header_string(engine.header.backend), "cpu");
  EXPECT_EQ(header_string(engine.header.device_arch), "x86_64-avx2");
  EXPECT_EQ(engine.header.file_bytes, std::filesystem::file_size(path));
  EXPECT_EQ(engine.header.data_offset % kEngineAlignment, 0u);
  EXPECT_EQ(engine.header.data_offset + engine.header.data_bytes, engine.header.file_bytes);

  // The metadata is the caller's plus the tensor table, in spec order.
  nlohmann::json user = engine.metadata;
  user.erase("tensors");
  EXPECT_EQ(user, metadata);
  const nlohmann::json& table = engine.metadata.at("tensors");
  ASSERT_EQ(table.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(table[i].at("name"), tensors[i].name);
    EXPECT_EQ(table[i].at("dtype"), std::string(dtype_name(tensors[i].dtype)));
    EXPECT_EQ(table[i].at("shape").get<std::vector<int64_t>>(), tensors[i].shape);
    EXPECT_EQ(table[i].at("nbytes").get<uint64_t>(), tensors[i].bytes.size());
    EXPECT_EQ(table[i].at("offset").get<uint64_t>() % kEngineAlignment, 0u) << tensors[i].name;
  }
}

TEST(EngineRoundTrip, EmptyMetadataAndNoTensors) {
  TempDir dir;
  for (const nlohmann::json& metadata : {nlohmann::json(), nlohmann::json::object()}) {
    const std::string path = dir.file("empty.engine");
    ASSERT_TRUE(write_engine(path, make_spec({}, metadata)).ok());
    Result<LoadedEngine> engine = load_engine(path, {});
    ASSERT_TRUE(engine.ok()) << engine.error().message;
    EXPECT_EQ(engine->metadata, (nlohmann::json{{"tensors", nlohmann::json::array()}}));
    EXPECT_TRUE(engine->tensors.empty());
    EXPECT_EQ(engine->header.data_bytes, 0u);
  }
}

TEST(EngineRoundTrip, ZeroByteTensorBetweenOthers) {
  TempDir dir;
  const std::vector<SampleTensor> tensors = {
      random_tensor("before", DType::F32, {5}, 1),
      random_tensor("empty", DType::BF16, {0, 16}, 2),
      random_tensor("after", DType::F32, {3}, 3),
  };
  ASSERT_TRUE(tensors[1].bytes.empty());
  const std::string path = dir.file("zero.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors)).ok());
  const LoadedEngine engine = load_and_compare(path, tensors);
  const TensorView* empty = engine.find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 16}));
  EXPECT_EQ(empty->numel(), 0);
}

TEST(EngineRoundTrip, NestedGraphMetadataIsPreserved) {
  TempDir dir;
  const nlohmann::json metadata = {
      {"config", {{"dim", 64}, {"n_layers", 2}, {"rope_theta", 10000.0}, {"tie_embeddings", true}}},
      {"graph",
       {{"nodes",
         {{{"op", "embedding"}, {"inputs", {"tokens", "tok_embeddings.weight"}}, {"output", "x0"}},
          {{"op", "rmsnorm"},
           {"inputs", {"x0", "norm.weight"}},
           {"attrs", {{"eps", 1e-5}}},
           {"output", "x1"}},
          {{"op", "matmul"}, {"inputs", {"x1", "wq"}}, {"attrs", nullptr}, {"output", "q"}}}},
        {"outputs", {"q"}}}},
      {"tokenizer", {{"kind", "bpe"}, {"special", {{"bos", 1}, {"eos", 2}}}, {"name", "caf\u00e9 \u2603"}}},
  };
  const std::vector<SampleTensor> tensors = {random_tensor("wq", DType::F32, {4, 4}, 9)};
  const std::string path = dir.file("graph.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors, metadata)).ok());
  const LoadedEngine engine = load_and_compare(path, tensors);
  nlohmann::json user = engine.metadata;
  user.erase("tensors");
  EXPECT_EQ(user, metadata);
}

// The tensor table holds absolute offsets, so its length moves the data area: metadata sizes on
// both sides of a page boundary must still give data_offset == align_up(metadata end), which the
// loader enforces exactly.
TEST(EngineRoundTrip, MetadataSizesAroundAPageBoundary) {
  TempDir dir;
  const std::vector<SampleTensor> tensors = two_tensors();
  const std::string path = dir.file("boundary.engine");
  std::set<uint64_t> data_offsets;
  for (size_t pad = 3850; pad < 4100; pad += 5) {
    ASSERT_TRUE(write_engine(path, make_spec(tensors, {{"pad", std::string(pad, 'x')}})).ok());
    const LoadedEngine engine = load_and_compare(path, tensors);
    ASSERT_NE(engine.file, nullptr) << "pad " << pad;
    data_offsets.insert(engine.header.data_offset);
  }
  EXPECT_EQ(data_offsets, (std::set<uint64_t>{2 * kEngineAlignment, 3 * kEngineAlignment}));
}

TEST(EngineRoundTrip, ViewsKeepTheMappingAlive) {
  TempDir dir;
  const std::vector<SampleTensor> tensors = two_tensors();
  const std::string path = dir.file("alive.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors)).ok());
  TensorView kept;
  {
    Result<LoadedEngine> engine = load_engine(path, {});
    ASSERT_TRUE(engine.ok()) << engine.error().message;
    kept = *engine->find("embed");
  }
  std::filesystem::remove(path);  // the mapping outlives the directory entry too
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(kept.data), kept.nbytes), tensors[0].bytes);
}

TEST(EngineRoundTrip, RewriteReplacesTheFile) {
  TempDir dir;
  const std::string path = dir.file("model.engine");
  const std::vector<SampleTensor> first = {random_tensor("w", DType::F32, {2}, 1)};
  const std::vector<SampleTensor> second = {random_tensor("w", DType::F32, {3}, 2)};
  ASSERT_TRUE(write_engine(path, make_spec(first)).ok());
  ASSERT_TRUE(write_engine(path, make_spec(second)).ok());
  load_and_compare(path, second);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(EngineRoundTrip, ParseFromMemoryMatchesLoad) {
  TempDir dir;
  const std::vector<SampleTensor> tensors = two_tensors();
  const std::string path = dir.file("m.engine");
  ASSERT_TRUE(write_engine(path, make_spec(tensors)).ok());
  Result<LoadedEngine> engine = parse_engine(MappedFile::from_memory(read_bytes(path), "mem.engine"), {});
  ASSERT_TRUE(engine.ok()) << engine.error().message;
  ASSERT_NE(engine->find("lm_hd"), nullptr);
  EXPECT_EQ(
      std::string(reinterpret_cast<const char*>(engine->find("lm_hd")->data), engine->find("lm_hd")->nbytes),
      tensors[1].bytes);
  EXPECT_EQ(engine->find("missing"), nullptr);
}

}  // namespace
}  // namespace kiln
