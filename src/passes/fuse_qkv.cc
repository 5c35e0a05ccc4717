#include "passes/fuse_linears.h"
#include "passes/passes.h"

namespace kiln {

namespace {
// "model.layers.3.self_attn.q_proj.weight" -> "model.layers.3.self_attn.qkv_proj.weight"
std::string sibling_name(const std::string& name, const std::string& from, const std::string& to) {
  const size_t at = name.rfind(from);
  return at == std::string::npos ? name + "." + to : name.substr(0, at) + to + name.substr(at + from.size());
}
}  // namespace

Result<int> fuse_qkv(Graph& graph, WeightStore& weights) {
  int fused = 0;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (graph.nodes[i].op != OpKind::Attention) continue;
    std::vector<int> producers;
    for (const ValueRef& in : graph.nodes[i].inputs) producers.push_back(find_linear_producer(graph, in.value));
    if (producers[0] < 0 || producers[1] < 0 || producers[2] < 0) continue;
    if (!(producers[0] < producers[1] && producers[1] < producers[2])) continue;
    const Node& q = graph.nodes[producers[0]];
    std::string name = q.name;
    const size_t dot = name.rfind('.');
    name = (dot == std::string::npos ? name : name.substr(0, dot)) + ".qkv";
    const std::string weight = sibling_name(q.weights[0], "q_proj", "qkv_proj");
    const std::string bias = q.weights.size() > 1 ? sibling_name(q.weights[1], "q_proj", "qkv_proj") : "";
    KILN_ASSIGN(const bool ok, fuse_sibling_linears(graph, weights, producers, name, weight, bias));
    if (ok) ++fused;
  }
  KILN_TRY(graph.validate());
  return fused;
}

Result<int> fuse_gate_up(Graph& graph, WeightStore& weights) {
  int fused = 0;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (graph.nodes[i].op != OpKind::SwiGlu && graph.nodes[i].op != OpKind::SwiGluLinear) continue;
    const int gate = find_linear_producer(graph, graph.nodes[i].inputs[0].value);
    const int up = find_linear_producer(graph, graph.nodes[i].inputs[1].value);
    if (gate < 0 || up < 0 || gate >= up) continue;
    const Node& g = graph.nodes[gate];
    std::string name = g.name;
    const size_t dot = name.rfind('.');
    name = (dot == std::string::npos ? name : name.substr(0, dot)) + ".gate_up";
    const std::string weight = sibling_name(g.weights[0], "gate_proj", "gate_up_proj");
    const std::string bias = g.weights.size() > 1 ? sibling_name(g.weights[1], "gate_proj", "gate_up_proj") : "";
    KILN_ASSIGN(const bool ok, fuse_sibling_linears(graph, weights, {gate, up}, name, weight, bias));
    if (ok) ++fused;
  }
  KILN_TRY(graph.validate());
  return fused;
}

}  // namespace kiln
