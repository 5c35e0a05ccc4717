#include "format/gguf_model.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace kiln {

namespace {

// ---- names ----------------------------------------------------------------------------------------

// GGUF tensor names (llama.cpp's gguf-py constants, MODEL_ARCH.LLAMA / QWEN2) -> Hugging Face names.
const std::map<std::string, std::string>& global_names() {
  static const std::map<std::string, std::string> m = {
      {"token_embd", "model.embed_tokens"}, {"output_norm", "model.norm"}, {"output", "lm_head"}};
  return m;
}
const std::map<std::string, std::string>& layer_names() {
  static const std::map<std::string, std::string> m = {
      {"attn_norm", "input_layernorm"},        {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},          {"attn_output", "self_attn.o_proj"},
      {"ffn_norm", "post_attention_layernorm"}, {"ffn_gate", "mlp.gate_proj"},   {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"}};
  return m;
}

// ---- quantized blocks -----------------------------------------------------------------------------

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

bool is_legacy_quant(GgmlType t) {
  return t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q5_0 ||
         t == GgmlType::Q5_1;
}
bool is_k_quant(GgmlType t) {
  return t == GgmlType::Q2_K || t == GgmlType::Q3_K || t == GgmlType::Q4_K || t == GgmlType::Q5_K ||
         t == GgmlType::Q6_K;
}
bool is_mapped_quant(GgmlType t) { return is_legacy_quant(t) || is_k_quant(t); }

// ---- K-quants: super-blocks of 256 elements with sub-block scales (ggml's k-quants) ----------------
//
// Each super-block is decoded into its 256 integer codes and one (scale, min) per sub-block, with
// scale = d * sub_scale and min = -dmin * sub_min computed in f32: an f16 times a 6- or 8-bit integer
// has at most 19 significant bits, so both are exact in F32, and W = scale * q + min is the value
// ggml's own dequantizer gives (up to its second rounding). Sub-blocks of 32 (Q4_K, Q5_K) or 16 (Q2_K,
// Q3_K, Q6_K) become kiln groups of that size.
constexpr int kSuper = 256;

struct KBlock {
  int q[kSuper];
  float scale[16], min[16];  // per group (8 groups of 32 or 16 of 16)
};

// Q4_K / Q5_K: 12 bytes of 6-bit scales and mins for 8 sub-blocks.
void k_scale_min(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 0x3F;
    m = s[j + 4] & 0x3F;
  } else {
    sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30);
    m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

void decode_k_block(GgmlType type, const uint8_t* b, KBlock& out) {
  switch (type) {
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {  // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
      const float d = f16_to_f32(load_u16(b)), dmin = f16_to_f32(load_u16(b + 2));
      const uint8_t* scales = b + 4;
      const bool five = type == GgmlType::Q5_K;
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (five ? 48 : 16);
      for (int sb = 0; sb < 8; ++sb) {  // sub-block sb: nibble sb % 2 of bytes 32 * (sb / 2) ..
        int sc, m;
        k_scale_min(scales, sb, sc, m);
        out.scale[sb] = d * static_cast<float>(sc);
        out.min[sb] = -(dmin * static_cast<float>(m));
        for (int e = 0; e < 32; ++e) {
          int q = (qs[32 * (sb / 2) + e] >> (4 * (sb % 2))) & 0x0F;
          if (five) q |= ((qh[e] >> sb) & 1) << 4;
          out.q[32 * sb + e] = q;
        }
      }
      break;
    }
    case GgmlType::Q6_K: {  // ql[128], qh[64], scales[16] (int8), d
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
      const float d = f16_to_f32(load_u16(b + 208));
      for (int e = 0; e < kSuper; ++e) {
        const int half = e / 128, r = e % 128;
        const int lo = (ql[64 * half + r % 64] >> (4 * (r / 64))) & 0x0F;
        const int hi = (qh[32 * half + r % 32] >> (2 * (r / 32))) & 0x03;
        out.q[e] = (lo | (hi << 4)) - 32;
      }
      for (int g = 0; g < 16; ++g) {
        out.scale[g] = d * static_cast<float>(scales[g]);
        out.min[g] = 0.0f;
      }
      break;
    }
    case GgmlType::Q2_K: {  // scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin
      const uint8_t* scales = b;
      const uint8_t* qs = b + 16;
      const float d = f16_to_f32(load_u16(b + 80)), dmin = f16_to_f32(load_u16(b + 82));
      for (int e = 0; e < kSuper; ++e) {
        const int half = e / 128, r = e % 128;
        out.q[e] = (qs[32 * half + r % 32] >> (2 * (r / 32))) & 0x03;
      }
      for (int g = 0; g < 16; ++g) {
        out.scale[g] = d * static_cast<float>(scales[g] & 0x0F);
        out.min[g] = -(dmin * static_cast<float>(scales[g] >> 4));
      }
      break;
    }
    case GgmlType::Q3_K: {  // hmask[32], qs[64], scales[12] (6-bit, offset 32), d
      const uint8_t* hmask = b;
      const uint8_t* qs = b + 32;
      const uint8_t* s = b + 96;
      const float d = f16_to_f32(load_u16(b + 108));
      for (int e = 0; e < kSuper; ++e) {
        const int half = e / 128, r = e % 128;
        const int low = (qs[32 * half + r % 32] >> (2 * (r / 32))) & 0x03;
        const int high = (hmask[e % 32] >> (e / 32)) & 1;  // set: no offset; clear: -4
        out.q[e] = low - (high ? 0 : 4);
      }
      for (int g = 0; g < 16; ++g) {
        const int lo = (s[g % 8] >> (4 * (g / 8))) & 0x0F;
        const int hi = (s[8 + g % 4] >> (2 * (g / 4))) & 0x03;
        out.scale[g] = d * static_cast<float>((lo | (hi << 4)) - 32);
        out.min[g] = 0.0f;
      }
      break;
    }
    default: break;
  }
}

Result<QuantizedMatrix> k_quant_matrix(const GgufTensor& t) {
  const int64_t N = t.rows(), K = t.cols();
  if (K % kSuper != 0) return make_error("tensor '{}': {} columns is not a multiple of 256", gguf_printable(t.name), K);
  const bool wide = t.type == GgmlType::Q4_K || t.type == GgmlType::Q5_K;  // sub-blocks of 32
  const int group = wide ? 32 : 16, groups_per_super = kSuper / group;
  const bool has_min = t.type == GgmlType::Q4_K || t.type == GgmlType::Q5_K || t.type == GgmlType::Q2_K;
  QuantInfo info{t.type == GgmlType::Q4_K ? 4 : 8, group, DType::F32, has_min};
  KILN_TRY(validate_quant(info, N, K, gguf_printable(t.name)));
  QuantizedMatrix m = make_quantized_matrix(N, K, info);
  const int64_t supers = K / kSuper, row_bytes = quant_row_bytes(info, K), groups = K / group;
  const uint64_t super_bytes = t.row_bytes() / static_cast<uint64_t>(supers);
  auto* scales = reinterpret_cast<float*>(m.scales.data());
  auto* mins = has_min ? reinterpret_cast<float*>(m.mins.data()) : nullptr;
  KBlock blk;
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = t.data + static_cast<uint64_t>(n) * t.row_bytes();
    uint8_t* codes = m.codes.data() + n * row_bytes;
    for (int64_t sb = 0; sb < supers; ++sb) {
      decode_k_block(t.type, row + static_cast<uint64_t>(sb) * super_bytes, blk);
      const int64_t k0 = sb * kSuper;
      if (info.bits == 4) {  // kiln int4 block: element i in the low nibble of byte i, i + 16 in the high
        for (int c = 0; c < kSuper / 32; ++c)
          for (int i = 0; i < 16; ++i)
            codes[(k0 + 32 * c) / 2 + i] = static_cast<uint8_t>(blk.q[32 * c + i] | (blk.q[32 * c + i + 16] << 4));
      } else {
        for (int e = 0; e < kSuper; ++e) codes[k0 + e] = static_cast<uint8_t>(static_cast<int8_t>(blk.q[e]));
      }
      for (int g = 0; g < groups_per_super; ++g) {
        scales[n * groups + sb * groups_per_super + g] = blk.scale[g];
        if (mins) mins[n * groups + sb * groups_per_super + g] = blk.min[g];
      }
    }
  }
  return m;
}

// A quantized matrix dequantized into an owned F32 tensor (the embedding table).
TensorView dequantized_view(const QuantizedMatrix& q, const std::string& name) {
  auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(q.rows * q.cols));
  for (int64_t n = 0; n < q.rows; ++n) dequantize_row(q.view(), n, storage->data() + n * q.cols);
  TensorView v;
  v.name = name;
  v.dtype = DType::F32;
  v.shape = {q.rows, q.cols};
  v.data = reinterpret_cast<const uint8_t*>(storage->data());
  v.nbytes = storage->size() * sizeof(float);
  v.owner = storage;
  return v;
}

// ---- config ---------------------------------------------------------------------------------------

Result<int64_t> get_int(const GgufFile& f, const std::string& key) { return f.get_integer<int64_t>(key); }
Result<int64_t> get_int_or(const GgufFile& f, const std::string& key, int64_t fallback) {
  if (!f.has(key)) return fallback;
  return f.get_integer<int64_t>(key);
}
Result<double> get_float_or(const GgufFile& f, const std::string& key, double fallback) {
  if (!f.has(key)) return fallback;
  return f.get_f64(key);
}

Result<ModelConfig> read_config(const GgufFile& f, const std::string& arch) {
  ModelConfig c;
  const std::string p = arch + ".";
  c.architecture = arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  KILN_ASSIGN(c.hidden_size, get_int(f, p + "embedding_length"));
  KILN_ASSIGN(c.intermediate_size, get_int(f, p + "feed_forward_length"));
  KILN_ASSIGN(c.num_layers, get_int(f, p + "block_count"));
  KILN_ASSIGN(c.num_heads, get_int(f, p + "attention.head_count"));
  KILN_ASSIGN(c.num_kv_heads, get_int_or(f, p + "attention.head_count_kv", c.num_heads));
  KILN_ASSIGN(c.max_position_embeddings, get_int_or(f, p + "context_length", 0));
  if (c.num_heads <= 0) return make_error("{}: {}attention.head_count is {}", f.path(), p, c.num_heads);
  KILN_ASSIGN(c.head_dim, get_int_or(f, p + "attention.key_length", c.hidden_size / c.num_heads));
  KILN_ASSIGN(const int64_t value_dim, get_int_or(f, p + "attention.value_length", c.head_dim));
  if (value_dim != c.head_dim) {
    return make_error("{}: {}attention.value_length {} differs from key_length {} (not a Llama-family attention)",
                      f.path(), p, value_dim, c.head_dim);
  }
  KILN_ASSIGN(const int64_t rope_dim, get_int_or(f, p + "rope.dimension_count", c.head_dim));
  if (rope_dim != c.head_dim) {
    return make_error("{}: {}rope.dimension_count {} != head dim {} (partial RoPE is not supported)", f.path(), p,
                      rope_dim, c.head_dim);
  }
  KILN_ASSIGN(c.rms_norm_eps, get_float_or(f, p + "attention.layer_norm_rms_epsilon", 1e-5));
  KILN_ASSIGN(c.rope_theta, get_float_or(f, p + "rope.freq_base", 10000.0));
  if (f.has(p + "rope.scaling.type")) {
    KILN_ASSIGN(const std::string_view type, f.get_string(p + "rope.scaling.type"));
    if (type == "linear") {
      c.rope_scaling = RopeScaling::Linear;
      KILN_ASSIGN(c.rope_factor, f.get_f64(p + "rope.scaling.factor"));
    } else if (type != "none") {
      return make_error("{}: {}rope.scaling.type '{}' is not supported (none, linear)", f.path(), p, gguf_printable(type));
    }
  }
  if (f.find_tensor("rope_freqs.weight")) {
    return make_error("{}: tensor rope_freqs.weight (llama3-style RoPE frequency factors) is not supported yet", f.path());
  }
  // llama.cpp's converter permutes llama q/k rows for adjacent-pair RoPE; qwen2 keeps HF's halves.
  c.rope_interleaved = arch == "llama";
  const GgufTensor* embed = f.find_tensor("token_embd.weight");
  if (!embed) return make_error("{}: no token_embd.weight tensor", f.path());
  if (embed->dims.size() != 2) return make_error("{}: token_embd.weight has {} dims (expected 2)", f.path(), embed->dims.size());
  KILN_ASSIGN(c.vocab_size, get_int_or(f, p + "vocab_size", embed->rows()));
  if (c.vocab_size != embed->rows()) {
    return make_error("{}: token_embd.weight has {} rows; {}vocab_size is {}", f.path(), embed->rows(), p, c.vocab_size);
  }
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_proj_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
  if (arch == "qwen2" && !c.attention_bias) return make_error("{}: a qwen2 model without blk.0.attn_q.bias", f.path());
  KILN_ASSIGN(c.bos_token_id, get_int_or(f, "tokenizer.ggml.bos_token_id", -1));
  std::set<int64_t> eos;
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    KILN_ASSIGN(const int64_t id, get_int_or(f, key, -1));
    if (id >= 0 && id < c.vocab_size) eos.insert(id);
  }
  c.eos_token_ids.assign(eos.begin(), eos.end());
  if (c.bos_token_id >= c.vocab_size) c.bos_token_id = -1;
  if (const Status valid = c.validate(); !valid.ok()) return valid.error().with_context(f.path());
  return c;
}

