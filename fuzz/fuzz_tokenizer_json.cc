// libFuzzer target: arbitrary bytes as a tokenizer.json. Whatever parses must encode a fixed text and
// a slice of the input, and decode and stream-decode the result, without crashing or hanging.
#include <cstddef>
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  kiln::Result<kiln::Tokenizer> tokenizer = kiln::Tokenizer::from_bytes(kiln::TokenizerSource::HfJson, bytes);
  if (!tokenizer.ok()) return 0;
  const std::string texts[] = {"Hello world <s> 你好 👩🏽‍💻 \t\n 12345 ", bytes.substr(size / 2, 256)};
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = tokenizer->encode(text, true);
    const std::string decoded = tokenizer->decode(ids);
    kiln::StreamingDetokenizer stream(*tokenizer);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.push(id);
    streamed += stream.flush();
    if (streamed != decoded) __builtin_trap();  // the streaming contract
    for (int32_t id : ids) (void)tokenizer->piece(id);
  }
  return 0;
}
