// A GGUF file (format/gguf.h) as a kiln model: the architecture from its metadata, its tensors under the
// Hugging Face Llama names the model builder reads, quantized tensors kept quantized in kiln's one
// layout family (common/quant.h), and its tokenizer and chat template.
//
// Architectures: `llama` (Llama, Mistral and SmolLM files) and `qwen2`. llama.cpp's converter permutes
// the rows of a `llama` file's q/k weights so that its RoPE can rotate adjacent pairs (x[2i], x[2i+1]);
// kiln runs those files with interleaved RoPE (ModelConfig::rope_interleaved, as for llama2.c), which
// is the same function on the unpermuted weights, so nothing is copied. `qwen2` files keep Hugging Face's
// row order and rotate halves.
//
// Tensor types (each a lossless mapping; bits per weight include scales and mins):
//   F32, F16, BF16     float tensors, viewed in the mapping
//   Q8_0               int8,  group 32, F16 scale d                       (8.5)
//   Q4_0               int4,  group 32, F16 scale d, min -8d              (5.0: kiln stores the min, GGUF 4.5)
//   Q4_1               int4,  group 32, F16 scale d, min m                (5.0)
//   Q5_0 / Q5_1        int8 codes q - 16 / q, group 32, F16 d (and m)     (8.5 / 9.0: 5-bit codes in bytes)
//   Q4_K               int4,  group 32, F32 scale d*sc, min -dmin*m        (6.0)
//   Q5_K               int8,  group 32, F32 scale and min                 (10.0)
//   Q6_K / Q3_K        int8,  group 16, F32 scale d*sc                    (10.0)
//   Q2_K               int8,  group 16, F32 scale and min                 (12.0)
// (k-quant sub-block scales times the f16 super-block scale are exact in F32.) Other types (IQ*,
// ternary, MXFP4) are refused naming the tensor and its type.
// The embedding table must be a float table for the Embedding op: a quantized token_embd is
// dequantized to F32 for it; when the model ties its LM head to it, the LM head keeps the quantized
// matrix (so a decode step reads the GGUF's bytes, not 4x as many).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/quant.h"
#include "common/tensor_view.h"
#include "format/gguf.h"
#include "format/model_config.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

struct GgufModel {
  std::shared_ptr<const GgufFile> file;  // backs every view
  ModelConfig config;
  std::map<std::string, TensorView> tensors;         // float tensors by Hugging Face name
  std::map<std::string, QuantizedMatrix> quantized;  // Linear weights kept quantized, by Hugging Face name
  DType source_dtype = DType::F32;                   // what --dtype auto keeps (the embedding table's)

  // Tokenizer, rebuilt from tokenizer.ggml.*: a Hugging Face tokenizer.json for `gpt2` vocabularies,
  // a SentencePiece model for `llama` ones; empty `bytes` when the file has no vocabulary.
  TokenizerSource tokenizer_source = TokenizerSource::HfJson;
  std::string tokenizer_bytes;
  std::string chat_template;  // tokenizer.chat_template, empty when absent
  std::string bos_token, eos_token;  // their texts, for the chat template

  // Per tensor: "blk.0.attn_q.weight Q4_1 -> int4 g32 f16 +min" (kiln inspect / the build report).
  std::vector<std::string> layout_notes;
  std::vector<std::string> notes;  // anything the import changed (a dequantized embedding, ...)
};

// The GGUF tensor name of a Hugging Face Llama name's weight, and back ("" when not a known one).
std::string gguf_to_hf_name(const std::string& gguf_name);

Result<GgufModel> import_gguf_model(std::shared_ptr<const GgufFile> file);
Result<GgufModel> import_gguf_model(const std::string& path);

// One Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 tensor (2-D, rows of ne[0] elements) in kiln's layout.
Result<QuantizedMatrix> gguf_quantized_matrix(const GgufTensor& tensor);

// The tokenizer parts alone (also used by tests): a tokenizer.json or SentencePiece ModelProto.
Result<std::pair<TokenizerSource, std::string>> gguf_tokenizer(const GgufFile& file);

// True when `path` starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

}  // namespace kiln