// ---- tokenizer ------------------------------------------------------------------------------------

// llama.cpp token types (llama_token_type), the same numbers as SentencePiece's piece types.
enum : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Hugging Face pre-tokenizers by tokenizer.ggml.pre (only ones checked against the model's own
// tokenizer.json: SmolLM2's, and GPT-2's byte-level split for default / gpt2).
// tokenizer.ggml.pre -> the tokenizer.json pre-tokenizer with the split llama.cpp uses for it
// (llama-vocab.cpp; the regexes are the ones in the models' own tokenizer.json files), and whether BPE
// is skipped for a piece that is already a token (llama.cpp's ignore_merges, set for Llama 3).
struct PreTokenizer {
  nlohmann::json json;
  bool ignore_merges = false;
};

Result<PreTokenizer> pre_tokenizer(const std::string& pre) {
  const nlohmann::json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const auto split_then_bytes = [](const char* regex) {
    return nlohmann::json{
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  };
  if (pre == "default" || pre == "gpt2") return PreTokenizer{byte_level};
  if (pre == "smollm") {
    return PreTokenizer{nlohmann::json{{"type", "Sequence"},
                                       {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level}}}};
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    return PreTokenizer{split_then_bytes("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
                        true};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
    return PreTokenizer{split_then_bytes("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")};
  }
  return make_error("tokenizer.ggml.pre '{}' is not supported yet (supported: default, gpt2, smollm, llama-bpe / llama3 / "
                    "llama-v3, qwen2 / deepseek-r1-qwen)",
                    gguf_printable(pre));
}

std::string token_text(const std::span<const std::string_view>& tokens, int64_t id) {
  return id >= 0 && id < static_cast<int64_t>(tokens.size()) ? std::string(tokens[id]) : std::string();
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): a byte-level BPE
// vocabulary is always text, and tokenizer.json cannot hold anything else.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static constexpr uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

Result<std::string> gpt2_tokenizer_json(const GgufFile& f, std::span<const std::string_view> tokens,
                                        const std::vector<int64_t>& types) {
  std::string pre = "default";
  if (f.has("tokenizer.ggml.pre")) {
    KILN_ASSIGN(const std::string_view v, f.get_string("tokenizer.ggml.pre"));
    pre = std::string(v);
  }
  KILN_ASSIGN(const PreTokenizer pre_tok, pre_tokenizer(pre));
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string text(tokens[i]);
    if (!valid_utf8(text)) return make_error("token {} '{}' is not valid UTF-8", i, gguf_printable(text));
    if (types[i] == kByte) return make_error("token {} '{}' is a BYTE token, which a byte-level BPE has none of", i, gguf_printable(text));
    if (vocab.contains(text)) return make_error("token '{}' appears twice (ids {} and {})", gguf_printable(text), vocab[text].get<int64_t>(), i);
    vocab[text] = i;
    if (types[i] == kControl || types[i] == kUserDefined) {
      added.push_back({{"id", i}, {"content", text}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", types[i] == kUserDefined}, {"special", types[i] == kControl}});
    }
  }
  KILN_ASSIGN(std::span<const std::string_view> merge_texts, f.get_string_array("tokenizer.ggml.merges"));
  nlohmann::json merges = nlohmann::json::array();
  for (size_t r = 0; r < merge_texts.size(); ++r) {
    const std::string_view m = merge_texts[r];
    const size_t space = m.find(' ');
    if (space == std::string_view::npos || m.find(' ', space + 1) != std::string_view::npos) {
      return make_error("merge {} '{}' is not two tokens separated by one space", r, gguf_printable(m));
    }
    const std::string a(m.substr(0, space)), b(m.substr(space + 1));
    if (!vocab.contains(a) || !vocab.contains(b) || !vocab.contains(a + b)) {
      return make_error("merge {} '{}' is not two vocabulary tokens whose join is one", r, gguf_printable(m));
    }
    merges.push_back({a, b});
  }
  KILN_ASSIGN(const int64_t bos, get_int_or(f, "tokenizer.ggml.bos_token_id", -1));
  KILN_ASSIGN(const int64_t eos, get_int_or(f, "tokenizer.ggml.eos_token_id", -1));
  KILN_ASSIGN(const int64_t unk, get_int_or(f, "tokenizer.ggml.unknown_token_id", -1));
  bool add_bos = false, add_eos = false;
  if (f.has("tokenizer.ggml.add_bos_token")) {
    KILN_ASSIGN(add_bos, f.get_bool("tokenizer.ggml.add_bos_token"));
  }
  if (f.has("tokenizer.ggml.add_eos_token")) {
    KILN_ASSIGN(add_eos, f.get_bool("tokenizer.ggml.add_eos_token"));
  }
  nlohmann::json post;
  if (add_bos || add_eos) {
    const std::string bos_text = token_text(tokens, bos), eos_text = token_text(tokens, eos);
    if ((add_bos && bos_text.empty()) || (add_eos && eos_text.empty())) {
      return make_error("tokenizer.ggml.add_bos_token / add_eos_token is set but the token id is missing");
    }
    nlohmann::json single = nlohmann::json::array(), special = nlohmann::json::object();
    if (add_bos) single.push_back({{"SpecialToken", {{"id", bos_text}, {"type_id", 0}}}});
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    if (add_eos) single.push_back({{"SpecialToken", {{"id", eos_text}, {"type_id", 0}}}});
    nlohmann::json pair = single;
    for (const auto& item : single) {
      pair.push_back(item.contains("SpecialToken") ? item : nlohmann::json{{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
    }
    for (const std::string& t : {bos_text, eos_text}) {
      if (!t.empty()) special[t] = {{"id", t}, {"ids", {vocab[t]}}, {"tokens", {t}}};
    }
    post = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special}};
  } else {
    post = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }
  const std::string unk_text = token_text(tokens, unk);
  nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tok.json},
      {"post_processor", post},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", unk_text.empty() ? nlohmann::json(nullptr) : nlohmann::json(unk_text)},
        {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
        {"byte_fallback", false}, {"ignore_merges", pre_tok.ignore_merges}, {"vocab", vocab}, {"merges", merges}}},
  };
  return tokenizer.dump();
}

// SentencePiece ModelProto (sentencepiece_model.proto) wire format, the fields kiln's reader and
// sentencepiece itself need for a BPE model.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_tag(std::string& out, uint32_t field, uint32_t wire) { put_varint(out, (field << 3) | wire); }
void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_int(std::string& out, uint32_t field, int64_t v) {
  put_tag(out, field, 0);
  put_varint(out, static_cast<uint64_t>(v));  // negative int32: ten-byte two's complement, as protobuf writes it
}
void put_float(std::string& out, uint32_t field, float v) {
  put_tag(out, field, 5);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(bits >> (8 * i)));
}

