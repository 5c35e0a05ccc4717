// kiln::Tokenizer: detects the source, delegates to its TokenizerImpl, and decodes through
// token_bytes() so decode() and StreamingDetokenizer produce the same text.
#include "tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace kiln {

Result<Tokenizer> Tokenizer::from_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return make_error("{}: cannot open tokenizer file", path);
  std::ostringstream contents;
  contents << file.rdbuf();
  std::string bytes = std::move(contents).str();

  // By name first (tokenizer.json / tokenizer.model / *.bin), then by content: JSON starts with '{',
  // a ModelProto with its field-1 key 0x0A.
  TokenizerSource source;
  const auto ends_with = [&](std::string_view suffix) { return std::string_view(path).ends_with(suffix); };
  const size_t first = bytes.find_first_not_of(" \t\r\n");
  if (ends_with(".json")) source = TokenizerSource::HfJson;
  else if (ends_with(".model")) source = TokenizerSource::SentencePieceModel;
  else if (ends_with(".bin")) source = TokenizerSource::Llama2cBin;
  else if (first != std::string::npos && bytes[first] == '{') source = TokenizerSource::HfJson;
  else if (!bytes.empty() && bytes[0] == 0x0A) source = TokenizerSource::SentencePieceModel;
  else source = TokenizerSource::Llama2cBin;

  Result<Tokenizer> tokenizer = from_bytes(source, std::move(bytes));
  if (!tokenizer.ok()) return tokenizer.error().with_context(path);
  return tokenizer;
}

Result<Tokenizer> Tokenizer::from_bytes(TokenizerSource source, std::string bytes) {
  Result<std::shared_ptr<TokenizerImpl>> impl = make_error("unknown tokenizer source {}", static_cast<int>(source));
  switch (source) {
    case TokenizerSource::HfJson: impl = load_hf_json_tokenizer(bytes); break;
    case TokenizerSource::SentencePieceModel: impl = load_sentencepiece_model(bytes, false); break;
    case TokenizerSource::LlamaCppSpm: impl = load_sentencepiece_model(bytes, true); break;
    case TokenizerSource::Llama2cBin: impl = load_llama2c_tokenizer(bytes); break;
  }
  if (!impl.ok()) return impl.error();
  return TokenizerImpl::wrap(std::move(impl).value());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && impl_->bos_id() >= 0) ids.push_back(impl_->bos_id());
  impl_->encode(text, ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  int32_t previous = -1;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || impl_->is_special(id)) continue;
    bytes += impl_->token_bytes(id, previous);
    previous = id;
  }
  return utf8::sanitize(bytes);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
int32_t Tokenizer::bos_id() const { return impl_->bos_id(); }
int32_t Tokenizer::eos_id() const { return impl_->eos_id(); }
bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && impl_->is_special(id); }
std::string Tokenizer::piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? impl_->piece(id) : std::string();
}
TokenizerSource Tokenizer::source() const { return impl_->source; }
const std::string& Tokenizer::source_bytes() const { return impl_->source_bytes; }

std::string Tokenizer::token_bytes(int32_t id, int32_t previous) const {
  if (id < 0 || id >= vocab_size() || impl_->is_special(id)) return {};
  return impl_->token_bytes(id, previous);
}

}  // namespace kiln
