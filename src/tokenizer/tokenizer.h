// Text <-> token ids for Llama-family models.
//
// Sources (detected from the file name and contents):
//   - tokenizer.json (HF tokenizers): model.type "BPE" either SentencePiece-style (Metaspace / "▁"
//     pieces with byte_fallback, Llama 2 / Mistral) or byte-level (ByteLevel pre-tokenizer with the
//     GPT-2 / Llama 3 / Qwen2 Split regexes, run through PCRE2); added_tokens (special or not) are
//     matched in the text first, as HF does.
//   - tokenizer.model (SentencePiece ModelProto, BPE with byte fallback), parsed without libprotobuf.
//   - the same ModelProto as a GGUF "llama" vocabulary (LlamaCppSpm): encodes as llama.cpp does, its
//     control / user-defined / unknown pieces matched in the text (sentencepiece_model.cc).
//   - llama2.c tokenizer.bin (e.g. tok512.bin): {int32 max_token_length; per token: f32 score, int32
//     len, bytes}; encodes as llama2.c run.c does (dummy prefix space, merges by score, byte fallback
//     at id byte+3).
// Encoding equals the reference (HF tokenizers / sentencepiece / llama.cpp) exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace kiln {

enum class TokenizerSource : uint8_t { HfJson = 0, SentencePieceModel = 1, Llama2cBin = 2, LlamaCppSpm = 3 };

class TokenizerImpl;

class Tokenizer {
 public:
  // Reads a tokenizer file; the source kind is detected.
  static Result<Tokenizer> from_file(const std::string& path);
  // From the raw bytes of such a file (engines store the file verbatim).
  static Result<Tokenizer> from_bytes(TokenizerSource source, std::string bytes);

  // Ids of `text`. With add_bos, bos_id() first (when the vocabulary has one). No EOS is added.
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  // Text of `ids`, special tokens (BOS/EOS/control) skipped, as HF's decode(skip_special_tokens=True).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when none
  int32_t eos_id() const;  // -1 when none
  bool is_special(int32_t id) const;
  // The vocabulary entry of `id` as stored (e.g. "▁the", "<0x0A>", "Ġthe"), for inspection and tests.
  std::string piece(int32_t id) const;

  TokenizerSource source() const;
  const std::string& source_bytes() const;  // the file it was read from, verbatim

  // Implementation detail for the streaming decoder: bytes this token contributes to the text
  // when it follows `previous` (-1 at the start of the sequence).
  std::string token_bytes(int32_t id, int32_t previous) const;

 private:
  std::shared_ptr<const TokenizerImpl> impl_;
  friend class TokenizerImpl;
};

// Turns a stream of ids into text without ever emitting a partial UTF-8 sequence: bytes of an
// unfinished character are held back until it completes. Concatenating every push() and then
// flush() gives decode(all ids).
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}
  std::string push(int32_t id);  // text now complete (possibly empty)
  std::string flush();           // whatever is held back (invalid UTF-8 becomes U+FFFD)

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
  int32_t previous_ = -1;
};

}  // namespace kiln