Result<std::string> llama_sentencepiece_model(const GgufFile& f, std::span<const std::string_view> tokens,
                                              const std::vector<int64_t>& types) {
  KILN_ASSIGN(const std::vector<float> scores, f.get_f32_array("tokenizer.ggml.scores"));
  if (scores.size() != tokens.size()) return make_error("{} tokens but {} scores", tokens.size(), scores.size());
  std::string model;
  bool bytes = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t type = types[i];
    if (type < kNormal || type > kByte) return make_error("token {} has type {} (expected 1..6)", i, type);
    if (!valid_utf8(tokens[i])) return make_error("token {} '{}' is not valid UTF-8", i, gguf_printable(tokens[i]));
    bytes = bytes || type == kByte;
    std::string piece;
    put_bytes(piece, 1, tokens[i]);
    put_float(piece, 2, scores[i]);
    if (type != kNormal) put_int(piece, 3, type);
    put_bytes(model, 1, piece);
  }
  KILN_ASSIGN(const int64_t unk, get_int_or(f, "tokenizer.ggml.unknown_token_id", 0));
  KILN_ASSIGN(const int64_t bos, get_int_or(f, "tokenizer.ggml.bos_token_id", -1));
  KILN_ASSIGN(const int64_t eos, get_int_or(f, "tokenizer.ggml.eos_token_id", -1));
  bool add_space_prefix = true;
  if (f.has("tokenizer.ggml.add_space_prefix")) {
    KILN_ASSIGN(add_space_prefix, f.get_bool("tokenizer.ggml.add_space_prefix"));
  }
  std::string trainer;
  put_int(trainer, 3, 2);  // model_type BPE
  if (bytes) put_int(trainer, 35, 1);  // byte_fallback
  put_int(trainer, 40, unk);
  put_int(trainer, 41, bos);
  put_int(trainer, 42, eos);
  put_bytes(model, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, "identity");
  put_int(normalizer, 3, add_space_prefix ? 1 : 0);
  put_int(normalizer, 4, 0);  // llama.cpp keeps runs of spaces
  put_int(normalizer, 5, 1);
  put_bytes(model, 3, normalizer);
  return model;
}

}  // namespace

