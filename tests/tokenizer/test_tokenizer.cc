// Unit tests: llama2.c's own encoding of the stories260K prompt, ids and pieces of known tokens,
// long inputs, and clear errors for unsupported or malformed files.
#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace kiln {
namespace {

using testing::read_json;
using testing::shared_path;

Tokenizer must_load(const std::string& path) {
  Result<Tokenizer> tokenizer = Tokenizer::from_file(path);
  EXPECT_TRUE(tokenizer.ok()) << (tokenizer.ok() ? "" : tokenizer.error().message);
  return std::move(tokenizer).value();
}

TEST(Llama2cTokenizer, EncodesPromptAsRunC) {
  const nlohmann::json expected = read_json(shared_path("models/stories260K/EXPECTED.json"));
  const Tokenizer tokenizer = must_load(shared_path("models/stories260K/tok512.bin"));
  EXPECT_EQ(tokenizer.source(), TokenizerSource::Llama2cBin);
  EXPECT_EQ(tokenizer.vocab_size(), 512);
  const std::string prompt = expected["prompt_case"]["prompt"];
  EXPECT_EQ(tokenizer.encode(prompt, /*add_bos=*/true),
            expected["prompt_case"]["prompt_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(tokenizer.encode("", true), expected["prompt_ids"].get<std::vector<int32_t>>());
}

TEST(Llama2cTokenizer, DecodesReferenceGenerationToItsText) {
  const nlohmann::json expected = read_json(shared_path("models/stories260K/EXPECTED.json"));
  const Tokenizer tokenizer = must_load(shared_path("models/stories260K/tok512.bin"));
  std::vector<int32_t> ids = expected["prompt_case"]["prompt_ids"];
  for (int32_t id : expected["prompt_case"]["greedy_ids_128"]) ids.push_back(id);
  const std::string text = expected["prompt_case"]["text"];
  EXPECT_EQ(tokenizer.decode(ids).substr(0, text.size()), text);
}

TEST(HfJsonTokenizer, LlamaSpecialTokensAndPieces) {
  const Tokenizer tokenizer = must_load(shared_path("fixtures/hf-tiny/tiny-llama/tokenizer.json"));
  EXPECT_EQ(tokenizer.vocab_size(), 32000);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_TRUE(tokenizer.is_special(1));
  EXPECT_FALSE(tokenizer.is_special(13));
  EXPECT_EQ(tokenizer.piece(13), "<0x0A>");
  // Special tokens in the text are matched whole; decode skips them.
  const std::vector<int32_t> ids = tokenizer.encode("<s>hello</s>", true);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tokenizer.decode(ids), "hello");
}

TEST(HfJsonTokenizer, LongWordsRoundTrip) {
  // 20k characters in one pre-tokenized piece: the heap-based merge must stay fast and exact.
  const Tokenizer tokenizer = must_load(shared_path("fixtures/hf-tiny/tiny-llama/tokenizer.json"));
  std::string text;
  for (int i = 0; i < 10000; ++i) text += i % 7 == 0 ? "é" : "ab";
  const std::vector<int32_t> ids = tokenizer.encode(text, false);
  EXPECT_LT(ids.size(), text.size());
  EXPECT_EQ(tokenizer.decode(ids), text);
}

TEST(HfJsonTokenizer, InvalidUtf8InputIsReplacedNotRejected) {
  const Tokenizer tokenizer = must_load(testing::data_path("bytelevel_llama3.json"));
  const std::vector<int32_t> ids = tokenizer.encode("ok \xFF\xC3 end", false);
  EXPECT_EQ(tokenizer.decode(ids), "ok \xEF\xBF\xBD\xEF\xBF\xBD end");
}

Result<Tokenizer> from_json(const std::string& json) {
  return Tokenizer::from_bytes(TokenizerSource::HfJson, json);
}

std::string error_of(const Result<Tokenizer>& result) {
  EXPECT_FALSE(result.ok());
  return result.ok() ? "" : result.error().message;
}

TEST(HfJsonTokenizer, UnsupportedConstructsNameTheirType) {
  EXPECT_NE(error_of(from_json(R"({"model": {"type": "WordPiece", "vocab": {}}})")).find("'WordPiece'"),
            std::string::npos);
  EXPECT_NE(error_of(from_json(R"({"model": {"type": "Unigram", "vocab": []}})")).find("'Unigram'"), std::string::npos);
  EXPECT_NE(error_of(from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                   "pre_tokenizer": {"type": "BertPreTokenizer"}})"))
                .find("'BertPreTokenizer'"),
            std::string::npos);
  EXPECT_NE(error_of(from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})")).find("merge 0"),
            std::string::npos);
  EXPECT_NE(error_of(from_json("{not json")).find("tokenizer.json"), std::string::npos);
}

TEST(HfJsonTokenizer, MergesInBothForms) {
  const std::string base = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "abb": 3}, "merges": )";
  for (const char* merges : {R"(["a b", "ab b"])", R"([["a", "b"], ["ab", "b"]])"}) {
    Result<Tokenizer> tokenizer = from_json(base + merges + "}, \"decoder\": {\"type\": \"Fuse\"}}");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
    EXPECT_EQ(tokenizer->encode("abbab", false), (std::vector<int32_t>{3, 2}));
    EXPECT_EQ(tokenizer->decode({3, 2}), "abbab");
  }
}

TEST(SentencePieceModel, ReadsLlama2Model) {
  const Tokenizer tokenizer = must_load(shared_path("models/llama2-tokenizer/tokenizer.model"));
  EXPECT_EQ(tokenizer.source(), TokenizerSource::SentencePieceModel);
  EXPECT_EQ(tokenizer.vocab_size(), 32000);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_EQ(tokenizer.piece(13), "<0x0A>");
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("Hello\nworld", true)), "Hello\nworld");
}

TEST(SentencePieceModel, TruncatedFileIsAnError) {
  std::string bytes = testing::read_file(shared_path("models/llama2-tokenizer/tokenizer.model"));
  bytes.resize(bytes.size() / 2);
  const std::string message = error_of(Tokenizer::from_bytes(TokenizerSource::SentencePieceModel, bytes));
  EXPECT_NE(message.find("tokenizer.model"), std::string::npos) << message;
}

TEST(Llama2cTokenizer, TruncatedFileIsAnError) {
  std::string bytes = testing::read_file(shared_path("models/stories260K/tok512.bin"));
  bytes.resize(bytes.size() - 3);
  EXPECT_NE(error_of(Tokenizer::from_bytes(TokenizerSource::Llama2cBin, bytes)).find("token 511"), std::string::npos);
}

TEST(Tokenizer, MissingFileNamesThePath) {
  EXPECT_NE(error_of(Tokenizer::from_file("/nonexistent/tokenizer.json")).find("/nonexistent/tokenizer.json"),
            std::string::npos);
}

}  // namespace
}  // namespace kiln
