// StreamingDetokenizer: appends each token's bytes and releases everything except an unfinished
// UTF-8 character at the end. Releasing at such a boundary is safe: the bytes before it decode the same
// whatever follows, because the held-back lead byte can never continue an earlier sequence. So the
// concatenation of push() and flush() equals Tokenizer::decode (tests/tokenizer checks it).
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace kiln {

std::string StreamingDetokenizer::push(int32_t id) {
  if (id < 0 || id >= tokenizer_->vocab_size() || tokenizer_->is_special(id)) return {};
  pending_ += tokenizer_->token_bytes(id, previous_);
  previous_ = id;  // only non-special tokens: decode() strips the first piece after skipped ones too
  const size_t hold = utf8::incomplete_suffix(pending_);
  std::string ready = utf8::sanitize(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return ready;
}

std::string StreamingDetokenizer::flush() {
  std::string rest = utf8::sanitize(pending_);
  pending_.clear();
  return rest;
}

}  // namespace kiln