// One GGUF block-quantized matrix [N, K] (rows of ne[0] = K elements) as a kiln QuantizedMatrix. Every
// type here has 32-element blocks, one F16 scale d and maybe an F16 min m, so block b of a row is
// kiln's group b: codes are rearranged, scales and mins copied bit for bit.
Result<QuantizedMatrix> gguf_quantized_matrix(const GgufTensor& t) {
  if (!is_mapped_quant(t.type)) {
    return make_error("tensor '{}' is {}, which kiln does not run yet (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
                      "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)", gguf_printable(t.name), ggml_type_name(t.type));
  }
  if (is_k_quant(t.type)) return k_quant_matrix(t);
  const int64_t N = t.rows(), K = t.cols();
  if (K % kQuantBlock != 0) return make_error("tensor '{}': {} columns is not a multiple of 32", gguf_printable(t.name), K);
  const bool int4 = t.type == GgmlType::Q4_0 || t.type == GgmlType::Q4_1;
  const bool has_min = t.type != GgmlType::Q8_0 && t.type != GgmlType::Q5_0;
  QuantInfo info{int4 ? 4 : 8, kQuantBlock, DType::F16, has_min};
  KILN_TRY(validate_quant(info, N, K, gguf_printable(t.name)));
  QuantizedMatrix m = make_quantized_matrix(N, K, info);
  const int64_t blocks = K / kQuantBlock, row_bytes = quant_row_bytes(info, K);
  const uint64_t block_bytes = t.row_bytes() / static_cast<uint64_t>(blocks);
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = t.data + static_cast<uint64_t>(n) * t.row_bytes();
    uint8_t* codes = m.codes.data() + n * row_bytes;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + static_cast<uint64_t>(b) * block_bytes;
      const uint16_t d = load_u16(blk);
      uint16_t min = 0;
      int8_t* q8 = reinterpret_cast<int8_t*>(codes + b * kQuantBlock);
      switch (t.type) {
        case GgmlType::Q8_0:  // d, 32 x int8: d * q
          std::memcpy(q8, blk + 2, 32);
          break;
        case GgmlType::Q4_0:  // d, 16 bytes: d * (q - 8) = d q - 8 d (exact in f16: a power-of-two multiple)
          std::memcpy(codes + b * 16, blk + 2, 16);
          min = f32_to_f16(-8.0f * f16_to_f32(d));
          break;
        case GgmlType::Q4_1:  // d, m, 16 bytes: d * q + m
          min = load_u16(blk + 2);
          std::memcpy(codes + b * 16, blk + 4, 16);
          break;
        case GgmlType::Q5_0:
        case GgmlType::Q5_1: {  // d, (m), u32 qh, 16 bytes: q = nibble | bit << 4; Q5_0: d (q - 16), Q5_1: d q + m
          const bool q51 = t.type == GgmlType::Q5_1;
          if (q51) min = load_u16(blk + 2);
          const uint32_t qh = load_u32(blk + (q51 ? 4 : 2));
          const uint8_t* qs = blk + (q51 ? 8 : 6);
          for (int j = 0; j < 16; ++j) {
            const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            q8[j] = static_cast<int8_t>(q51 ? lo : lo - 16);
            q8[j + 16] = static_cast<int8_t>(q51 ? hi : hi - 16);
          }
          break;
        }
        default: return make_error("internal: tensor '{}' of type {} reached gguf_quantized_matrix", gguf_printable(t.name), ggml_type_name(t.type));
      }
      store_u16(m.scales.data() + 2 * (n * blocks + b), d);
      if (has_min) store_u16(m.mins.data() + 2 * (n * blocks + b), min);
    }
  }
  return m;
}

