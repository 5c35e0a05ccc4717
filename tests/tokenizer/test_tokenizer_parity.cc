// Parity with the reference tokenizers on the corpus of tools/make_tokenizer_goldens.py: for every
// string, encode() must equal the reference ids exactly, decode() the reference text, and streaming
// detokenization must equal decode().
#include <chrono>

#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace kiln {
namespace {

using testing::data_path;
using testing::escaped;
using testing::read_json;

struct Case {
  const char* golden;  // tests/tokenizer/data/golden_<name>.json
  TokenizerSource source;
  const char* file;    // "shared:..." / "data:..." / "legacy" (built from the shared tokenizer.json)
};

const Case kCases[] = {
    {"hf_llama2_metaspace", TokenizerSource::HfJson, "shared:fixtures/hf-tiny/tiny-llama/tokenizer.json"},
    {"hf_llama2_legacy", TokenizerSource::HfJson, "legacy"},
    {"bytelevel_llama3", TokenizerSource::HfJson, "data:bytelevel_llama3.json"},
    {"bytelevel_qwen2", TokenizerSource::HfJson, "data:bytelevel_qwen2.json"},
    {"bytelevel_gpt2", TokenizerSource::HfJson, "data:bytelevel_gpt2.json"},
    {"sentencepiece_llama2", TokenizerSource::SentencePieceModel, "shared:models/llama2-tokenizer/tokenizer.model"},
    {"llama2c_tok512", TokenizerSource::Llama2cBin, "shared:models/stories260K/tok512.bin"},
    {"llama2c_llama2", TokenizerSource::Llama2cBin, "shared:models/llama2-tokenizer/tokenizer.bin"},
};

Tokenizer load(const Case& c) {
  const std::string file = c.file;
  std::string bytes;
  if (file == "legacy") bytes = testing::legacy_llama_json();
  else if (file.starts_with("shared:")) bytes = testing::read_file(testing::shared_path(file.substr(7)));
  else bytes = testing::read_file(data_path(file.substr(5)));
  Result<Tokenizer> tokenizer = Tokenizer::from_bytes(c.source, std::move(bytes));
  EXPECT_TRUE(tokenizer.ok()) << c.file << ": " << tokenizer.error().message;
  return std::move(tokenizer).value();
}

std::string ids_text(const std::vector<int32_t>& ids) { return nlohmann::json(ids).dump(); }

class Parity : public ::testing::TestWithParam<Case> {};

TEST_P(Parity, EncodeDecodeAndStreamMatchReference) {
  const Case& c = GetParam();
  const nlohmann::json corpus = read_json(data_path("corpus.json"));
  const nlohmann::json golden = read_json(data_path(std::string("golden_") + c.golden + ".json"));
  ASSERT_GE(corpus.size(), 2000u);
  ASSERT_EQ(golden["ids"].size(), corpus.size());
  const Tokenizer tokenizer = load(c);
  ASSERT_GT(tokenizer.vocab_size(), 0);

  std::vector<std::string> texts = corpus.get<std::vector<std::string>>();
  std::vector<std::vector<int32_t>> expected = golden["ids"].get<std::vector<std::vector<int32_t>>>();
  std::vector<std::vector<int32_t>> actual(texts.size());
  const auto begin = std::chrono::steady_clock::now();
  for (size_t i = 0; i < texts.size(); ++i) actual[i] = tokenizer.encode(texts[i], /*add_bos=*/false);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  size_t total_ids = 0;
  for (const auto& ids : actual) total_ids += ids.size();
  std::printf("[ %s ] encoded %zu strings -> %zu ids in %.1f ms\n", c.golden, texts.size(), total_ids, seconds * 1e3);

  int encode_mismatches = 0, decode_mismatches = 0, stream_mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (actual[i] != expected[i] && ++encode_mismatches <= 5) {
      ADD_FAILURE() << c.golden << " encode #" << i << " " << escaped(texts[i]) << "\n  expected "
                    << ids_text(expected[i]) << "\n  actual   " << ids_text(actual[i]);
    }
    const std::string key = std::to_string(i);
    const std::string want = golden["decoded"].contains(key) ? golden["decoded"][key].get<std::string>() : texts[i];
    const std::string decoded = tokenizer.decode(expected[i]);
    if (decoded != want && ++decode_mismatches <= 5) {
      ADD_FAILURE() << c.golden << " decode #" << i << ": expected " << escaped(want) << ", got " << escaped(decoded);
    }
    StreamingDetokenizer stream(tokenizer);
    std::string streamed;
    for (int32_t id : expected[i]) streamed += stream.push(id);
    streamed += stream.flush();
    if (streamed != decoded && ++stream_mismatches <= 5) {
      ADD_FAILURE() << c.golden << " stream #" << i << ": decode " << escaped(decoded) << ", stream " << escaped(streamed);
    }
  }
  EXPECT_EQ(encode_mismatches, 0) << "of " << texts.size() << " strings";
  EXPECT_EQ(decode_mismatches, 0);
  EXPECT_EQ(stream_mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(Goldens, Parity, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.golden); });

}  // namespace
}  // namespace kiln
