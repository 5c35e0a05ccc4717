#include "graph/graph.h"

#include <cmath>
#include <numbers>

namespace kiln {

namespace {
constexpr std::pair<OpKind, std::string_view> kOpNames[] = {
    {OpKind::Embedding, "embedding"},
    {OpKind::RmsNorm, "rms_norm"},
    {OpKind::Linear, "linear"},
    {OpKind::Rope, "rope"},
    {OpKind::Attention, "attention"},
    {OpKind::SwiGlu, "swiglu"},
    {OpKind::Add, "add"},
    {OpKind::SelectLogitRows, "select_logit_rows"},
    {OpKind::AddRmsNorm, "add_rms_norm"},
    {OpKind::SwiGluLinear, "swiglu_linear"},
};

// Expected input count per op.
size_t expected_inputs(OpKind op) {
  switch (op) {
    case OpKind::Embedding: return 0;
    case OpKind::Attention: return 3;
    case OpKind::SwiGlu:
    case OpKind::SwiGluLinear:
    case OpKind::Add:
    case OpKind::AddRmsNorm: return 2;
    default: return 1;
  }
}
bool is_in_place(OpKind op) { return op == OpKind::Rope || op == OpKind::Add; }
}  // namespace

std::string_view op_name(OpKind op) {
  for (const auto& [kind, name] : kOpNames) {
    if (kind == op) return name;
  }
  return "?";
}

std::optional<OpKind> op_from_name(std::string_view name) {
  for (const auto& [kind, op_name] : kOpNames) {
    if (op_name == name) return kind;
  }
  return std::nullopt;
}

double Node::attr(const std::string& key, double fallback) const {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : it->second;
}

int32_t Graph::add_value(std::string name, int64_t width, RowSpace rows) {
  values.push_back(Value{std::move(name), width, rows});
  return static_cast<int32_t>(values.size() - 1);
}

Status Graph::validate() const {
  auto weight_of = [&](const Node& node, size_t i) -> const WeightInfo* {
    if (i >= node.weights.size()) return nullptr;
    auto it = weights.find(node.weights[i]);
    return it == weights.end() ? nullptr : &it->second;
  };
  for (const auto& [name, info] : weights) {
    if (!info.quant) continue;
    const std::string what = fmt::format("graph weight '{}'", name);
    if (info.shape.size() != 2) return make_error("{}: only matrices can be quantized", what);
    KILN_TRY(validate_quant(*info.quant, info.shape[0], info.shape[1], what));
    if (info.dtype != quant_code_dtype(*info.quant)) {
      return make_error("{}: int{} codes must be {}, found {}", what, info.quant->bits,
                        dtype_name(quant_code_dtype(*info.quant)), dtype_name(info.dtype));
    }
  }
  for (const Node& node : nodes) {
    const std::string where = fmt::format("graph node '{}' ({})", node.name, op_name(node.op));
    if (node.inputs.size() != expected_inputs(node.op)) {
      return make_error("{}: expected {} inputs, found {}", where, expected_inputs(node.op),
                        node.inputs.size());
    }
    for (const ValueRef& in : node.inputs) {
      if (in.value < 0 || in.value >= static_cast<int32_t>(values.size())) {
        return make_error("{}: input value {} out of range", where, in.value);
      }
      const int64_t w = values[in.value].width;
      if (in.col_offset < 0 || in.width <= 0 || in.col_offset + in.width > w) {
        return make_error("{}: input slice [{}, {}) outside value '{}' of width {}", where, in.col_offset,
                          in.col_offset + in.width, values[in.value].name, w);
      }
    }
    if (node.output < 0 || node.output >= static_cast<int32_t>(values.size())) {
      return make_error("{}: output value {} out of range", where, node.output);
    }
    if (is_in_place(node.op) && node.output != node.inputs[0].value) {
      return make_error("{}: in-place op must write its first input", where);
    }
    if (node.op == OpKind::AddRmsNorm && node.output == node.inputs[0].value) {
      return make_error("{}: the normalized output must be a value other than the residual", where);
    }
    for (const std::string& w : node.weights) {
      if (!weights.count(w)) return make_error("{}: weight '{}' not declared", where, w);
    }
    const int64_t out_width = values[node.output].width;
    switch (node.op) {
      case OpKind::Embedding: {
        const WeightInfo* table = weight_of(node, 0);
        if (!table || table->shape.size() != 2 || table->shape[1] != out_width) {
          return make_error("{}: embedding table must be [vocab, {}]", where, out_width);
        }
        break;
      }
      case OpKind::AddRmsNorm:
        if (node.inputs[0].width != node.inputs[1].width) return make_error("{}: operand widths differ", where);
        [[fallthrough]];
      case OpKind::RmsNorm: {
        const WeightInfo* gamma = weight_of(node, 0);
        if (!gamma || gamma->shape != std::vector<int64_t>{node.inputs[0].width} ||
            out_width != node.inputs[0].width) {
          return make_error("{}: norm weight must be [{}]", where, node.inputs[0].width);
        }
        break;
      }
      case OpKind::SwiGluLinear:
        if (node.inputs[0].width != node.inputs[1].width)
          return make_error("{}: gate and up widths differ", where);
        [[fallthrough]];
      case OpKind::Linear: {
        const WeightInfo* w = weight_of(node, 0);
        if (!w || w->shape.size() != 2 || w->shape[0] != out_width || w->shape[1] != node.inputs[0].width) {
          return make_error("{}: weight must be [{}, {}]", where, out_width, node.inputs[0].width);
        }
        const WeightInfo* bias = weight_of(node, 1);
        if (node.weights.size() > 1 && (!bias || bias->shape != std::vector<int64_t>{out_width})) {
          return make_error("{}: bias must be [{}]", where, out_width);
        }
        break;
      }
      case OpKind::Rope: {
        const int64_t heads = static_cast<int64_t>(node.attr("num_heads"));
        const int64_t head_dim = static_cast<int64_t>(node.attr("head_dim"));
        if (heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || heads * head_dim != node.inputs[0].width) {
          return make_error("{}: num_heads * head_dim must equal the slice width {}", where,
                            node.inputs[0].width);
        }
        break;
      }
      case OpKind::Attention: {
        const int64_t heads = static_cast<int64_t>(node.attr("num_heads"));
        const int64_t kv_heads = static_cast<int64_t>(node.attr("num_kv_heads"));
        const int64_t head_dim = static_cast<int64_t>(node.attr("head_dim"));
        if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || head_dim <= 0 ||
            node.inputs[0].width != heads * head_dim || node.inputs[1].width != kv_heads * head_dim ||
            node.inputs[2].width != kv_heads * head_dim || out_width != heads * head_dim ||
            node.attr("layer", -1) < 0 || (node.attr("rope") != 0.0 && head_dim % 2 != 0)) {
          return make_error("{}: inconsistent heads/head_dim/widths", where);
        }
        break;
      }
      case OpKind::SwiGlu:
        if (node.inputs[0].width != node.inputs[1].width || out_width != node.inputs[0].width) {
          return make_error("{}: gate, up and output widths differ", where);
        }
        break;
      case OpKind::Add:
        if (node.inputs[0].width != node.inputs[1].width) {
          return make_error("{}: operand widths differ", where);
        }
        break;
      case OpKind::SelectLogitRows:
        if (values[node.output].rows != RowSpace::LogitRows || out_width != node.inputs[0].width) {
          return make_error("{}: output must be logit rows of the input's width", where);
        }
        break;
    }
    // Row spaces must agree between inputs and output (except the row selection itself).
    const RowSpace out_rows = values[node.output].rows;
    for (const ValueRef& in : node.inputs) {
      if (node.op != OpKind::SelectLogitRows && values[in.value].rows != out_rows) {
        return make_error("{}: mixes token rows and logit rows", where);
      }
    }
  }
  if (logits_value < 0 || logits_value >= static_cast<int32_t>(values.size()) ||
      values[logits_value].rows != RowSpace::LogitRows) {
    return make_error("graph: logits value missing or not in logit rows");
  }
  return Status::Ok();
}

