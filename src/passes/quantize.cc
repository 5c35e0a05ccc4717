// Quantized weights in the graph: which matrices qualify, and how one is replaced (common/quant.h).
#include <algorithm>
#include <cstring>

#include "passes/passes.h"

namespace kiln {

namespace {
bool reads_quantized(const Node& n, size_t weight_index) {
  return (n.op == OpKind::Linear || n.op == OpKind::SwiGluLinear) && weight_index == 0;
}

}  // namespace

QuantizableWeights quantizable_weights(const Graph& graph) {
  QuantizableWeights out;
  for (const Node& n : graph.nodes) {
    if ((n.op != OpKind::Linear && n.op != OpKind::SwiGluLinear) || n.weights.empty()) continue;
    const std::string& w = n.weights[0];
    if (std::find(out.names.begin(), out.names.end(), w) == out.names.end()) out.names.push_back(w);
    if (n.output == graph.logits_value) out.lm_head = w;
  }
  return out;
}

Status set_quantized_weight(Graph& graph, WeightStore& weights, const std::string& name, const QuantizedMatrix& q) {
  auto it = graph.weights.find(name);
  if (it == graph.weights.end()) return make_error("quantize: no weight '{}'", name);
  if (it->second.shape != std::vector<int64_t>{q.rows, q.cols}) {
    return make_error("quantize: '{}' is [{}], the quantized matrix [{}, {}]", name,
                      fmt::join(it->second.shape, ", "), q.rows, q.cols);
  }
  KILN_TRY(validate_quant(q.info, q.rows, q.cols, "quantize: " + name));
  // Nodes that read the weight but cannot read it quantized keep the original; the others move to a
  // new name (the tied embedding / LM head case).
  bool shared = false;
  for (const Node& n : graph.nodes) {
    for (size_t i = 0; i < n.weights.size(); ++i) shared |= n.weights[i] == name && !reads_quantized(n, i);
  }
  std::string target = name;
  if (shared) {
    target = name + ".linear";
    for (Node& n : graph.nodes) {
      if (reads_quantized(n, 0) && !n.weights.empty() && n.weights[0] == name) n.weights[0] = target;
    }
  } else {
    weights.tensors.erase(name);
    graph.weights.erase(name);
  }
  WeightInfo info{quant_code_dtype(q.info), {q.rows, q.cols}, q.info};
  for (const StoredTensor& part : stored_tensors(target, info)) {
    const std::vector<uint8_t>& bytes = part.name == target                    ? q.codes
                                        : part.name == quant_scales_name(target) ? q.scales
                                                                               : q.mins;
    weights.put_owned(part.name, part.dtype, part.shape, bytes);
  }
  graph.weights[target] = std::move(info);
  return graph.validate();
}

}  // namespace kiln
