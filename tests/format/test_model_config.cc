// ModelConfig::validate: the invariants later stages rely on, whatever file the config came from.
#include "format/model_config.h"

#include <gtest/gtest.h>

namespace kiln {
namespace {

ModelConfig valid_config() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 512;
  c.hidden_size = 64;
  c.intermediate_size = 172;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

std::string error_of(const ModelConfig& c) {
  const Status s = c.validate();
  return s.ok() ? "" : s.error().message;
}

TEST(ModelConfig, AcceptsValidConfig) { EXPECT_TRUE(valid_config().validate().ok()); }

TEST(ModelConfig, RefusesNonPositiveOrHugeSizes) {
  ModelConfig zero_layers = valid_config();
  zero_layers.num_layers = 0;
  EXPECT_EQ(error_of(zero_layers), "num_layers: expected 1..4096, found 0");
  ModelConfig negative_vocab = valid_config();
  negative_vocab.vocab_size = -5;
  EXPECT_EQ(error_of(negative_vocab), "vocab_size: expected 1..16777216, found -5");
  ModelConfig huge_hidden = valid_config();
  huge_hidden.hidden_size = int64_t{1} << 40;
  EXPECT_NE(error_of(huge_hidden).find("hidden_size: expected 1..1048576"), std::string::npos);
}

TEST(ModelConfig, RefusesIndivisibleHeadsAndOddHeadDim) {
  ModelConfig gqa = valid_config();
  gqa.num_kv_heads = 3;
  EXPECT_EQ(error_of(gqa), "num_heads 8 is not a multiple of num_kv_heads 3 (grouped-query attention)");
  ModelConfig odd = valid_config();
  odd.head_dim = 7;
  EXPECT_EQ(error_of(odd), "head_dim: expected an even number (RoPE rotates pairs), found 7");
}

TEST(ModelConfig, RefusesBadNormAndRope) {
  ModelConfig eps = valid_config();
  eps.rms_norm_eps = 0.0;
  EXPECT_NE(error_of(eps).find("rms_norm_eps"), std::string::npos);
  ModelConfig theta = valid_config();
  theta.rope_theta = -1.0;
  EXPECT_NE(error_of(theta).find("rope_theta"), std::string::npos);
  ModelConfig llama3 = valid_config();
  llama3.rope_scaling = RopeScaling::Llama3;
  llama3.rope_factor = 8.0;
  llama3.rope_low_freq_factor = 4.0;
  llama3.rope_high_freq_factor = 4.0;  // the smoothing divides by high - low
  EXPECT_NE(error_of(llama3).find("0 < low_freq_factor < high_freq_factor"), std::string::npos);
  ModelConfig linear = valid_config();
  linear.rope_scaling = RopeScaling::Linear;
  linear.rope_factor = 0.0;
  EXPECT_NE(error_of(linear).find("rope factor"), std::string::npos);
}

TEST(ModelConfig, RefusesTokenIdsOutsideVocab) {
  ModelConfig bos = valid_config();
  bos.bos_token_id = 512;
  EXPECT_EQ(error_of(bos), "bos_token_id: expected -1 (none) or 0..511, found 512");
  ModelConfig eos = valid_config();
  eos.eos_token_ids = {2, -3};
  EXPECT_EQ(error_of(eos), "eos_token_id: expected 0..511, found -3");
}

}  // namespace
}  // namespace kiln