nlohmann::json Graph::to_json() const {
  using nlohmann::json;
  json j;
  j["values"] = json::array();
  for (const Value& v : values) {
    j["values"].push_back({{"name", v.name}, {"width", v.width},
                           {"rows", v.rows == RowSpace::Tokens ? "tokens" : "logit_rows"}});
  }
  j["nodes"] = json::array();
  for (const Node& n : nodes) {
    json inputs = json::array();
    for (const ValueRef& r : n.inputs) inputs.push_back({r.value, r.col_offset, r.width});
    j["nodes"].push_back({{"op", op_name(n.op)}, {"name", n.name}, {"inputs", inputs},
                          {"output", n.output}, {"weights", n.weights}, {"attrs", n.attrs}});
  }
  j["weights"] = json::object();
  for (const auto& [name, info] : weights) {
    j["weights"][name] = {{"dtype", dtype_name(info.dtype)}, {"shape", info.shape}};
    if (info.quant) {
      j["weights"][name]["quant"] = {{"bits", info.quant->bits},
                                     {"group_size", info.quant->group_size},
                                     {"scale_dtype", dtype_name(info.quant->scale_dtype)},
                                     {"has_min", info.quant->has_min}};
      if (info.quant->act_bits != 0) {
        j["weights"][name]["quant"]["act_bits"] = info.quant->act_bits;
        j["weights"][name]["quant"]["act_scale"] = info.quant->act_scale;
      }
    }
  }
  j["logits_value"] = logits_value;
  return j;
}

