// Model directories: sharded checkpoints (model.safetensors.index.json) with their consistency
// checks, and the real tiny Hugging Face fixtures checked against their own config.json.
#include <gtest/gtest.h>

#include "format/hf_config.h"
#include "format/safetensors.h"
#include "format_test_util.h"

namespace kiln {
namespace {

using testing::f32_tensor;
using testing::TempDir;
using testing::TestTensor;
using testing::write_file;
using Json = nlohmann::ordered_json;

const std::string kFixtures = std::string(KILN_SHARED_DIR) + "/fixtures/hf-tiny";

// Two shards: a = {embed, norm}, b = {lm_head}, plus an index mapping each tensor to its shard.
struct ShardedModel {
  TempDir dir;
  std::vector<TestTensor> shard_a = {f32_tensor("model.embed_tokens.weight", {4, 2}, 10.0f),
                                     f32_tensor("model.norm.weight", {2}, 20.0f)};
  std::vector<TestTensor> shard_b = {f32_tensor("lm_head.weight", {4, 2}, 30.0f)};
  Json index = {{"metadata", {{"total_size", 72}}},
                {"weight_map",
                 {{"lm_head.weight", "model-00002-of-00002.safetensors"},
                  {"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
                  {"model.norm.weight", "model-00001-of-00002.safetensors"}}}};

  void write() const {
    write_file(dir.file("model-00001-of-00002.safetensors"), testing::safetensors_image(shard_a));
    write_file(dir.file("model-00002-of-00002.safetensors"), testing::safetensors_image(shard_b));
    write_file(dir.file("model.safetensors.index.json"), index.dump(2));
  }
  std::string open_error() const {
    write();
    const auto result = open_safetensors_dir(dir.path().string());
    return result.ok() ? "" : result.error().message;
  }
};

TEST(SafetensorsDir, OpensShardedModel) {
  ShardedModel model;
  model.write();
  const auto set = open_safetensors_dir(model.dir.path().string());
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->shards.size(), 2u);
  ASSERT_EQ(set->tensors.size(), 3u);
  const TensorView* lm_head = set->find("lm_head.weight");
  ASSERT_NE(lm_head, nullptr);
  EXPECT_EQ(lm_head->shape, (std::vector<int64_t>{4, 2}));
  float first;
  std::memcpy(&first, lm_head->data, sizeof(float));
  EXPECT_EQ(first, 30.0f);  // from shard b, not a
  const TensorView* norm = set->find("model.norm.weight");
  ASSERT_NE(norm, nullptr);
  std::memcpy(&first, norm->data, sizeof(float));
  EXPECT_EQ(first, 20.0f);
  EXPECT_EQ(set->find("model.layers.0.mlp.up_proj.weight"), nullptr);
}

TEST(SafetensorsDir, OpensSingleFileModel) {
  TempDir dir;
  write_file(dir.file("model.safetensors"), testing::safetensors_image({f32_tensor("w", {3})}));
  const auto set = open_safetensors_dir(dir.path().string());
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->shards.size(), 1u);
  ASSERT_NE(set->find("w"), nullptr);
  EXPECT_EQ(set->find("w")->nbytes, 12u);
}

TEST(SafetensorsDir, RefusesDirectoryWithoutWeights) {
  TempDir dir;
  const auto result = open_safetensors_dir(dir.path().string());
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("no model.safetensors or model.safetensors.index.json"), std::string::npos);
}

TEST(SafetensorsDir, RefusesMissingShard) {
  ShardedModel model;
  model.write();
  std::filesystem::remove(model.dir.file("model-00002-of-00002.safetensors"));
  const auto result = open_safetensors_dir(model.dir.path().string());
  ASSERT_FALSE(result.ok());
  const std::string& m = result.error().message;
  EXPECT_NE(m.find("shard 'model-00002-of-00002.safetensors'"), std::string::npos) << m;
  EXPECT_NE(m.find("cannot open"), std::string::npos) << m;
}

TEST(SafetensorsDir, RefusesShardWithoutItsMappedTensor) {
  ShardedModel model;
  model.shard_a.pop_back();  // norm promised by the index, absent from shard a
  const std::string m = model.open_error();
  EXPECT_NE(m.find("weight_map maps tensor 'model.norm.weight' to 'model-00001-of-00002.safetensors', which does not "
                   "contain it"),
            std::string::npos)
      << m;
}

TEST(SafetensorsDir, RefusesTensorInTwoShards) {
  ShardedModel model;
  model.shard_b.push_back(f32_tensor("model.norm.weight", {2}));
  const std::string m = model.open_error();
  EXPECT_NE(m.find("tensor 'model.norm.weight' is in two shards: 'model-00001-of-00002.safetensors' and "
                   "'model-00002-of-00002.safetensors'"),
            std::string::npos)
      << m;
}

