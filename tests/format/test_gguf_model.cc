// GGUF files as kiln models (format/gguf_model.h):
//   - every block type kiln maps (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the k-quants Q2_K .. Q6_K) dequantizes
//     to exactly what gguf-py's
//     own dequantizer makes of the same random blocks (tests/golden/gguf_blocks.json,
//     tools/make_gguf_block_golden.py), up to the one rounding kiln's fma saves;
//   - a `llama` (SentencePiece) vocabulary written into a GGUF from the real Llama 2 tokenizer.model
//     comes back as a tokenizer that encodes the 2,000-string corpus as sentencepiece does;
//   - a whole tiny `llama` model in a GGUF imports with the right config, names and layouts, and
//     unsupported types, tensors and architectures are refused in one line naming them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "common/quant.h"
#include "format/gguf_model.h"
#include "format_test_util.h"
#include "gguf_writer.h"
#include "tokenizer/protobuf_wire.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

using namespace gguf_test;
using Json = nlohmann::json;

std::string source_path(const std::string& rel) { return std::string(KILN_SOURCE_DIR) + "/" + rel; }
std::string shared_path(const std::string& rel) {
  const char* env = std::getenv("KILN_SHARED_DIR");
  return std::string(env ? env : KILN_SHARED_DIR) + "/" + rel;
}
std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Result<GgufFile> parse_image(std::string image) {
  return parse_gguf(MappedFile::from_memory(std::move(image), "test.gguf"));
}

