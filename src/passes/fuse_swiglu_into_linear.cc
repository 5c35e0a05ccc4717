#include "passes/fuse_linears.h"
#include "passes/passes.h"

namespace kiln {

namespace {
bool writes(const Node& n, int32_t value) { return n.output == value; }
bool reads(const Node& n, int32_t value) {
  for (const ValueRef& r : n.inputs) {
    if (r.value == value) return true;
  }
  return false;
}
}  // namespace

Result<int> fuse_swiglu_into_linear(Graph& graph) {
  int fused = 0;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (graph.nodes[i].op != OpKind::SwiGlu) continue;
    const Node& swiglu = graph.nodes[i];
    const int32_t act = swiglu.output;
    if (act == graph.logits_value) continue;
    // The activation must have exactly one reader, a Linear over all of it, and no writer but the
    // SwiGlu (an in-place op on it would change what the Linear reads).
    int consumer = -1, readers = 0;
    bool other_writer = false;
    for (size_t j = 0; j < graph.nodes.size(); ++j) {
      if (j == i) continue;
      if (reads(graph.nodes[j], act)) {
        ++readers;
        consumer = static_cast<int>(j);
      }
      other_writer = other_writer || writes(graph.nodes[j], act);
    }
    if (readers != 1 || other_writer || consumer < static_cast<int>(i)) continue;
    const Node& linear = graph.nodes[consumer];
    const ValueRef& in = linear.inputs[0];
    if (linear.op != OpKind::Linear || in.col_offset != 0 || in.width != graph.values[act].width) continue;
    // The Linear now reads gate and up itself: nothing in between may change them.
    bool gate_up_changed = false;
    for (int j = static_cast<int>(i) + 1; j < consumer; ++j) {
      gate_up_changed = gate_up_changed || writes(graph.nodes[j], swiglu.inputs[0].value) ||
                        writes(graph.nodes[j], swiglu.inputs[1].value);
    }
    if (gate_up_changed) continue;
    graph.nodes[consumer] = Node{OpKind::SwiGluLinear, linear.name,    {swiglu.inputs[0], swiglu.inputs[1]},
                                 linear.output,        linear.weights, linear.attrs};
    graph.nodes.erase(graph.nodes.begin() + static_cast<long>(i));
    --i;
    ++fused;
  }
  remove_unused_values(graph);
  KILN_TRY(graph.validate());
  return fused;
}

}  // namespace kiln
