// llama2.c legacy checkpoints: stories260K from the shared models, then synthetic files written in
// run.c's order with a distinct marker value per (block, layer), so a misplaced view shows up.
#include "format/llama2c.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "format_test_util.h"

namespace kiln {
namespace {

using testing::TempDir;

const std::string kStories = std::string(KILN_SHARED_DIR) + "/models/stories260K/stories260K.bin";

float float_at(const TensorView& view, int64_t index) {
  float v;
  std::memcpy(&v, view.data + index * sizeof(float), sizeof(float));
  return v;
}

TEST(Llama2c, ReadsStories260K) {
  const auto ckpt = open_llama2c(kStories);
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().message;
  const ModelConfig& c = ckpt->config;
  EXPECT_EQ(c.architecture, "llama2c");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});

  EXPECT_EQ(ckpt->tensors.size(), 2u + 5u * 9u);  // embed, norm, 9 per layer; classifier shared
  EXPECT_EQ(ckpt->tensors.count("lm_head.weight"), 0u);
  EXPECT_EQ(ckpt->tensors.at("model.embed_tokens.weight").shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(ckpt->tensors.at("model.layers.4.self_attn.k_proj.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(ckpt->tensors.at("model.layers.0.mlp.gate_proj.weight").shape, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(ckpt->tensors.at("model.layers.0.mlp.down_proj.weight").shape, (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(ckpt->tensors.at("model.embed_tokens.weight").data, ckpt->file->data() + 28);

  // Independent check of the final offset: freq_cis_real follows model.norm.weight, and its first
  // head_size / 2 entries are cos(0 * freq) = 1 (export.py precompute_freqs_cis, position 0).
  const TensorView& norm = ckpt->tensors.at("model.norm.weight");
  const uint8_t* freq_cis_real = norm.data + norm.nbytes;
  for (int i = 0; i < 4; ++i) {
    float v;
    std::memcpy(&v, freq_cis_real + i * sizeof(float), sizeof(float));
    EXPECT_EQ(v, 1.0f) << i;
  }
  // RMSNorm gains of a trained model are positive and O(1); a misaligned view would read weights.
  for (int64_t i = 0; i < 64; ++i) EXPECT_GT(float_at(norm, i), 0.0f) << i;
}

struct Header {
  int32_t dim = 16, hidden_dim = 24, n_layers = 3, n_heads = 4, n_kv_heads = 2, vocab_size = 32, seq_len = 8;
};

// A checkpoint in run.c's order; block b of layer l is filled with the marker 100 * b + l.
std::string llama2c_image(const Header& h) {
  const std::array<int32_t, 7> raw = {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len};
  std::string out(reinterpret_cast<const char*>(raw.data()), sizeof(raw));
  const int64_t vocab = std::abs(h.vocab_size), dim = h.dim, hidden = h.hidden_dim;
  const int64_t kv_dim = dim * h.n_kv_heads / h.n_heads, head_size = dim / h.n_heads;
  const auto block = [&](int b, int64_t count, int64_t layers) {
    for (int64_t l = 0; l < layers; ++l) {
      const float marker = static_cast<float>(100 * b + l);
      for (int64_t i = 0; i < count; ++i) out.append(reinterpret_cast<const char*>(&marker), sizeof(float));
    }
  };
  const int64_t L = h.n_layers;
  block(0, vocab * dim, 1);
  block(1, dim, L);
  block(2, dim * dim, L);
  block(3, dim * kv_dim, L);
  block(4, dim * kv_dim, L);
  block(5, dim * dim, L);
  block(6, dim, L);
  block(7, hidden * dim, L);
  block(8, dim * hidden, L);
  block(9, hidden * dim, L);
  block(10, dim, 1);
  block(11, h.seq_len * head_size / 2, 1);
  block(12, h.seq_len * head_size / 2, 1);
  if (h.vocab_size < 0) block(13, vocab * dim, 1);
  return out;
}

void expect_filled(const TensorView& view, float marker) {
  ASSERT_EQ(view.nbytes, static_cast<uint64_t>(view.numel()) * sizeof(float)) << view.name;
  for (int64_t i = 0; i < view.numel(); ++i) {
    ASSERT_EQ(float_at(view, i), marker) << view.name << " element " << i;
  }
}

TEST(Llama2c, MapsEveryBlockOfASeparateClassifierCheckpoint) {
  TempDir dir;
  Header h;
  h.vocab_size = -32;  // a separate classifier follows
  testing::write_file(dir.file("model.bin"), llama2c_image(h));
  const auto ckpt = open_llama2c(dir.file("model.bin"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().message;
  EXPECT_EQ(ckpt->config.vocab_size, 32);
  EXPECT_FALSE(ckpt->config.tie_word_embeddings);
  EXPECT_EQ(ckpt->tensors.size(), 3u + 3u * 9u);

  const auto& t = ckpt->tensors;
  expect_filled(t.at("model.embed_tokens.weight"), 0);
  const std::pair<const char*, int> per_layer[] = {
      {"input_layernorm.weight", 1},  {"self_attn.q_proj.weight", 2}, {"self_attn.k_proj.weight", 3},
      {"self_attn.v_proj.weight", 4}, {"self_attn.o_proj.weight", 5}, {"post_attention_layernorm.weight", 6},
      {"mlp.gate_proj.weight", 7},    {"mlp.down_proj.weight", 8},    {"mlp.up_proj.weight", 9}};
  for (int l = 0; l < 3; ++l) {
    for (const auto& [suffix, block] : per_layer) {
      expect_filled(t.at(fmt::format("model.layers.{}.{}", l, suffix)), static_cast<float>(100 * block + l));
    }
  }
  EXPECT_EQ(t.at("model.layers.2.self_attn.v_proj.weight").shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(t.at("model.layers.2.mlp.down_proj.weight").shape, (std::vector<int64_t>{16, 24}));
  expect_filled(t.at("model.norm.weight"), 1000);
  expect_filled(t.at("lm_head.weight"), 1300);
  EXPECT_EQ(t.at("lm_head.weight").shape, (std::vector<int64_t>{32, 16}));
}

std::string open_error(const std::string& bytes) {
  TempDir dir;
  testing::write_file(dir.file("model.bin"), bytes);
  const auto result = open_llama2c(dir.file("model.bin"));
  return result.ok() ? "" : result.error().message;
}

TEST(Llama2c, RefusesTruncatedAndTrailingBytes) {
  const std::string good = llama2c_image(Header{});
  ASSERT_EQ(open_error(good), "");
  const size_t size = good.size();
  const std::string truncated = open_error(good.substr(0, size - 4));
  EXPECT_NE(truncated.find(fmt::format("file is {} bytes, expected {} for header {{dim 16, hidden_dim 24, n_layers 3, "
                                       "n_heads 4, n_kv_heads 2, vocab_size 32, seq_len 8}} (truncated)",
                                       size - 4, size)),
            std::string::npos)
      << truncated;
  const std::string trailing = open_error(good + "garbage!");
  EXPECT_NE(trailing.find(fmt::format("file is {} bytes, expected {}", size + 8, size)), std::string::npos) << trailing;
  EXPECT_NE(trailing.find("(trailing bytes)"), std::string::npos);
  EXPECT_NE(open_error("tiny").find("too small for the 28-byte llama2.c header"), std::string::npos);
}

TEST(Llama2c, RefusesBadHeaders) {
  // Header-only files: the header is validated before the size it implies.
  const auto header_bytes = [](const Header& h) { return std::string(reinterpret_cast<const char*>(&h), sizeof(h)); };
  Header zero_heads;
  zero_heads.n_heads = 0;
  EXPECT_NE(open_error(header_bytes(zero_heads)).find("header n_heads: expected 1..16, found 0"), std::string::npos);
  Header indivisible;
  indivisible.n_heads = 3;
  indivisible.n_kv_heads = 3;
  EXPECT_NE(open_error(llama2c_image(indivisible)).find("header dim 16 is not a multiple of n_heads 3"),
            std::string::npos);
  Header gqa;
  gqa.n_kv_heads = 3;
  EXPECT_NE(open_error(llama2c_image(gqa)).find("header n_heads 4 is not a multiple of n_kv_heads 3"),
            std::string::npos);
  Header huge;
  huge.dim = 1 << 20;
  huge.n_heads = 1;
  huge.n_kv_heads = 1;
  EXPECT_NE(open_error(header_bytes(huge)).find("header dim: expected 1..65536, found 1048576"), std::string::npos);
  const int32_t versioned[2] = {0x616b3432, 1};
  EXPECT_NE(open_error(std::string(reinterpret_cast<const char*>(versioned), 8) + std::string(64, '\0'))
                .find("export version 1 (magic \"ak42\") is not supported"),
            std::string::npos);
}

TEST(Llama2c, RefusesMissingFile) {
  const auto result = open_llama2c("/nonexistent/stories.bin");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("/nonexistent/stories.bin: cannot open"), std::string::npos);
}

}  // namespace
}  // namespace kiln