Result<std::pair<TokenizerSource, std::string>> gguf_tokenizer(const GgufFile& f) {
  KILN_ASSIGN(const std::string_view kind, f.get_string("tokenizer.ggml.model"));
  KILN_ASSIGN(std::span<const std::string_view> tokens, f.get_string_array("tokenizer.ggml.tokens"));
  std::vector<int64_t> types(tokens.size(), kNormal);
  if (f.has("tokenizer.ggml.token_type")) {
    KILN_ASSIGN(types, f.get_integer_array("tokenizer.ggml.token_type"));
    if (types.size() != tokens.size()) return make_error("{}: {} tokens but {} token types", f.path(), tokens.size(), types.size());
  }
  if (kind == "gpt2") {
    auto json = gpt2_tokenizer_json(f, tokens, types);
    if (!json.ok()) return json.error().with_context(f.path());
    return std::make_pair(TokenizerSource::HfJson, std::move(*json));
  }
  if (kind == "llama") {
    auto model = llama_sentencepiece_model(f, tokens, types);
    if (!model.ok()) return model.error().with_context(f.path());
    return std::make_pair(TokenizerSource::LlamaCppSpm, std::move(*model));
  }
  return make_error("{}: tokenizer.ggml.model '{}' is not supported (gpt2, llama)", f.path(), gguf_printable(kind));
}

