#include "passes/passes.h"

namespace kiln {

namespace {
bool same_slice(const ValueRef& a, const ValueRef& b) {
  return a.value == b.value && a.col_offset == b.col_offset && a.width == b.width;
}
}  // namespace

Result<int> fuse_rope_into_attention(Graph& graph) {
  int fused = 0;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (graph.nodes[i].op != OpKind::Attention || graph.nodes[i].attr("rope") != 0.0) continue;
    // The two Rope nodes writing exactly the q and k slices, with nothing else touching those values
    // between them and the attention (so rotating later, inside attention, is the same computation).
    int rope_q = -1, rope_k = -1;
    for (int j = static_cast<int>(i) - 1; j >= 0; --j) {
      const Node& n = graph.nodes[j];
      if (n.op == OpKind::Rope && same_slice(n.inputs[0], graph.nodes[i].inputs[0]) && rope_q < 0) {
        rope_q = j;
      } else if (n.op == OpKind::Rope && same_slice(n.inputs[0], graph.nodes[i].inputs[1]) && rope_k < 0) {
        rope_k = j;
      } else if (n.output == graph.nodes[i].inputs[0].value || n.output == graph.nodes[i].inputs[1].value) {
        break;  // the producer (or another writer): stop looking
      }
      if (rope_q >= 0 && rope_k >= 0) break;
    }
    if (rope_q < 0 || rope_k < 0) continue;
    const Node& rq = graph.nodes[rope_q];
    const Node& rk = graph.nodes[rope_k];
    if (rope_table_key(rq) != rope_table_key(rk)) continue;
    Node& attention = graph.nodes[i];
    attention.attrs["rope"] = 1.0;
    for (const auto& [key, value] : rq.attrs) {
      if (key != "num_heads" && key != "head_dim") attention.attrs["rope_" + key] = value;
    }
    graph.nodes.erase(graph.nodes.begin() + std::max(rope_q, rope_k));
    graph.nodes.erase(graph.nodes.begin() + std::min(rope_q, rope_k));
    i -= 2;
    ++fused;
  }
  KILN_TRY(graph.validate());
  return fused;
}

}  // namespace kiln
