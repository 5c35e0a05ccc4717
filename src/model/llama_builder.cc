#include "model/llama_builder.h"

#include <cmath>

#include <fmt/ranges.h>

namespace kiln {

namespace {

class Builder {
 public:
  Builder(const ModelConfig& config, const std::map<std::string, TensorView>& tensors,
          std::map<std::string, QuantizedMatrix> quantized)
      : config_(config), tensors_(tensors), quantized_(std::move(quantized)) {}

  // Declares weight `name` of the expected shape, taking it from the source tensors.
  Status use_weight(const std::string& name, const std::vector<int64_t>& shape, bool linear = false) {
    if (out_.graph.weights.count(name)) return Status::Ok();  // tied weights are declared once
    if (auto q = quantized_.find(name); q != quantized_.end()) return use_quantized_weight(q->second, name, shape, linear);
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return make_error("model is missing tensor '{}'", name);
    const TensorView& t = it->second;
    if (t.shape != shape) {
      return make_error("tensor '{}': expected shape {}, found {}", name, fmt::join(shape, "x"),
                        fmt::join(t.shape, "x"));
    }
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16) {
      return make_error("tensor '{}': unsupported dtype {} (expected F32, F16 or BF16)", name, dtype_name(t.dtype));
    }
    out_.weights.tensors[name] = t;
    out_.graph.weights[name] = WeightInfo{t.dtype, t.shape};
    return Status::Ok();
  }

  // A pre-quantized Linear weight: declared with its QuantInfo, its codes, scales and mins stored.
  Status use_quantized_weight(QuantizedMatrix& q, const std::string& name, const std::vector<int64_t>& shape, bool linear) {
    if (!linear) return make_error("tensor '{}': a quantized checkpoint tensor where kiln needs a float one", name);
    if (std::vector<int64_t>{q.rows, q.cols} != shape) {
      return make_error("tensor '{}': expected shape {}, the quantized checkpoint holds {}x{}", name, fmt::join(shape, "x"),
                        q.rows, q.cols);
    }
    KILN_TRY(validate_quant(q.info, q.rows, q.cols, name));
    WeightInfo info{quant_code_dtype(q.info), shape, q.info};
    for (const StoredTensor& part : stored_tensors(name, info)) {
      std::vector<uint8_t>& bytes = part.name == name ? q.codes : part.name == quant_scales_name(name) ? q.scales : q.mins;
      out_.weights.put_owned(part.name, part.dtype, part.shape, std::move(bytes));
    }
    out_.graph.weights[name] = std::move(info);
    return Status::Ok();
  }

  int32_t add_node(OpKind op, std::string name, std::vector<ValueRef> inputs, int32_t output,
                   std::vector<std::string> weights = {}, std::map<std::string, double> attrs = {}) {
    out_.graph.nodes.push_back(
        Node{op, std::move(name), std::move(inputs), output, std::move(weights), std::move(attrs)});
    return output;
  }

  Result<int32_t> linear(const std::string& name, ValueRef in, const std::string& weight_prefix, int64_t out_features,
                         bool bias, RowSpace rows = RowSpace::Tokens) {
    std::vector<std::string> weights{weight_prefix + ".weight"};
    KILN_TRY(use_weight(weights[0], {out_features, in.width}, /*linear=*/true));
    if (bias) {
      weights.push_back(weight_prefix + ".bias");
      KILN_TRY(use_weight(weights[1], {out_features}));
    }
    const int32_t out = out_.graph.add_value(name, out_features, rows);
    return add_node(OpKind::Linear, name, {in}, out, std::move(weights));
  }

  Result<int32_t> rms_norm(const std::string& name, ValueRef in, const std::string& weight, RowSpace rows) {
    KILN_TRY(use_weight(weight, {in.width}));
    const int32_t out = out_.graph.add_value(name, in.width, rows);
    return add_node(OpKind::RmsNorm, name, {in}, out, {weight}, {{"eps", config_.rms_norm_eps}});
  }

  void rope(const std::string& name, int32_t value, int64_t heads) {
    std::map<std::string, double> attrs{
        {"num_heads", static_cast<double>(heads)},
        {"head_dim", static_cast<double>(config_.head_dim)},
        {"theta", config_.rope_theta},
        {"interleaved", config_.rope_interleaved ? 1.0 : 0.0},
        {"scaling", static_cast<double>(static_cast<int>(config_.rope_scaling))},
        {"factor", config_.rope_factor},
        {"low_freq_factor", config_.rope_low_freq_factor},
        {"high_freq_factor", config_.rope_high_freq_factor},
        {"original_max_position", static_cast<double>(config_.rope_original_max_position)},
    };
    add_node(OpKind::Rope, name, {out_.graph.ref(value)}, value, {}, std::move(attrs));
  }

