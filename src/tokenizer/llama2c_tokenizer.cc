// llama2.c's tokenizer.bin: {int32 max_token_length; per token: f32 score, int32 length, bytes}.
// The vocabulary size is not stored (it comes from the model), so tokens are read to the end of the
// file. Encoding follows karpathy/llama2.c run.c `encode` (commit 350e04fe) exactly; its O(n^2)
// best-pair scan is replaced by the equivalent heap in bpe.h (best score, ties leftmost).
#include <cstring>

#include "tokenizer/bpe.h"
#include "tokenizer/string_map.h"
#include "tokenizer/tokenizer_impl.h"

namespace kiln {
namespace {

constexpr int32_t kBosId = 1;  // run.c hard-codes <unk>=0, <s>=1, </s>=2, bytes at 3..258
constexpr int32_t kEosId = 2;
constexpr int32_t kFirstByteId = 3;
// run.c starts its best-score search at -1e10: pairs scoring at or below it never merge.
constexpr float kNoMergeScore = -1e10f;

class Llama2cTokenizer final : public TokenizerImpl {
 public:
  std::vector<std::string> vocab;
  std::vector<float> scores;
  StringIdMap lookup;  // first id of each string (run.c's bsearch on a vocabulary without duplicates)

  void encode(std::string_view text, std::vector<int32_t>& ids) const override {
    std::vector<BpeSymbol> symbols;
    const auto add = [&](int32_t id) { symbols.push_back({id, 0, 1}); };
    if (!text.empty()) {
      if (int32_t space = find_id(lookup, " "); space >= 0) add(space);  // add_dummy_prefix
    }
    // Group each lead byte with up to 3 following continuation bytes, as run.c does.
    for (size_t pos = 0; pos < text.size();) {
      size_t end = pos + 1;
      while (end < text.size() && (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80 && end - pos < 4) {
        ++end;
      }
      const std::string_view unit = text.substr(pos, end - pos);
      if (int32_t id = find_id(lookup, unit); id >= 0) {
        add(id);
      } else {
        for (char c : unit) add(static_cast<uint8_t>(c) + kFirstByteId);
      }
      pos = end;
    }
    std::string pair;
    bpe_merge(symbols, [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpeMerge> {
      pair.assign(vocab[left.id]).append(vocab[right.id]);
      const int32_t id = find_id(lookup, pair);
      if (id < 0 || !(scores[id] > kNoMergeScore)) return std::nullopt;
      return BpeMerge{-static_cast<double>(scores[id]), id};
    });
    for (const BpeSymbol& s : symbols) ids.push_back(s.id);
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(vocab.size()); }
  int32_t bos_id() const override { return kBosId < vocab_size() ? kBosId : -1; }
  int32_t eos_id() const override { return kEosId < vocab_size() ? kEosId : -1; }
  bool is_special(int32_t id) const override { return id >= 0 && id < kFirstByteId; }
  std::string piece(int32_t id) const override { return vocab[id]; }

  // run.c `decode`: a piece after BOS loses its leading space; "<0xXX>" pieces are raw bytes.
  std::string token_bytes(int32_t id, int32_t previous) const override {
    std::string_view p = vocab[id];
    if (previous < 0 && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    unsigned int byte = 0;
    char tail = 0;
    if (p.size() == 6 && std::sscanf(std::string(p).c_str(), "<0x%02X%c", &byte, &tail) == 2 &&
        tail == '>') {
      return std::string(1, static_cast<char>(byte));
    }
    return std::string(p);
  }
};

}  // namespace

Result<std::shared_ptr<TokenizerImpl>> load_llama2c_tokenizer(const std::string& bytes) {
  auto tokenizer = std::make_shared<Llama2cTokenizer>();
  const auto read_i32 = [&](size_t offset) {
    int32_t v;
    std::memcpy(&v, bytes.data() + offset, 4);
    return v;
  };
  if (bytes.size() < 4) {
    return make_error("llama2.c tokenizer: file is {} bytes, expected at least a 4-byte header",
                      bytes.size());
  }
  size_t offset = 4;  // skips max_token_length: run.c sizes a buffer with it, kiln does not need it
  while (offset < bytes.size()) {
    const size_t index = tokenizer->vocab.size();
    if (bytes.size() - offset < 8) {
      return make_error("llama2.c tokenizer: token {} at offset {} is truncated (expected 8 header bytes, "
                        "found {})", index, offset, bytes.size() - offset);
    }
    float score;
    std::memcpy(&score, bytes.data() + offset, 4);
    const int32_t length = read_i32(offset + 4);
    offset += 8;
    if (length < 0 || static_cast<size_t>(length) > bytes.size() - offset) {
      return make_error("llama2.c tokenizer: token {} at offset {} has length {} (expected 0..{}, the "
                        "bytes left in the file)", index, offset - 8, length, bytes.size() - offset);
    }
    tokenizer->vocab.emplace_back(bytes.data() + offset, length);
    tokenizer->scores.push_back(score);
    offset += length;
  }
  if (tokenizer->vocab.size() < kFirstByteId + 256) {
    return make_error("llama2.c tokenizer: {} tokens, expected at least {} (<unk>, <s>, </s>, 256 bytes)",
                      tokenizer->vocab.size(), kFirstByteId + 256);
  }
  for (size_t i = 0; i < tokenizer->vocab.size(); ++i) {
    tokenizer->lookup.emplace(tokenizer->vocab[i], static_cast<int32_t>(i));
  }
  tokenizer->source = TokenizerSource::Llama2cBin;
  tokenizer->source_bytes = bytes;
  return std::shared_ptr<TokenizerImpl>(std::move(tokenizer));
}

}  // namespace kiln
