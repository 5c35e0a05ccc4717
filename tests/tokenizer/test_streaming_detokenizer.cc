// StreamingDetokenizer never emits part of a UTF-8 character, and push()* + flush() == decode().
// (The corpus-wide version of the second property is in test_tokenizer_parity.cc.)
#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace kiln {
namespace {

bool is_valid_utf8(const std::string& text) {
  // Valid iff sanitizing (via a decode round trip of nothing) is unnecessary: check by hand.
  for (size_t i = 0; i < text.size();) {
    const auto b = static_cast<uint8_t>(text[i]);
    const size_t n = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0;
    if (n == 0 || i + n > text.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<uint8_t>(text[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(StreamingDetokenizer, HoldsBackByteFallbackPiecesUntilTheCharacterCompletes) {
  const Tokenizer tokenizer =
      Tokenizer::from_file(testing::shared_path("fixtures/hf-tiny/tiny-llama/tokenizer.json")).value();
  const std::vector<int32_t> ids = tokenizer.encode("hi 🤖!", false);  // the emoji is 4 byte tokens
  StreamingDetokenizer stream(tokenizer);
  std::vector<std::string> chunks;
  for (int32_t id : ids) chunks.push_back(stream.push(id));
  chunks.push_back(stream.flush());
  std::string joined;
  int empty_chunks = 0;
  for (const std::string& chunk : chunks) {
    EXPECT_TRUE(is_valid_utf8(chunk)) << testing::escaped(chunk);
    empty_chunks += chunk.empty();
    joined += chunk;
  }
  EXPECT_GE(empty_chunks, 3);  // the first 3 bytes of the emoji produce nothing
  EXPECT_EQ(joined, "hi 🤖!");
  EXPECT_EQ(joined, tokenizer.decode(ids));
}

TEST(StreamingDetokenizer, ByteLevelPiecesSplitInsideCharacters) {
  const Tokenizer tokenizer = Tokenizer::from_file(testing::data_path("bytelevel_gpt2.json")).value();
  const std::string text = "日本語 👨‍👩‍👧‍👦 e\u0301 <|endoftext|> done";
  const std::vector<int32_t> ids = tokenizer.encode(text, false);
  StreamingDetokenizer stream(tokenizer);
  std::string joined;
  for (int32_t id : ids) {
    const std::string chunk = stream.push(id);
    EXPECT_TRUE(is_valid_utf8(chunk)) << testing::escaped(chunk);
    joined += chunk;
  }
  joined += stream.flush();
  EXPECT_EQ(joined, tokenizer.decode(ids));
}

TEST(StreamingDetokenizer, FlushReplacesAnUnfinishedCharacter) {
  const Tokenizer tokenizer =
      Tokenizer::from_file(testing::shared_path("models/llama2-tokenizer/tokenizer.model")).value();
  const int32_t first_byte_of_euro = 3 + 0xE2;  // <0xE2>
  ASSERT_EQ(tokenizer.piece(first_byte_of_euro), "<0xE2>");
  StreamingDetokenizer stream(tokenizer);
  EXPECT_EQ(stream.push(first_byte_of_euro), "");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer.decode({first_byte_of_euro}), "\xEF\xBF\xBD");
}

TEST(StreamingDetokenizer, SkipsSpecialTokens) {
  const Tokenizer tokenizer =
      Tokenizer::from_file(testing::shared_path("fixtures/hf-tiny/tiny-llama/tokenizer.json")).value();
  const std::vector<int32_t> ids = tokenizer.encode("Hello world", true);
  StreamingDetokenizer stream(tokenizer);
  EXPECT_EQ(stream.push(tokenizer.bos_id()), "");
  std::string joined;
  for (size_t i = 1; i < ids.size(); ++i) joined += stream.push(ids[i]);
  joined += stream.push(tokenizer.eos_id()) + stream.flush();
  EXPECT_EQ(joined, "Hello world");  // the dummy-prefix space of the first piece is stripped
}

}  // namespace
}  // namespace kiln
