// llama2.c checkpoints (legacy .bin): a header of 7 int32 {dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len} (vocab_size < 0 means a separate classifier follows), then f32
// weights in run.c's order. Tensors are exposed under Hugging Face names and shapes so the model
// builder treats both sources alike:
//   model.embed_tokens.weight [vocab, dim], model.layers.{i}.input_layernorm.weight [dim],
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, model.layers.{i}.post_attention_layernorm.weight,
//   model.layers.{i}.mlp.{gate,up,down}_proj.weight, model.norm.weight, lm_head.weight (when not shared).
// Config: architecture "llama2c", rope_interleaved = true, rope_theta 10000, rms_norm_eps 1e-5,
// bos 1, eos 2, tie_word_embeddings when the classifier is shared.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "common/error.h"
#include "common/mapped_file.h"
#include "format/model_config.h"
#include "format/tensor_view.h"

namespace kiln {

struct Llama2cCheckpoint {
  ModelConfig config;
  std::shared_ptr<MappedFile> file;
  std::map<std::string, TensorView> tensors;
};

Result<Llama2cCheckpoint> open_llama2c(const std::string& path);

}  // namespace kiln
