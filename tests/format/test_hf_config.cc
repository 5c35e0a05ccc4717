// config.json parsing: the real tiny fixtures, then inline variants of each RoPE form and each
// refusal, checking the message names the field and what was expected.
#include "format/hf_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace kiln {
namespace {

using Json = nlohmann::ordered_json;

const std::string kFixtures = std::string(KILN_SHARED_DIR) + "/fixtures/hf-tiny";

// A minimal Llama config in the pre-transformers-5 form (top-level rope_theta).
Json llama_config() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", 128256},
          {"hidden_size", 2048},
          {"intermediate_size", 8192},
          {"num_hidden_layers", 16},
          {"num_attention_heads", 32},
          {"num_key_value_heads", 8},
          {"max_position_embeddings", 131072},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"rope_scaling", nullptr},
          {"bos_token_id", 128000},
          {"eos_token_id", {128001, 128008, 128009}},
          {"tie_word_embeddings", true}};
}

std::string error_of(const Json& config) {
  const auto result = parse_hf_config(config.dump());
  return result.ok() ? "" : result.error().message;
}

TEST(HfConfig, ReadsTinyLlamaFixture) {
  const auto c = read_hf_config(kFixtures + "/tiny-llama");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling, RopeScaling::None);
  EXPECT_FALSE(c->rope_interleaved);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{2});
}

TEST(HfConfig, ReadsTinyQwen2Fixture) {
  const auto c = read_hf_config(kFixtures + "/tiny-qwen2");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c->intermediate_size, 160);
  EXPECT_EQ(c->head_dim, 16);  // hidden / heads: the config has no head_dim
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1000000.0);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->attention_bias);  // Qwen2 q/k/v always carry a bias
  EXPECT_FALSE(c->o_proj_bias);
  EXPECT_EQ(c->bos_token_id, -1);  // null
  EXPECT_TRUE(c->eos_token_ids.empty());
}

const std::string kRepoFixtures = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf";

TEST(HfConfig, ReadsRepositoryFixtures) {
  const auto llama3 = read_hf_config(kRepoFixtures + "/llama3-rope");  // pre-v5 top-level form
  ASSERT_TRUE(llama3.ok()) << llama3.error().message;
  EXPECT_EQ(llama3->rope_scaling, RopeScaling::Llama3);
  EXPECT_DOUBLE_EQ(llama3->rope_factor, 8.0);
  EXPECT_EQ(llama3->rope_original_max_position, 64);
  EXPECT_EQ(llama3->intermediate_size, 128);

  const auto linear = read_hf_config(kRepoFixtures + "/linear-rope");  // v5 rope_parameters form
  ASSERT_TRUE(linear.ok()) << linear.error().message;
  EXPECT_EQ(linear->rope_scaling, RopeScaling::Linear);
  EXPECT_DOUBLE_EQ(linear->rope_factor, 4.0);
  EXPECT_EQ(linear->num_kv_heads, 4);

  const auto mistral = read_hf_config(kRepoFixtures + "/mistral");
  ASSERT_TRUE(mistral.ok()) << mistral.error().message;
  EXPECT_EQ(mistral->architecture, "MistralForCausalLM");
  EXPECT_FALSE(mistral->attention_bias);

  const auto tied = read_hf_config(kRepoFixtures + "/llama-tied-bias");
  ASSERT_TRUE(tied.ok()) << tied.error().message;
  EXPECT_TRUE(tied->tie_word_embeddings);
  EXPECT_TRUE(tied->attention_bias);
  EXPECT_TRUE(tied->o_proj_bias);  // Llama's attention_bias covers o_proj as well
  EXPECT_EQ(tied->num_kv_heads, 1);
}

TEST(HfConfig, ReadsTopLevelRopeThetaAndDefaults) {
  Json j = llama_config();
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  const auto c = parse_hf_config(j.dump());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling, RopeScaling::None);
  EXPECT_EQ(c->num_kv_heads, 32);  // absent: as many as query heads
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);  // LlamaConfig's default
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_TRUE(c->tie_word_embeddings);
}