std::string unhex(const std::string& hex) {
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

TEST(GgufModel, BlockTypesDequantizeAsGgufPy) {
  const Json golden = Json::parse(read_file(source_path("tests/golden/gguf_blocks.json")));
  const int64_t rows = golden["rows"], cols = golden["cols"];
  const std::map<std::string, GgmlType> types = {
      {"Q8_0", GgmlType::Q8_0}, {"Q4_0", GgmlType::Q4_0}, {"Q4_1", GgmlType::Q4_1}, {"Q5_0", GgmlType::Q5_0},
      {"Q5_1", GgmlType::Q5_1}, {"Q2_K", GgmlType::Q2_K}, {"Q3_K", GgmlType::Q3_K}, {"Q4_K", GgmlType::Q4_K},
      {"Q5_K", GgmlType::Q5_K}, {"Q6_K", GgmlType::Q6_K}};
  // kiln's group per type: the 32-element blocks, and the k-quants' sub-blocks
  const std::map<std::string, int64_t> group = {{"Q2_K", 16}, {"Q3_K", 16}, {"Q6_K", 16}};
  ASSERT_EQ(golden["types"].size(), types.size());
  for (const auto& [name, type] : types) {
    SCOPED_TRACE(name);
    GgufWriter w;
    w.tensor("blk.0.attn_q.weight", {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)}, type,
             unhex(golden["types"][name]["bytes"]));
    auto file = parse_image(w.image());
    ASSERT_TRUE(file.ok()) << file.error().message;
    auto q = gguf_quantized_matrix(file->tensors[0]);
    ASSERT_TRUE(q.ok()) << q.error().message;
    EXPECT_EQ(q->info.group_size, group.count(name) ? group.at(name) : 32);
    EXPECT_EQ(q->info.bits, type == GgmlType::Q4_0 || type == GgmlType::Q4_1 || type == GgmlType::Q4_K ? 4 : 8);
    const auto want = golden["types"][name]["values"].get<std::vector<double>>();
    std::vector<float> row(cols);
    int64_t bad = 0;
    for (int64_t n = 0; n < rows; ++n) {
      dequantize_row(q->view(), n, row.data());
      for (int64_t k = 0; k < cols; ++k) {
        // gguf-py rounds d * q, then adds m; kiln's fma rounds once: at most one f32 unit of the larger
        // term apart (the k-quants' d * sc * q - dmin * m can cancel, so of |scale q| + |min|, not of w).
        const double w_ = want[n * cols + k];
        const QuantMatrixView v = q->view();
        const double scale = std::fabs(quant_scale(v, n, k / v.info.group_size) * quant_code(v, n, k));
        const double bound = 0x1p-23 * (scale + std::fabs(quant_min(v, n, k / v.info.group_size))) + 1e-30;
        if (!(std::fabs(row[k] - w_) <= bound)) {
          if (++bad <= 3) ADD_FAILURE() << "row " << n << " col " << k << ": kiln " << row[k] << ", gguf-py " << w_;
        }
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(GgufModel, RefusesTypesItDoesNotMap) {
  GgufWriter w;
  w.tensor("blk.0.attn_q.weight", {256, 1}, GgmlType::IQ4_XS, std::string(136, '\0'));
  auto file = parse_image(w.image());
  ASSERT_TRUE(file.ok()) << file.error().message;
  auto q = gguf_quantized_matrix(file->tensors[0]);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().message.find("blk.0.attn_q.weight"), std::string::npos) << q.error().message;
  EXPECT_NE(q.error().message.find("IQ4_XS"), std::string::npos) << q.error().message;
}

TEST(GgufModel, NamesMapToHuggingFace) {
  EXPECT_EQ(gguf_to_hf_name("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(gguf_to_hf_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(gguf_to_hf_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.12.attn_q.bias"), "model.layers.12.self_attn.q_proj.bias");
  EXPECT_EQ(gguf_to_hf_name("blk.0.ffn_down.weight"), "model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.x.ffn_down.weight"), "");
  EXPECT_EQ(gguf_to_hf_name("blk.0.ffn_down_exps.weight"), "");
  EXPECT_EQ(gguf_to_hf_name("rope_freqs.weight"), "");
}

// The Llama 2 SentencePiece model's pieces, scores and types.
struct SpmVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
};
SpmVocab read_spm_vocab(const std::string& bytes) {
  SpmVocab v;
  ProtoReader model(bytes);
  uint32_t field;
  ProtoReader::WireType type;
  while (model.next_field(field, type)) {
    if (type != ProtoReader::kLengthDelimited) {
      model.skip(type);
      continue;
    }
    const std::string_view message = model.bytes();
    if (field != 1) continue;
    ProtoReader piece(message);
    std::string text;
    float score = 0;
    int32_t t = 1;
    uint32_t f;
    ProtoReader::WireType w;
    while (piece.next_field(f, w)) {
      if (f == 1 && w == ProtoReader::kLengthDelimited) text = std::string(piece.bytes());
      else if (f == 2 && w == ProtoReader::kFixed32) score = piece.fixed32_float();
      else if (f == 3 && w == ProtoReader::kVarint) t = static_cast<int32_t>(piece.varint());
      else piece.skip(w);
    }
    v.pieces.push_back(text);
    v.scores.push_back(score);
    v.types.push_back(t);
  }
  return v;
}

// A GGUF "llama" vocabulary encodes as llama.cpp does (tests/golden/llamacpp_gguf.json, from
// tools/make_llamacpp_golden.py: llama_tokenize with parse_special), which is sentencepiece's encoding
// wherever the text holds no control / unknown piece such as "<s>".
TEST(GgufModel, LlamaVocabularyTokenizesAsLlamaCpp) {
  const std::string model_path = shared_path("models/llama2-tokenizer/tokenizer.model");
  const SpmVocab vocab = read_spm_vocab(read_file(model_path));
  ASSERT_EQ(vocab.pieces.size(), 32000u);
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  w.kv_string("tokenizer.ggml.model", "llama");
  w.kv_string_array("tokenizer.ggml.tokens", vocab.pieces);
  w.kv_f32_array("tokenizer.ggml.scores", vocab.scores);
  w.kv_i32_array("tokenizer.ggml.token_type", vocab.types);
  w.kv_u32("tokenizer.ggml.bos_token_id", 1);
  w.kv_u32("tokenizer.ggml.eos_token_id", 2);
  w.kv_u32("tokenizer.ggml.unknown_token_id", 0);
  w.kv_bool("tokenizer.ggml.add_space_prefix", true);
  auto file = parse_image(w.image());
  ASSERT_TRUE(file.ok()) << file.error().message;
  auto parts = gguf_tokenizer(*file);
  ASSERT_TRUE(parts.ok()) << parts.error().message;
  EXPECT_EQ(parts->first, TokenizerSource::LlamaCppSpm);
  auto tokenizer = Tokenizer::from_bytes(parts->first, parts->second);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.error().message;
  EXPECT_EQ(tokenizer->bos_id(), 1);

  std::vector<std::string> strings = Json::parse(read_file(source_path("tests/tokenizer/data/corpus.json")));
  const size_t corpus_size = strings.size();
  ASSERT_GE(corpus_size, 2000u);
  const Json llama_cpp = Json::parse(read_file(source_path("tests/golden/llamacpp_gguf.json")))["vocabularies"]["llama-spm"];
  for (const auto& s : llama_cpp["extra_strings"]) strings.push_back(s.get<std::string>());
  const Json sentencepiece =
      Json::parse(read_file(source_path("tests/tokenizer/data/golden_sentencepiece_llama2.json")))["ids"];
  ASSERT_EQ(llama_cpp["ids"].size(), strings.size());
  ASSERT_EQ(sentencepiece.size(), corpus_size);
  int64_t differ = 0, plain = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const auto ids = tokenizer->encode(strings[i], /*add_bos=*/false);
    if (ids != llama_cpp["ids"][i].get<std::vector<int32_t>>() && ++differ <= 3) {
      ADD_FAILURE() << "case " << i << ": " << Json(strings[i]).dump();
    }
    const bool has_piece = strings[i].find("<s>") != std::string::npos || strings[i].find("</s>") != std::string::npos ||
                           strings[i].find("<unk>") != std::string::npos;
    if (i < corpus_size && !has_piece) {
      ++plain;
      EXPECT_EQ(ids, sentencepiece[i].get<std::vector<int32_t>>()) << "case " << i << ": " << Json(strings[i]).dump();
    }
  }
  EXPECT_EQ(differ, 0);
  EXPECT_GT(plain, 1500);
  // A control piece in the text is its id, with the dummy prefix after it as llama.cpp puts it.
  EXPECT_EQ(tokenizer->encode("hello <s> world", false), (std::vector<int32_t>{22172, 29871, 1, 29871, 3186}));
}

