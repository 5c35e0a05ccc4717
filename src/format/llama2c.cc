#include "format/llama2c.h"

#include <array>
#include <cstring>

namespace kiln {
namespace {

// Limits far above any llama2.c checkpoint (Llama-2-7B exported: dim 4096, hidden 11008, 32 layers,
// vocab 32000); they bound every byte count below 2^50, so the size sums cannot overflow.
constexpr int64_t kMaxDim = int64_t{1} << 16;
constexpr int64_t kMaxHidden = int64_t{1} << 18;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr int64_t kMaxSeqLen = int64_t{1} << 20;
constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);
// export.py's version >= 1 files start with this magic ("ak42" little-endian) instead of the header.
constexpr int32_t kVersionedMagic = 0x616b3432;

// run.c's `Config`.
struct Header {
  int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

std::string header_string(const Header& h) {
  return fmt::format("{{dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}}}",
                     h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len);
}

Status validate_header(const std::string& path, const Header& h) {
  const auto in_range = [&](const char* field, int64_t value, int64_t max) -> Status {
    if (value <= 0 || value > max) {
      return make_error("{}: header {}: expected 1..{}, found {} (header {})", path, field, max, value,
                        header_string(h));
    }
    return Status::Ok();
  };
  KILN_TRY(in_range("dim", h.dim, kMaxDim));
  KILN_TRY(in_range("hidden_dim", h.hidden_dim, kMaxHidden));
  KILN_TRY(in_range("n_layers", h.n_layers, kMaxLayers));
  KILN_TRY(in_range("n_heads", h.n_heads, h.dim));
  KILN_TRY(in_range("n_kv_heads", h.n_kv_heads, h.n_heads));
  KILN_TRY(in_range("|vocab_size|", h.vocab_size < 0 ? -h.vocab_size : h.vocab_size, kMaxVocab));
  KILN_TRY(in_range("seq_len", h.seq_len, kMaxSeqLen));
  if (h.dim % h.n_heads != 0) {
    return make_error("{}: header dim {} is not a multiple of n_heads {}", path, h.dim, h.n_heads);
  }
  if (h.n_heads % h.n_kv_heads != 0) {
    return make_error("{}: header n_heads {} is not a multiple of n_kv_heads {}", path, h.n_heads, h.n_kv_heads);
  }
  if ((h.dim / h.n_heads) % 2 != 0) {
    return make_error("{}: header head size {} (dim / n_heads) is odd; RoPE rotates pairs", path, h.dim / h.n_heads);
  }
  return Status::Ok();
}

}  // namespace

Result<Llama2cCheckpoint> open_llama2c(const std::string& path) {
  KILN_ASSIGN(std::shared_ptr<MappedFile> file, MappedFile::open(path));
  if (file->size() < kHeaderBytes) {
    return make_error("{}: file is {} bytes, too small for the {}-byte llama2.c header", path, file->size(),
                      kHeaderBytes);
  }
  std::array<int32_t, 7> raw{};
  std::memcpy(raw.data(), file->data(), kHeaderBytes);  // little-endian, as run.c reads it on x86/ARM
  if (raw[0] == kVersionedMagic) {
    return make_error("{}: llama2.c export version {} (magic \"ak42\") is not supported; re-export with "
                      "--version 0 (legacy format)",
                      path, raw[1]);
  }
  const Header h{raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6]};
  KILN_TRY(validate_header(path, h));

  // run.c: "negative vocab size is hacky way of signaling unshared weights".
  const bool shared_classifier = h.vocab_size > 0;
  const int64_t vocab = shared_classifier ? h.vocab_size : -h.vocab_size;
  const int64_t dim = h.dim, hidden = h.hidden_dim, layers = h.n_layers;
  const int64_t head_size = dim / h.n_heads;
  const int64_t kv_dim = dim * h.n_kv_heads / h.n_heads;

  // Float counts in run.c's memory_map_weights order.
  const uint64_t floats = vocab * dim                   // token_embedding_table
                          + layers * dim                // rms_att_weight
                          + layers * dim * dim          // wq
                          + 2 * layers * dim * kv_dim   // wk, wv
                          + layers * dim * dim          // wo
                          + layers * dim                // rms_ffn_weight
                          + 3 * layers * hidden * dim   // w1, w2, w3
                          + dim                         // rms_final_weight
                          + h.seq_len * head_size       // freq_cis_real + freq_cis_imag (each seq_len * head_size / 2)
                          + (shared_classifier ? 0 : vocab * dim);  // wcls
  const uint64_t expected = kHeaderBytes + floats * sizeof(float);
  if (file->size() != expected) {
    const char* what = file->size() < expected ? "truncated" : "trailing bytes";
    return make_error("{}: file is {} bytes, expected {} for header {} ({})", path, file->size(), expected,
                      header_string(h), what);
  }

  Llama2cCheckpoint checkpoint;
  ModelConfig& c = checkpoint.config;
  c.architecture = "llama2c";
  c.vocab_size = vocab;
  c.hidden_size = dim;
  c.intermediate_size = hidden;
  c.num_layers = layers;
  c.num_heads = h.n_heads;
  c.num_kv_heads = h.n_kv_heads;
  c.head_dim = head_size;
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;  // run.c rmsnorm
  c.rope_theta = 10000.0;
  c.rope_interleaved = true;
  c.tie_word_embeddings = shared_classifier;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  const Status valid = c.validate();
  if (!valid.ok()) return valid.error().with_context(path);

  // Walk the weights in file order; each block is `count` floats, per layer when `per_layer`.
  uint64_t offset = kHeaderBytes;
  const auto add = [&](const std::string& name, std::vector<int64_t> shape, uint64_t at) {
    TensorView view;
    view.name = name;
    view.dtype = DType::F32;
    view.shape = std::move(shape);
    view.nbytes = static_cast<uint64_t>(view.numel()) * sizeof(float);
    view.data = file->data() + at;
    view.owner = file;
    checkpoint.tensors[view.name] = std::move(view);
  };
  const auto per_layer = [&](const char* suffix, std::vector<int64_t> shape) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    for (int64_t l = 0; l < layers; ++l) {
      add(fmt::format("model.layers.{}.{}", l, suffix), shape, offset + l * count * sizeof(float));
    }
    offset += layers * count * sizeof(float);
  };
  add("model.embed_tokens.weight", {vocab, dim}, offset);
  offset += vocab * dim * sizeof(float);
  per_layer("input_layernorm.weight", {dim});
  per_layer("self_attn.q_proj.weight", {dim, dim});      // [out, in], as run.c's matmul(xout, x, w, n, d)
  per_layer("self_attn.k_proj.weight", {kv_dim, dim});
  per_layer("self_attn.v_proj.weight", {kv_dim, dim});
  per_layer("self_attn.o_proj.weight", {dim, dim});
  per_layer("post_attention_layernorm.weight", {dim});
  per_layer("mlp.gate_proj.weight", {hidden, dim});      // w1
  per_layer("mlp.down_proj.weight", {dim, hidden});      // w2
  per_layer("mlp.up_proj.weight", {hidden, dim});        // w3
  add("model.norm.weight", {dim}, offset);
  offset += dim * sizeof(float);
  offset += h.seq_len * head_size * sizeof(float);  // freq_cis_real/imag: unused, run.c computes RoPE itself
  if (!shared_classifier) {
    add("lm_head.weight", {vocab, dim}, offset);
    offset += vocab * dim * sizeof(float);
  }
  assert(offset == expected);
  checkpoint.file = std::move(file);
  return checkpoint;
}

}  // namespace kiln
