// Architecture hyper-parameters of a decoder-only Llama-family model, whatever file they came from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"

namespace kiln {

enum class RopeScaling : uint8_t { None = 0, Linear = 1, Llama3 = 2 };

struct ModelConfig {
  std::string architecture;     // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "llama2c"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;      // dim
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;     // GQA: num_heads % num_kv_heads == 0
  int64_t head_dim = 0;         // defaults to hidden_size / num_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;

  // Rotary embedding. HF rotates halves (x[i], x[i + head_dim/2]); llama2.c rotates adjacent pairs
  // (x[2i], x[2i+1]) because its exporter permuted q/k weights.
  double rope_theta = 10000.0;
  bool rope_interleaved = false;
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;                   // linear and llama3
  double rope_low_freq_factor = 1.0;          // llama3
  double rope_high_freq_factor = 4.0;         // llama3
  int64_t rope_original_max_position = 8192;  // llama3

  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  bool o_proj_bias = false;     // o_proj carries one too (Llama attention_bias; Qwen2's o_proj has none)
  bool mlp_bias = false;

  int64_t bos_token_id = -1;  // -1: none
  std::vector<int64_t> eos_token_ids;

  // Checks the invariants every later stage relies on (positive sizes, divisibility).
  Status validate() const;
};

}  // namespace kiln