std::string gguf_to_hf_name(const std::string& name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos) return "";
  const std::string stem = name.substr(0, dot), suffix = name.substr(dot);  // ".weight" / ".bias"
  if (suffix != ".weight" && suffix != ".bias") return "";
  if (auto g = global_names().find(stem); g != global_names().end()) return g->second + suffix;
  if (!stem.starts_with("blk.")) return "";
  const size_t second = stem.find('.', 4);
  if (second == std::string::npos || second == 4) return "";
  const std::string layer = stem.substr(4, second - 4);
  for (char ch : layer) {
    if (ch < '0' || ch > '9') return "";
  }
  const auto l = layer_names().find(stem.substr(second + 1));
  if (l == layer_names().end()) return "";
  return "model.layers." + layer + "." + l->second + suffix;
}

bool is_gguf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

Result<GgufModel> import_gguf_model(std::shared_ptr<const GgufFile> file) {
  const GgufFile& f = *file;
  GgufModel model;
  model.file = file;
  KILN_ASSIGN(const std::string_view arch_view, f.get_string("general.architecture"));
  const std::string arch(arch_view);
  if (arch != "llama" && arch != "qwen2") {
    return make_error("{}: general.architecture '{}' is not supported (llama, qwen2)", f.path(), gguf_printable(arch));
  }
  KILN_ASSIGN(model.config, read_config(f, arch));
  const ModelConfig& c = model.config;

  for (const GgufTensor& t : f.tensors) {
    const std::string name(t.name);
    const std::string hf = gguf_to_hf_name(name);
    if (hf.empty()) return make_error("{}: tensor '{}' is not one a {} model has", f.path(), gguf_printable(name), arch);
    const bool float_type = t.type == GgmlType::F32 || t.type == GgmlType::F16 || t.type == GgmlType::BF16;
    if (float_type) {
      KILN_ASSIGN(TensorView v, f.view(t));
      v.name = hf;
      model.tensors[hf] = std::move(v);
      model.layout_notes.push_back(fmt::format("{} {}", name, ggml_type_name(t.type)));
      continue;
    }
    if (!is_mapped_quant(t.type)) {
      return make_error("{}: tensor '{}' is {}, which kiln does not run yet (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
                        "Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)", f.path(), gguf_printable(name), ggml_type_name(t.type));
    }
    if (t.dims.size() != 2) {
      return make_error("{}: quantized tensor '{}' has {} dims (expected 2)", f.path(), gguf_printable(name), t.dims.size());
    }
    auto q = gguf_quantized_matrix(t);
    if (!q.ok()) return q.error().with_context(f.path());
    model.layout_notes.push_back(fmt::format("{} {} -> {}", name, ggml_type_name(t.type), quant_describe(q->info, q->cols)));
    if (hf == "model.embed_tokens.weight") {
      // The Embedding op gathers float rows: dequantize (exactly, into F32). A tied LM head keeps the
      // quantized matrix under its own name.
      model.tensors[hf] = dequantized_view(*q, hf);
      model.notes.push_back(fmt::format("{} ({}) dequantized to F32 for the embedding{}", name, ggml_type_name(t.type),
                                        c.tie_word_embeddings ? "; the tied LM head keeps it quantized" : ""));
      if (c.tie_word_embeddings) model.quantized["lm_head.weight"] = std::move(*q);
      continue;
    }
    model.quantized[hf] = std::move(*q);
  }
  if (!model.quantized.empty() && c.tie_word_embeddings && model.quantized.count("lm_head.weight")) {
    model.config.tie_word_embeddings = false;  // the LM head is its own (quantized) matrix now
  }
  const auto embed = model.tensors.find("model.embed_tokens.weight");
  model.source_dtype = embed != model.tensors.end() ? embed->second.dtype : DType::F32;

  if (f.has("tokenizer.ggml.model")) {
    KILN_ASSIGN(auto tok, gguf_tokenizer(f));
    model.tokenizer_source = tok.first;
    model.tokenizer_bytes = std::move(tok.second);
    KILN_ASSIGN(std::span<const std::string_view> tokens, f.get_string_array("tokenizer.ggml.tokens"));
    model.bos_token = token_text(tokens, c.bos_token_id);
    KILN_ASSIGN(const int64_t eos, get_int_or(f, "tokenizer.ggml.eos_token_id", -1));
    model.eos_token = token_text(tokens, eos);
  }
  if (f.has("tokenizer.chat_template")) {
    KILN_ASSIGN(const std::string_view tmpl, f.get_string("tokenizer.chat_template"));
    if (!valid_utf8(tmpl)) return make_error("{}: tokenizer.chat_template is not valid UTF-8", f.path());
    model.chat_template = std::string(tmpl);
  }
  return model;
}

Result<GgufModel> import_gguf_model(const std::string& path) {
  KILN_ASSIGN(GgufFile file, open_gguf(path));
  return import_gguf_model(std::make_shared<const GgufFile>(std::move(file)));
}

}  // namespace kiln