TEST(SafetensorsDir, RefusesTensorMissingFromIndexOrMappedElsewhere) {
  ShardedModel unlisted;
  unlisted.shard_b.push_back(f32_tensor("extra.weight", {1}));
  EXPECT_NE(unlisted.open_error().find("tensor 'extra.weight' in shard 'model-00002-of-00002.safetensors' is not "
                                       "listed in weight_map"),
            std::string::npos);

  ShardedModel moved;
  moved.shard_a.push_back(f32_tensor("model.layers.0.input_layernorm.weight", {2}));
  moved.index["weight_map"]["model.layers.0.input_layernorm.weight"] = "model-00002-of-00002.safetensors";
  EXPECT_NE(moved.open_error().find("tensor 'model.layers.0.input_layernorm.weight' found in shard "
                                    "'model-00001-of-00002.safetensors', but weight_map maps it to "
                                    "'model-00002-of-00002.safetensors'"),
            std::string::npos);
}

TEST(SafetensorsDir, RefusesBadIndex) {
  ShardedModel outside;
  outside.index["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors";
  EXPECT_NE(outside.open_error().find("shard \"../elsewhere.safetensors\" is not a file name in the model directory"),
            std::string::npos);

  ShardedModel no_map;
  no_map.index.erase("weight_map");
  EXPECT_NE(no_map.open_error().find("model.safetensors.index.json: expected an object with a \"weight_map\" object"),
            std::string::npos);

  ShardedModel corrupt_shard;
  corrupt_shard.write();
  write_file(corrupt_shard.dir.file("model-00002-of-00002.safetensors"), "garbage!garbage!");
  const auto result = open_safetensors_dir(corrupt_shard.dir.path().string());
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("shard 'model-00002-of-00002.safetensors'"), std::string::npos);
  EXPECT_NE(result.error().message.find("header length"), std::string::npos) << result.error().message;
}

// The fixture's tensors are exactly those its config.json implies, with HF shapes.
void expect_matches_config(const std::string& dir, DType dtype) {
  SCOPED_TRACE(dir);
  const auto config = read_hf_config(dir);
  ASSERT_TRUE(config.ok()) << config.error().message;
  const auto set = open_safetensors_dir(dir);
  ASSERT_TRUE(set.ok()) << set.error().message;
  const ModelConfig& c = *config;
  const int64_t q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;

  std::map<std::string, std::vector<int64_t>> expected = {{"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}},
                                                          {"model.norm.weight", {c.hidden_size}}};
  if (!c.tie_word_embeddings) expected["lm_head.weight"] = {c.vocab_size, c.hidden_size};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    expected[p + "input_layernorm.weight"] = {c.hidden_size};
    expected[p + "post_attention_layernorm.weight"] = {c.hidden_size};
    expected[p + "self_attn.q_proj.weight"] = {q_dim, c.hidden_size};
    expected[p + "self_attn.k_proj.weight"] = {kv_dim, c.hidden_size};
    expected[p + "self_attn.v_proj.weight"] = {kv_dim, c.hidden_size};
    expected[p + "self_attn.o_proj.weight"] = {c.hidden_size, q_dim};
    expected[p + "mlp.gate_proj.weight"] = {c.intermediate_size, c.hidden_size};
    expected[p + "mlp.up_proj.weight"] = {c.intermediate_size, c.hidden_size};
    expected[p + "mlp.down_proj.weight"] = {c.hidden_size, c.intermediate_size};
    if (c.attention_bias) {
      expected[p + "self_attn.q_proj.bias"] = {q_dim};
      expected[p + "self_attn.k_proj.bias"] = {kv_dim};
      expected[p + "self_attn.v_proj.bias"] = {kv_dim};
    }
    if (c.o_proj_bias) expected[p + "self_attn.o_proj.bias"] = {c.hidden_size};
  }
  EXPECT_EQ(set->tensors.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    const TensorView* view = set->find(name);
    ASSERT_NE(view, nullptr) << name;
    EXPECT_EQ(view->shape, shape) << name;
    EXPECT_EQ(view->dtype, dtype) << name;
    EXPECT_EQ(view->nbytes, static_cast<uint64_t>(view->numel()) * dtype_size(dtype)) << name;
  }
}

TEST(SafetensorsDir, TinyLlamaFixtureMatchesItsConfig) { expect_matches_config(kFixtures + "/tiny-llama", DType::F16); }
TEST(SafetensorsDir, TinyQwen2FixtureMatchesItsConfig) { expect_matches_config(kFixtures + "/tiny-qwen2", DType::BF16); }

// The repository's fixtures (tests/fixtures/hf/README.md): sharded, tied with o_proj bias, and others.
const std::string kRepoFixtures = std::string(KILN_SOURCE_DIR) + "/tests/fixtures/hf";
TEST(SafetensorsDir, ShardedLinearRopeFixtureMatchesItsConfig) {
  expect_matches_config(kRepoFixtures + "/linear-rope", DType::F16);
  const auto set = open_safetensors_dir(kRepoFixtures + "/linear-rope");
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->shards.size(), 4u);
}
TEST(SafetensorsDir, TiedBiasFixtureMatchesItsConfig) {
  expect_matches_config(kRepoFixtures + "/llama-tied-bias", DType::F16);
}
TEST(SafetensorsDir, Llama3RopeFixtureMatchesItsConfig) {
  expect_matches_config(kRepoFixtures + "/llama3-rope", DType::F32);
}
TEST(SafetensorsDir, MistralFixtureMatchesItsConfig) { expect_matches_config(kRepoFixtures + "/mistral", DType::BF16); }

}  // namespace
}  // namespace kiln
