// write_engine refuses invalid specs and unwritable paths without leaving files behind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/engine_file.h"
#include "engine_test_util.h"

namespace kiln {
namespace {

using namespace kiln::testing;
using ::testing::HasSubstr;

// Expects write_engine to fail with `expected`, leaving neither the engine nor its tmp file.
void expect_write_refused(const std::string& path, const EngineWriteSpec& spec, const std::string& expected) {
  const Status status = write_engine(path, spec);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(starts_with(status.error().message, path + ": ")) << status.error().message;
  EXPECT_THAT(status.error().message, HasSubstr(expected));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(EngineWriter, RefusesDuplicateTensorNames) {
  TempDir dir;
  std::vector<SampleTensor> tensors = two_tensors();
  tensors[1].name = tensors[0].name;
  expect_write_refused(dir.file("e"), make_spec(tensors), "tensor 'embed' appears twice");
}

TEST(EngineWriter, RefusesNbytesThatDisagreeWithShape) {
  TempDir dir;
  std::vector<SampleTensor> tensors = two_tensors();
  tensors[0].bytes.pop_back();
  expect_write_refused(dir.file("e"), make_spec(tensors), "F32 [4, 8] needs 128 bytes, source has 127");
}

TEST(EngineWriter, RefusesNegativeDimension) {
  TempDir dir;
  EngineWriteSpec spec = make_spec(two_tensors());
  spec.tensors[0].shape = {-4, -8};
  expect_write_refused(dir.file("e"), spec, "invalid shape [-4, -8]");
}

TEST(EngineWriter, RefusesTensorsKeyInMetadata) {
  TempDir dir;
  expect_write_refused(dir.file("e"), make_spec(two_tensors(), {{"tensors", 1}}),
                       "must not contain the key 'tensors'");
}

TEST(EngineWriter, RefusesNonObjectMetadata) {
  TempDir dir;
  expect_write_refused(dir.file("e"), make_spec(two_tensors(), nlohmann::json::array()), "found array");
}

TEST(EngineWriter, RefusesEmptyOrOverlongBackend) {
  TempDir dir;
  expect_write_refused(dir.file("e"), make_spec(two_tensors(), {}, ""), "empty backend");
  expect_write_refused(dir.file("e"), make_spec(two_tensors(), {}, std::string(16, 'b')), "at most 15 fit");
  expect_write_refused(dir.file("e"), make_spec(two_tensors(), {}, "cpu", std::string(32, 'a')),
                       "at most 31 fit");
}

TEST(EngineWriter, RefusesMissingData) {
  TempDir dir;
  EngineWriteSpec spec = make_spec(two_tensors());
  spec.tensors[1].data = nullptr;
  expect_write_refused(dir.file("e"), spec, "tensor 'lm_hd': 64 bytes but no data");
}

// JSON strings must be UTF-8; nlohmann's dump() throws on anything else, and that must become an error.
TEST(EngineWriter, RefusesInvalidUtf8) {
  TempDir dir;
  std::vector<SampleTensor> tensors = two_tensors();
  tensors[0].name = "bad\xff";
  expect_write_refused(dir.file("e"), make_spec(tensors), "cannot be serialized");
  expect_write_refused(dir.file("e"), make_spec(two_tensors(), {{"note", "caf\xe9"}}),
                       "cannot be serialized");
}

TEST(EngineWriter, UnwritableDirectoryNamesThePath) {
  TempDir dir;
  expect_write_refused(dir.file("no/such/dir/model.engine"), make_spec(two_tensors()), "cannot create");
}

TEST(EngineWriter, FailedWriteKeepsThePreviousEngine) {
  TempDir dir;
  const std::string path = dir.file("model.engine");
  const std::vector<SampleTensor> tensors = two_tensors();
  ASSERT_TRUE(write_engine(path, make_spec(tensors)).ok());
  const std::string before = read_bytes(path);
  std::vector<SampleTensor> bad = tensors;
  bad[1].name = bad[0].name;
  EXPECT_FALSE(write_engine(path, make_spec(bad)).ok());
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// A full disk mid-write: /dev/full fails every write with ENOSPC. The tmp file lives beside the
// target, so point the target at a directory holding a symlink named "<engine>.tmp" to /dev/full.
TEST(EngineWriter, WriteErrorRemovesTheTmpFile) {
  ASSERT_TRUE(std::filesystem::exists("/dev/full")) << "this test needs Linux's /dev/full";
  TempDir dir;
  const std::string path = dir.file("full.engine");
  std::filesystem::create_symlink("/dev/full", path + ".tmp");
  const Status status = write_engine(path, make_spec(two_tensors()));
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(starts_with(status.error().message, path + ": ")) << status.error().message;
  EXPECT_THAT(status.error().message, HasSubstr("No space left on device"));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::is_symlink(path + ".tmp"));
}

}  // namespace
}  // namespace kiln