TEST(HfConfig, ReadsLlama3ScalingInBothForms) {
  const Json scaling = {{"factor", 32.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  Json old_form = llama_config();
  old_form["rope_scaling"] = scaling;
  old_form["rope_scaling"]["rope_type"] = "llama3";
  Json new_form = llama_config();
  new_form.erase("rope_theta");
  new_form.erase("rope_scaling");
  new_form["rope_parameters"] = scaling;
  new_form["rope_parameters"]["rope_type"] = "llama3";
  new_form["rope_parameters"]["rope_theta"] = 500000.0;
  for (const Json& j : {old_form, new_form}) {
    const auto c = parse_hf_config(j.dump());
    ASSERT_TRUE(c.ok()) << c.error().message;
    EXPECT_EQ(c->rope_scaling, RopeScaling::Llama3);
    EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
    EXPECT_DOUBLE_EQ(c->rope_factor, 32.0);
    EXPECT_DOUBLE_EQ(c->rope_low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(c->rope_high_freq_factor, 4.0);
    EXPECT_EQ(c->rope_original_max_position, 8192);
  }
}

TEST(HfConfig, ReadsLinearScalingWithLegacyTypeKey) {
  Json j = llama_config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const auto c = parse_hf_config(j.dump());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->rope_scaling, RopeScaling::Linear);
  EXPECT_DOUBLE_EQ(c->rope_factor, 4.0);

  j["rope_scaling"].erase("factor");
  EXPECT_NE(error_of(j).find("config.json: rope_scaling: missing required field 'factor'"), std::string::npos);
}

TEST(HfConfig, RefusesUnsupportedRopeTypes) {
  Json yarn = llama_config();
  yarn["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(yarn).find("rope_scaling: unsupported rope type 'yarn' (supported: default, linear, llama3)"),
            std::string::npos)
      << error_of(yarn);
  Json dynamic = llama_config();
  dynamic.erase("rope_scaling");
  dynamic["rope_parameters"] = {{"rope_type", "dynamic"}, {"factor", 2.0}, {"rope_theta", 10000.0}};
  EXPECT_NE(error_of(dynamic).find("rope_parameters: unsupported rope type 'dynamic'"), std::string::npos);
  Json per_layer = llama_config();
  per_layer["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}}}};
  EXPECT_NE(error_of(per_layer).find("rope_parameters: missing 'rope_type'"), std::string::npos);
  Json incomplete = llama_config();
  incomplete["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}};
  EXPECT_NE(error_of(incomplete).find("missing required field 'low_freq_factor'"), std::string::npos);
}

Json mistral_config() {
  Json j = llama_config();
  j["architectures"] = {"MistralForCausalLM"};
  j["max_position_embeddings"] = 32768;
  j["head_dim"] = nullptr;
  j["sliding_window"] = nullptr;
  j["attention_bias"] = true;  // not a MistralConfig field: must not turn biases on
  return j;
}

TEST(HfConfig, ReadsMistralWithoutSlidingWindow) {
  const auto c = parse_hf_config(mistral_config().dump());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->architecture, "MistralForCausalLM");
  EXPECT_EQ(c->head_dim, 64);  // null head_dim: hidden / heads
  EXPECT_FALSE(c->attention_bias);

  Json window_covers_context = mistral_config();
  window_covers_context["sliding_window"] = 32768;
  EXPECT_TRUE(parse_hf_config(window_covers_context.dump()).ok());
}

TEST(HfConfig, RefusesSlidingWindowShorterThanContext) {
  Json mistral = mistral_config();
  mistral["sliding_window"] = 4096;
  EXPECT_NE(error_of(mistral).find("sliding_window 4096 is smaller than max_position_embeddings 32768: sliding "
                                   "window attention not supported"),
            std::string::npos)
      << error_of(mistral);

  // Qwen2 states a window but only uses it with use_sliding_window.
  Json qwen = llama_config();
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["sliding_window"] = 4096;
  qwen["use_sliding_window"] = false;
  ASSERT_TRUE(parse_hf_config(qwen.dump()).ok()) << error_of(qwen);
  qwen["use_sliding_window"] = true;
  EXPECT_NE(error_of(qwen).find("sliding window attention not supported"), std::string::npos);

  Json mixed = llama_config();
  mixed["layer_types"] = {"full_attention", "sliding_attention"};
  EXPECT_NE(error_of(mixed).find("layer_types[1] is string \"sliding_attention\"; only full_attention is supported"),
            std::string::npos);
}

TEST(HfConfig, ReadsLlamaBiasFlags) {
  Json j = llama_config();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  const auto c = parse_hf_config(j.dump());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->mlp_bias);
}

TEST(HfConfig, RefusesUnknownArchitectureListingSupported) {
  Json j = llama_config();
  j["architectures"] = {"GemmaForCausalLM"};
  EXPECT_EQ(error_of(j),
            "config.json: unsupported architecture 'GemmaForCausalLM' (supported: LlamaForCausalLM, "
            "MistralForCausalLM, Qwen2ForCausalLM)");
  j.erase("architectures");
  EXPECT_EQ(error_of(j), "config.json: missing required field 'architectures'");
}

TEST(HfConfig, RefusesMissingOrMistypedFields) {
  Json missing = llama_config();
  missing.erase("hidden_size");
  EXPECT_EQ(error_of(missing), "config.json: missing required field 'hidden_size'");
  Json text = llama_config();
  text["num_hidden_layers"] = "16";
  EXPECT_EQ(error_of(text), "config.json: 'num_hidden_layers': expected an integer, found string \"16\"");
  Json flag = llama_config();
  flag["tie_word_embeddings"] = 1;
  EXPECT_EQ(error_of(flag), "config.json: 'tie_word_embeddings': expected true or false, found number 1");
  Json act = llama_config();
  act["hidden_act"] = "gelu";
  EXPECT_NE(error_of(act).find("hidden_act 'gelu' not supported"), std::string::npos);
  Json eos = llama_config();
  eos["eos_token_id"] = {1, "x"};
  EXPECT_NE(error_of(eos).find("'eos_token_id': expected a non-negative integer"), std::string::npos);
}

TEST(HfConfig, RefusesInconsistentSizes) {
  Json gqa = llama_config();
  gqa["num_key_value_heads"] = 5;
  EXPECT_EQ(error_of(gqa),
            "config.json: num_heads 32 is not a multiple of num_kv_heads 5 (grouped-query attention)");
  Json no_head_dim = llama_config();
  no_head_dim["hidden_size"] = 2050;
  EXPECT_NE(error_of(no_head_dim).find("hidden_size 2050 is not a multiple of num_attention_heads 32"),
            std::string::npos);
  Json eos = llama_config();
  eos["eos_token_id"] = 200000;
  EXPECT_NE(error_of(eos).find("eos_token_id: expected 0..128255, found 200000"), std::string::npos);
}

TEST(HfConfig, RefusesBadJson) {
  const auto truncated = parse_hf_config(R"({"architectures": ["LlamaForCausalLM"], )");
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.error().message.find("config.json: invalid JSON"), std::string::npos);
  const auto duplicate = parse_hf_config(R"({"vocab_size": 1, "vocab_size": 2})");
  ASSERT_FALSE(duplicate.ok());
  EXPECT_EQ(duplicate.error().message, "config.json: duplicate key \"vocab_size\"");
  const auto missing = read_hf_config("/nonexistent/model");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("/nonexistent/model/config.json: cannot open"), std::string::npos);
}

}  // namespace
}  // namespace kiln