// A tiny llama model: 2 layers, dim 64, 4 heads (2 kv), FFN 96, vocab 40; Q8_0 and Q4_1 matrices.
GgufWriter tiny_llama(GgmlType matrix_type, bool tied) {
  GgufWriter w;
  w.kv_string("general.architecture", "llama");
  w.kv_u32("llama.embedding_length", 64);
  w.kv_u32("llama.feed_forward_length", 96);
  w.kv_u32("llama.block_count", 2);
  w.kv_u32("llama.attention.head_count", 4);
  w.kv_u32("llama.attention.head_count_kv", 2);
  w.kv_u32("llama.context_length", 256);
  w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  w.kv_f32("llama.rope.freq_base", 500000.0f);
  const auto quant = [&](uint64_t cols, uint64_t rows) {
    const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(matrix_type));
    std::string bytes(cols / t->block_size * t->type_size * rows, '\x11');
    return bytes;
  };
  const auto f32 = [](uint64_t n) { return std::string(4 * n, '\0'); };
  w.tensor("token_embd.weight", {64, 40}, matrix_type, quant(64, 40));
  w.tensor("output_norm.weight", {64}, GgmlType::F32, f32(64));
  if (!tied) w.tensor("output.weight", {64, 40}, matrix_type, quant(64, 40));
  for (int l = 0; l < 2; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    w.tensor(p + "attn_norm.weight", {64}, GgmlType::F32, f32(64));
    w.tensor(p + "ffn_norm.weight", {64}, GgmlType::F32, f32(64));
    w.tensor(p + "attn_q.weight", {64, 64}, matrix_type, quant(64, 64));
    w.tensor(p + "attn_k.weight", {64, 32}, matrix_type, quant(64, 32));
    w.tensor(p + "attn_v.weight", {64, 32}, matrix_type, quant(64, 32));
    w.tensor(p + "attn_output.weight", {64, 64}, matrix_type, quant(64, 64));
    w.tensor(p + "ffn_gate.weight", {64, 96}, matrix_type, quant(64, 96));
    w.tensor(p + "ffn_up.weight", {64, 96}, matrix_type, quant(64, 96));
    w.tensor(p + "ffn_down.weight", {96, 64}, matrix_type, quant(96, 64));
  }
  return w;
}

