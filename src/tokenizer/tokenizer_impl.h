// The interface each tokenizer source implements behind kiln::Tokenizer (tokenizer.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

class TokenizerImpl {
 public:
  virtual ~TokenizerImpl() = default;

  // Appends the ids of `text` (no BOS/EOS) to `ids`.
  virtual void encode(std::string_view text, std::vector<int32_t>& ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual bool is_special(int32_t id) const = 0;
  virtual std::string piece(int32_t id) const = 0;
  // Bytes of non-special `id` in decoded text; `previous` is the last non-special id before it
  // (-1 at the start), which decoders need to strip the dummy-prefix space of the first piece.
  virtual std::string token_bytes(int32_t id, int32_t previous) const = 0;

  TokenizerSource source = TokenizerSource::HfJson;
  std::string source_bytes;

  // Lets the loaders build a Tokenizer around an implementation.
  static Tokenizer wrap(std::shared_ptr<const TokenizerImpl> impl) {
    Tokenizer tokenizer;
    tokenizer.impl_ = std::move(impl);
    return tokenizer;
  }
};

// Loaders, one per source (hf_json_tokenizer.cc, sentencepiece_model.cc, llama2c_tokenizer.cc).
Result<std::shared_ptr<TokenizerImpl>> load_hf_json_tokenizer(const std::string& bytes);
// llama_cpp: encode as llama.cpp's SPM tokenizer does (TokenizerSource::LlamaCppSpm).
Result<std::shared_ptr<TokenizerImpl>> load_sentencepiece_model(const std::string& bytes, bool llama_cpp);
Result<std::shared_ptr<TokenizerImpl>> load_llama2c_tokenizer(const std::string& bytes);

}  // namespace kiln
