// Hugging Face config.json -> ModelConfig for LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.
// RoPE settings come either at the top level (rope_theta, rope_scaling) or, from transformers 5, under
// rope_parameters; rope types "default", "linear" and "llama3" are supported, others are refused.
#pragma once

#include <string>

#include "common/error.h"
#include "format/model_config.h"

namespace kiln {

Result<ModelConfig> parse_hf_config(const std::string& json_text);
Result<ModelConfig> read_hf_config(const std::string& model_dir);  // reads model_dir/config.json

}  // namespace kiln