TEST(GgufModel, ImportsTinyLlama) {
  for (const bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    auto file = parse_image(tiny_llama(GgmlType::Q4_1, tied).image());
    ASSERT_TRUE(file.ok()) << file.error().message;
    auto model = import_gguf_model(std::make_shared<const GgufFile>(std::move(file).value()));
    ASSERT_TRUE(model.ok()) << model.error().message;
    const ModelConfig& c = model->config;
    EXPECT_EQ(c.hidden_size, 64);
    EXPECT_EQ(c.intermediate_size, 96);
    EXPECT_EQ(c.num_layers, 2);
    EXPECT_EQ(c.num_heads, 4);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.vocab_size, 40);
    EXPECT_EQ(c.max_position_embeddings, 256);
    EXPECT_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_TRUE(c.rope_interleaved);  // llama.cpp's permuted q/k rows
    EXPECT_FALSE(c.tie_word_embeddings);  // tied: the LM head becomes its own quantized matrix
    EXPECT_EQ(model->quantized.size(), 15u);  // 7 per layer + the LM head
    ASSERT_TRUE(model->quantized.count("lm_head.weight"));
    EXPECT_EQ(model->quantized.at("model.layers.1.mlp.down_proj.weight").cols, 96);
    ASSERT_TRUE(model->tensors.count("model.embed_tokens.weight"));
    EXPECT_EQ(model->tensors.at("model.embed_tokens.weight").dtype, DType::F32);  // dequantized for the gather
    EXPECT_EQ(model->tensors.at("model.embed_tokens.weight").shape, (std::vector<int64_t>{40, 64}));
    EXPECT_EQ(model->tensors.count("model.layers.0.input_layernorm.weight"), 1u);
  }
}

std::string import_error(GgufWriter w) {
  auto file = parse_image(w.image());
  if (!file.ok()) return "parse: " + file.error().message;
  auto model = import_gguf_model(std::make_shared<const GgufFile>(std::move(file).value()));
  return model.ok() ? "" : model.error().message;
}

TEST(GgufModel, RefusesWhatItCannotRun) {
  {
    GgufWriter w = tiny_llama(GgmlType::Q8_0, true);
    w.tensor("blk.0.ffn_gate_exps.weight", {64, 32}, GgmlType::F32, std::string(4 * 64 * 32, '\0'));
    const std::string e = import_error(w);
    EXPECT_NE(e.find("blk.0.ffn_gate_exps.weight"), std::string::npos) << e;
  }
  {
    GgufWriter w = tiny_llama(GgmlType::Q8_0, true);
    w.tensor("rope_freqs.weight", {8}, GgmlType::F32, std::string(32, '\0'));
    const std::string e = import_error(w);
    EXPECT_NE(e.find("rope_freqs"), std::string::npos) << e;
  }
  {
    GgufWriter w;
    w.kv_string("general.architecture", "mamba");
    const std::string e = import_error(w);
    EXPECT_NE(e.find("'mamba' is not supported"), std::string::npos) << e;
  }
  {  // a vocabulary that is not text (found by fuzz_gguf: it reached the tokenizer.json writer and threw)
    GgufWriter w = tiny_llama(GgmlType::Q8_0, true);
    w.kv_string("tokenizer.ggml.model", "gpt2");
    w.kv_string_array("tokenizer.ggml.tokens", {"a", "b\xff\n"});
    w.kv_string_array("tokenizer.ggml.merges", {});
    const std::string e = import_error(w);
    EXPECT_NE(e.find("token 1 'b\\xff\\x0a' is not valid UTF-8"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  {
    GgufWriter w = tiny_llama(GgmlType::Q8_0, true);
    w.kv_string("llama.rope.scaling.type", "yarn");
    const std::string e = import_error(w);
    EXPECT_NE(e.find("yarn"), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace kiln