Result<Graph> Graph::from_json(const nlohmann::json& j) {
  Graph g;
  try {
    for (const auto& v : j.at("values")) {
      const std::string rows = v.at("rows").get<std::string>();
      if (rows != "tokens" && rows != "logit_rows") return make_error("graph: bad row space '{}'", rows);
      g.values.push_back(Value{v.at("name").get<std::string>(), v.at("width").get<int64_t>(),
                               rows == "tokens" ? RowSpace::Tokens : RowSpace::LogitRows});
    }
    for (const auto& n : j.at("nodes")) {
      const auto op = op_from_name(n.at("op").get<std::string>());
      if (!op) return make_error("graph: unknown op '{}'", n.at("op").get<std::string>());
      Node node{*op, n.at("name").get<std::string>(), {}, n.at("output").get<int32_t>(),
                n.at("weights").get<std::vector<std::string>>(),
                n.at("attrs").get<std::map<std::string, double>>()};
      for (const auto& r : n.at("inputs")) {
        node.inputs.push_back(ValueRef{r.at(0).get<int32_t>(), r.at(1).get<int64_t>(), r.at(2).get<int64_t>()});
      }
      g.nodes.push_back(std::move(node));
    }
    for (const auto& [name, w] : j.at("weights").items()) {
      const auto dtype = dtype_from_name(w.at("dtype").get<std::string>());
      if (!dtype) return make_error("graph: weight '{}' has unknown dtype", name);
      WeightInfo info{*dtype, w.at("shape").get<std::vector<int64_t>>(), std::nullopt};
      if (w.contains("quant")) {
        const auto& q = w.at("quant");
        const auto scale_dtype = dtype_from_name(q.at("scale_dtype").get<std::string>());
        if (!scale_dtype) return make_error("graph: weight '{}' has an unknown scale dtype", name);
        info.quant = QuantInfo{q.at("bits").get<int>(), q.at("group_size").get<int64_t>(), *scale_dtype,
                               q.at("has_min").get<bool>(), q.value("act_bits", 0), q.value("act_scale", 0.0f)};
      }
      g.weights[name] = std::move(info);
    }
    g.logits_value = j.at("logits_value").get<int32_t>();
  } catch (const nlohmann::json::exception& e) {
    return make_error("graph: malformed JSON: {}", e.what());
  }
  KILN_TRY(g.validate());
  return g;
}

std::vector<StoredTensor> stored_tensors(const std::string& name, const WeightInfo& info) {
  if (!info.quant || info.shape.size() != 2) return {StoredTensor{name, info.dtype, info.shape}};
  const QuantInfo& q = *info.quant;
  const int64_t N = info.shape[0], K = info.shape[1];
  std::vector<StoredTensor> out{StoredTensor{name, info.dtype, {N, quant_row_bytes(q, K)}},
                                StoredTensor{quant_scales_name(name), q.scale_dtype, {N, quant_groups(q, K)}}};
  if (q.has_min) out.push_back(StoredTensor{quant_mins_name(name), q.scale_dtype, {N, quant_groups(q, K)}});
  return out;
}

std::optional<Node> rope_of(const Node& node) {
  if (node.op == OpKind::Rope) return node;
  if (node.op != OpKind::Attention || node.attr("rope") == 0.0) return std::nullopt;
  Node rope{OpKind::Rope, node.name + ".rope", {}, -1, {}, {}};
  for (const auto& [key, value] : node.attrs) {
    if (key.rfind("rope_", 0) == 0) rope.attrs[key.substr(5)] = value;
  }
  rope.attrs["head_dim"] = node.attr("head_dim");
  return rope;
}

void rope_tables(const Node& rope_node, int64_t max_positions, std::vector<float>& cos, std::vector<float>& sin) {
  const std::vector<double> inv_freq = rope_inverse_frequencies(rope_node);
  const size_t half = inv_freq.size();
  cos.assign(static_cast<size_t>(max_positions) * half, 0.0f);
  sin.assign(static_cast<size_t>(max_positions) * half, 0.0f);
  for (int64_t p = 0; p < max_positions; ++p) {
    for (size_t j = 0; j < half; ++j) {
      const double angle = static_cast<double>(p) * inv_freq[j];
      cos[p * half + j] = static_cast<float>(std::cos(angle));
      sin[p * half + j] = static_cast<float>(std::sin(angle));
    }
  }
}

std::string rope_table_key(const Node& rope_node) {
  std::string key;
  for (const auto& [k, v] : rope_node.attrs) {
    if (k != "num_heads") key += fmt::format("{}={};", k, v);
  }
  return key;
}

std::vector<double> rope_inverse_frequencies(const Node& node) {
  const int64_t head_dim = static_cast<int64_t>(node.attr("head_dim"));
  const double theta = node.attr("theta", 10000.0);
  const int scaling = static_cast<int>(node.attr("scaling", 0));
  const double factor = node.attr("factor", 1.0);
  std::vector<double> inv_freq(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
  }
  if (scaling == 1) {  // linear: positions divided by factor == frequencies divided by factor
    for (double& f : inv_freq) f /= factor;
  } else if (scaling == 2) {  // llama3: transformers _compute_llama3_parameters
    const double low_freq_factor = node.attr("low_freq_factor", 1.0);
    const double high_freq_factor = node.attr("high_freq_factor", 4.0);
    const double old_context = node.attr("original_max_position", 8192.0);
    const double low_freq_wavelen = old_context / low_freq_factor;
    const double high_freq_wavelen = old_context / high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f = f / factor;
      } else if (wavelen >= high_freq_wavelen) {  // medium band: smooth interpolation
        const double smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        f = (1.0 - smooth) * f / factor + smooth * f;
      }
    }
  }
  return inv_freq;
}

}  // namespace kiln