  Result<BuiltModel> build() {
    KILN_TRY(config_.validate());
    Graph& g = out_.graph;
    const ModelConfig& c = config_;
    const int64_t D = c.hidden_size, H = c.num_heads, KVH = c.num_kv_heads, hd = c.head_dim;
    const std::string embed = "model.embed_tokens.weight";
    KILN_TRY(use_weight(embed, {c.vocab_size, D}));
    const int32_t hidden = g.add_value("hidden", D);
    add_node(OpKind::Embedding, "embed_tokens", {}, hidden, {embed});

    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string p = fmt::format("model.layers.{}.", l);
      const std::string n = fmt::format("layers.{}.", l);
      KILN_ASSIGN(const int32_t h, rms_norm(n + "input_norm", g.ref(hidden), p + "input_layernorm.weight", RowSpace::Tokens));
      KILN_ASSIGN(const int32_t q, linear(n + "attn.q", g.ref(h), p + "self_attn.q_proj", H * hd, c.attention_bias));
      KILN_ASSIGN(const int32_t k, linear(n + "attn.k", g.ref(h), p + "self_attn.k_proj", KVH * hd, c.attention_bias));
      KILN_ASSIGN(const int32_t v, linear(n + "attn.v", g.ref(h), p + "self_attn.v_proj", KVH * hd, c.attention_bias));
      rope(n + "attn.rope_q", q, H);
      rope(n + "attn.rope_k", k, KVH);
      const int32_t attn = g.add_value(n + "attn.out", H * hd);
      add_node(OpKind::Attention, n + "attn", {g.ref(q), g.ref(k), g.ref(v)}, attn, {},
               {{"layer", static_cast<double>(l)},
                {"num_heads", static_cast<double>(H)},
                {"num_kv_heads", static_cast<double>(KVH)},
                {"head_dim", static_cast<double>(hd)},
                {"scale", 1.0 / std::sqrt(static_cast<double>(hd))}});
      KILN_ASSIGN(const int32_t o, linear(n + "attn.o", g.ref(attn), p + "self_attn.o_proj", D, c.o_proj_bias));
      add_node(OpKind::Add, n + "attn.residual", {g.ref(hidden), g.ref(o)}, hidden);

      KILN_ASSIGN(const int32_t h2, rms_norm(n + "post_attn_norm", g.ref(hidden), p + "post_attention_layernorm.weight", RowSpace::Tokens));
      const int64_t F = c.intermediate_size;
      KILN_ASSIGN(const int32_t gate, linear(n + "mlp.gate", g.ref(h2), p + "mlp.gate_proj", F, c.mlp_bias));
      KILN_ASSIGN(const int32_t up, linear(n + "mlp.up", g.ref(h2), p + "mlp.up_proj", F, c.mlp_bias));
      const int32_t act = g.add_value(n + "mlp.act", F);
      add_node(OpKind::SwiGlu, n + "mlp.swiglu", {g.ref(gate), g.ref(up)}, act);
      KILN_ASSIGN(const int32_t down, linear(n + "mlp.down", g.ref(act), p + "mlp.down_proj", D, c.mlp_bias));
      add_node(OpKind::Add, n + "mlp.residual", {g.ref(hidden), g.ref(down)}, hidden);
    }

    const int32_t selected = g.add_value("last_hidden", D, RowSpace::LogitRows);
    add_node(OpKind::SelectLogitRows, "select_logit_rows", {g.ref(hidden)}, selected);
    KILN_ASSIGN(const int32_t normed, rms_norm("final_norm", g.ref(selected), "model.norm.weight", RowSpace::LogitRows));
    const std::string head = c.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
    KILN_ASSIGN(const int32_t logits, linear("lm_head", g.ref(normed), head, c.vocab_size, false, RowSpace::LogitRows));
    g.values[logits].name = "logits";
    g.logits_value = logits;
    KILN_TRY(g.validate());
    return std::move(out_);
  }

 private:
  const ModelConfig& config_;
  const std::map<std::string, TensorView>& tensors_;
  std::map<std::string, QuantizedMatrix> quantized_;
  BuiltModel out_;
};

}  // namespace

Result<BuiltModel> build_llama_graph(const ModelConfig& config, const std::map<std::string, TensorView>& tensors,
                                     std::map<std::string, QuantizedMatrix> quantized) {
  return Builder(config, tensors, std::move(quantized)).build();
}

}  // namespace kiln
